// One headless Chromium page serving a bundled matrix-js-sdk script: what caller.mjs and
// callee.mjs share. Debian's /usr/bin/chromium, or $CHROMIUM.
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
// matrix-js-sdk's Rust crypto (for encrypted rooms) fetches its WebAssembly module relative to
// the bundle: /pkg/matrix_sdk_crypto_wasm_bg.wasm.
const wasm = path.join(here, "node_modules/@matrix-org/matrix-sdk-crypto-wasm/pkg/matrix_sdk_crypto_wasm_bg.wasm");

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

// Bundles `entry` (a file beside this one), serves it on 127.0.0.1, opens it in Chromium and
// waits until `readyFn` (a window function name) exists. Returns the page, its console lines
// and a close function.
export async function openPage(entry, title, readyFn) {
  const bundle = await esbuild.build({
    entryPoints: [path.join(here, entry)],
    bundle: true,
    write: false,
    format: "esm",
    platform: "browser",
    target: "chrome120",
    define: { global: "globalThis", "process.env.NODE_ENV": '"production"' },
    logLevel: "error",
  });
  const js = bundle.outputFiles[0].text;
  const html = `<!doctype html><meta charset="utf-8"><title>${title}</title><script type="module" src="/page.js"></script>`;
  const server = http.createServer((req, res) => {
    if (req.url === "/page.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(js);
    } else if (req.url.endsWith(".wasm")) {
      res.writeHead(200, { "content-type": "application/wasm" });
      res.end(fs.readFileSync(wasm));
    } else {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(html);
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args });
  const close = async () => {
    await browser.close();
    server.close();
  };
  try {
    const page = await browser.newPage();
    const logs = [];
    page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForFunction((f) => typeof window[f] === "function", readyFn);
    return { page, logs, close };
  } catch (e) {
    await close();
    throw e;
  }
}
