#!/usr/bin/env bash
# Smoke run of the cargo-fuzz targets (tests/fuzz/) on the stable toolchain, so they cannot rot
# while nobody runs `cargo fuzz` (which needs nightly). It builds the fuzz package without the
# libFuzzer runtime (`--no-default-features`: no nightly, no C++ build), then feeds each
# target's body (tests/fuzz/src/lib.rs, which the libFuzzer binaries call too) its corpus and
# mutations of it for FUZZ_SMOKE_SECS seconds per target (default 5; three targets). A panic
# fails the run and saves the input under tests/fuzz/artifacts/<target>/.
#
# Environment: FUZZ_SMOKE_SECS, FUZZ_SMOKE_SEED (repeat a run; printed by each run),
# CARGO_TARGET_DIR (default: the main package's target/, so the vertobot build is shared).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# The fuzz package is a workspace of its own with an untracked lock file: start it from the
# main package's, so the shared dependencies resolve to the same versions (and builds).
[ -f tests/fuzz/Cargo.lock ] || cp Cargo.lock tests/fuzz/Cargo.lock
log() { printf '[fuzz_smoke.sh] %s\n' "$*" >&2; }
log "fuzz targets: ${FUZZ_SMOKE_SECS:-5} s each"
cargo test --manifest-path tests/fuzz/Cargo.toml --no-default-features --test smoke -- --nocapture
