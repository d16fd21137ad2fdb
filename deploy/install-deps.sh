#!/usr/bin/env bash
# Installs the system packages a build needs, or prints the exact command when not running as
# root. It checks for what the build actually loads, not for look-alikes:
#
#   - libclang, the way bindgen (clang-sys, runtime linking) searches for it: a file named
#     libclang.so, libclang-*.so, libclang.so.* or libclang-*.so.* in $LIBCLANG_PATH, the
#     system library directories or /usr/lib/llvm-*/lib. libclang-cpp.so.* (LLVM's C++ API,
#     present on many stock machines) is a different library and does not count.
#   - clang's builtin headers (stddef.h under .../clang/*/include), which libclang needs to
#     parse RocksDB's C header; they come with libclang-common-*-dev, not with libclang1.
#   - a C++ compiler (RocksDB is C++) and cargo.
#
# usage: deploy/install-deps.sh [--check] [iptables|faketime|iproute2|curl|python3-venv ...]
#   --check   report what is missing and exit 1 if anything is, without installing
# HOURGLASS_DEPS_ROOT (default /) is the filesystem root the checks look under; tests point
# it at a fake tree.
set -euo pipefail

ROOT="${HOURGLASS_DEPS_ROOT:-}"
ROOT="${ROOT%/}"
check_only=0
extras=()
for arg in "$@"; do
  case "$arg" in
    --check) check_only=1 ;;
    iptables | faketime | iproute2 | curl | python3-venv) extras+=("$arg") ;;
    -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-deps: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

# Prints the first libclang that clang-sys would load, or nothing.
find_libclang() {
  local dirs=() d f name
  [[ -n "${LIBCLANG_PATH:-}" ]] && dirs+=("$ROOT$LIBCLANG_PATH")
  dirs+=("$ROOT"/usr/lib/llvm-*/lib "$ROOT"/usr/lib/*-linux-gnu "$ROOT"/usr/lib "$ROOT"/usr/lib64
    "$ROOT"/usr/local/lib "$ROOT"/usr/local/lib64)
  for d in "${dirs[@]}"; do
    [[ -d "$d" ]] || continue
    for f in "$d"/libclang*.so*; do
      [[ -e "$f" ]] || continue
      name="${f##*/}"
      case "$name" in
        libclang-cpp* | libclang_rt*) continue ;;
        libclang.so | libclang-*.so | libclang.so.* | libclang-*.so.*) echo "$f"; return 0 ;;
      esac
    done
  done
  return 1
}

find_clang_headers() {
  local f
  for f in "$ROOT"/usr/lib/llvm-*/lib/clang/*/include/stddef.h "$ROOT"/usr/lib/clang/*/include/stddef.h \
      "$ROOT"/usr/local/lib/clang/*/include/stddef.h; do
    [[ -e "$f" ]] && { echo "$f"; return 0; }
  done
  return 1
}

# A command counts when it is an executable under the checked root's usual bin directories.
has_cmd() {
  local d
  if [[ -z "$ROOT" ]]; then command -v "$1" >/dev/null 2>&1; return; fi
  for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
    [[ -x "$ROOT$d/$1" ]] && return 0
  done
  return 1
}

missing=()
reasons=()
if ! find_libclang >/dev/null; then
  missing+=(libclang-dev)
  reasons+=("libclang.so (bindgen loads it to generate RocksDB's bindings; libclang-cpp is not it)")
elif ! find_clang_headers >/dev/null; then
  missing+=(libclang-dev)
  reasons+=("clang's builtin headers (stddef.h; libclang needs them to parse RocksDB's C API)")
fi
if ! has_cmd c++ && ! has_cmd g++ && ! has_cmd clang++; then
  missing+=(g++)
  reasons+=("a C++ compiler (RocksDB is C++)")
fi
if [[ -z "$ROOT" ]] && ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo is missing: install Rust from https://rustup.rs first" >&2
  exit 1
fi

for extra in "${extras[@]+"${extras[@]}"}"; do
  case "$extra" in
    iptables) has_cmd iptables || { missing+=(iptables); reasons+=("iptables (network partitions)"); } ;;
    faketime) has_cmd faketime || { missing+=(faketime); reasons+=("faketime (clock faults)"); } ;;
    iproute2) has_cmd ip || { missing+=(iproute2); reasons+=("ip (network namespaces)"); } ;;
    curl) has_cmd curl || { missing+=(curl); reasons+=("curl"); } ;;
    python3-venv)
      if [[ -z "$ROOT" ]]; then
        python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || { missing+=(python3-venv); reasons+=("python3 venv and ensurepip"); }
      fi ;;
  esac
done

[[ ${#missing[@]} -eq 0 ]] && exit 0
# One package may cover several reasons; install each once.
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++')
for r in "${reasons[@]}"; do echo "install-deps: missing $r" >&2; done
if [[ "$check_only" == 0 && -z "$ROOT" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: installing ${packages[*]}..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  if [[ " ${packages[*]} " == *" libclang-dev "* ]] && ! find_libclang >/dev/null; then
    echo "install-deps: libclang-dev installed but no libclang.so found; set LIBCLANG_PATH" >&2
    exit 1
  fi
  echo "install-deps: installed ${packages[*]}" >&2
else
  echo "install-deps: install them with:" >&2
  echo "  sudo apt-get install -y ${packages[*]}" >&2
  exit 1
fi
