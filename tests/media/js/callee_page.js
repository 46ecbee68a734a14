// Runs in headless Chromium: waits to be rung with matrix-js-sdk's MatrixCall (the code Element
// uses for 1:1 calls), then answers, rejects or ignores the call, and reports what the SDK and
// the peer connection saw.
import { createClient } from "matrix-js-sdk";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function startClient({ hs, token, userId, deviceId, joinInvites }) {
  const client = createClient({ baseUrl: hs, accessToken: token, userId, deviceId });
  if (joinInvites) {
    // A person accepting the bot's direct chat invite (Element's "Accept").
    client.on("RoomMember.membership", (ev, member) => {
      if (member.userId === userId && member.membership === "invite") {
        client.joinRoom(member.roomId).catch(() => {});
      }
    });
  }
  await client.startClient({ initialSyncLimit: 1 });
  await new Promise((resolve) => {
    const check = (state) => {
      if (state === "PREPARED" || state === "SYNCING") {
        client.off("sync", check);
        resolve();
      }
    };
    client.on("sync", check);
  });
  return client;
}

function audioStats(report) {
  let packetsReceived = 0, packetsSent = 0, dtlsState = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") packetsReceived += s.packetsReceived || 0;
    if (s.type === "outbound-rtp" && s.kind === "audio") packetsSent += s.packetsSent || 0;
    if (s.type === "transport") dtlsState = s.dtlsState;
  });
  return { packetsReceived, packetsSent, dtlsState };
}

// Presses keys one at a time, as Element's dial pad does.
async function pressKeys(call, dtmf) {
  const sender = call.peerConn.getSenders().find((s) => s.track && s.track.kind === "audio");
  for (let i = 0; i < 50 && sender && sender.dtmf && !sender.dtmf.canInsertDTMF; i++) await sleep(100);
  const can = !!(sender && sender.dtmf && sender.dtmf.canInsertDTMF);
  let played = "";
  if (!can) return { canInsertDTMF: false, tonesPlayed: played };
  sender.dtmf.addEventListener("tonechange", (e) => { played += e.tone; });
  for (const d of dtmf) {
    call.sendDtmfDigit(d);
    for (let i = 0; i < 30 && sender.dtmf.toneBuffer !== ""; i++) await sleep(50);
    await sleep(100);
  }
  return { canInsertDTMF: true, tonesPlayed: played };
}

function waitState(call, states, want, ms) {
  return new Promise((resolve) => {
    if (call.state === want || call.state === "ended") return resolve(call.state);
    const t = setTimeout(() => resolve(call.state), ms);
    call.on("state", (s) => {
      if (s === want || s === "ended") {
        clearTimeout(t);
        resolve(s);
      }
    });
  });
}

window.runCallee = async (opts) => {
  const { action = "answer", holdMs = 3000, dtmf, ringWaitMs = 60000, endWaitMs = 0, hangup = true } = opts;
  const client = await startClient(opts);
  const states = [];
  // A client that starts while an earlier call's invite is still within its lifetime rings
  // for it too, until it reads that call's end: the test names such calls in skipCallIds.
  const skip = new Set(opts.skipCallIds || []);
  const incoming = new Promise((resolve) =>
    client.on("Call.incoming", (c) => {
      if (!skip.has(c.callId)) resolve(c);
    }),
  );
  window.calleeReady = true;
  const call = await Promise.race([incoming, sleep(ringWaitMs).then(() => null)]);
  if (!call) {
    client.stopClient();
    return { rung: false };
  }
  call.on("state", (s) => states.push(s));
  const result = { rung: true, callId: call.callId, roomId: call.roomId, states, opponentSupportsDTMF: null };
  // matrix-js-sdk reads the invite's capabilities only once it answers; give the UI a beat,
  // as a person would, so the ringing state is seen.
  await sleep(300);
  if (action === "reject") {
    call.reject();
  } else if (action === "busy") {
    call.hangup("user_busy", false);
  } else if (action === "answer") {
    await call.answer();
    const s = await waitState(call, states, "connected", 20000);
    result.connected = s === "connected";
    if (result.connected) {
      result.opponentSupportsDTMF = call.opponentSupportsDTMF();
      if (dtmf) Object.assign(result, await pressKeys(call, dtmf));
      await sleep(holdMs);
      Object.assign(result, audioStats(await call.peerConn.getStats()));
    }
  }
  // "ignore", or waiting for the far end: let the call end on its own.
  if (action === "ignore" || endWaitMs) {
    await waitState(call, states, "ended", action === "ignore" ? ringWaitMs : endWaitMs);
  }
  result.finalState = call.state;
  result.hangupReason = call.hangupReason || null;
  result.hangupParty = call.hangupParty || null;
  if (call.state !== "ended" && hangup) call.hangup("user_hangup", false);
  await sleep(500);
  client.stopClient();
  return result;
};
