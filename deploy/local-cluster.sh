#!/usr/bin/env bash
# Run an N-node Hourglass cluster on this machine, one process per node.
#
# Node i serves its client port (gRPC) on 127.0.0.1:(7000+i), its peer port (Raft transport)
# on 127.0.0.1:(8000+i) and HTTP on 127.0.0.1:(9000+i); its data and log
# live under $HOURGLASS_CLUSTER_DIR (default: .local-cluster/ in the repository). A cluster
# made with `up --tls` keeps its CA, certificates and tokens in certs/ there, and stays a TLS
# cluster for every later command.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${HOURGLASS_CLUSTER_DIR:-$ROOT/.local-cluster}"
BIN="${HOURGLASS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/hourglass}"
PARTITIONS="${HOURGLASS_PARTITIONS:-16}"
GRPC_BASE="${HOURGLASS_BASE_PORT:-7000}"
PEER_BASE=$((GRPC_BASE + 1000))
HTTP_BASE="${HOURGLASS_HTTP_BASE_PORT:-9000}"
CERTS="$DIR/certs"

usage() {
  cat <<USAGE
usage: deploy/local-cluster.sh COMMAND [ARGS]

  up [N] [--tls]
               start an N-node cluster (default 3, at most 9); builds the release binary
               when it is missing or older than the sources; returns once every partition
               has a leader. --tls (when the cluster is created) makes a CA, node
               certificates, an admin client certificate and a client and a worker token
               in the cluster directory's certs/, and runs every node with TLS and
               authentication; the cluster stays so until 'wipe'
  down         stop every node (SIGTERM, then SIGKILL after 10 s)
  status       node processes and the cluster's partitions and leaders
  start I      start node I
  stop I       stop node I gracefully
  kill I       kill node I with SIGKILL
  restart I    stop then start node I
  pause I      freeze node I (SIGSTOP)
  resume I     unfreeze node I (SIGCONT)
  logs I       print the last 100 lines of node I's log (-f to follow)
  wipe         stop every node and delete all cluster data

environment: HOURGLASS_CLUSTER_DIR (data and logs), HOURGLASS_BIN (binary to run),
             HOURGLASS_PARTITIONS (partition count of a new cluster, default 16),
             HOURGLASS_BASE_PORT / HOURGLASS_HTTP_BASE_PORT (node i uses base + i;
             defaults 7000 and 9000; the peer ports are the client base + 1000 + i)
exit codes:  0 ok, 1 failure, 2 usage error
USAGE
}

die() { echo "local-cluster: $*" >&2; exit 1; }
usage_error() { echo "local-cluster: $*" >&2; echo "run 'deploy/local-cluster.sh --help' for usage" >&2; exit 2; }

node_dir() { echo "$DIR/node-$1"; }
pid_of() { cat "$(node_dir "$1")/pid" 2>/dev/null || true; }
cluster_size() { cat "$DIR/size" 2>/dev/null || echo 0; }
# Written once every certificate and token exists, so a failed `up --tls` is simply rerun.
is_tls() { [[ -f "$CERTS/complete" ]]; }

# The CLI as the cluster's admin: over TLS with the admin certificate on a TLS cluster.
cli() {
  if is_tls; then
    "$BIN" --ca "$CERTS/ca.crt" --cert "$CERTS/client-admin.crt" --key "$CERTS/client-admin.key" "$@"
  else
    "$BIN" "$@"
  fi
}

is_running() {
  local pid; pid="$(pid_of "$1")"
  # The command line names a hourglass binary (or $BIN): a recycled pid of another program
  # is not a node.
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
    && grep -qF -e hourglass -e "$(basename "$BIN")" "/proc/$pid/cmdline" 2>/dev/null
}

is_paused() {
  local pid; pid="$(pid_of "$1")"
  [[ -n "$pid" ]] && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == "T" ]]
}

