// Drives headless Chromium (Debian's /usr/bin/chromium) as the *callee* of one matrix-js-sdk
// call: a Matrix user who is rung (by vertobot, for a call from FreeSWITCH) and answers,
// rejects or lets it ring, as Element does through the same MatrixCall code.
//   node callee.mjs '{"hs": ..., "token": ..., "userId": ..., "deviceId": ..., "action": "answer", "holdMs": 3000, "dtmf": "12#", "joinInvites": true}'
// Prints {"ready": true} once the client syncs (ring it only then), then one JSON line with what
// the SDK and the peer connection saw.
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const opts = JSON.parse(process.argv[2]);

const bundle = await esbuild.build({
  entryPoints: [path.join(here, "callee_page.js")],
  bundle: true,
  write: false,
  format: "esm",
  platform: "browser",
  target: "chrome120",
  define: { global: "globalThis", "process.env.NODE_ENV": '"production"' },
  logLevel: "error",
});
const js = bundle.outputFiles[0].text;
const html = '<!doctype html><meta charset="utf-8"><title>vertobot callee</title><script type="module" src="/page.js"></script>';
const server = http.createServer((req, res) => {
  if (req.url === "/page.js") {
    res.writeHead(200, { "content-type": "text/javascript" });
    res.end(js);
  } else {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(html);
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const port = server.address().port;

// The switches that make Chromium offer real 127.0.0.1 host candidates instead of mDNS names
// (media permission granted by the fake UI, loopback allowed, mDNS obfuscation off), and keep
// it quiet on a machine without network.
const args = [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--disable-default-apps", "--disable-extensions", "--password-store=basic",
  "--disable-dev-shm-usage", "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows", "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
  "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
];
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args });
let out;
try {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForFunction(() => typeof window.runCallee === "function");
  try {
    const run = page.evaluate((o) => window.runCallee(o), opts);
    run.catch(() => {});
    await page.waitForFunction(() => window.calleeReady === true, null, { timeout: 60000 });
    process.stdout.write(JSON.stringify({ ready: true }) + "\n");
    out = await run;
    if (process.env.CALLEE_LOGS) out.logs = logs.filter((l) => /negotiat|rror|fail|remote desc/i.test(l)).slice(-30);
  } catch (e) {
    out = { error: String(e), logs: logs.slice(-40) };
  }
} finally {
  await browser.close();
  server.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
