// Runs in headless Chromium (bundled by trickle.mjs): places `calls` matrix-js-sdk voice calls
// with the given ICE servers and nobody answering, and records, per call, what the browser
// gathered and when (wall clock, same host as the homeserver) and when the SDK sent each event.
// The m.call.* events themselves are read back from the homeserver by trickle.mjs.
import { createClient, createNewMatrixCall } from "matrix-js-sdk";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Every peer connection the SDK makes reports its candidates and gathering states here.
let pcLog = null;
const NativePC = window.RTCPeerConnection;
window.RTCPeerConnection = function (...a) {
  const pc = new NativePC(...a);
  const log = pcLog;
  if (log) {
    log.config = a[0] ? JSON.parse(JSON.stringify(a[0])) : null;
    pc.addEventListener("icecandidate", (e) =>
      log.gathered.push({ t: Date.now(), c: e.candidate ? e.candidate.candidate : null }),
    );
    pc.addEventListener("icegatheringstatechange", () => log.gathering.push({ t: Date.now(), s: pc.iceGatheringState }));
    pc.addEventListener("icecandidateerror", (e) =>
      log.errors.push({ t: Date.now(), url: e.url, code: e.errorCode, text: e.errorText }),
    );
  }
  return pc;
};
window.RTCPeerConnection.prototype = NativePC.prototype;
Object.setPrototypeOf(window.RTCPeerConnection, NativePC);

window.measureTrickle = async ({ hs, token, userId, deviceId, roomId, calls, turnServers, maxHoldMs, settleMs }) => {
  const client = createClient({ baseUrl: hs, accessToken: token, userId, deviceId });
  await client.startClient({ initialSyncLimit: 1 });
  for (let i = 0; i < 200 && !["PREPARED", "SYNCING"].includes(client.getSyncState()); i++) await sleep(100);
  // What checkTurnServers() would set from the homeserver's /voip/turnServer answer.
  client.turnServers = turnServers;
  client.turnServersExpiry = Date.now() + 3600e3;
  const sends = [];
  const send = client.sendEvent.bind(client);
  client.sendEvent = async (...a) => {
    const type = a.find((x) => typeof x === "string" && x.startsWith("m.call."));
    const t0 = Date.now();
    const r = await send(...a);
    sends.push({ type, t0, t1: Date.now(), eventId: r && r.event_id });
    return r;
  };
  const out = [];
  for (let i = 0; i < calls; i++) {
    const log = { gathered: [], gathering: [], errors: [], config: null };
    pcLog = log;
    sends.length = 0;
    const call = createNewMatrixCall(client, roomId);
    call.on("error", () => {});
    const start = Date.now();
    let inviteSent = null;
    call.on("state", (s) => {
      if (s === "invite_sent") inviteSent = Date.now();
    });
    await call.placeVoiceCall();
    // Hold the call until gathering is complete and the SDK's 2 s batch after it has gone
    // (settleMs), or maxHoldMs after the start.
    for (;;) {
      const done = log.gathering.find((g) => g.s === "complete");
      if (done && Date.now() - done.t > settleMs) break;
      if (Date.now() - start > maxHoldMs) break;
      await sleep(100);
    }
    const hungUp = Date.now();
    call.hangup("user_hangup", false);
    await sleep(500);
    out.push({ callId: call.callId, start, inviteSent, hungUp, ...log, sends: [...sends] });
    await sleep(500);
  }
  pcLog = null;
  client.stopClient();
  return out;
};
