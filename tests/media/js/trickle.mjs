// Measures how a matrix-js-sdk 43 caller in headless Chromium trickles its ICE candidates:
// which m.call.candidates events it sends, when (origin_server_ts minus the invite's), with
// which candidate types, and whether the end-of-candidates marker ({"candidate": ""}) comes.
// Nobody answers the calls: the caller's trickle does not depend on an answer.
//
//   node trickle.mjs '{"hs": "http://127.0.0.1:PORT", "secret": "SHARED_SECRET",
//                      "turnPort": 3478, "calls": 10, "configs": ["none", "stun", ...]}'
//
// (add "browser": "firefox" for Firefox ESR; ../measure_trickle.sh starts Synapse and coturn and runs this.) Configs: none (no ICE
// servers), stun (a STUN server in this process that answers at once with a made-up mapped
// address 203.0.113.7), stun-coturn (coturn as a plain STUN server), turn (coturn, UDP and TCP,
// static user), stun-slow (ours, answering after 3 s), stun-blackhole (a bound UDP port that
// never answers), stun-closed (a closed UDP port: ICMP port unreachable), turn-blackhole
// (a TURN URL on the silent port). Prints one JSON line per config, then tables, to stdout.
import crypto from "node:crypto";
import dgram from "node:dgram";
import { openPage as openChromium } from "./browser.mjs";

const summarizeOnly = process.argv[2] === "--summarize";
const opts = summarizeOnly ? {} : JSON.parse(process.argv[2]);
const { hs, secret, turnPort } = opts;
const calls = opts.calls ?? 10;

