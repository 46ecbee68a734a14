// Runs in headless Chromium: places a voice call with matrix-js-sdk's MatrixCall, the code
// Element uses for 1:1 calls, and reports what the SDK and the peer connection saw.
import { createClient, createNewMatrixCall } from "matrix-js-sdk";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

window.runCall = async ({ hs, token, userId, deviceId, roomId, holdMs, dtmf, observeMs, holdButtonMs }) => {
  const client = createClient({ baseUrl: hs, accessToken: token, userId, deviceId });
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
  const call = createNewMatrixCall(client, roomId);
  if (!call) throw new Error("matrix-js-sdk says this browser cannot do VoIP");
  const states = [];
  const connected = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`call not connected after 20 s; states: ${states.join(",")}`)), 20000);
    call.on("state", (s) => {
      states.push(s);
      if (s === "connected") {
        clearTimeout(t);
        resolve();
      }
      if (s === "ended") {
        clearTimeout(t);
        reject(new Error(`call ended: ${call.hangupReason}; states: ${states.join(",")}`));
      }
    });
  });
  await call.placeVoiceCall();
  await connected;
  const opponentSupportsDTMF = call.opponentSupportsDTMF();
  const pc = call.peerConn;
  let tonesPlayed = "";
  const sender = pc.getSenders().find((s) => s.track && s.track.kind === "audio");
  if (sender && sender.dtmf) {
    sender.dtmf.addEventListener("tonechange", (e) => {
      tonesPlayed += e.tone;
    });
  }
  let dtmfError = null;
  // ICE "connected" comes before DTLS; the DTMF sender is usable once the transport is up,
  // as when a person opens the dial pad.
  for (let i = 0; i < 50 && sender && sender.dtmf && !sender.dtmf.canInsertDTMF; i++) await sleep(100);
  if (dtmf) {
    try {
      // One digit per key press, as Element's dial pad does: insertDTMF replaces the tone
      // buffer, so wait for each digit to be played before the next.
      for (const d of dtmf) {
        call.sendDtmfDigit(d);
        for (let i = 0; i < 30 && sender.dtmf.toneBuffer !== ""; i++) await sleep(50);
        await sleep(100);
      }
    } catch (e) {
      dtmfError = String(e);
    }
  }
  await sleep(holdMs);
  // With holdButtonMs, press the hold button (as Element does: setRemoteOnHold), wait, and
  // resume; the series below then shows whether audio comes back.
  const hold = [];
  if (holdButtonMs) {
    const onHoldEvents = [];
    call.on("remote_hold_unhold", (h) => onHoldEvents.push(h));
    call.setRemoteOnHold(true);
    await sleep(holdButtonMs);
    hold.push({ held: call.isRemoteOnHold(), state: call.state });
    call.setRemoteOnHold(false);
    await sleep(300);
    hold.push({ held: call.isRemoteOnHold(), state: call.state, events: onHoldEvents });
  }
  // With observeMs, sample the audio counters every 500 ms (to see media stop and come back,
  // e.g. across a verto reconnect and renegotiation).
  const series = [];
  const t0 = Date.now();
  while (observeMs && Date.now() - t0 < observeMs && call.state !== "ended") {
    const r = await pc.getStats();
    let rx = 0, tx = 0, dtls = null;
    r.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") rx += s.packetsReceived || 0;
      if (s.type === "outbound-rtp" && s.kind === "audio") tx += s.packetsSent || 0;
      if (s.type === "transport") dtls = s.dtlsState;
    });
    series.push({ t: Date.now() - t0, rx, tx, dtls });
    await sleep(500);
  }
  const report = await pc.getStats();
  let packetsReceived = 0, packetsSent = 0, dtlsState = null, pairState = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") packetsReceived += s.packetsReceived || 0;
    if (s.type === "outbound-rtp" && s.kind === "audio") packetsSent += s.packetsSent || 0;
    if (s.type === "transport") {
      dtlsState = s.dtlsState;
      const pair = report.get(s.selectedCandidatePairId);
      pairState = pair ? pair.state : null;
    }
  });
  const result = {
    states,
    opponentSupportsDTMF,
    canInsertDTMF: !!(sender && sender.dtmf && sender.dtmf.canInsertDTMF),
    tonesPlayed,
    dtmfError,
    iceConnectionState: pc.iceConnectionState,
    dtlsState,
    pairState,
    packetsReceived,
    packetsSent,
    callId: call.callId,
    series,
    hold,
    finalState: call.state,
  };
  call.hangup("user_hangup", false);
  await sleep(500);
  client.stopClient();
  return result;
};
