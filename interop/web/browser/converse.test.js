// Converse.js in Debian's headless Chromium (driven by playwright-core): alice logs in over
// WebSocket from a page served on another origin than the XMPP HTTP listener; bob, a TCP
// client, sends her a message that must show in the page; she answers by typing in
// Converse's chat textarea, and bob must receive it. Then the same page over BOSH, where
// the browser's CORS checks apply to every request. A screenshot of the WebSocket chat is
// saved (WEB_TEST_SCREENSHOT, by default target/web-tests/converse.png).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createServer } from "node:http";
import { mkdtemp, mkdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import {
  config, ensureMutualSubscription, stopQuietly, tcpClient, token, waitForChat, xml,
} from "../lib/common.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(here, "../node_modules/converse.js/dist");
const screenshot = process.env.WEB_TEST_SCREENSHOT || path.resolve(here, "../../../target/web-tests/converse.png");
const PAGE_WAIT_MS = 20000;
const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
  ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm",
  ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon", ".woff": "font/woff",
  ".woff2": "font/woff2", ".ttf": "font/ttf", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
  ".map": "application/json",
};

let bob, pageServer, pageBase, context, userDataDir;
const blocked = [];
const alice = `alice@${config.domain}`;

/** The page's own origin: 127.0.0.1 on a port of its own, so XMPP endpoints are cross-origin. */
async function startPageServer() {
  const template = await readFile(path.join(here, "index.html"), "utf8");
  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, "http://127.0.0.1");
      if (url.pathname === "/" || url.pathname === "/index.html") {
        const transport = url.searchParams.get("transport") === "bosh" ? "bosh" : "websocket";
        const settings = {
          jid: `${alice}/${url.searchParams.get("resource") || "converse"}`,
          password: config.password,
          ...(transport === "bosh" ? { bosh_service_url: config.boshUrl } : { websocket_url: config.wsUrl }),
        };
        res.writeHead(200, { "content-type": TYPES[".html"], "cache-control": "no-store" });
        res.end(template.replace("/*SETTINGS*/{}", JSON.stringify(settings)));
        return;
      }
      if (url.pathname.startsWith("/dist/")) {
        const file = path.resolve(dist, "." + decodeURIComponent(url.pathname.slice(5)));
        if (file.startsWith(dist + path.sep)) {
          const body = await readFile(file);
          res.writeHead(200, { "content-type": TYPES[path.extname(file)] || "application/octet-stream" });
          res.end(body);
          return;
        }
      }
      res.writeHead(404).end();
    } catch {
      if (!res.headersSent) res.writeHead(404);
      res.end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

before(async () => {
  bob = await tcpClient("bob");
  const helper = await tcpClient("alice");
  try {
    await ensureMutualSubscription(helper, bob);
  } finally {
    await stopQuietly(helper.xmpp);
  }
  pageServer = await startPageServer();
  pageBase = `http://127.0.0.1:${pageServer.address().port}`;
  assert.notEqual(new URL(pageBase).origin, new URL(config.httpBase).origin, "the page is cross-origin");
  userDataDir = await mkdtemp(path.join(tmpdir(), "xmppd-web-chromium-"));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 800 },
    timeout: 30000,
  });
  // Nothing but loopback: anything else the page asks for is refused and reported.
  await context.route("**/*", (route) => {
    const { hostname } = new URL(route.request().url());
    if (hostname === "127.0.0.1" || hostname === "localhost") return route.continue();
    blocked.push(route.request().url());
    return route.abort();
  });
});

after(async () => {
  await context?.close().catch(() => {});
  if (userDataDir) await rm(userDataDir, { recursive: true, force: true });
  pageServer?.close();
  await stopQuietly(bob?.xmpp);
  if (blocked.length) console.log(`requests off loopback refused: ${[...new Set(blocked)].join(", ")}`);
});

/** Opens the page for `transport` and waits until Converse says it is connected. */
async function openConverse(transport) {
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => {
    if (!["error", "warning"].includes(m.type())) return;
    const { url } = m.location();
    if (m.text().startsWith("Failed to load resource") && blocked.includes(url)) return;
    problems.push(`console.${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => {
    if (!blocked.includes(r.url())) problems.push(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`);
  });
  const resource = token("converse");
  const t0 = Date.now();
  await page.goto(`${pageBase}/?transport=${transport}&resource=${resource}`, { timeout: PAGE_WAIT_MS });
  // Connected, or given up: Converse reports "disconnected" once its attempts fail, and a
  // request the browser refused for CORS will not succeed on a retry either.
  const deadline = Date.now() + PAGE_WAIT_MS;
  for (;;) {
    const state = await page.evaluate(() => window.interop ?? {});
    if (state.connected || state.events?.length || problems.some((p) => p.includes("CORS policy"))) break;
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const state = await page.evaluate(() => window.interop ?? { events: ["the page script did not run"] });
  assert.ok(state.connected, `Converse did not connect over ${transport} (${state.events}):\n${problems.join("\n")}`);
  const { jid } = state;
  console.log(`Converse connected over ${transport} as ${jid} in ${Date.now() - t0} ms`);
  return { page, jid, problems };
}

/**
 * Opens the chat with bob from alice's roster (mutual subscription: he is a contact), then
 * bob sends; the text must appear in that chat.
 */
async function receiveInPage(page, problems, text) {
  try {
    await page.locator("converse-roster a.open-chat", { hasText: "bob" }).first().click({ timeout: 15000 });
    await page.locator("converse-chat textarea.chat-textarea").first().waitFor({ state: "visible", timeout: 10000 });
  } catch (e) {
    throw new Error(`no chat with bob could be opened from alice's roster: ${e.message}\n${problems.join("\n")}`);
  }
  await bob.xmpp.send(xml("message", { to: alice, type: "chat" }, xml("body", {}, text)));
  try {
    await page.locator("converse-chat-message").filter({ hasText: text }).first()
      .waitFor({ state: "visible", timeout: 15000 });
  } catch (e) {
    throw new Error(`"${text}" from bob did not appear in Converse: ${e.message}\n${problems.join("\n")}`);
  }
}

test("Converse.js over WebSocket: bob's message appears, alice's typed reply reaches bob", async () => {
  const { page, jid, problems } = await openConverse("websocket");
  assert.ok(jid.startsWith(`${alice}/`), `Converse bound ${jid}`);
  const text = token("hello-converse");
  await receiveInPage(page, problems, text);

  const reply = token("reply-from-converse");
  const got = waitForChat(bob, alice, reply, 15000);
  const textarea = page.locator("converse-chat textarea.chat-textarea").first();
  await textarea.click({ timeout: 10000 });
  await textarea.fill(reply);
  await textarea.press("Enter");
  const m = await got;
  assert.equal(m.attrs.from, jid, "the reply comes from Converse's session");
  await page.locator("converse-chat-message").filter({ hasText: reply }).first()
    .waitFor({ state: "visible", timeout: 10000 });

  await mkdir(path.dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: false });
  await page.close();
});

test("Converse.js over BOSH from another origin (CORS): login and a message from bob", async () => {
  const { page, jid, problems } = await openConverse("bosh");
  assert.ok(jid.startsWith(`${alice}/`), `Converse bound ${jid}`);
  await receiveInPage(page, problems, token("hello-bosh"));
  await page.close();
});
