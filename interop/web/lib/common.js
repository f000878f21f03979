// Shared pieces of the web interop tests: where the server under test is (from the
// environment run.sh sets), a TCP client (@xmpp/client over STARTTLS) for the other side
// of every conversation, and bounded waits on parsed stanzas.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { client, xml, jid as parseJid } from "@xmpp/client";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run the tests through interop/web/run.sh)`);
  return value;
}

export const config = {
  get domain() { return process.env.XMPP_DOMAIN || "localhost"; },
  get c2sPort() { return Number(env("XMPP_C2S_PORT")); },
  get boshUrl() { return env("XMPP_BOSH_URL"); },
  get wsUrl() { return env("XMPP_WS_URL"); },
  get httpBase() { return env("XMPP_HTTP_BASE"); },
  get password() { return env("XMPP_PASSWORD"); },
  get server() { return process.env.SERVER || "xmppd"; },
};

export const WAIT_MS = Number(process.env.WEB_TEST_WAIT_MS || 10000);

export function token(prefix) {
  return `${prefix}-${randomBytes(6).toString("hex")}`;
}

export function bare(j) {
  return parseJid(j).bare().toString();
}

/** Rejects after `ms` with a message naming what was awaited. */
export function withTimeout(promise, what, ms = WAIT_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Keeps every stanza a source emits and lets a test wait for the first one (seen before
 * or after the call) matching a predicate. `subscribe(push)` wires the source.
 */
export class StanzaLog {
  constructor() {
    this.seen = [];
    this.waiters = [];
  }
  push(stanza) {
    this.seen.push(stanza);
    for (const w of [...this.waiters]) {
      if (w.pred(stanza)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(stanza);
      }
    }
  }
  waitFor(pred, what, ms = WAIT_MS) {
    const found = this.seen.find(pred);
    if (found) return Promise.resolve(found);
    let waiter;
    const p = new Promise((resolve) => {
      waiter = { pred, resolve };
      this.waiters.push(waiter);
    });
    return withTimeout(p, what, ms).finally(() => {
      const i = this.waiters.indexOf(waiter);
      if (i >= 0) this.waiters.splice(i, 1);
    });
  }
}

/**
 * Logs in `user` over TCP with STARTTLS (the server's certificate must be trusted through
 * NODE_EXTRA_CA_CERTS, which run.sh sets to the server's certificate), sends initial
 * presence and returns { xmpp, jid, log } where log holds every incoming stanza.
 * `mechanism` (out) records the SASL mechanism used.
 */
export async function tcpClient(user, { resource = token("tcp"), presence = true } = {}) {
  const xmpp = client({
    service: `xmpp://127.0.0.1:${config.c2sPort}`,
    domain: config.domain,
    resource,
    // @xmpp/connection waits 2 s by default for each step (the stream reopening after
    // STARTTLS, …), too short for a debug build on a busy machine.
    timeout: WAIT_MS,
    credentials: async (authenticate, mechanisms) => {
      const mech = mechanisms.find((m) => m.startsWith("SCRAM-")) ?? mechanisms[0];
      result.mechanism = mech;
      await authenticate({ username: user, password: config.password }, mech);
    },
  });
  xmpp.reconnect.stop();
  const log = new StanzaLog();
  const result = { xmpp, log, jid: null, mechanism: null, errors: [] };
  xmpp.on("error", (err) => result.errors.push(err));
  xmpp.on("stanza", (stanza) => log.push(stanza));
  let address;
  try {
    address = await withTimeout(xmpp.start(), `TCP login of ${user}`);
  } catch (e) {
    abandon(xmpp);
    throw e;
  }
  result.jid = address.toString();
  if (presence) await xmpp.send(xml("presence"));
  return result;
}

/** Drops a client that failed to start, so its socket does not keep the process alive. */
export function abandon(xmpp) {
  try { xmpp.reconnect?.stop(); } catch { /* nothing to stop */ }
  const sock = xmpp.socket;
  try { sock?.socket?.terminate?.(); } catch { /* gone */ }
  try { sock?.socket?.destroy?.(); } catch { /* gone */ }
  try { sock?.destroy?.(); } catch { /* gone */ }
  try { sock?.end?.(); } catch { /* gone */ }
}

export async function stopQuietly(xmpp) {
  if (!xmpp || xmpp.status === "offline") return;
  try {
    await withTimeout(xmpp.stop(), "client stop", 5000);
  } catch {
    abandon(xmpp);
  }
}

/** Sends an iq and waits for its result (ltx element). */
export async function iq(c, payload, type = "get", to) {
  return withTimeout(
    c.xmpp.iqCaller.request(xml("iq", { type, ...(to ? { to } : {}) }, payload)),
    `iq ${payload.name} ${payload.attrs.xmlns}`,
  );
}

async function rosterItem(c, contact) {
  const res = await iq(c, xml("query", { xmlns: "jabber:iq:roster" }));
  const item = res
    .getChildren("query", "jabber:iq:roster")
    .flatMap((q) => q.getChildren("item"))
    .find((i) => i.attrs.jid === contact);
  return item ? item.attrs : null;
}

/**
 * Makes `a` and `b` (two TCP clients, both online with presence) subscribed to each other
 * (RFC 6121 §3), unless they already are. Idempotent.
 */
export async function ensureMutualSubscription(a, b) {
  const aBare = bare(a.jid), bBare = bare(b.jid);
  const have = await rosterItem(a, bBare);
  const other = await rosterItem(b, aBare);
  if (have?.subscription === "both" && other?.subscription === "both") return;
  for (const [from, to, fromBare, toBare] of [[a, b, aBare, bBare], [b, a, bBare, aBare]]) {
    const item = await rosterItem(from, toBare);
    if (item && (item.subscription === "to" || item.subscription === "both")) continue;
    const asked = to.log.waitFor(
      (s) => s.is("presence") && s.attrs.type === "subscribe" && bare(s.attrs.from) === fromBare,
      `subscription request from ${fromBare} at ${toBare}`,
    );
    await from.xmpp.send(xml("presence", { to: toBare, type: "subscribe" }));
    await asked;
    const approved = from.log.waitFor(
      (s) => s.is("presence") && s.attrs.type === "subscribed" && bare(s.attrs.from) === toBare,
      `subscription approval from ${toBare} at ${fromBare}`,
    );
    await to.xmpp.send(xml("presence", { to: fromBare, type: "subscribed" }));
    await approved;
  }
  // The roster pushes may trail the presence; poll (bounded) until both say "both".
  for (let i = 0; i < 50; i++) {
    const x = await rosterItem(a, bBare), y = await rosterItem(b, aBare);
    if (x?.subscription === "both" && y?.subscription === "both") return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`${aBare} and ${bBare} are not subscribed both ways after the handshake`);
}

/** Waits for a chat message from `fromBare` whose <body/> is exactly `body` (ltx). */
export function waitForChat(c, fromBare, body, ms) {
  return c.log.waitFor(
    (s) =>
      s.is("message") &&
      bare(s.attrs.from || c.jid) === fromBare &&
      s.getChildText("body") === body,
    `message "${body}" from ${fromBare} at ${bare(c.jid)}`,
    ms,
  );
}

/** Waits for presence (available, or of `type`) from the full JID `from` (ltx). */
export function waitForPresence(c, from, type, ms) {
  return c.log.waitFor(
    (s) => s.is("presence") && s.attrs.from === from && (s.attrs.type || "available") === type,
    `presence ${type} from ${from} at ${bare(c.jid)}`,
    ms,
  );
}

export { xml };
