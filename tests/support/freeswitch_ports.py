"""Rewrites the ports of a copy of the FreeSWITCH test configuration (see freeswitch.sh init),
and lets the switch's ICE accept candidates on this machine's own addresses.

The captured configuration accepts only loopback candidates (its capture client was set up
for that). A real aiortc caller offers the host's interface addresses and never 127.0.0.1, and
the tests do not edit a client's offer; so the copy also accepts the host's own addresses, as a
production switch accepts its LAN. Nothing beyond this machine is allowed.

Usage: freeswitch_ports.py CONF WS WSS ESL SIP RTP_LO RTP_HI [DETACH_SECS]
Each replacement must match exactly once, so a changed configuration fails loudly here
instead of starting a FreeSWITCH on the fixed ports of another run.
"""
import pathlib
import sys

conf = pathlib.Path(sys.argv[1])
ws, wss, esl, sip, rtp_lo, rtp_hi = sys.argv[2:8]
detach = sys.argv[8] if len(sys.argv) > 8 else None
edits = {
    "autoload_configs/verto.conf.xml": [
        ("$${harness_ip}:8081", f"$${{harness_ip}}:{ws}"),
        ("$${harness_ip}:8082", f"$${{harness_ip}}:{wss}"),
    ],
    "autoload_configs/event_socket.conf.xml": [('value="8021"', f'value="{esl}"')],
    "autoload_configs/sofia.conf.xml": [('"sip-port" value="5080"', f'"sip-port" value="{sip}"')],
    "autoload_configs/switch.conf.xml": [
        ('value="16384"', f'value="{rtp_lo}"'),
        ('value="16999"', f'value="{rtp_hi}"'),
    ],
}
if detach:
    edits["autoload_configs/verto.conf.xml"].append(
        ('"detach-timeout-sec" value="120"', f'"detach-timeout-sec" value="{detach}"'))
def host_addresses():
    """Every address of this machine's interfaces (from `ip -o addr`)."""
    import subprocess
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
    addrs = []
    for line in out.splitlines():
        f = line.split()
        if len(f) > 3 and f[2] in ("inet", "inet6"):
            ip = f[3].split("/")[0]
            addrs.append(ip + ("/32" if f[2] == "inet" else "/128"))
    return addrs


nodes = "".join(f'<node type="allow" cidr="{a}"/>' for a in host_addresses())
edits["autoload_configs/acl.conf.xml"] = [(
    "  </network-lists>",
    f'    <list name="harness_host" default="deny">{nodes}</list>\n  </network-lists>',
)]
edits["autoload_configs/verto.conf.xml"].append((
    '<param name="apply-candidate-acl" value="loopback.auto"/>',
    '<param name="apply-candidate-acl" value="loopback.auto"/>\n'
    '      <param name="apply-candidate-acl" value="harness_host"/>',
))
for name, pairs in edits.items():
    path = conf / name
    text = path.read_text()
    for old, new in pairs:
        if text.count(old) != 1:
            sys.exit(f"freeswitch_ports.py: {name}: expected one '{old}', found {text.count(old)}")
        text = text.replace(old, new)
    path.write_text(text)
