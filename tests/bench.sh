#!/usr/bin/env bash
# The load benchmark (tests/benches/load.rs): vertobot's release build between a real Synapse
# and the in-repo fake verto peer. Not part of tests/run.sh or CI: it takes a few minutes and
# loads the machine.
#
#   tests/bench.sh                          N=100 concurrent setups, M=1000 held calls
#   BENCH_CALLS=20 BENCH_HELD=200 tests/bench.sh
#
# Environment: BENCH_CALLS (N), BENCH_HELD (M), BENCH_IDLE_SECS (how long the held calls are
# watched, default 10), BENCH_ENCRYPTION=0 (matrix.encryption.enabled: false; on by default, as
# in the default configuration), VERTOBOT_VENV (the venv with Synapse, as for tests/run.sh).
# Synapse runs on a free port of 127.0.0.1 from a throwaway directory under .test-run/ and is
# stopped by its pid at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VERTOBOT_VENV:-$ROOT/.venv}
log() { printf '[bench.sh] %s\n' "$*" >&2; }

if ! "$VENV/bin/python" -c "import synapse" 2>/dev/null; then
  log "no Synapse in $VENV: run tests/run.sh once (it installs it), or set VERTOBOT_VENV"
  exit 1
fi
export VERTOBOT_VENV="$VENV"

log "building the release binary and the benchmark"
cargo bench --bench load --no-run --quiet

mkdir -p "$ROOT/.test-run"
{ ls -1dt "$ROOT"/.test-run/bench-synapse.* 2>/dev/null || true; } | tail -n +3 | xargs -r rm -rf
RUN=$(mktemp -d "$ROOT/.test-run/bench-synapse.XXXXXX")
PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SECRET=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')
tests/support/synapse.sh init "$RUN" "$PORT" "$SECRET"
# Hundreds of users are registered: cheap password hashes (the throwaway server only).
echo "bcrypt_rounds: 4" >> "$RUN/test.yaml"
log "starting Synapse on 127.0.0.1:$PORT (logs in $RUN)"
tests/support/synapse.sh run "$RUN" &
SYNAPSE_PID=$!
stop_synapse() {
  if kill -0 "$SYNAPSE_PID" 2>/dev/null; then
    kill "$SYNAPSE_PID" 2>/dev/null || true
    wait "$SYNAPSE_PID" 2>/dev/null || true
  fi
}
trap stop_synapse EXIT
tests/support/synapse.sh wait "$PORT" "$SYNAPSE_PID"
log "Synapse is up"

export VERTOBOT_TEST_HOMESERVER="http://127.0.0.1:$PORT"
export VERTOBOT_TEST_SHARED_SECRET="$SECRET"
cargo bench --bench load --quiet
