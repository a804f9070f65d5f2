#!/usr/bin/env bash
# Auth-test benchmark: 1,000 simulated nodes (90 % good credentials, 10 % a
# password the node rejects), logins/s and memory per concurrent login, each
# against the light test of the same fleet as baseline — all on loopback.
#
#   tests/bench_auth.sh [--nodes N] [--concurrency C]
#
# Run as root (raw GRE sockets need CAP_NET_RAW). The fleet runs in its own
# process (bench_auth serve); every measurement is a fresh process (bench_auth
# probe), so memory figures are the prober's alone and no phase inherits
# memory freed by another. Figures only: nothing here asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=1000
concurrency=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then echo "run as root (raw GRE sockets need CAP_NET_RAW)" >&2; exit 1; fi
cargo build -q --release -p connexa-tests --bin bench_auth
bin="${CARGO_TARGET_DIR:-target}/release/bench_auth"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work="$(mktemp -d /tmp/connexa-bench-auth.XXXXXX)"
fleet_pid=""
cleanup() {
  if [ -n "$fleet_pid" ]; then kill -TERM "$fleet_pid" 2>/dev/null || true; wait "$fleet_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
echo "bench_auth: $(nproc) cores, $nodes nodes, concurrency $concurrency"
"$bin" serve --nodes "$nodes" --list "$work/fleet.txt" &
fleet_pid=$!
for _ in $(seq 1 300); do [ -f "$work/fleet.txt" ] && break; sleep 0.1; done
[ -f "$work/fleet.txt" ] || { echo "the fleet did not start" >&2; exit 1; }
for mode in direct engine; do
  for depth in light auth; do
    echo
    echo "== $mode / $depth =="
    "$bin" probe --list "$work/fleet.txt" --depth "$depth" --mode "$mode" \
      --concurrency "$concurrency" --results "$work/results.txt"
  done
done
"$bin" summary "$work/results.txt"
