#!/usr/bin/env bash
# Runs every test of vertobot: unit tests, and integration tests against a real Synapse
# homeserver and a real FreeSWITCH 1.10.12 (plus, for what the real switch will not do on
# demand, the in-repo fake verto peer, tests/support/fake_verto.rs).
#
# On first use it installs Synapse from PyPI into ./.venv, and builds FreeSWITCH from the pinned
# sources with the container's own recipe (docker/freeswitch/build.sh) into a cache outside the
# checkout (~/.cache/vertobot; about 5 minutes on 2 cores, once). Each run generates throwaway
# configurations under ./.test-run/, starts Synapse and FreeSWITCH on free ports of 127.0.0.1,
# runs `cargo test`, and stops both again by their process ids.
#
# Environment: SYNAPSE_VERSION (pinned default below), VERTOBOT_VENV (venv path),
# VERTOBOT_FREESWITCH (a ready freeswitch binary instead of the cached build),
# VERTOBOT_FREESWITCH_SRC (the pinned sources, default ../shared/freeswitch/src),
# VERTOBOT_SKIP_LINT=1 skips fmt/clippy (for quick local runs). Extra arguments are passed
# to `cargo test` (e.g. `tests/run.sh --test calls busy`).
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

# (A venv inside a git checkout reports "1.163.2 (b=main,...)": compare the release part.)
if ! "$VENV/bin/python" -c "import synapse, sys; sys.exit(0 if synapse.__version__.split()[0] == '$SYNAPSE_VERSION' else 1)" 2>/dev/null; then
  log "installing matrix-synapse==$SYNAPSE_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION"
fi

# aiortc: the real WebRTC peer of the media tests (tests/media/peer.py).
AIORTC_VERSION=${AIORTC_VERSION:-1.16.0}
if ! "$VENV/bin/python" -c "import aiortc, sys; sys.exit(0 if aiortc.__version__ == '$AIORTC_VERSION' else 1)" 2>/dev/null; then
  log "installing aiortc==$AIORTC_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "aiortc==$AIORTC_VERSION"
fi

# The browser caller of the media tests: Debian's Chromium, and matrix-js-sdk, playwright-core
# and esbuild from npm (tests/media/js/package-lock.json). Nothing else is downloaded.
if ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian's chromium"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null
  }
fi
if [ ! -d tests/media/js/node_modules ] || [ tests/media/js/package-lock.json -nt tests/media/js/node_modules ]; then
  log "installing the browser caller's npm packages"
  (cd tests/media/js && npm ci --no-audit --no-fund --loglevel=error)
fi

# A real FreeSWITCH: reuse the cached build, or build it now. No FreeSWITCH, no test run.
FS_BIN=$(tests/support/freeswitch.sh ensure) || { log "no FreeSWITCH could be built or found (see above)"; exit 1; }

mkdir -p "$ROOT/.test-run"
# Keep the last few runs' Synapse logs for debugging, drop older ones.
# (ls fails on a fresh clone, where there is none yet.)
for kind in synapse own-synapse freeswitch own-freeswitch; do
  { ls -1dt "$ROOT"/.test-run/$kind.* 2>/dev/null || true; } | tail -n +6 | xargs -r rm -rf
done
RUN=$(mktemp -d "$ROOT/.test-run/synapse.XXXXXX")
PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SECRET=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')

export VERTOBOT_VENV="$VENV"
tests/support/synapse.sh init "$RUN" "$PORT" "$SECRET"
log "starting Synapse on 127.0.0.1:$PORT (logs in $RUN)"
tests/support/synapse.sh run "$RUN" &
SYNAPSE_PID=$!
stop_synapse() {
  if kill -0 "$SYNAPSE_PID" 2>/dev/null; then
    kill "$SYNAPSE_PID" 2>/dev/null || true
    wait "$SYNAPSE_PID" 2>/dev/null || true
  fi
}
FS_PID=""
stop_servers() {
  stop_synapse
  if [ -n "$FS_PID" ] && kill -0 "$FS_PID" 2>/dev/null; then
    kill "$FS_PID" 2>/dev/null || true
    wait "$FS_PID" 2>/dev/null || true
  fi
}
trap stop_servers EXIT
tests/support/synapse.sh wait "$PORT" "$SYNAPSE_PID"
log "Synapse is up"

FS_RUN=$(mktemp -d "$ROOT/.test-run/freeswitch.XXXXXX")
tests/support/freeswitch.sh init "$FS_RUN" >/dev/null
log "starting FreeSWITCH $FS_BIN (run directory $FS_RUN)"
tests/support/freeswitch.sh run "$FS_BIN" "$FS_RUN" &
FS_PID=$!
tests/support/freeswitch.sh wait "$FS_RUN" "$FS_PID"
log "FreeSWITCH is up"
export VERTOBOT_TEST_FS_RUN="$FS_RUN" VERTOBOT_TEST_FS_BIN="$FS_BIN"

if [ $# -eq 0 ]; then
  log "packaging checks (docker/)"
  docker/check.sh
  log "fuzz smoke: every fuzz target over its corpus and random mutations, a few seconds each"
  tests/fuzz_smoke.sh
fi

export VERTOBOT_TEST_HOMESERVER="http://127.0.0.1:$PORT"
export VERTOBOT_TEST_SHARED_SECRET="$SECRET"
# Tests that need a homeserver of their own (to stop and restart it) use these.
export VERTOBOT_TEST_SYNAPSE_SCRIPT="$ROOT/tests/support/synapse.sh"
export VERTOBOT_TEST_RUN_DIR="$ROOT/.test-run"
if [ $# -eq 0 ]; then set -- --all-targets --no-fail-fast; fi
status=0
cargo test "$@" || status=$?
if [ "$status" -ne 0 ]; then
  log "tests failed; the servers' logs: Synapse $RUN, FreeSWITCH $FS_RUN/log/freeswitch.log"
fi
exit "$status"
