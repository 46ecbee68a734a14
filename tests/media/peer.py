"""A scriptable WebRTC peer (aiortc) for vertobot's media tests.

It speaks JSON lines on stdin/stdout, one request per line, one reply per request:

  {"req": 1, "cmd": "answer", "id": "callID", "offer": SDP}
      Answers like FreeSWITCH (tests/fixtures/verto/invite_echo_9196.jsonl): it uses only the
      first usable candidate of the offer (UDP, literal IP, in SDP order), echoes the audio it
      receives, and its answer has no a=mid and no BUNDLE group, uses UDP/TLS/RTP/SAVPF,
      a=setup:active, one host candidate and a=end-of-candidates, and advertises
      telephone-event. Reply: {"answer": SDP}.
  {"req": 2, "cmd": "offer", "id": "x", "trickle": true}
      Acts as a caller: an offer with an audio track (a tone). With "trickle", the candidates are
      taken out of the SDP and returned separately, as a Matrix client trickles them.
      Reply: {"offer": SDP, "candidates": [{"candidate", "sdpMid", "sdpMLineIndex"}]}.
  {"req": 3, "cmd": "apply_answer", "id": "x", "answer": SDP}
  {"req": 6, "cmd": "reoffer", "id": "callID"}
      What FreeSWITCH does on verto.attach after a reconnect: a new session for the call, with
      the same DTLS certificate, offered with a=setup:actpass (and no a=mid or BUNDLE).
      Reply: {"offer": SDP}.
  {"req": 4, "cmd": "stats", "id": "x"}
      Reply: {"ice", "connection", "dtls", "packets_received", "packets_sent", "packets_by_pt"}
      (packets_by_pt counts every RTP packet by payload type, telephone-event included).
  {"req": 5, "cmd": "close", "id": "x"}
Errors come back as {"req": n, "error": "..."}.
"""

import array
import asyncio
import ipaddress
import json
import math
import re
import sys

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdtlstransport import RtpRouter
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.mediastreams import AudioStreamTrack

PCS = {}

# Count RTP packets per payload type as they reach the transport, before aiortc's router drops
# the ones it has no decoder for (telephone-event among them): that is how the tests see
# RFC 4733 DTMF arrive.
PT_COUNTS = {}
_orig_route = RtpRouter.route_rtp


def _counting_route(self, packet):
    counts = PT_COUNTS.setdefault(id(self), {})
    counts[packet.payload_type] = counts.get(packet.payload_type, 0) + 1
    return _orig_route(self, packet)


RtpRouter.route_rtp = _counting_route
RELAY = MediaRelay()


class Tone(AudioStreamTrack):
    """A 440 Hz tone, so that the far end receives real audio."""

    def __init__(self):
        super().__init__()
        self._t = 0

    async def recv(self):
        frame = await super().recv()  # a silent s16 mono frame at the right pace
        n = frame.samples
        tone = array.array(
            "h", (int(8000 * math.sin(2 * math.pi * 440 * (self._t + i) / frame.sample_rate)) for i in range(n))
        )
        self._t += n
        frame.planes[0].update(tone.tobytes())
        return frame


def usable(line):
    f = line.split()
    if len(f) < 8 or f[2].lower() != "udp":
        return False
    try:
        ipaddress.ip_address(f[4])
        return True
    except ValueError:
        return False


def first_candidate_only(sdp):
    """FreeSWITCH uses the first usable candidate in SDP order; keep only that one."""
    out, kept = [], False
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            if kept or not usable(line[2:]):
                continue
            kept = True
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def one_host_candidate(lines):
    """The one host candidate FreeSWITCH sends: the loopback one when there is one."""
    hosts = [l for l in lines if l.startswith("a=candidate:") and " udp " in l and " typ host" in l]
    return next((l for l in hosts if " 127.0.0.1 " in l), hosts[0] if hosts else None)


def sending_peer(key, certificates=None):
    """A peer that sends a tone and swallows what it receives (a caller, or a re-offer)."""
    pc = RTCPeerConnection()
    if certificates is not None:
        pc._RTCPeerConnection__certificates = certificates
    PCS[key] = pc
    sink = MediaBlackhole()
    pc.addTrack(Tone())

    @pc.on("track")
    def on_track(track):
        sink.addTrack(track)
        asyncio.ensure_future(sink.start())

    return pc


