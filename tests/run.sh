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

# The Python SDK (clients/python): installed from the source tree into a venv kept next to the
# build (its gRPC modules are generated from proto/ while pip builds it), type-checked, then
# tested against real clusters of the release binary built above.
deploy/install-deps.sh python3-venv
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
venv="$target/python-venv"
"$venv/bin/python" -c '' 2>/dev/null || { rm -rf "$venv"; python3 -m venv "$venv"; }
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "./clients/python[test]"
(
  cd clients/python
  "$venv/bin/python" -m mypy --cache-dir "$venv/mypy-cache"
  HOURGLASS_BIN="$target/release/hourglass" \
    "$venv/bin/python" -m pytest -p no:cacheprovider -q
)
