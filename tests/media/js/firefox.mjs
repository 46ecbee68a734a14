// openPage (as in browser.mjs) for Debian's Firefox ESR, driven by puppeteer-core over WebDriver
// BiDi: playwright-core cannot drive a stock Firefox. puppeteer-core is not in package.json:
//   npm install --no-save puppeteer-core@25.16.0      (in tests/media/js)
// $FIREFOX names the binary (default /usr/bin/firefox-esr).
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const wasm = path.join(here, "node_modules/@matrix-org/matrix-sdk-crypto-wasm/pkg/matrix_sdk_crypto_wasm_bg.wasm");

// Fake media without a prompt; real host addresses (no mDNS names), loopback included.
const prefs = {
  "media.navigator.streams.fake": true,
  "media.navigator.permission.disabled": true,
  "media.peerconnection.ice.obfuscate_host_addresses": false,
  "media.peerconnection.ice.loopback": true,
  "media.peerconnection.ice.default_address_only": false,
  "media.autoplay.default": 0,
  "network.dns.disableIPv6": false,
};

export async function openPage(entry, title, readyFn) {
  const { default: puppeteer } = await import("puppeteer-core");
  const bundle = await esbuild.build({
    entryPoints: [path.join(here, entry)],
    bundle: true,
    write: false,
    format: "esm",
    platform: "browser",
    target: "firefox115",
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
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
    headless: true,
    extraPrefsFirefox: prefs,
  });
  const close = async () => {
    await browser.close();
    server.close();
  };
  try {
    const page = await browser.newPage();
    const logs = [];
    page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForFunction((f) => typeof window[f] === "function", {}, readyFn);
    return { page, logs, close };
  } catch (e) {
    await close();
    throw e;
  }
}
