#!/usr/bin/env bash
# A real FreeSWITCH for the tests, like synapse.sh for Synapse.
#   freeswitch.sh ensure         print the path of a FreeSWITCH binary: $VERTOBOT_FREESWITCH if set,
#                                else a cached build, else build one now (about 5 minutes on 2 cores)
#                                with docker/freeswitch/build.sh from the pinned sources in
#                                $VERTOBOT_FREESWITCH_SRC (default ../shared/freeswitch/src; the
#                                shared folder is $VERTOBOT_SHARED, ../shared or /work/shared)
#   freeswitch.sh init RUN       a run directory with a copy of the configuration (default
#                                ../shared/freeswitch/conf, or $VERTOBOT_FREESWITCH_CONF), its ports
#                                rewritten to free ones on 127.0.0.1, and a self-signed wss.pem;
#                                prints the ports as shell assignments (also in RUN/ports.env)
#   freeswitch.sh run BIN RUN    run it in the foreground (stop it by its process id)
#   freeswitch.sh wait RUN PID   wait until verto and the event socket accept connections
# The cache lives outside the checkout: ${VERTOBOT_CACHE:-~/.cache/vertobot}.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RECIPE=1 # bump when docker/freeswitch/build.sh changes what it builds
# The workplace's shared files (pinned sources, the captures' configuration): beside the
# checkout, or where VERTOBOT_SHARED says, or the workplace's usual place.
SHARED=${VERTOBOT_SHARED:-}
for d in "$ROOT/../shared" /work/shared; do
  if [ -z "$SHARED" ] && [ -d "$d/freeswitch" ]; then SHARED=$(cd "$d" && pwd); fi
done
log() { printf '[freeswitch.sh] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ensure() {
  if [ -n "${VERTOBOT_FREESWITCH:-}" ]; then
    [ -x "$VERTOBOT_FREESWITCH" ] || { log "VERTOBOT_FREESWITCH=$VERTOBOT_FREESWITCH is not an executable"; exit 1; }
    echo "$VERTOBOT_FREESWITCH"; return
  fi
  local key cache bin src
  key=$(cat "$ROOT/docker/freeswitch/modules.conf" | sha256sum | cut -c1-12)
  cache=${VERTOBOT_CACHE:-$HOME/.cache/vertobot}/freeswitch-1.10.12-r$RECIPE-$key
  bin=$cache/fs/bin/freeswitch
  if [ -x "$bin" ] && [ -f "$cache/complete" ]; then echo "$bin"; return; fi
  src=${VERTOBOT_FREESWITCH_SRC:-$SHARED/freeswitch/src}
  if [ ! -f "$src/freeswitch-v1.10.12.tar.xz" ]; then
    log "no FreeSWITCH: set VERTOBOT_FREESWITCH to a freeswitch binary, or VERTOBOT_FREESWITCH_SRC"
    log "to a directory with the pinned sources (see docker/freeswitch/build.sh); $src has none"
    exit 1
  fi
  log "building FreeSWITCH into $cache (once; about 5 minutes on 2 cores)"
  "$ROOT/docker/freeswitch/build.sh" deps >&2
  rm -rf "$cache"
  mkdir -p "$cache"
  SOURCES=$src WORK=$cache/work LIB_PREFIX=$cache/lib FS_PREFIX=$cache/fs \
    "$ROOT/docker/freeswitch/build.sh" all >&2
  rm -rf "$cache/work"
  touch "$cache/complete"
  echo "$bin"
}

init() {
  local run=$1 conf=${VERTOBOT_FREESWITCH_CONF:-$SHARED/freeswitch/conf}
  [ -d "$conf" ] || { log "no FreeSWITCH configuration at '$conf': set VERTOBOT_SHARED or VERTOBOT_FREESWITCH_CONF"; exit 1; }
  mkdir -p "$run"/{log,db,run,certs}
  cp -r "$conf" "$run/conf"
  local ws wss esl sip rtp_lo
  ws=$(free_port); wss=$(free_port); esl=$(free_port); sip=$(free_port)
  # RTP ports: a block per run so that parallel runs do not collide.
  rtp_lo=$(( 20000 + (RANDOM % 400) * 100 ))
  python3 "$HERE/freeswitch_ports.py" "$run/conf" "$ws" "$wss" "$esl" "$sip" "$rtp_lo" "$((rtp_lo + 99))" "${VERTOBOT_FREESWITCH_DETACH_SECS:-}"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$run/certs/key.pem" -out "$run/certs/cert.pem" 2>/dev/null
  cat "$run/certs/cert.pem" "$run/certs/key.pem" > "$run/certs/wss.pem"
  printf 'FS_WS_PORT=%s\nFS_WSS_PORT=%s\nFS_ESL_PORT=%s\nFS_SIP_PORT=%s\n' "$ws" "$wss" "$esl" "$sip" \
    | tee "$run/ports.env"
}

run() {
  local bin=$1 r=$2
  exec "$bin" -nonat -nf -nc -conf "$r/conf" -log "$r/log" -db "$r/db" -run "$r/run" -certs "$r/certs" \
    -mod "$(dirname "$(dirname "$bin")")/lib/freeswitch/mod" >"$r/log/stdout.log" 2>&1
}

wait_up() {
  local r=$1 pid=$2
  # shellcheck disable=SC1091
  . "$r/ports.env"
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || { log "FreeSWITCH exited; see $r/log"; tail -n 30 "$r/log/stdout.log" >&2; exit 1; }
    if python3 - "$FS_WS_PORT" "$FS_ESL_PORT" <<'PY' 2>/dev/null; then return 0; fi
import socket, sys
for p in sys.argv[1:]:
    socket.create_connection(("127.0.0.1", int(p)), timeout=0.2).close()
PY
    sleep 0.1
  done
  log "FreeSWITCH did not open its ports within 60 s; see $r/log"
  exit 1
}

case "${1:-}" in
  ensure) ensure ;;
  init) init "$2" ;;
  run) run "$2" "$3" ;;
  wait) wait_up "$2" "$3" ;;
  *) echo "usage: $0 ensure | init RUN | run BIN RUN | wait RUN PID" >&2; exit 2 ;;
esac