async function api(method, path, token, body) {
  const r = await fetch(hs + path, {
    method,
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const j = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}

async function register(username) {
  const { nonce } = await api("GET", "/_synapse/admin/v1/register");
  const password = "pw-" + username;
  const mac = crypto.createHmac("sha1", secret).update(`${nonce}\0${username}\0${password}\0notadmin`).digest("hex");
  const r = await api("POST", "/_synapse/admin/v1/register", null, { nonce, username, password, admin: false, mac });
  return { userId: r.user_id, token: r.access_token, deviceId: r.device_id };
}

// A STUN server on 127.0.0.1: answers Binding requests after `delayMs` (or never, when
// delayMs is null) with XOR-MAPPED-ADDRESS 203.0.113.7:<source port>, so that Chromium gets
// a server-reflexive candidate that differs from its host addresses.
async function stunServer(delayMs) {
  const sock = dgram.createSocket("udp4");
  sock.on("message", (msg, rinfo) => {
    if (delayMs === null || msg.length < 20 || msg.readUInt16BE(0) !== 0x0001) return;
    const res = Buffer.alloc(32);
    res.writeUInt16BE(0x0101, 0);
    res.writeUInt16BE(12, 2);
    msg.copy(res, 4, 4, 20); // magic cookie and transaction id
    res.writeUInt16BE(0x0020, 20); // XOR-MAPPED-ADDRESS
    res.writeUInt16BE(8, 22);
    res.writeUInt16BE(0x0001, 24);
    res.writeUInt16BE(rinfo.port ^ 0x2112, 26);
    res.writeUInt32BE((((203 << 24) | (0 << 16) | (113 << 8) | 7) ^ 0x2112a442) >>> 0, 28);
    setTimeout(() => sock.send(res, rinfo.port, rinfo.address), delayMs);
  });
  await new Promise((r) => sock.bind(0, "127.0.0.1", r));
  return { port: sock.address().port, close: () => sock.close() };
}

async function closedUdpPort() {
  const sock = dgram.createSocket("udp4");
  await new Promise((r) => sock.bind(0, "127.0.0.1", r));
  const port = sock.address().port;
  await new Promise((r) => sock.close(r));
  return port;
}

const turnUser = { username: "trickle", credential: "trickle-pw" };
const configs = {
  none: async () => ({ servers: [] }),
  stun: async () => {
    const s = await stunServer(0);
    return { servers: [{ urls: [`stun:127.0.0.1:${s.port}`] }], close: s.close };
  },
  "stun-coturn": async () => ({ servers: [{ urls: [`stun:127.0.0.1:${turnPort}`] }] }),
  turn: async () => ({
    servers: [
      { urls: [`turn:127.0.0.1:${turnPort}?transport=udp`, `turn:127.0.0.1:${turnPort}?transport=tcp`], ...turnUser },
    ],
  }),
  "stun-slow": async () => {
    const s = await stunServer(3000);
    return { servers: [{ urls: [`stun:127.0.0.1:${s.port}`] }], close: s.close };
  },
  "stun-blackhole": async () => {
    const s = await stunServer(null);
    return { servers: [{ urls: [`stun:127.0.0.1:${s.port}`] }], close: s.close };
  },
  "stun-closed": async () => ({ servers: [{ urls: [`stun:127.0.0.1:${await closedUdpPort()}`] }] }),
  "turn-blackhole": async () => {
    const s = await stunServer(null);
    return { servers: [{ urls: [`turn:127.0.0.1:${s.port}?transport=udp`], ...turnUser }], close: s.close };
  },
};

// "candidate:1 1 udp 2122260223 127.0.0.1 40000 typ host ..." -> "host/udp"
function kind(c) {
  if (c === "" || c == null) return "END";
  const f = c.replace(/^a=/, "").split(" ");
  let typ = f[f.indexOf("typ") + 1];
  // A relay candidate's type preference (priority >> 24) tells how it reaches the TURN
  // server: in Chromium 156, 3 (or 2) UDP, 1 TCP, 0 TLS; in Firefox ESR 153, 5 UDP, 0 TCP.
  const prefs = opts.browser === "firefox" ? { 5: "udp", 0: "tcp" } : { 3: "udp", 2: "udp", 1: "tcp", 0: "tls" };
  if (typ === "relay") typ += `(${prefs[Number(f[3]) >>> 24] ?? "?"})`;
  const ip = f[4].includes(":") ? "6" : f[4].startsWith("127.") ? "lo" : "4";
  return `${typ}/${f[2].toLowerCase()}/${ip}`;
}
const tally = (kinds) => {
  const m = new Map();
  for (const k of kinds) m.set(k, (m.get(k) || 0) + 1);
  return [...m].map(([k, n]) => (n > 1 ? `${k}x${n}` : k)).join(" ");
};
const median = (xs) => {
  const s = xs.filter((x) => x != null).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : Math.round((s[m - 1] + s[m]) / 2);
};

async function roomEvents(roomId, token) {
  const evs = [];
  let from = "";
  for (let i = 0; i < 20; i++) {
    const q = `dir=f&limit=500${from ? `&from=${encodeURIComponent(from)}` : ""}`;
    const r = await api("GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?${q}`, token);
    evs.push(...r.chunk);
    if (!r.end || !r.chunk.length) break;
    from = r.end;
  }
  return evs;
}

if (summarizeOnly) {
  // node trickle.mjs --summarize FILE: the tables again from the JSON lines of an earlier run.
  const results = {};
  for (const l of (await import("node:fs")).readFileSync(process.argv[3], "utf8").split("\n")) {
    if (l.startsWith('{"config"')) {
      const j = JSON.parse(l);
      results[j.config] = j.calls;
    }
  }
  printTables(results);
  process.exit(0);
}

const caller = await register(`caller${Date.now()}`);
const observer = await register(`observer${Date.now()}`);
// "browser": "firefox" for Firefox ESR through puppeteer-core (see firefox.mjs).
const openPage = opts.browser === "firefox" ? (await import("./firefox.mjs")).openPage : openChromium;
const { page, logs, close } = await openPage("trickle_page.js", "trickle", "measureTrickle");
const results = {};
try {
  for (const name of opts.configs) {
    const cfg = await configs[name]();
    const { room_id: roomId } = await api("POST", "/_matrix/client/v3/createRoom", caller.token, {
      preset: "trusted_private_chat",
      is_direct: true,
      invite: [observer.userId],
    });
    await api("POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, observer.token, {});
    const slow = /slow|blackhole|closed/.test(name);
    const browser = await page.evaluate((o) => window.measureTrickle(o), {
      hs,
      ...caller,
      roomId,
      calls,
      turnServers: cfg.servers,
      maxHoldMs: slow ? 60000 : 15000,
      settleMs: 3000,
    });
    if (cfg.close) cfg.close();
    const evs = await roomEvents(roomId, observer.token);
    results[name] = browser.map((b) => {
      const mine = evs.filter((e) => e.content && e.content.call_id === b.callId);
      const invite = mine.find((e) => e.type === "m.call.invite");
      const t0 = invite.origin_server_ts;
      const cands = mine
        .filter((e) => e.type === "m.call.candidates")
        .map((e) => ({
          ms: e.origin_server_ts - t0,
          kinds: e.content.candidates.map((c) => kind(c.candidate)),
        }));
      const inSdp = invite.content.offer.sdp.split(/\r?\n/).filter((l) => l.startsWith("a=candidate:"));
      const gathered = b.gathered.filter((g) => g.c);
      const sentCount = inSdp.length + cands.reduce((n, c) => n + c.kinds.filter((k) => k !== "END").length, 0);
      const complete = b.gathering.find((g) => g.s === "complete");
      return {
        callId: b.callId,
        inviteAfterStartMs: t0 - b.start,
        offerSdp: tally(inSdp.map(kind)),
        candidates: cands,
        marker: cands.some((c) => c.kinds.includes("END")),
        gatheredMs: gathered.map((g) => [g.t - t0, kind(g.c)]),
        gatheringCompleteMs: complete ? complete.t - t0 : null,
        gatheringStates: b.gathering.map((g) => [g.t - t0, g.s]),
        sends: b.sends.map((x) => [x.type, x.t0 - t0, x.t1 - t0]),
        gathered: gathered.length,
        relayRaw: gathered.filter((g) => / typ relay/.test(g.c)).map((g) => g.c),
        sent: sentCount,
        hangupMs: b.hungUp - t0,
        errors: b.errors.map((e) => ({ ms: e.t - t0, url: e.url, code: e.code, text: e.text })),
        config: b.config,
      };
    });
    process.stdout.write(JSON.stringify({ config: name, calls: results[name] }) + "\n");
  }
} catch (e) {
  process.stdout.write(JSON.stringify({ error: String(e), logs: logs.slice(-40) }) + "\n");
  process.exitCode = 1;
} finally {
  await close();
}
printTables(results);

// Tables: per call, each candidates event as "+ms [kinds]"; then medians.
function printTables(results) {
for (const [name, rows] of Object.entries(results)) {
  console.log(`\n## ${name} (ICE servers: ${JSON.stringify((rows[0] && rows[0].config && rows[0].config.iceServers) || [])})`);
  console.log("| call | invite after start | in offer SDP | m.call.candidates events: +ms from invite [types] | marker | gathering complete | gathered / sent |");
  console.log("|---|---|---|---|---|---|---|");
  rows.forEach((r, i) => {
    const ev = r.candidates.map((c) => `+${c.ms} [${tally(c.kinds)}]`).join("; ") || "none";
    console.log(
      `| ${i + 1} | ${r.inviteAfterStartMs} | ${r.offerSdp || "-"} | ${ev} | ${r.marker ? "yes" : "no"} | ${r.gatheringCompleteMs ?? "never"} | ${r.gathered} / ${r.sent} |`,
    );
  });
  const firsts = rows.map((r) => (r.candidates[0] ? r.candidates[0].ms : null));
  const lasts = rows.map((r) => (r.candidates.length ? r.candidates[r.candidates.length - 1].ms : null));
  const markers = rows.map((r) => {
    const c = r.candidates.find((c) => c.kinds.includes("END"));
    return c ? c.ms : null;
  });
  console.log(
    `medians: events/call ${median(rows.map((r) => r.candidates.length))}, first event +${median(firsts)} ms, ` +
      `last event +${median(lasts)} ms, marker ${rows.filter((r) => r.marker).length}/${rows.length} at +${median(markers)} ms, ` +
      `gathering complete +${median(rows.map((r) => r.gatheringCompleteMs))} ms, invite after start ${median(rows.map((r) => r.inviteAfterStartMs))} ms`,
  );
  // A bridge that dials once the candidates have been quiet for Q ms after the invite (or
  // after the last candidates event) and takes no later ones: in how many calls does it miss
  // candidates, and which?
  for (const q of [500, 1000, 2500, 5000]) {
    let missedCalls = 0;
    const missed = [];
    for (const r of rows) {
      let last = 0;
      const late = [];
      for (const c of r.candidates) {
        if (late.length || c.ms - last > q) late.push(...c.kinds);
        last = c.ms;
      }
      if (late.some((k) => k !== "END")) missedCalls++;
      missed.push(...late.filter((k) => k !== "END"));
    }
    console.log(`quiet ${q} ms: misses candidates in ${missedCalls}/${rows.length} calls${missed.length ? ` (${tally(missed)})` : ""}`);
  }
}
}
