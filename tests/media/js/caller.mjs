// Drives headless Chromium (Debian's /usr/bin/chromium) through one matrix-js-sdk call.
//   node caller.mjs '{"hs": ..., "token": ..., "userId": ..., "deviceId": ..., "roomId": ..., "holdMs": 3000, "dtmf": "12#"}'
// With "encrypted": {"bot": ..., "password": ...} instead of a roomId, the caller does what
// Element does for a new chat: Rust crypto, its own cross-signing, an encrypted DM with the bot.
// Prints one JSON line with what the SDK and the peer connection saw.
import { openPage } from "./browser.mjs";

const opts = JSON.parse(process.argv[2]);
const { page, logs, close } = await openPage("page.js", "vertobot caller", "runCall");
let out;
try {
  // With "measure": true, measureSetup (repeated calls, setup times) instead of one call;
  // with "say", sayAndWait (a message and the bot's notice).
  out = await page.evaluate(
    (o) => (o.measure ? window.measureSetup(o) : o.say ? window.sayAndWait(o) : window.runCall(o)),
    opts,
  );
  if (process.env.CALLER_LOGS) out.logs = logs.filter((l) => /negotiat|rror|fail|remote desc/i.test(l)).slice(-30);
} catch (e) {
  out = { error: String(e), logs: logs.slice(-40) };
} finally {
  await close();
}
process.stdout.write(JSON.stringify(out) + "\n");
