// The strophe.js scenario, run over BOSH and over WebSocket: SCRAM login and binding,
// presence seen by a TCP contact, chat both ways, and unavailable presence when the
// session ends (gracefully, and without a final unavailable from the client).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  bare, config, ensureMutualSubscription, stopQuietly, tcpClient, token, waitForChat,
  waitForPresence, xml,
} from "./common.js";
import {
  $msg, $pres, childText, elementsNamed, localName, stropheConnect, stropheDisconnect, stropheVanish,
} from "./strophe.js";

export function stropheScenario(transport, url) {
  let bob;
  const sessions = [];
  const alice = `alice@${config.domain}`;

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
    for (const s of sessions) {
      try { s.conn.reset(); } catch { /* gone */ }
    }
    await stopQuietly(bob?.xmpp);
  });

  async function login(resource, options = {}) {
    const s = await stropheConnect("alice", url(), { resource, ...options });
    sessions.push(s);
    return s;
  }

  test(`strophe.js over ${transport}: SCRAM login and resource binding`, async () => {
    const resource = token("strophe");
    const s = await login(resource);
    assert.equal(s.transport, transport, "strophe picked the transport from the URL");
    assert.match(s.mechanism ?? "", /^SCRAM-SHA-(1|256)$/, `SASL mechanism used: ${s.mechanism}`);
    assert.equal(bare(s.jid), alice);
    assert.equal(s.jid, `${alice}/${resource}`, "the server bound the requested resource (or one of its own)");
    await stropheDisconnect(s);
  });

  test(`strophe.js over ${transport}: presence, chat both ways with a TCP client, unavailable on disconnect`, async () => {
    const s = await login(token("strophe"));

    // Initial presence reaches the subscribed contact, from the session's full JID.
    const seen = waitForPresence(bob, s.jid, "available");
    s.conn.send($pres().c("status").t(`on ${transport}`));
    const p = await seen;
    assert.equal(p.getChildText("status"), `on ${transport}`);

    // alice (strophe) -> bob (TCP)
    const out = token("to-bob");
    const got = waitForChat(bob, alice, out);
    s.conn.send($msg({ to: bob.jid, type: "chat" }).c("body").t(out));
    const m = await got;
    assert.equal(m.attrs.from, s.jid, "the message is stamped with the sender's full JID");
    assert.equal(m.attrs.type, "chat");

    // bob (TCP) -> alice (strophe), to her full JID
    const back = token("to-alice");
    const arrived = s.log.waitFor(
      (st) => localName(st) === "message" && childText(st, "body") === back,
      `message "${back}" at the ${transport} session`,
    );
    await bob.xmpp.send(xml("message", { to: s.jid, type: "chat" }, xml("body", {}, back)));
    const r = await arrived;
    assert.equal(r.getAttribute("from"), bob.jid);
    assert.equal(r.getAttribute("to"), s.jid);
    assert.equal(r.getAttribute("type"), "chat");

    // Graceful disconnect: strophe sends unavailable presence and ends the session.
    const gone = waitForPresence(bob, s.jid, "unavailable");
    await stropheDisconnect(s);
    await gone;
  });

  test(`strophe.js over ${transport}: the server sends unavailable when the session ends without one`, async () => {
    const s = await login(token("strophe"));
    const seen = waitForPresence(bob, s.jid, "available");
    s.conn.send($pres());
    await seen;
    // Strophe only adds <presence type='unavailable'/> to its closing request when it
    // believes it is authenticated: clear that so the stream ends with no presence at all.
    s.conn.authenticated = false;
    const gone = waitForPresence(bob, s.jid, "unavailable");
    const before = s.sent.length;
    await stropheDisconnect(s);
    const closing = s.sent.slice(before);
    assert.ok(closing.length > 0, "strophe sent a closing request");
    for (const el of closing) {
      assert.equal(elementsNamed(el, "presence").length, 0, "the closing request carries no presence");
    }
    if (transport === "bosh") {
      assert.ok(closing.some((el) => localName(el) === "body" && el.getAttribute("type") === "terminate"),
        "strophe ended the BOSH session with type='terminate' (XEP-0124 §13)");
    } else {
      assert.ok(closing.some((el) => localName(el) === "close"),
        "strophe closed the WebSocket stream with <close/> (RFC 7395 §3.6)");
    }
    await gone;
  });

  if (transport === "bosh") {
    test("strophe.js over bosh: a client that vanishes is logged out after the inactivity period (XEP-0124 §10)", async (t) => {
      const s = await login(token("strophe"), { wait: 2 });
      const created = s.received.find((el) => localName(el) === "body" && el.getAttribute("sid"));
      const inactivity = Number(created?.getAttribute("inactivity"));
      const wait = Number(created?.getAttribute("wait"));
      if (!inactivity) {
        t.skip("no 'inactivity' in the session creation response: the server may keep it forever");
        stropheVanish(s);
        return;
      }
      assert.ok(wait <= 2, `'wait' ${wait} is at most the requested 2`);
      const seen = waitForPresence(bob, s.jid, "available");
      s.conn.send($pres());
      await seen;
      const gone = waitForPresence(bob, s.jid, "unavailable", (inactivity + wait + 10) * 1000);
      const t0 = Date.now();
      stropheVanish(s);
      await gone;
      const secs = (Date.now() - t0) / 1000;
      t.diagnostic(`unavailable ${secs.toFixed(1)} s after the client vanished (inactivity=${inactivity}, wait=${wait})`);
    });
  }
}
