// The HTTP listener at the wire, without a client library: what a web client relies on
// and the libraries do not check. Only requirements of the specifications (MUST / MUST
// NOT) and the CORS handshake a browser performs are asserted.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DOMParser } from "@xmldom/xmldom";
import WebSocket from "ws";
import { config, withTimeout } from "../lib/common.js";

const BOSH_NS = "http://jabber.org/protocol/httpbind";
const XBOSH_NS = "urn:xmpp:xbosh";
const FRAMING_NS = "urn:ietf:params:xml:ns:xmpp-framing";
const STREAMS_NS = "http://etherx.jabber.org/streams";
const SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl";
const ORIGIN = "http://127.0.0.1:1";

/** Parses one XML document strictly: a parse error or a second root fails the test. */
function parseOne(text, what) {
  const errors = [];
  const doc = new DOMParser({ onError: (level, msg) => errors.push(`${level}: ${msg}`) })
    .parseFromString(text, "text/xml");
  assert.deepEqual(errors, [], `${what} is one well-formed XML element: ${text}`);
  return doc.documentElement;
}

function children(el, ns, name) {
  const out = [];
  for (let n = el.firstChild; n; n = n.nextSibling) {
    if (n.nodeType === 1 && n.namespaceURI === ns && (!name || n.localName === name)) out.push(n);
  }
  return out;
}

async function boshPost(xml) {
  const res = await fetch(config.boshUrl, {
    method: "POST",
    headers: { "Content-Type": "text/xml; charset=utf-8" },
    body: xml,
    signal: AbortSignal.timeout(15000),
  });
  return { res, text: await res.text() };
}

function rid() {
  return 100000 + Math.floor(Math.random() * 1e9);
}

test("BOSH session creation response (XEP-0124 §7.1-§7.2, XEP-0206 §3)", async () => {
  const r = rid();
  const { res, text } = await boshPost(
    `<body content='text/xml; charset=utf-8' hold='1' rid='${r}' to='${config.domain}' ver='1.6' ` +
    `wait='5' xml:lang='en' xmpp:version='1.0' xmlns='${BOSH_NS}' xmlns:xmpp='${XBOSH_NS}'/>`);
  assert.equal(res.status, 200, "HTTP 200 OK");
  assert.equal((res.headers.get("content-type") ?? "").replace(/\s+/g, "").toLowerCase(),
    "text/xml;charset=utf-8", "the Content-Type named in the 'content' attribute (§7.1)");
  const body = parseOne(text, "the session creation response");
  assert.equal(body.localName, "body");
  assert.equal(body.namespaceURI, BOSH_NS);
  assert.notEqual(body.getAttribute("type"), "terminate", `not a terminal error: ${text}`);
  const sid = body.getAttribute("sid");
  assert.ok(sid, "MUST possess 'sid' (§7.2)");
  const wait = body.getAttribute("wait");
  assert.match(wait ?? "", /^\d+$/, "MUST possess 'wait' (§7.2)");
  assert.ok(Number(wait) <= 5, `'wait' MUST be <= the requested 5 (§7.2), got ${wait}`);
  if (body.hasAttribute("hold")) {
    assert.ok(Number(body.getAttribute("hold")) <= 1, `'hold' MUST NOT exceed the requested 1 (§7.2), got ${body.getAttribute("hold")}`);
  }
  if (body.hasAttribute("ver")) {
    const [maj, min] = body.getAttribute("ver").split(".").map(Number);
    // §7.2: "the highest version of the BOSH protocol that the connection manager supports,
    // or the version specified by the client in its request, whichever is lower".
    assert.ok(maj < 1 || (maj === 1 && min <= 6),
      `'ver' is the lower of the server's version and the client's 1.6 (§7.2), got ver='${body.getAttribute("ver")}'`);
  }
  // XEP-0206 §3: stream features in this response or a later one (the client polls).
  let features = children(body, STREAMS_NS, "features")[0];
  let next = r + 1;
  for (let i = 0; !features && i < 3; i++) {
    const poll = await boshPost(`<body rid='${next++}' sid='${sid}' xmlns='${BOSH_NS}'/>`);
    const b = parseOne(poll.text, "a poll response");
    assert.notEqual(b.getAttribute("type"), "terminate", `the session lives: ${poll.text}`);
    features = children(b, STREAMS_NS, "features")[0];
  }
  assert.ok(features, "<stream:features/> arrive (XEP-0206 §3)");
  const mechanisms = children(features, SASL_NS, "mechanisms")[0];
  assert.ok(mechanisms, "SASL is offered over BOSH (loopback counts as secure)");
  const names = children(mechanisms, SASL_NS, "mechanism").map((m) => m.textContent.trim());
  assert.ok(names.some((n) => /^SCRAM-SHA-(1|256)$/.test(n)), `a SCRAM mechanism among ${names}`);

  // Terminating the session (XEP-0124 §13): the answer is a <body type='terminate'/>.
  const end = await boshPost(`<body rid='${next++}' sid='${sid}' type='terminate' xmlns='${BOSH_NS}'>` +
    `<presence type='unavailable' xmlns='jabber:client'/></body>`);
  assert.equal(end.res.status, 200);
  const e = parseOne(end.text, "the terminate response");
  assert.equal(e.localName, "body");
  assert.equal(e.getAttribute("type"), "terminate", `the session is over: ${end.text}`);

  // The sid is gone now: item-not-found (XEP-0124 §17.2), or 404 from older managers (§17.1).
  const after = await boshPost(`<body rid='${next++}' sid='${sid}' xmlns='${BOSH_NS}'/>`);
  if (after.res.status === 200) {
    const a = parseOne(after.text, "the response for a dead session");
    assert.equal(a.getAttribute("type"), "terminate", `a request on a terminated session: ${after.text}`);
    assert.equal(a.getAttribute("condition"), "item-not-found");
  } else {
    assert.equal(after.res.status, 404, "legacy HTTP condition for an unknown sid");
  }
});

