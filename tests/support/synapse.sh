#!/usr/bin/env bash
# Throwaway Synapse homeservers for the tests (127.0.0.1 only).
#
#   tests/support/synapse.sh init DIR PORT SECRET   write a config for 127.0.0.1:PORT into DIR
#   tests/support/synapse.sh run DIR                run it in the foreground (exec: same pid)
#   tests/support/synapse.sh wait PORT PID          wait until it answers (90 s at most)
#
# VERTOBOT_VENV names the virtual environment that holds Synapse (tests/run.sh sets it).
set -euo pipefail
VENV=${VERTOBOT_VENV:?set VERTOBOT_VENV (tests/run.sh does)}
cmd=${1:?usage: synapse.sh init|run|wait ...}
case "$cmd" in
init)
  DIR=$2 PORT=$3 SECRET=$4
  mkdir -p "$DIR"
  "$VENV/bin/python" -m synapse.app.homeserver --generate-config --server-name localhost \
    --config-path "$DIR/homeserver.yaml" --data-directory "$DIR" --report-stats=no >/dev/null
  cat > "$DIR/log.yaml" <<YAML
version: 1
formatters: {precise: {format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'}}
handlers:
  file: {class: logging.FileHandler, formatter: precise, filename: "$DIR/homeserver.log", encoding: utf8}
root: {level: INFO, handlers: [file]}
disable_existing_loggers: false
YAML
  lim='{per_second: 10000, burst_count: 10000}'
  cat > "$DIR/test.yaml" <<YAML
listeners:
  - port: $PORT
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources: [{names: [client], compress: false}]
database: {name: sqlite3, args: {database: "$DIR/homeserver.db"}}
registration_shared_secret: "$SECRET"
log_config: "$DIR/log.yaml"
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
  ;;
run)
  DIR=$2
  exec "$VENV/bin/python" -m synapse.app.homeserver -c "$DIR/homeserver.yaml" -c "$DIR/test.yaml" \
    >>"$DIR/stdout.log" 2>&1
  ;;
wait)
  PORT=$2 PID=$3
  "$VENV/bin/python" - "$PORT" "$PID" <<'PY'
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
  ;;
*) echo "usage: synapse.sh init|run|wait" >&2; exit 2 ;;
esac
