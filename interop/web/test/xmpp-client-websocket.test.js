// @xmpp/client over WebSocket (RFC 7395): SCRAM login, presence, chat both ways with a TCP
// client, and unavailable presence when the stream is closed (the client sends none).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { client } from "@xmpp/client";
import {
  abandon, bare, config, ensureMutualSubscription, StanzaLog, stopQuietly, tcpClient, token,
  WAIT_MS, waitForChat, waitForPresence, withTimeout, xml,
} from "../lib/common.js";

// @xmpp/websocket uses the global WebSocket, which Node 20 has only behind a flag.
globalThis.WebSocket ??= WebSocket;

const alice = `alice@${config.domain}`;
let bob;
const clients = [];

before(async () => {
  bob = await tcpClient("bob");
  const helper = await tcpClient("alice");
  try {
    await ensureMutualSubscription(helper, bob);
  } finally {
    await stopQuietly(helper.xmpp);
  }
});

after(async () => {
  for (const c of clients) await stopQuietly(c);
  await stopQuietly(bob?.xmpp);
});

async function wsLogin(resource) {
  const s = { mechanism: null, offered: null, log: new StanzaLog(), frames: [] };
  const xmpp = client({
    service: config.wsUrl,
    domain: config.domain,
    resource,
    timeout: WAIT_MS,
    credentials: async (authenticate, mechanisms) => {
      s.offered = mechanisms;
      s.mechanism = mechanisms.find((m) => m.startsWith("SCRAM-"));
      assert.ok(s.mechanism, `a SCRAM mechanism is offered over WebSocket (offered: ${mechanisms})`);
      await authenticate({ username: "alice", password: config.password }, s.mechanism);
    },
  });
  xmpp.reconnect.stop();
  clients.push(xmpp);
  xmpp.on("error", () => {});
  xmpp.on("stanza", (st) => s.log.push(st));
  xmpp.on("element", (el) => s.frames.push(el));
  xmpp.on("nonza", (el) => s.frames.push(el));
  s.xmpp = xmpp;
  try {
    s.jid = (await withTimeout(xmpp.start(), "@xmpp/client WebSocket login")).toString();
  } catch (e) {
    abandon(xmpp);
    throw e;
  }
  return s;
}

test("@xmpp/client over WebSocket: SCRAM login, presence, chat both ways, unavailable on close", async () => {
  const resource = token("xmppjs");
  const s = await wsLogin(resource);
  assert.equal(s.mechanism, "SCRAM-SHA-1");
  assert.equal(bare(s.jid), alice);
  assert.ok(s.jid.startsWith(`${alice}/`), `bound a full JID: ${s.jid}`);
  assert.equal(s.xmpp.socket?.socket?.protocol, "xmpp", "RFC 7395 §3.1: subprotocol xmpp");

  const seen = waitForPresence(bob, s.jid, "available");
  await s.xmpp.send(xml("presence", {}, xml("show", {}, "chat")));
  const p = await seen;
  assert.equal(p.getChildText("show"), "chat");

  const out = token("ws-to-bob");
  const got = waitForChat(bob, alice, out);
  await s.xmpp.send(xml("message", { to: bob.jid, type: "chat" }, xml("body", {}, out)));
  const m = await got;
  assert.equal(m.attrs.from, s.jid);

  const back = token("ws-to-alice");
  const arrived = s.log.waitFor(
    (st) => st.is("message") && st.getChildText("body") === back,
    `message "${back}" at the WebSocket session`,
  );
  // To the bare JID this time: the only available resource gets it (RFC 6121 §8.5.2).
  await bob.xmpp.send(xml("message", { to: alice, type: "chat" }, xml("body", {}, back)));
  const r = await arrived;
  assert.equal(r.attrs.from, bob.jid);
  assert.equal(r.attrs.type, "chat");

  // xmpp.stop() sends <close/> (RFC 7395 §3.6) with no unavailable presence before it:
  // the server must broadcast unavailable itself when the session ends.
  const gone = waitForPresence(bob, s.jid, "unavailable");
  await withTimeout(s.xmpp.stop(), "@xmpp/client stop");
  const u = await gone;
  assert.equal(u.attrs.type, "unavailable");
});

test("@xmpp/client over WebSocket: a dropped connection (no <close/>) ends the session too", async () => {
  const s = await wsLogin(token("xmppjs"));
  const seen = waitForPresence(bob, s.jid, "available");
  await s.xmpp.send(xml("presence"));
  await seen;
  const gone = waitForPresence(bob, s.jid, "unavailable");
  // Abort the TCP connection under the WebSocket: no <close/>, no close frame.
  s.xmpp.socket.socket.terminate();
  await gone;
});