test("BOSH: a polling session (wait='0', hold='0') gets wait and hold of 0 (XEP-0124 §7.1-§7.2, §12)", async (t) => {
  const r = rid();
  const { res, text } = await boshPost(
    `<body hold='0' rid='${r}' to='${config.domain}' ver='1.6' wait='0' xml:lang='en' ` +
    `xmpp:version='1.0' xmlns='${BOSH_NS}' xmlns:xmpp='${XBOSH_NS}'/>`);
  assert.equal(res.status, 200);
  const body = parseOne(text, "the session creation response");
  const sid = body.getAttribute("sid");
  assert.ok(sid, `a session: ${text}`);
  try {
    // §7.1: polling clients "MAY prevent the connection manager from waiting by setting
    // 'wait' or 'hold' to '0'"; §7.2: 'wait' "MUST be less than or equal to the value
    // specified in the session request", 'hold' "MUST NOT be greater".
    assert.equal(body.getAttribute("wait"), "0", `'wait' for a requested wait='0': ${text}`);
    if (config.server === "prosody" && body.getAttribute("hold") === "1") {
      // Known: Prosody 0.12 answers hold='1' whatever the client asked for. Only the tests
      // are checked against Prosody, so this is noted, not failed.
      t.todo("Prosody 0.12 answers hold='1' to hold='0'");
    } else if (body.hasAttribute("hold")) {
      assert.equal(body.getAttribute("hold"), "0", `'hold' for a requested hold='0': ${text}`);
    }
  } finally {
    await boshPost(`<body rid='${r + 1}' sid='${sid}' type='terminate' xmlns='${BOSH_NS}'/>`).catch(() => {});
  }
});

test("BOSH: the 'content' attribute sets the Content-Type of every response in the session (XEP-0124 §7.1)", async (t) => {
  const wanted = "text/plain; charset=utf-8";
  const norm = (v) => (v ?? "").replace(/\s+/g, "").toLowerCase();
  const r = rid();
  const created = await boshPost(
    `<body content='${wanted}' hold='1' rid='${r}' to='${config.domain}' ver='1.6' wait='1' ` +
    `xml:lang='en' xmpp:version='1.0' xmlns='${BOSH_NS}' xmlns:xmpp='${XBOSH_NS}'/>`);
  const sid = parseOne(created.text, "the session creation response").getAttribute("sid");
  assert.ok(sid, created.text);
  const poll = await boshPost(`<body rid='${r + 1}' sid='${sid}' xmlns='${BOSH_NS}'/>`);
  const end = await boshPost(`<body rid='${r + 2}' sid='${sid}' type='terminate' xmlns='${BOSH_NS}'/>`);
  // §7.1: "This specifies the value of the HTTP Content-Type header that MUST appear in all
  // the connection manager's responses during the session."
  const got = [created, poll, end].map((x) => x.res.headers.get("content-type"));
  if (config.server === "prosody" && got.every((g) => norm(g) === norm("text/xml; charset=utf-8"))) {
    // Known: Prosody 0.12 ignores 'content'. Only the tests are checked against Prosody.
    t.todo("Prosody 0.12 ignores the 'content' attribute");
    return;
  }
  assert.deepEqual(got.map(norm), [wanted, wanted, wanted].map(norm),
    `Content-Type of the creation, poll and terminate responses: ${JSON.stringify(got)}`);
});

test("BOSH: a request with an unknown sid gets item-not-found (XEP-0124 §17.2)", async () => {
  const { res, text } = await boshPost(`<body rid='${rid()}' sid='no-such-session-${rid()}' xmlns='${BOSH_NS}'/>`);
  if (res.status === 200) {
    const b = parseOne(text, "the response");
    assert.equal(b.getAttribute("type"), "terminate", text);
    assert.equal(b.getAttribute("condition"), "item-not-found", text);
  } else {
    assert.equal(res.status, 404, "legacy HTTP condition (§17.1) if not a terminal binding condition");
  }
});

