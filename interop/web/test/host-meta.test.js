// XEP-0156 discovery over HTTP: /.well-known/host-meta (XRD, RFC 6415) and
// /.well-known/host-meta.json list the BOSH and WebSocket endpoints, which answer.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DOMParser } from "@xmldom/xmldom";
import WebSocket from "ws";
import { config, withTimeout } from "../lib/common.js";

const XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0";
const BOSH_REL = "urn:xmpp:alt-connections:xbosh";
const WS_REL = "urn:xmpp:alt-connections:websocket";
const ORIGIN = "http://127.0.0.1:1"; // a foreign origin, for the CORS headers

async function get(path) {
  const res = await fetch(config.httpBase + path, {
    headers: { Origin: ORIGIN },
    signal: AbortSignal.timeout(10000),
  });
  return { res, text: await res.text() };
}

/** The endpoint an advertised URL names must be the one run.sh configured. */
function assertSameEndpoint(advertised, expected, what) {
  const a = new URL(advertised), e = new URL(expected);
  assert.equal(a.protocol, e.protocol, `${what}: scheme of ${advertised}`);
  assert.equal(a.port, e.port, `${what}: port of ${advertised}`);
  assert.equal(a.pathname, e.pathname, `${what}: path of ${advertised}`);
  assert.ok(["127.0.0.1", "localhost", config.domain].includes(a.hostname), `${what}: host of ${advertised}`);
}

function assertCors(res, what) {
  const allow = res.headers.get("access-control-allow-origin");
  assert.ok(allow === "*" || allow === ORIGIN,
    `${what}: Access-Control-Allow-Origin is ${JSON.stringify(allow)} for Origin ${ORIGIN} (cors_origins = ["*"])`);
}

function linksFromXrd(text) {
  const errors = [];
  const doc = new DOMParser({ onError: (level, msg) => errors.push(`${level}: ${msg}`) })
    .parseFromString(text, "application/xml");
  assert.deepEqual(errors, [], "host-meta is well-formed XML");
  const root = doc.documentElement;
  assert.equal(root.localName, "XRD", "root element");
  assert.equal(root.namespaceURI, XRD_NS, "root namespace");
  const links = [];
  for (let n = root.firstChild; n; n = n.nextSibling) {
    if (n.nodeType === 1 && n.localName === "Link" && n.namespaceURI === XRD_NS) {
      links.push({ rel: n.getAttribute("rel"), href: n.getAttribute("href") });
    }
  }
  return links;
}

function only(links, rel, what) {
  const found = links.filter((l) => l.rel === rel);
  assert.equal(found.length, 1, `${what}: one link with rel ${rel} in ${JSON.stringify(links)}`);
  return found[0].href;
}

test("GET /.well-known/host-meta: XRD listing the BOSH and WebSocket URLs", async () => {
  const { res, text } = await get("/.well-known/host-meta");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^application\/xrd\+xml\b/, "RFC 6415 §3: XRD media type");
  assertCors(res, "host-meta");
  const links = linksFromXrd(text);
  assertSameEndpoint(only(links, BOSH_REL, "host-meta"), config.boshUrl, "BOSH link");
  assertSameEndpoint(only(links, WS_REL, "host-meta"), config.wsUrl, "WebSocket link");
});

test("GET /.well-known/host-meta.json: JRD listing the BOSH and WebSocket URLs", async () => {
  const { res, text } = await get("/.well-known/host-meta.json");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^application\/(jrd\+)?json\b/, "JSON media type");
  assertCors(res, "host-meta.json");
  const doc = JSON.parse(text);
  assert.ok(Array.isArray(doc.links), "a links array (RFC 6415 Appendix A)");
  const links = doc.links.map((l) => ({ rel: l.rel, href: l.href }));
  assertSameEndpoint(only(links, BOSH_REL, "host-meta.json"), config.boshUrl, "BOSH link");
  assertSameEndpoint(only(links, WS_REL, "host-meta.json"), config.wsUrl, "WebSocket link");
});

test("the advertised endpoints answer: a BOSH session request and a WebSocket handshake", async () => {
  const { text } = await get("/.well-known/host-meta.json");
  const links = JSON.parse(text).links;
  const bosh = links.find((l) => l.rel === BOSH_REL).href;
  const ws = links.find((l) => l.rel === WS_REL).href;

  // XEP-0124 §7.1 / XEP-0206 §6: a session creation request gets a <body/> with a sid.
  const rid = 1000 + Math.floor(Math.random() * 1e6);
  const res = await fetch(bosh, {
    method: "POST",
    headers: { "Content-Type": "text/xml; charset=utf-8" },
    body: `<body content='text/xml; charset=utf-8' hold='1' rid='${rid}' ` +
      `to='${config.domain}' ver='1.6' wait='5' xml:lang='en' xmpp:version='1.0' ` +
      `xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'/>`,
    signal: AbortSignal.timeout(10000),
  });
  assert.equal(res.status, 200);
  const body = new DOMParser().parseFromString(await res.text(), "text/xml").documentElement;
  assert.equal(body.localName, "body");
  assert.equal(body.namespaceURI, "http://jabber.org/protocol/httpbind");
  const sid = body.getAttribute("sid");
  assert.ok(sid, "the session creation response has a sid");
  // End that session again (XEP-0124 §13).
  const end = await fetch(bosh, {
    method: "POST",
    headers: { "Content-Type": "text/xml; charset=utf-8" },
    body: `<body rid='${rid + 1}' sid='${sid}' type='terminate' ` +
      `xmlns='http://jabber.org/protocol/httpbind'/>`,
    signal: AbortSignal.timeout(10000),
  }).catch((e) => e);
  if (end instanceof Response) await end.text();

  // RFC 7395 §3.1: the handshake selects the "xmpp" subprotocol.
  const sock = new WebSocket(ws, ["xmpp"]);
  const protocol = await withTimeout(new Promise((resolve, reject) => {
    sock.once("open", () => resolve(sock.protocol));
    sock.once("error", reject);
  }), `WebSocket handshake at ${ws}`);
  sock.terminate();
  assert.equal(protocol, "xmpp");
});