check_node_arg() {
  [[ "${1:-}" =~ ^[1-9]$ ]] || usage_error "expected a node number 1-9, got '${1:-}'"
  local n; n="$(cluster_size)"
  [[ "$n" -ge "$1" ]] || die "node $1 is not part of the cluster (size $n); run 'up' first"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

ensure_binary() {
  if [[ -n "${HOURGLASS_BIN:-}" ]]; then
    [[ -x "$BIN" ]] || die "HOURGLASS_BIN=$BIN is not an executable"
    return
  fi
  local stale=0
  if [[ ! -x "$BIN" ]]; then
    stale=1
  elif [[ -n "$(find "$ROOT/crates" "$ROOT/proto" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$BIN" \
        \( -name '*.rs' -o -name '*.proto' -o -name 'Cargo.*' \) -print -quit 2>/dev/null)" ]]; then
    stale=1
  fi
  if [[ "$stale" == 1 ]]; then
    "$ROOT/deploy/install-deps.sh"
    echo "building the release binary (the first build compiles RocksDB and takes a while)..." >&2
    (cd "$ROOT" && cargo build --release --workspace --all-targets) || die "build failed"
  fi
}

endpoints() {
  local n="$1" out="" i
  for ((i = 1; i <= n; i++)); do out+="${out:+,}127.0.0.1:$((GRPC_BASE + i))"; done
  echo "$out"
}

peers() {
  local n="$1" out="" i
  for ((i = 1; i <= n; i++)); do
    out+="${out:+,}$i=127.0.0.1:$((GRPC_BASE + i))/127.0.0.1:$((PEER_BASE + i))"
  done
  echo "$out"
}

write_config() {
  local i="$1" n="$2" d; d="$(node_dir "$i")"
  mkdir -p "$d"
  local rf=$(( n < 3 ? n : 3 ))
  local quoted; quoted="$(peers "$n" | sed 's/[^,]*/"&"/g; s/,/, /g')"
  cat > "$d/node.toml" <<TOML
node_id = $i
listen = "127.0.0.1:$((GRPC_BASE + i))"
peer_listen = "127.0.0.1:$((PEER_BASE + i))"
http_listen = "127.0.0.1:$((HTTP_BASE + i))"
data_dir = "$d/data"
peers = [$quoted]
partitions = $PARTITIONS
replication_factor = $rf
TOML
  if is_tls; then
    cat >> "$d/node.toml" <<TOML

[tls]
ca = "$CERTS/ca.crt"
cert = "$CERTS/node-$i.crt"
key = "$CERTS/node-$i.key"

[auth]
tokens_file = "$CERTS/tokens.toml"
TOML
  fi
}

# A token NAME of ROLE: its secret in certs/NAME.token (0600), its entry in the tokens file.
make_token() {
  local name="$1" role="$2" out
  out="$("$BIN" token new "$name" --role "$role")" || die "hourglass token new failed"
  (umask 077 && head -n 1 <<<"$out" > "$CERTS/$name.token")
  # The rest of the output is comment lines and the entry.
  sed '1d; /^#/d' <<<"$out" >> "$CERTS/tokens.toml"
}

# The CA, a certificate per node, the admin's and two tokens; what exists already is kept.
make_certs() {
  local n="$1" i
  is_tls && return 0
  mkdir -p "$CERTS"
  [[ -f "$CERTS/ca.crt" ]] || "$BIN" cert init --dir "$CERTS" >/dev/null || die "hourglass cert init failed"
  for ((i = 1; i <= n; i++)); do
    [[ -f "$CERTS/node-$i.crt" ]] || "$BIN" cert node "$i" --dir "$CERTS" >/dev/null \
      || die "hourglass cert node $i failed"
  done
  [[ -f "$CERTS/client-admin.crt" ]] || "$BIN" cert client admin --dir "$CERTS" --role admin >/dev/null \
    || die "hourglass cert client admin failed"
  # Tokens are made together: a rerun after a failure starts their file again.
  : > "$CERTS/tokens.toml"
  make_token local-client client
  make_token local-worker worker
  touch "$CERTS/complete"
}

start_node() {
  local i="$1" d; d="$(node_dir "$i")"
  if is_running "$i"; then echo "node $i already running (pid $(pid_of "$i"))"; return 0; fi
  for port in $((GRPC_BASE + i)) $((PEER_BASE + i)) $((HTTP_BASE + i)); do
    port_in_use "$port" && die "port $port (node $i) is in use by another process"
  done
  [[ -f "$d/node.toml" ]] || die "node $i has no configuration; run 'up' first"
  nohup "$BIN" serve --config "$d/node.toml" >>"$d/node.log" 2>&1 &
  echo $! > "$d/pid"
  echo "node $i started (pid $!, grpc 127.0.0.1:$((GRPC_BASE + i)), peer 127.0.0.1:$((PEER_BASE + i)), http 127.0.0.1:$((HTTP_BASE + i)))"
}

stop_node() {
  local i="$1" pid; pid="$(pid_of "$i")"
  if ! is_running "$i"; then echo "node $i is not running"; rm -f "$(node_dir "$i")/pid"; return 0; fi
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid"
  for _ in $(seq 1 100); do is_running "$i" || break; sleep 0.1; done
  if is_running "$i"; then kill -KILL "$pid"; echo "node $i did not stop in 10 s: killed"; else echo "node $i stopped"; fi
  rm -f "$(node_dir "$i")/pid"
}

wait_for_leaders() {
  local n="$1" i endpoints; endpoints="$(endpoints "$n")"
  echo -n "waiting for every partition to elect a leader" >&2
  for _ in $(seq 1 240); do
    local out
    if out="$(cli --endpoints "$endpoints" cluster status --json 2>/dev/null)" \
        && ! grep -q '"leader": null' <<<"$out"; then
      echo " done" >&2
      return 0
    fi
    for ((i = 1; i <= n; i++)); do
      if [[ -f "$(node_dir "$i")/pid" ]] && ! is_running "$i"; then
        echo >&2; tail -n 20 "$(node_dir "$i")/node.log" >&2
        die "node $i exited during start-up (log: $(node_dir "$i")/node.log)"
      fi
    done
    echo -n "." >&2
    sleep 0.5
  done
  echo >&2
  die "partitions still without a leader after 120 s; see 'deploy/local-cluster.sh logs I'"
}

cmd_up() {
  local n=3 tls=0 arg
  for arg in "$@"; do
    case "$arg" in
      --tls) tls=1 ;;
      *) n="$arg" ;;
    esac
  done
  [[ "$n" =~ ^[1-9]$ ]] || usage_error "cluster size must be 1-9, got '$n'"
  local existing; existing="$(cluster_size)"
  if [[ "$existing" != 0 && "$existing" != "$n" ]]; then
    die "a $existing-node cluster exists in $DIR; run 'down' and 'wipe' before creating a $n-node one"
  fi
  if [[ "$tls" == 1 && "$existing" != 0 ]] && ! is_tls; then
    die "the cluster in $DIR runs without TLS; run 'down' and 'wipe' before creating one with --tls"
  fi
  ensure_binary
  mkdir -p "$DIR"
  if [[ "$tls" == 1 ]]; then make_certs "$n"; fi
  echo "$n" > "$DIR/size"
  local i
  for ((i = 1; i <= n; i++)); do
    [[ -f "$(node_dir "$i")/node.toml" ]] || write_config "$i" "$n"
    start_node "$i"
  done
  wait_for_leaders "$n"
  # What a reader pastes: the binary and, on a TLS cluster, the admin's credentials.
  local hg; hg="$(printf '%q' "$BIN")"
  if is_tls; then
    local ca crt key
    ca="$(printf '%q' "$CERTS/ca.crt")"
    crt="$(printf '%q' "$CERTS/client-admin.crt")"
    key="$(printf '%q' "$CERTS/client-admin.key")"
    hg+=" --ca $ca --cert $crt --key $key"
  fi
  cat <<DONE

Hourglass is running: $n nodes, data and logs in $DIR
  gRPC endpoints: $(endpoints "$n")
  health:         http://127.0.0.1:$((HTTP_BASE + 1))/healthz  http://127.0.0.1:$((HTTP_BASE + 1))/readyz
  metrics:        http://127.0.0.1:$((HTTP_BASE + 1))/metrics
DONE
  if is_tls; then
    cat <<CONNECT

TLS is on: every call needs credentials. The CA, certificates, keys and tokens are in $CERTS.
Connect as the admin with the flags in the commands below, or once for this shell:
  export HOURGLASS_CA=$ca HOURGLASS_CERT=$crt HOURGLASS_KEY=$key
With a token instead (role client: timers; role worker: deliveries):
  $(printf '%q' "$BIN") --ca $ca --token-file $(printf '%q' "$CERTS/local-client.token") --endpoints $(endpoints "$n") timer get --workflow order-1 --id reminder
  $(printf '%q' "$BIN") --ca $ca --token-file $(printf '%q' "$CERTS/local-worker.token") --endpoints $(endpoints "$n") worker --queue default
CONNECT
  fi
  cat <<DONE

Next steps:
  $hg --endpoints $(endpoints "$n") timer schedule --workflow order-1 --id reminder --in 30s --payload hello
  $hg --endpoints $(endpoints "$n") worker --queue default
  $hg timer get --workflow order-1 --id reminder --endpoints 127.0.0.1:$((GRPC_BASE + 2))
  $hg --endpoints $(endpoints "$n") cluster status
  deploy/local-cluster.sh kill 1      # then read the timer back through node 2
  deploy/local-cluster.sh down
DONE
}

