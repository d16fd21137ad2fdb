#!/usr/bin/env bash
# Installs the system packages a build needs (libclang for RocksDB's bindings, a C++ compiler),
# or prints the exact command when not running as root.
set -euo pipefail

missing=()
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 \
  || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install Rust from rustup.rs first" >&2; exit 1; }

for extra in "$@"; do
  case "$extra" in
    iptables) command -v iptables >/dev/null 2>&1 || missing+=(iptables) ;;
    faketime) command -v faketime >/dev/null 2>&1 || missing+=(faketime) ;;
    iproute2) command -v ip >/dev/null 2>&1 || missing+=(iproute2) ;;
    curl) command -v curl >/dev/null 2>&1 || missing+=(curl) ;;
  esac
done

[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]}..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "missing system packages; install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
