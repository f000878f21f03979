// strophe.js in Node: its Node build installs @xmldom/xmldom as the DOM and `ws` as the
// WebSocket; BOSH needs an XMLHttpRequest, which Node lacks, so xhr2 provides one and the
// shim below gives it the `responseXML` a browser would have (strophe reads the response
// from there; xhr2 only fills responseText).
import XHR2 from "xhr2";
import { Strophe, $msg, $pres } from "strophe.js";
import { config, StanzaLog, withTimeout, WAIT_MS } from "./common.js";

class XMLHttpRequestWithXML extends XHR2 {
  get responseXML() {
    if (this.readyState !== 4 || !this.responseText) return null;
    return new DOMParser().parseFromString(this.responseText, "text/xml");
  }
}
globalThis.XMLHttpRequest = XMLHttpRequestWithXML;
Strophe.setLogLevel(process.env.WEB_TEST_DEBUG ? Strophe.LogLevel.DEBUG : Strophe.LogLevel.WARN);

const STATUS_NAMES = Object.fromEntries(Object.entries(Strophe.Status).map(([k, v]) => [v, k]));

/** Local name of a DOM element, without any prefix. */
function localName(el) {
  return el.localName || el.nodeName.replace(/^.*:/, "");
}

/** All descendants (and the element itself) of `el` named `name`, DOM. */
function elementsNamed(el, name) {
  const out = [];
  const walk = (n) => {
    if (n.nodeType !== 1) return;
    if (localName(n) === name) out.push(n);
    for (let c = n.firstChild; c; c = c.nextSibling) walk(c);
  };
  walk(el);
  return out;
}

/** Text of the first direct child element `name` of `el`, or null. */
export function childText(el, name) {
  for (let c = el.firstChild; c; c = c.nextSibling) {
    if (c.nodeType === 1 && localName(c) === name) return c.textContent;
  }
  return null;
}

/**
 * Connects `user` with strophe.js to `url` (http… for BOSH, ws… for WebSocket), allowing
 * only SCRAM mechanisms, and resolves once bound and connected. Returns
 * { conn, jid, log, mechanism, transport, statuses, sent, received }: log holds every
 * incoming message and presence stanza (DOM elements), `sent`/`received` the raw XML
 * elements strophe passed on the wire (BOSH <body/> wrappers or WebSocket frames).
 */
export async function stropheConnect(user, url, { resource = "strophe", wait } = {}) {
  const conn = new Strophe.Connection(url, {
    mechanisms: [Strophe.SASLSHA256, Strophe.SASLSHA1],
  });
  const s = { conn, jid: null, log: new StanzaLog(), mechanism: null, statuses: [], sent: [], received: [] };
  conn.xmlOutput = (el) => {
    s.sent.push(el);
    for (const auth of elementsNamed(el, "auth")) s.mechanism = auth.getAttribute("mechanism");
  };
  conn.xmlInput = (el) => s.received.push(el);
  conn.addHandler((st) => { s.log.push(st); return true; }, null, "message");
  conn.addHandler((st) => { s.log.push(st); return true; }, null, "presence");
  const connected = new Promise((resolve, reject) => {
    conn.connect(`${user}@${config.domain}/${resource}`, config.password, (status, condition) => {
      s.statuses.push(STATUS_NAMES[status] + (condition ? `(${condition})` : ""));
      if (status === Strophe.Status.CONNECTED) resolve();
      else if ([Strophe.Status.CONNFAIL, Strophe.Status.AUTHFAIL, Strophe.Status.ERROR,
                Strophe.Status.CONNTIMEOUT, Strophe.Status.DISCONNECTED].includes(status)) {
        reject(new Error(`strophe ${url}: ${STATUS_NAMES[status]} ${condition || ""} (statuses: ${s.statuses.join(", ")})`));
      }
    }, wait);
  });
  try {
    await withTimeout(connected, `strophe login of ${user} at ${url}`);
  } catch (e) {
    stropheVanish(s);
    throw e;
  }
  s.jid = conn.jid;
  s.transport = conn._proto instanceof Strophe.Bosh ? "bosh" : conn._proto instanceof Strophe.Websocket ? "websocket" : "?";
  return s;
}

/**
 * Vanishes like a closed browser tab: aborts the requests in flight (their TCP connections
 * close) and sends nothing more, no terminate, no <close/>.
 */
export function stropheVanish(s) {
  const conn = s.conn;
  conn._proto._abortAllRequests?.();
  if (conn._proto.socket) conn._proto.socket.terminate?.();
  clearTimeout(conn._idleTimeout);
  conn.reset();
}

/** Disconnects gracefully (strophe sends unavailable presence first) and waits for DISCONNECTED. */
export async function stropheDisconnect(s, ms = WAIT_MS) {
  const conn = s.conn;
  const done = new Promise((resolve) => {
    const prev = conn.connect_callback;
    conn.connect_callback = (status, condition) => {
      s.statuses.push(STATUS_NAMES[status] + (condition ? `(${condition})` : ""));
      if (status === Strophe.Status.DISCONNECTED) resolve();
      prev?.(status, condition);
    };
  });
  conn.disconnect("test over");
  await withTimeout(done, "strophe disconnect", ms);
}

export { Strophe, $msg, $pres, elementsNamed, localName };
