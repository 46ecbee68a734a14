"""A scriptable WebRTC caller (aiortc) for vertobot's media tests; the answerer is the real
FreeSWITCH. Offers go out as aiortc makes them.

It speaks JSON lines on stdin/stdout, one request per line, one reply per request:

  {"req": 1, "cmd": "answer", "id": "x", "offer": SDP}
      A callee: the answer as aiortc makes it (candidates inside), sending a tone.
      Reply: {"answer": SDP}.
  {"req": 2, "cmd": "offer", "id": "x", "trickle": true}
      An offer with an audio track (a tone). With "trickle", the candidates are taken out of the
      SDP and returned separately, for the test to send in m.call.candidates events; nothing is
      added (aiortc announces no a=ice-options:trickle).
      Reply: {"offer": SDP, "candidates": [{"candidate", "sdpMid", "sdpMLineIndex"}]}.
  {"req": 3, "cmd": "apply_answer", "id": "x", "answer": SDP}
  {"req": 4, "cmd": "stats", "id": "x"}
      Reply: {"ice", "connection", "dtls", "packets_received", "packets_sent", "packets_by_pt"}
      (packets_by_pt counts every RTP packet by payload type, telephone-event included).
  {"req": 5, "cmd": "close", "id": "x"}
Errors come back as {"req": n, "error": "..."}.
"""

import array
import asyncio
import json
import math
import sys

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdtlstransport import RtpRouter
from aiortc.contrib.media import MediaBlackhole
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


def sending_peer(key):
    """A caller: sends a tone and swallows what it receives."""
    pc = RTCPeerConnection()
    PCS[key] = pc
    sink = MediaBlackhole()
    pc.addTrack(Tone())

    @pc.on("track")
    def on_track(track):
        sink.addTrack(track)
        asyncio.ensure_future(sink.start())

    return pc


async def handle(msg):
    cmd, key = msg["cmd"], msg.get("id", "")
    if cmd == "answer":
        # A callee: answers an offer as aiortc does, and sends a tone.
        pc = sending_peer(key)
        await pc.setRemoteDescription(RTCSessionDescription(msg["offer"], "offer"))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        return {"answer": pc.localDescription.sdp}
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
                    # Nothing is added: aiortc announces no trickle option, and clients built
                    # on it send the offer like this and the candidates in events.
                    keep.append(l)
            sdp = "\r\n".join(keep) + "\r\n"
        return {"offer": sdp, "candidates": cands}
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
