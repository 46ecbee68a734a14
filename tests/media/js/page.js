// Runs in headless Chromium: places a voice call with matrix-js-sdk's MatrixCall, the code
// Element uses for 1:1 calls, and reports what the SDK and the peer connection saw; in an
// encrypted DM (option `encrypted`), also what its Rust crypto says of the bot.
import { createClient, createNewMatrixCall } from "matrix-js-sdk";
import { OnlySignedDevicesIsolationMode } from "matrix-js-sdk/lib/crypto-api/index.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const until = async (what, ms, f) => {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
};

// What Element does for a new user and a new chat: Rust crypto, a cross-signing identity
// for the user (so its device is signed by its owner), and a DM with encryption in the
// initial state. With onlySigned, the "exclude insecure devices" mode (MSC4153).
async function encryptedDm(client, userId, { bot, password, onlySigned, roomId, crossSign }) {
  const crypto = client.getCrypto();
  if (crossSign !== false) await crypto.bootstrapCrossSigning({
    authUploadDeviceSigningKeys: async (makeRequest) => {
      await makeRequest({ type: "m.login.password", identifier: { type: "m.id.user", user: userId }, password });
    },
  });
  if (onlySigned) crypto.setDeviceIsolationMode(new OnlySignedDevicesIsolationMode());
  if (!roomId) {
    ({ room_id: roomId } = await client.createRoom({
      preset: "trusted_private_chat",
      is_direct: true,
      invite: [bot],
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    }));
    await client.setAccountData("m.direct", { [bot]: [roomId] });
  }
  await until("the bot to join", 20000, () => client.getRoom(roomId)?.getMember(bot)?.membership === "join");
  return roomId;
}

// What the caller's client says of the bot: its devices, whether each is signed by its owner,
// and the shield Element would draw on the bot's events of this call.
async function botReport(client, roomId, bot, since) {
  const crypto = client.getCrypto();
  const devices = (await crypto.getUserDeviceInfo([bot], true)).get(bot) || new Map();
  const botDevices = [];
  for (const id of devices.keys()) {
    const st = await crypto.getDeviceVerificationStatus(bot, id);
    botDevices.push({ deviceId: id, signedByOwner: !!(st && st.signedByOwner) });
  }
  const botEvents = [];
  for (const ev of client.getRoom(roomId).getLiveTimeline().getEvents()) {
    if (ev.getSender() !== bot || ev.getTs() < since) continue;
    const info = ev.isEncrypted() ? await crypto.getEncryptionInfoForEvent(ev) : null;
    botEvents.push({
      type: ev.getType(),
      encrypted: ev.isEncrypted(),
      failure: ev.isDecryptionFailure() ? String(ev.decryptionFailureReason) : null,
      shield: info ? info.shieldColour : null,
      shieldReason: info ? info.shieldReason : null,
    });
  }
  return { botDevices, botEvents };
}

window.runCall = async ({ hs, token, userId, deviceId, roomId, holdMs, dtmf, dtmfCommand, observeMs, holdButtonMs, encrypted }) => {
  const client = createClient({ baseUrl: hs, accessToken: token, userId, deviceId });
  if (encrypted) await client.initRustCrypto({ useIndexedDB: false });
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
  if (encrypted) roomId = await encryptedDm(client, userId, { ...encrypted, roomId });
  const callStart = Date.now();
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
  // With dtmfCommand, also type "!dtmf DIGITS" in the room, as a person would, and wait for
  // the bot's reaction to it.
  let dtmfCommandReaction = null;
  if (dtmfCommand) {
    const { event_id: sent } = await client.sendTextMessage(roomId, `!dtmf ${dtmfCommand}`);
    const reaction = () =>
      client
        .getRoom(roomId)
        .getLiveTimeline()
        .getEvents()
        .find((e) => e.getType() === "m.reaction" && e.getContent()["m.relates_to"]?.event_id === sent);
    const r = await until("the bot's reaction to !dtmf", 15000, reaction);
    dtmfCommandReaction = r.getContent()["m.relates_to"].key;
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
    roomId,
    dtmfCommandReaction,
  };
  call.hangup("user_hangup", false);
  await sleep(500);
  if (encrypted) Object.assign(result, await botReport(client, roomId, encrypted.bot, callStart - 1000));
  client.stopClient();
  return result;
};

// Places `calls` calls one after the other and returns, for each, the milliseconds from the
// invite leaving (state invite_sent) to the answer arriving (state connecting): what
// encryption adds is the difference between an encrypted and a plain room.
window.measureSetup = async ({ hs, token, userId, deviceId, roomId, calls, encrypted }) => {
  const client = createClient({ baseUrl: hs, accessToken: token, userId, deviceId });
  if (encrypted) await client.initRustCrypto({ useIndexedDB: false });
  await client.startClient({ initialSyncLimit: 1 });
  await until("the first sync", 20000, () => ["PREPARED", "SYNCING"].includes(client.getSyncState()));
  if (encrypted) roomId = await encryptedDm(client, userId, { ...encrypted, roomId });
  const times = [];
  for (let i = 0; i < calls; i++) {
    const call = createNewMatrixCall(client, roomId);
    let sent = 0;
    const answered = new Promise((resolve, reject) => {
      call.on("state", (s) => {
        if (s === "invite_sent") sent = performance.now();
        if (s === "connecting" || s === "connected") resolve(performance.now());
        if (s === "ended") reject(new Error(`call ended: ${call.hangupReason}`));
      });
    });
    await call.placeVoiceCall();
    const at = await answered;
    times.push(Math.round(at - sent));
    call.hangup("user_hangup", false);
    await sleep(1500);
  }
  client.stopClient();
  return { times, roomId };
};

// Types `text` into an encrypted DM with the bot and waits for a notice from the bot that
// contains `expect`; returns the notices seen.
window.sayAndWait = async ({ hs, token, userId, deviceId, text, expect, encrypted }) => {
  const client = createClient({ baseUrl: hs, accessToken: token, userId, deviceId });
  await client.initRustCrypto({ useIndexedDB: false });
  await client.startClient({ initialSyncLimit: 1 });
  await until("the first sync", 20000, () => ["PREPARED", "SYNCING"].includes(client.getSyncState()));
  const roomId = await encryptedDm(client, userId, encrypted);
  await client.sendTextMessage(roomId, text);
  const notices = () =>
    client
      .getRoom(roomId)
      .getLiveTimeline()
      .getEvents()
      .filter((e) => e.getSender() === encrypted.bot && e.getContent().msgtype === "m.notice")
      .map((e) => e.getContent().body);
  await until(`a notice with "${expect}"`, 20000, () => notices().some((b) => b.includes(expect)));
  client.stopClient();
  return { notices: notices(), roomId };
};