def freeswitch_like(answer, offer):
    lines = [l for l in answer.splitlines() if l]
    te = re.search(r"a=rtpmap:(\d+) telephone-event/48000", offer)
    out, cand = [], one_host_candidate(lines)
    for l in lines:
        if l.startswith("a=mid:") or l.startswith("a=group:BUNDLE"):
            continue
        if l.startswith("a=candidate:"):
            continue
        if l.startswith("a=end-of-candidates"):
            continue
        if l.startswith("m=audio"):
            parts = l.split()
            parts[2] = "UDP/TLS/RTP/SAVPF"
            if te and te.group(1) not in parts[3:]:
                parts.append(te.group(1))
            l = " ".join(parts)
        if l.startswith("a=setup:"):
            l = "a=setup:active"
        out.append(l)
        if l.startswith("m=audio") and te:
            out.append(f"a=rtpmap:{te.group(1)} telephone-event/48000")
            out.append(f"a=fmtp:{te.group(1)} 0-15")
    out.append(cand)
    out.append("a=end-of-candidates")
    return "\r\n".join(x for x in out if x) + "\r\n"


async def handle(msg):
    cmd, key = msg["cmd"], msg.get("id", "")
    if cmd == "answer":
        pc = RTCPeerConnection()
        PCS[key] = pc

        @pc.on("track")
        def on_track(track):
            pc.addTrack(RELAY.subscribe(track))

        await pc.setRemoteDescription(RTCSessionDescription(first_candidate_only(msg["offer"]), "offer"))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        return {"answer": freeswitch_like(pc.localDescription.sdp, msg["offer"])}
    if cmd == "offer":
        pc = sending_peer(key)
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        sdp = pc.localDescription.sdp
        cands = []
        if msg.get("trickle"):
            keep = []
            for l in sdp.splitlines():
                if l.startswith("a=candidate:"):
                    cands.append({"candidate": l[2:], "sdpMid": "0", "sdpMLineIndex": 0})
                elif l.startswith("a=end-of-candidates"):
                    continue
                else:
                    keep.append(l)
                    if l.startswith("a=ice-pwd:"):
                        # What a trickling browser announces.
                        keep.append("a=ice-options:trickle")
            sdp = "\r\n".join(keep) + "\r\n"
        return {"offer": sdp, "candidates": cands}
    if cmd == "reoffer":
        old = PCS.pop(key, None)
        # One certificate for the switch's lifetime, as FreeSWITCH keeps it.
        certs = old._RTCPeerConnection__certificates if old is not None else None
        if old is not None:
            await old.close()
        pc = sending_peer(key, certs)
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        lines = [l for l in pc.localDescription.sdp.splitlines() if l]
        out = []
        for l in lines:
            # FreeSWITCH's attach offer has no a=mid, no BUNDLE and no header extensions.
            if l.startswith(("a=mid:", "a=group:BUNDLE", "a=candidate:", "a=end-of-candidates", "a=extmap:")):
                continue
            out.append(l)
        out += [c for c in [one_host_candidate(lines)] if c] + ["a=end-of-candidates"]
        return {"offer": "\r\n".join(out) + "\r\n"}
    if cmd == "apply_answer":
        await PCS[key].setRemoteDescription(RTCSessionDescription(msg["answer"], "answer"))
        return {}
    if cmd == "stats":
        pc = PCS[key]
        received = sent = 0
        for s in (await pc.getStats()).values():
            if s.type == "inbound-rtp":
                received += s.packetsReceived
            if s.type == "outbound-rtp":
                sent += s.packetsSent
        dtls = [t.receiver.transport.state for t in pc.getTransceivers() if t.receiver.transport]
        by_pt = {}
        for t in pc.getTransceivers():
            transport = t.receiver.transport
            router = getattr(transport, "_rtp_router", None) if transport else None
            for pt, n in PT_COUNTS.get(id(router), {}).items():
                by_pt[str(pt)] = by_pt.get(str(pt), 0) + n
        return {
            "ice": pc.iceConnectionState,
            "connection": pc.connectionState,
            "dtls": dtls[0] if dtls else None,
            "packets_received": received,
            "packets_sent": sent,
            "packets_by_pt": by_pt,
        }
    if cmd == "close":
        pc = PCS.pop(key, None)
        if pc:
            await pc.close()
        return {}
    raise ValueError(f"unknown cmd {cmd}")


async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        msg = json.loads(line)

        async def run(msg=msg):
            try:
                reply = await handle(msg)
            except Exception as e:  # reported to the test, which fails with the message
                reply = {"error": f"{type(e).__name__}: {e}"}
            reply["req"] = msg.get("req")
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

        asyncio.ensure_future(run())
    for pc in list(PCS.values()):
        await pc.close()


asyncio.run(main())
