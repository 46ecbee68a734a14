#!/usr/bin/env bash
# Runs every test of vertobot: unit tests, and integration tests against a real Synapse
# homeserver and the in-repo fake FreeSWITCH (tests/support/fake_verto.rs).
#
# On first use it installs Synapse from PyPI into ./.venv. Each run generates a throwaway
# Synapse config under ./.test-run/, starts Synapse on 127.0.0.1 on a free port, runs
# `cargo test`, and stops Synapse again by its process id.
#
# Environment: SYNAPSE_VERSION (pinned default below), VERTOBOT_VENV (venv path),
# VERTOBOT_SKIP_LINT=1 skips fmt/clippy (for quick local runs). Extra arguments are passed
# to `cargo test` (e.g. `scripts/test.sh --test calls busy`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SYNAPSE_VERSION=${SYNAPSE_VERSION:-1.163.2}
VENV=${VERTOBOT_VENV:-$ROOT/.venv}

log() { printf '[test.sh] %s\n' "$*" >&2; }

if [ "${VERTOBOT_SKIP_LINT:-}" != 1 ]; then
  log "cargo fmt --check and cargo clippy --all-targets -- -D warnings"
  cargo fmt --all -- --check
  cargo clippy --all-targets --quiet -- -D warnings
fi

if ! "$VENV/bin/python" -c "import synapse, sys; sys.exit(0 if synapse.__version__ == '$SYNAPSE_VERSION' else 1)" 2>/dev/null; then
  log "installing matrix-synapse==$SYNAPSE_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION"
fi

mkdir -p "$ROOT/.test-run"
# Keep the last few runs' Synapse logs for debugging, drop older ones.
ls -1dt "$ROOT"/.test-run/synapse.* 2>/dev/null | tail -n +6 | xargs -r rm -rf
RUN=$(mktemp -d "$ROOT/.test-run/synapse.XXXXXX")
PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SECRET=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')

"$VENV/bin/python" -m synapse.app.homeserver --generate-config --server-name localhost \
  --config-path "$RUN/homeserver.yaml" --data-directory "$RUN" --report-stats=no >/dev/null

cat > "$RUN/log.yaml" <<YAML
version: 1
formatters: {precise: {format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'}}
handlers:
  file: {class: logging.FileHandler, formatter: precise, filename: "$RUN/homeserver.log", encoding: utf8}
loggers: {synapse.storage.SQL: {level: INFO}}
root: {level: INFO, handlers: [file]}
disable_existing_loggers: false
YAML

lim='{per_second: 10000, burst_count: 10000}'
cat > "$RUN/test.yaml" <<YAML
listeners:
  - port: $PORT
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources: [{names: [client], compress: false}]
database: {name: sqlite3, args: {database: "$RUN/homeserver.db"}}
registration_shared_secret: "$SECRET"
log_config: "$RUN/log.yaml"
enable_registration: false
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
rc_message: $lim
rc_registration: $lim
rc_joins: {local: $lim, remote: $lim}
rc_login: {address: $lim, account: $lim, failed_attempts: $lim}
rc_invites: {per_room: $lim, per_user: $lim, per_issuer: $lim}
rc_room_creation: $lim
rc_admin_redaction: $lim
YAML

log "starting Synapse on 127.0.0.1:$PORT (logs in $RUN)"
"$VENV/bin/python" -m synapse.app.homeserver -c "$RUN/homeserver.yaml" -c "$RUN/test.yaml" \
  >"$RUN/stdout.log" 2>&1 &
SYNAPSE_PID=$!
stop_synapse() {
  if kill -0 "$SYNAPSE_PID" 2>/dev/null; then
    kill "$SYNAPSE_PID" 2>/dev/null || true
    wait "$SYNAPSE_PID" 2>/dev/null || true
  fi
}
trap stop_synapse EXIT

"$VENV/bin/python" - "$PORT" "$SYNAPSE_PID" <<'PY'
import sys, time, urllib.request, os
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 90
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("Synapse exited during startup")
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_matrix/client/versions", timeout=2)
        sys.exit(0)
    except Exception:
        time.sleep(0.2)
sys.exit("Synapse did not answer within 90 s")
PY
log "Synapse is up"

export VERTOBOT_TEST_HOMESERVER="http://127.0.0.1:$PORT"
export VERTOBOT_TEST_SHARED_SECRET="$SECRET"
if [ $# -eq 0 ]; then set -- --all-targets; fi
cargo test "$@"
