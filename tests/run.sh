#!/usr/bin/env bash
# The test command of the README and of CI: installs missing system packages, builds the
# release binary the cluster tests run as real processes, then runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# faketime: tests/clock.rs runs nodes under libfaketime.
deploy/install-deps.sh faketime

echo "building (the first build compiles RocksDB from source and takes a while)..." >&2
cargo build --release --locked --workspace --all-targets
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest not found; using cargo test" >&2
  cargo test --release --locked --workspace --no-fail-fast "$@"
fi
