#!/usr/bin/env bash
# Builds FreeSWITCH 1.10.12 with mod_verto and its pinned dependencies (libks, sofia-sip,
# spandsp). One script for both users of the build, so the test command proves the recipe:
#  - docker/freeswitch/Dockerfile runs `build.sh deps`, then `build.sh all` with SOURCES=upstream
#    (git clones of the pinned tags and commit) and the system prefixes /usr and /usr/local/freeswitch;
#  - tests/support/freeswitch.sh runs it with SOURCES=<directory holding the pinned files of
#    ../shared/freeswitch/src> and both prefixes inside a cache directory outside the checkout.
#
# Usage: build.sh deps          install the Debian build dependencies (apt; sudo when not root)
#        build.sh all           fetch or unpack the sources into $WORK, build and install
# Environment:
#   SOURCES    "upstream", or a directory with libks-v2.0.6.bundle, sofia-sip-v1.13.17.tar.xz,
#              spandsp-933d40db.tar.xz, freeswitch-v1.10.12.tar.xz
#   WORK       scratch directory for the source trees (default: a new temporary directory)
#   LIB_PREFIX where libks, sofia-sip and spandsp are installed (default /usr)
#   FS_PREFIX  where FreeSWITCH is installed (default /usr/local/freeswitch)
#   MODULES    the modules.conf to build with (default: the one beside this script)
#   JOBS       parallel make jobs (default: nproc)
# Facts behind the odd steps are in ../shared/freeswitch/src/README.md (libks needs git history;
# spandsp would install into lib64).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LIBKS_TAG=v2.0.6
SOFIA_SIP_TAG=v1.13.17
SPANDSP_COMMIT=933d40db635d6b2717dc4ee9cb3f72be06b0e8ee
FREESWITCH_TAG=v1.10.12
LIB_PREFIX=${LIB_PREFIX:-/usr}
FS_PREFIX=${FS_PREFIX:-/usr/local/freeswitch}
MODULES=${MODULES:-$HERE/modules.conf}
JOBS=${JOBS:-$(nproc)}
exec 3>&2
log() { printf '[freeswitch-build] %s\n' "$*" >&3; }

BUILD_DEPS="ca-certificates git build-essential cmake automake autoconf libtool libtool-bin
  pkg-config libssl-dev zlib1g-dev libdb-dev unixodbc-dev libncurses-dev libexpat1-dev
  libgdbm-dev bison uuid-dev libpcre3-dev libedit-dev libsqlite3-dev libcurl4-openssl-dev nasm
  libogg-dev libspeex-dev libspeexdsp-dev libldns-dev libopus-dev libsndfile1-dev libtiff-dev
  libjpeg-dev yasm python3 xz-utils"

deps() {
  local sudo="" missing=()
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  for p in $BUILD_DEPS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing build dependencies: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" || {
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  }
}

fetch_upstream() {
  # libks: a full clone, because its CMake reads the git history on Debian.
  git clone -q --branch "$LIBKS_TAG" https://github.com/signalwire/libks.git libks
  git clone -q --depth 1 --branch "$SOFIA_SIP_TAG" https://github.com/freeswitch/sofia-sip.git sofia-sip
  git clone -q https://github.com/freeswitch/spandsp.git spandsp
  git -C spandsp checkout -q "$SPANDSP_COMMIT"
  git clone -q --depth 1 --branch "$FREESWITCH_TAG" https://github.com/signalwire/freeswitch.git freeswitch
}

unpack() {
  local src=$1
  git clone -q "$src/libks-$LIBKS_TAG.bundle" libks
  git -C libks checkout -q "$LIBKS_TAG"
  tar xJf "$src/sofia-sip-$SOFIA_SIP_TAG.tar.xz" && mv "sofia-sip-$SOFIA_SIP_TAG" sofia-sip
  tar xJf "$src/spandsp-${SPANDSP_COMMIT:0:8}.tar.xz" && mv "spandsp-${SPANDSP_COMMIT:0:8}" spandsp
  tar xJf "$src/freeswitch-$FREESWITCH_TAG.tar.xz" && mv "freeswitch-$FREESWITCH_TAG" freeswitch
}

build_libs() {
  log "libks $LIBKS_TAG"
  (cd libks && cmake . -DCMAKE_INSTALL_PREFIX="$LIB_PREFIX" -DCMAKE_INSTALL_LIBDIR=lib \
      -DCMAKE_BUILD_TYPE=Release && make -s -j"$JOBS" install)
  log "sofia-sip $SOFIA_SIP_TAG"
  (cd sofia-sip && ./bootstrap.sh \
    && ./configure -q --prefix="$LIB_PREFIX" --with-pic --with-glib=no --without-doxygen --disable-stun \
    && make -s -j"$JOBS" && make -s install)
  log "spandsp ${SPANDSP_COMMIT:0:8}"
  # spandsp's configure switches libdir to $prefix/lib64 when that directory exists (it does for
  # /usr on bookworm), where neither pkg-config nor the loader look; this cache variable says no.
  local lib64_var
  lib64_var=$(printf 'ac_cv_real_file_%s/lib64' "$LIB_PREFIX" | sed 's/[^A-Za-z0-9_]/_/g')
  (cd spandsp && ./bootstrap.sh \
    && ./configure -q --prefix="$LIB_PREFIX" --with-pic "$lib64_var=no" \
    && make -s -j"$JOBS" && make -s install)
}

build_freeswitch() {
  log "FreeSWITCH $FREESWITCH_TAG (bootstrap, configure, make: the long part)"
  cp "$MODULES" freeswitch/modules.conf
  export PKG_CONFIG_PATH="$LIB_PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  local ldflags=""
  # Outside the system prefix the loader must find the libraries built above by itself.
  [ "$LIB_PREFIX" = /usr ] || ldflags="-Wl,-rpath,$LIB_PREFIX/lib -L$LIB_PREFIX/lib"
  (cd freeswitch && ./bootstrap.sh -j \
    && LDFLAGS="$ldflags" ./configure -q --prefix="$FS_PREFIX" --disable-libvpx --disable-libyuv \
         --disable-signalwire \
    && make -s -j"$JOBS" && make -s install)
}

all() {
  : "${SOURCES:?set SOURCES to 'upstream' or a directory with the pinned source files}"
  WORK=${WORK:-$(mktemp -d)}
  mkdir -p "$WORK"
  cd "$WORK"
  # Every tool's output goes to one log; its tail is shown when a step fails.
  exec >"$WORK/build.log" 2>&1
  trap 'log "failed; the end of $WORK/build.log:"; tail -n 40 "$WORK/build.log" >&3' ERR
  rm -rf libks sofia-sip spandsp freeswitch
  if [ "$SOURCES" = upstream ]; then fetch_upstream; else unpack "$SOURCES"; fi
  build_libs
  build_freeswitch
  "$FS_PREFIX/bin/freeswitch" -version
  log "installed: $FS_PREFIX/bin/freeswitch"
}

case "${1:-}" in
  deps) deps ;;
  all) all ;;
  *) echo "usage: $0 deps|all" >&2; exit 2 ;;
esac