test("BOSH: CORS preflight from another origin allows POST with Content-Type", async () => {
  const res = await fetch(config.boshUrl, {
    method: "OPTIONS",
    headers: {
      Origin: ORIGIN,
      "Access-Control-Request-Method": "POST",
      "Access-Control-Request-Headers": "content-type",
    },
    signal: AbortSignal.timeout(10000),
  });
  await res.text();
  assert.ok(res.status >= 200 && res.status < 300, `preflight status ${res.status} is ok (Fetch §4.8)`);
  const allowOrigin = res.headers.get("access-control-allow-origin");
  assert.ok(allowOrigin === "*" || allowOrigin === ORIGIN, `Access-Control-Allow-Origin: ${allowOrigin}`);
  const methods = (res.headers.get("access-control-allow-methods") ?? "").toUpperCase().split(/\s*,\s*/);
  assert.ok(methods.includes("POST") || methods.includes("*"), `Access-Control-Allow-Methods: ${methods}`);
  const headers = (res.headers.get("access-control-allow-headers") ?? "").toLowerCase().split(/\s*,\s*/);
  assert.ok(headers.includes("content-type") || headers.includes("*"), `Access-Control-Allow-Headers: ${headers}`);

  // And the POST itself carries the header (a browser drops the response otherwise).
  const post = await fetch(config.boshUrl, {
    method: "POST",
    headers: { "Content-Type": "text/xml; charset=utf-8", Origin: ORIGIN },
    body: `<body rid='${rid()}' sid='no-such-session' xmlns='${BOSH_NS}'/>`,
    signal: AbortSignal.timeout(10000),
  });
  await post.text();
  const allow = post.headers.get("access-control-allow-origin");
  assert.ok(allow === "*" || allow === ORIGIN, `POST Access-Control-Allow-Origin: ${allow}`);
});

/** Opens a raw WebSocket with subprotocol xmpp and collects its messages. */
async function rawWebSocket() {
  const sock = new WebSocket(config.wsUrl, ["xmpp"], { headers: { Origin: ORIGIN } });
  const messages = [];
  const waiters = [];
  let closed = null;
  sock.on("message", (data, isBinary) => {
    messages.push({ text: data.toString("utf8"), isBinary });
    for (const w of waiters.splice(0)) w();
  });
  sock.on("close", (code) => { closed = { code }; for (const w of waiters.splice(0)) w(); });
  await withTimeout(new Promise((resolve, reject) => { sock.once("open", resolve); sock.once("error", reject); }),
    "WebSocket handshake");
  const next = async (n, what) => {
    const deadline = Date.now() + 10000;
    while (messages.length < n && !closed && Date.now() < deadline) {
      await withTimeout(new Promise((r) => waiters.push(r)), what, deadline - Date.now()).catch(() => {});
    }
    assert.ok(messages.length >= n, `${what} (got ${messages.length} messages${closed ? `, closed ${closed.code}` : ""})`);
    return messages[n - 1];
  };
  return { sock, messages, next, isClosed: () => closed };
}

test("WebSocket: <open/> answered by <open/>, then features, one element per text message, <close/> answered (RFC 7395)", async () => {
  const ws = await rawWebSocket();
  try {
    assert.equal(ws.sock.protocol, "xmpp", "the server selected the xmpp subprotocol (§3.1)");
    ws.sock.send(`<open xmlns='${FRAMING_NS}' to='${config.domain}' version='1.0'/>`);
    const first = await ws.next(1, "the server's <open/>");
    assert.equal(first.isBinary, false, "text frames (§3.2)");
    const open = parseOne(first.text, "the first message");
    assert.equal(open.localName, "open");
    assert.equal(open.namespaceURI, FRAMING_NS);
    assert.equal(open.getAttribute("from"), config.domain, "'from' is the domain (§3.4, RFC 6120 §4.7.1)");
    assert.equal(open.getAttribute("version"), "1.0");
    assert.ok(open.getAttribute("id"), "a stream id (RFC 6120 §4.7.3)");
    const second = await ws.next(2, "the stream features");
    assert.equal(second.isBinary, false);
    const features = parseOne(second.text, "the second message");
    assert.equal(features.localName, "features");
    assert.equal(features.namespaceURI, STREAMS_NS, "stream:features in the streams namespace (§3.3.3)");
    const mechanisms = children(features, SASL_NS, "mechanisms")[0];
    assert.ok(mechanisms, "SASL is offered over WebSocket on loopback");

    // Closing (§3.6): the stream is closed when the other party's <close/> arrives; the
    // closing party (here the client) then closes the WebSocket connection.
    ws.sock.send(`<close xmlns='${FRAMING_NS}'/>`);
    const reply = await ws.next(3, "the server's <close/>");
    const close = parseOne(reply.text, "the message after our <close/>");
    assert.equal(close.localName, "close", `the server answered <close/> with <close/> (§3.6): ${reply.text}`);
    assert.equal(close.namespaceURI, FRAMING_NS);
    ws.sock.close(1000);
  } finally {
    ws.sock.terminate();
  }
});