cmd_status() {
  local n; n="$(cluster_size)"
  [[ "$n" != 0 ]] || { echo "no cluster in $DIR"; return 1; }
  local i endpoints=""
  for ((i = 1; i <= n; i++)); do
    local state="stopped"
    if is_running "$i"; then state="running (pid $(pid_of "$i"))"; is_paused "$i" && state="paused (pid $(pid_of "$i"))"; fi
    echo "node $i: $state  grpc 127.0.0.1:$((GRPC_BASE + i))  http 127.0.0.1:$((HTTP_BASE + i))"
    is_running "$i" && ! is_paused "$i" && endpoints+="${endpoints:+,}127.0.0.1:$((GRPC_BASE + i))"
  done
  [[ -n "$endpoints" ]] || { echo "no node is running"; return 1; }
  echo
  cli --endpoints "$endpoints" cluster status
}

main() {
  local cmd="${1:-}"; shift || true
  case "$cmd" in
    up) cmd_up "$@" ;;
    down)
      local n i; n="$(cluster_size)"
      for ((i = 1; i <= n; i++)); do stop_node "$i"; done ;;
    status) cmd_status ;;
    start) check_node_arg "${1:-}"; ensure_binary; start_node "$1" ;;
    stop) check_node_arg "${1:-}"; stop_node "$1" ;;
    kill)
      check_node_arg "${1:-}"
      is_running "$1" || die "node $1 is not running"
      kill -KILL "$(pid_of "$1")"; rm -f "$(node_dir "$1")/pid"; echo "node $1 killed" ;;
    restart) check_node_arg "${1:-}"; stop_node "$1"; start_node "$1" ;;
    pause)
      check_node_arg "${1:-}"; is_running "$1" || die "node $1 is not running"
      kill -STOP "$(pid_of "$1")"; echo "node $1 paused" ;;
    resume)
      check_node_arg "${1:-}"; is_running "$1" || die "node $1 is not running"
      kill -CONT "$(pid_of "$1")"; echo "node $1 resumed" ;;
    logs)
      check_node_arg "${1:-}"
      if [[ "${2:-}" == "-f" ]]; then tail -n 100 -f "$(node_dir "$1")/node.log"; else tail -n 100 "$(node_dir "$1")/node.log"; fi ;;
    wipe)
      local n i; n="$(cluster_size)"
      for ((i = 1; i <= n; i++)); do stop_node "$i" >/dev/null; done
      rm -rf "$DIR"; echo "wiped $DIR" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) usage_error "unknown command '$cmd'" ;;
  esac
}

main "$@"
