#!/usr/bin/env bash
# Measures the ICE trickle of a matrix-js-sdk 43 caller in headless Chromium: which
# m.call.candidates events it sends, how many ms after the m.call.invite, which candidate
# types, and whether the end-of-candidates marker comes (see tests/media/js/trickle.mjs).
#
#   VERTOBOT_VENV=/path/to/venv-with-synapse tests/media/measure_trickle.sh [CALLS] [CONFIG...]
#   BROWSER=firefox VERTOBOT_VENV=... tests/media/measure_trickle.sh [CALLS] [CONFIG...]
#
# CONFIG: none stun stun-coturn turn stun-slow stun-blackhole stun-closed turn-blackhole
# (default: all). Needs Debian's chromium and coturn (apt-get install -y chromium coturn) and
# `npm ci` in tests/media/js; with BROWSER=firefox, also firefox-esr and
# `npm install --no-save puppeteer-core@25.16.0` there. Re-print the tables of a saved run:
# `node tests/media/js/trickle.mjs --summarize FILE`. Starts a throwaway Synapse and coturn
# (turnserver) on free 127.0.0.1 ports and stops them by pid. JSON lines and Markdown tables
# go to stdout. Takes about 30 min for all configs at 10 calls (the silent servers hold each
# call until Chromium gives up gathering, ~40 s).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VERTOBOT_VENV:?set VERTOBOT_VENV to a virtualenv with matrix-synapse}
export VERTOBOT_VENV="$VENV"
CALLS=${1:-10}
shift || true
CONFIGS=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(none stun stun-coturn turn stun-slow stun-blackhole stun-closed turn-blackhole)

RUN=$(mktemp -d /tmp/trickle.XXXXXX)
free_port() {
  "$VENV/bin/python" -c 'import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p)); print(p); break
    except OSError: pass'
}
PORT=$(free_port)
TURN_PORT=$(free_port)
SECRET=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')

SYNAPSE_PID="" TURN_PID=""
stop() {
  for p in $TURN_PID $SYNAPSE_PID; do
    if kill -0 "$p" 2>/dev/null; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
  done
}
trap stop EXIT

"$ROOT/tests/support/synapse.sh" init "$RUN/synapse" "$PORT" "$SECRET"
"$ROOT/tests/support/synapse.sh" run "$RUN/synapse" &
SYNAPSE_PID=$!

# coturn in the foreground (-n: no config file), 127.0.0.1 only, relays on 127.0.0.1.
turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$TURN_PORT" \
  --min-port=49160 --max-port=49460 --no-tls --no-dtls --no-cli --lt-cred-mech --fingerprint \
  --realm=trickle --user=trickle:trickle-pw --db="$RUN/turndb" --pidfile="$RUN/turn.pid" \
  --log-file=stdout --simple-log >"$RUN/turnserver.log" 2>&1 &
TURN_PID=$!

"$ROOT/tests/support/synapse.sh" wait "$PORT" "$SYNAPSE_PID"
echo "Synapse on 127.0.0.1:$PORT, coturn on 127.0.0.1:$TURN_PORT (logs in $RUN)" >&2
cfgs=$(printf '"%s",' "${CONFIGS[@]}")
node "$ROOT/tests/media/js/trickle.mjs" \
  "{\"hs\": \"http://127.0.0.1:$PORT\", \"secret\": \"$SECRET\", \"turnPort\": $TURN_PORT, \"calls\": $CALLS, \"browser\": \"${BROWSER:-chromium}\", \"configs\": [${cfgs%,}]}"
