// Drives headless Chromium (Debian's /usr/bin/chromium) as the *callee* of one matrix-js-sdk
// call: a Matrix user who is rung (by vertobot, for a call from FreeSWITCH) and answers,
// rejects or lets it ring, as Element does through the same MatrixCall code.
//   node callee.mjs '{"hs": ..., "token": ..., "userId": ..., "deviceId": ..., "action": "answer", "holdMs": 3000, "dtmf": "12#", "joinInvites": true}'
// Prints {"ready": true} once the client syncs (ring it only then), then one JSON line with what
// the SDK and the peer connection saw.
import { openPage } from "./browser.mjs";

const opts = JSON.parse(process.argv[2]);
const { page, logs, close } = await openPage("callee_page.js", "vertobot callee", "runCallee");
let out;
try {
  const run = page.evaluate((o) => window.runCallee(o), opts);
  run.catch(() => {});
  await page.waitForFunction(() => window.calleeReady === true, null, { timeout: 60000 });
  process.stdout.write(JSON.stringify({ ready: true }) + "\n");
  out = await run;
  if (process.env.CALLEE_LOGS) out.logs = logs.filter((l) => /negotiat|rror|fail|remote desc/i.test(l)).slice(-30);
} catch (e) {
  out = { error: String(e), logs: logs.slice(-40) };
} finally {
  await close();
}
process.stdout.write(JSON.stringify(out) + "\n");
