#!/usr/bin/env bash
# Builds the test binary the chaos harness runs for `--inject-fault`:
# $CARGO_TARGET_DIR/release/hourglass-fault-injection, the hourglass binary with the
# `fault-injection` feature, which honours the `fault.*` keys that release builds refuse.
#
# The workspace is built with the same flags as tests/run.sh plus the feature (so RocksDB and
# every other dependency are reused), the binary is copied aside, and the release build is put
# back in place: the production `hourglass` never carries the feature.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"

echo "building the fault-injection test binary..." >&2
cargo build --release --locked --workspace --all-targets --features hourglass/fault-injection
# The fault keys' own tests only exist in this build.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --workspace --features hourglass/fault-injection \
    -E 'test(/fault/)'
else
  cargo test --release --locked --workspace --features hourglass/fault-injection fault
fi
cp -f "$target/release/hourglass" "$target/release/hourglass-fault-injection.tmp"
mv -f "$target/release/hourglass-fault-injection.tmp" "$target/release/hourglass-fault-injection"

echo "restoring the release build..." >&2
cargo build --release --locked --workspace --all-targets
if "$target/release/hourglass" --version | grep -q fault-injection; then
  echo "build-fault-injection: $target/release/hourglass still carries fault injection" >&2
  exit 1
fi
"$target/release/hourglass-fault-injection" --version
