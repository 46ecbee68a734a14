#!/usr/bin/env bash
# Checks docker/ without a Docker engine (none runs on the build machines):
#  - docker/compose.yaml parses (with `docker compose config` when the plugin exists), binds
#    every published port to 127.0.0.1, and takes every secret from the environment;
#  - docker/Dockerfile builds with the README's cargo command;
#  - docker/freeswitch/Dockerfile and the test command build FreeSWITCH with the same build.sh;
#  - docker/vertobot.yaml passes `vertobot --check`;
#  - the FreeSWITCH configuration is well-formed XML with no built-in passwords;
#  - docker/vertobot.service passes `systemd-analyze verify` (when available).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VERTOBOT_VENV:-.venv}/bin/python
[ -x "$PY" ] || PY=python3
log() { printf '[check-packaging] %s\n' "$*" >&2; }

if docker compose version >/dev/null 2>&1; then
  VERTOBOT_MATRIX_PASSWORD=x VERTOBOT_VERTO_PASSWORD=x FREESWITCH_VERTO_PASSWORD=x FREESWITCH_ESL_PASSWORD=x \
    docker compose -f docker/compose.yaml config -q
  log "docker compose config: ok"
else
  log "no docker compose plugin: checking compose.yaml with a YAML parser"
fi
"$PY" - <<'PY'
import re, sys, yaml
c = yaml.safe_load(open("docker/compose.yaml"))
svc = c["services"]
for need in ["synapse", "freeswitch", "vertobot", "element"]:
    assert need in svc, f"compose.yaml: service {need} missing"
for name, s in svc.items():
    for p in s.get("ports", []):
        assert str(p).startswith("127.0.0.1:"), f"compose.yaml: {name} publishes {p} beyond localhost"
    for k, v in (s.get("environment") or {}).items():
        if re.search("PASSWORD|TOKEN|SECRET", k):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(v)), f"compose.yaml: {name}.{k} must come from .env (${{VAR:?...}})"
print("[check-packaging] compose.yaml: ok", file=sys.stderr)
import xml.etree.ElementTree as ET, glob
for f in glob.glob("docker/freeswitch/conf/**/*.xml", recursive=True):
    ET.parse(f)
    text = open(f).read()
    assert "ClueCon" not in text and 'value="1234"' not in text, f"{f}: a built-in password"
print("[check-packaging] FreeSWITCH XML: ok", file=sys.stderr)
PY

cmd='cargo build --release --locked'
grep -q "RUN $cmd" docker/Dockerfile || { log "docker/Dockerfile does not build with '$cmd'"; exit 1; }
grep -q "$cmd" README.md || { log "README.md does not show '$cmd'"; exit 1; }
log "Dockerfile and README use '$cmd': ok"

# The FreeSWITCH image and the test command build with one script (tests/support/freeswitch.sh
# runs it on every cold cache), so the Dockerfile must use it and not a copy of its steps.
bash -n docker/freeswitch/build.sh
grep -q '/usr/src/build.sh all' docker/freeswitch/Dockerfile \
  || { log "docker/freeswitch/Dockerfile does not build with build.sh"; exit 1; }
grep -q 'docker/freeswitch/build.sh' tests/support/freeswitch.sh \
  || { log "tests/support/freeswitch.sh does not build with docker/freeswitch/build.sh"; exit 1; }
log "docker/freeswitch/Dockerfile and the test command share build.sh: ok"

cargo build --quiet
VERTOBOT_MATRIX_PASSWORD=x VERTOBOT_VERTO_PASSWORD=x target/debug/vertobot --config docker/vertobot.yaml --check >/dev/null
log "docker/vertobot.yaml: ok"

if command -v systemd-analyze >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  # The unit names the installed binary; verify it against the one just built.
  sed "s|/usr/local/bin/vertobot|$PWD/target/debug/vertobot|g" docker/vertobot.service > "$tmp/vertobot.service"
  systemd-analyze verify "$tmp/vertobot.service"
  rm -rf "$tmp"
  log "systemd-analyze verify: ok"
else
  log "systemd-analyze not available: unit not verified"
fi
