#!/usr/bin/env bash
# Scale benchmark (issue 20, item 6): one `connexa test light --all` worker on a
# 10,000-node and then a 100,000-node simulated fleet, results committed, on
# SQLite and (with CONNEXA_TEST_PG_URL) PostgreSQL: wall time, nodes/s and the
# worker's peak RSS, each with its ratio to the 10,000-node run of the same
# store in the same script (how cost grows with fleet size).
#
#   tests/bench_scale.sh [SMALL] [LARGE]        # defaults: 10000 100000
#   CONNEXA_TEST_PG_URL=postgres://USER@HOST:PORT/DB tests/bench_scale.sh
#   PROFILE=dev tests/bench_scale.sh            # the debug build
#
# A process here may hold at most 20,000 open files, so the fleet runs as
# several `connexa sim` processes of at most 15,000 nodes each, on consecutive
# loopback addresses (`--first-ip`); the worker's own descriptors are bounded
# by its concurrency, not by the fleet. The HTTP list at 100,000 and 1,000,000
# nodes is tests/bench_http.sh (run it with 1000000 as its first argument).
#
# With CONNEXA_TEST_PG_URL it then measures scale-out: one light job on a
# latency-bound fleet (WORKER_NODES nodes, default 3000, each answering its
# handshake after SLOW_MS, default 200 ms) run by 1, 2 and 3 `connexa run
# --jobs` processes sharing the PostgreSQL database (each with the job's
# concurrency, WORKER_CONCURRENCY, default 50): items/s and the ratio to one
# worker, in the same run.
# Loopback only. Prints Markdown tables for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:-10000}
large=${2:-100000}
per_sim=15000
profile=${PROFILE:-release} # PROFILE=dev: the debug build (quicker to build, slower to run)
cargo build -q --profile "$profile" -p connexa-cli
bin="${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")/connexa"
dir=$(mktemp -d /tmp/connexa-bench-scale.XXXXXX)
chmod 700 "$dir"
sims=()
cleanup() {
  for p in "${sims[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for p in "${workers[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
workers=()
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The address of node number $1 (0-based) counted from 127.64.0.1 (clear of the
# tests' and the demo's fleets, which start at 127.1.0.1).
nth_ip() { python3 -c "import ipaddress,sys; print(ipaddress.IPv4Address('127.64.0.1') + int(sys.argv[1]))" "$1"; }

# Starts the simulated fleet of $1 nodes; its list goes to $dir/list-$1.txt.
start_fleet() {
  local n=$1 done_=0 k=0
  : >"$dir/list-$n.txt"
  while [ "$done_" -lt "$n" ]; do
    local chunk=$(( n - done_ < per_sim ? n - done_ : per_sim ))
    local first
    first=$(nth_ip "$done_")
    "$bin" sim --nodes "$chunk" --first-ip "$first" --list "$dir/sim-$n-$k.txt" \
      >/dev/null 2>"$dir/sim-$n-$k.log" &
    sims+=($!)
    done_=$(( done_ + chunk )); k=$(( k + 1 ))
  done
  local i
  for i in $(seq 0 $(( k - 1 ))); do
    for _ in $(seq 600); do
      [ -s "$dir/sim-$n-$i.txt" ] && grep -q . "$dir/sim-$n-$i.txt" && break
      sleep 0.1
    done
  done
  sleep 1 # the list is written when every listener is bound; let the last write finish
  ls "$dir"/sim-"$n"-*.txt >/dev/null 2>&1 || { cat "$dir"/sim-"$n"-*.log >&2; exit 1; }
  cat "$dir"/sim-"$n"-*.txt >"$dir/list-$n.txt"
  local got
  got=$(grep -c . "$dir/list-$n.txt")
  [ "$got" = "$n" ] || { echo "fleet of $n: only $got nodes listed" >&2; cat "$dir"/sim-"$n"-*.log >&2; exit 1; }
  echo "fleet of $n nodes in $k sim processes" >&2
}

stop_fleet() {
  for p in "${sims[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  sims=()
}

# One measured run: store URL, fleet size. Prints "seconds rss_kib light_count".
measure() {
  local db=$1 n=$2
  "$bin" --db "$db" import "$dir/list-$n.txt" >/dev/null 2>"$dir/import.log"
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$dir/rss" "$bin" --db "$db" test light --all >/dev/null 2>"$dir/test.log"
  t1=$(date +%s.%N)
  local light
  light=$("$bin" --db "$db" stats --output json \
    | python3 -c 'import json,sys; print(next(s["count"] for s in json.load(sys.stdin)["by_status"] if s["status"] == "ping_light"))')
  echo "$(python3 -c "print(round($t1-$t0, 2))") $(cat "$dir/rss") $light"
}

pg_db() { # a fresh database on the server of CONNEXA_TEST_PG_URL, named $1
  local base=${CONNEXA_TEST_PG_URL%/*}
  PGOPTIONS=--client-min-messages=warning psql -q "$CONNEXA_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" >/dev/null
  echo "$base/$1"
}

declare -A secs rss light
for n in "$small" "$large"; do
  start_fleet "$n"
  read -r s r l < <(measure "sqlite://$dir/scale-$n.db?mode=rwc" "$n")
  secs[sqlite-$n]=$s; rss[sqlite-$n]=$r; light[sqlite-$n]=$l
  echo "sqlite $n: $s s, peak RSS $r KiB, $l ping_light" >&2
  if [ -n "${CONNEXA_TEST_PG_URL:-}" ]; then
    url=$(pg_db "connexa_bench_scale_$n")
    read -r s r l < <(measure "$url" "$n")
    secs[pg-$n]=$s; rss[pg-$n]=$r; light[pg-$n]=$l
    echo "postgres $n: $s s, peak RSS $r KiB, $l ping_light" >&2
    PGOPTIONS=--client-min-messages=warning psql -q "$CONNEXA_TEST_PG_URL" -c "DROP DATABASE IF EXISTS connexa_bench_scale_$n" >/dev/null || true
  fi
  stop_fleet
done

echo
echo "| store | nodes | committed \`ping_light\` | wall time | nodes/s | peak RSS | time ratio to $small | RSS ratio to $small |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for store in sqlite pg; do
  [ -n "${secs[$store-$small]:-}" ] || continue
  for n in "$small" "$large"; do
    python3 - "$store" "$n" "${secs[$store-$n]}" "${rss[$store-$n]}" "${light[$store-$n]}" \
      "${secs[$store-$small]}" "${rss[$store-$small]}" <<'PY'
import sys
store, n, s, r, l, s0, r0 = sys.argv[1:]
n, s, r, s0, r0 = int(n), float(s), int(r), float(s0), int(r0)
name = {"sqlite": "SQLite", "pg": "PostgreSQL"}[store]
print(f"| {name} | {n:,} | {l} | {s:.1f} s | {n / s:,.0f} | {r / 1024:.0f} MiB | {s / s0:.2f}x | {r / r0:.2f}x |")
PY
  done
done

[ -n "${CONNEXA_TEST_PG_URL:-}" ] || exit 0

# Scale-out: 1, 2 and 3 workers on one job of a latency-bound fleet.
wn=${WORKER_NODES:-3000}
slow=${SLOW_MS:-200}
conc=${WORKER_CONCURRENCY:-50}
"$bin" sim --nodes "$wn" --mix "slow:$slow=1" --first-ip 127.96.0.1 --list "$dir/slow.txt" \
  >/dev/null 2>"$dir/slow-sim.log" &
sims+=($!)
for _ in $(seq 600); do [ -s "$dir/slow.txt" ] && break; sleep 0.1; done
sleep 1
declare -A wsecs
for w in 1 2 3; do
  url=$(pg_db "connexa_bench_workers_$w")
  "$bin" --db "$url" import "$dir/slow.txt" >/dev/null 2>"$dir/import.log"
  job=$("$bin" --db "$url" test light --all --detach --concurrency "$conc" 2>/dev/null \
    | sed -n 's/^queued job #\([0-9]*\).*/\1/p')
  [ -n "$job" ] || { echo "no job queued" >&2; exit 1; }
  t0=$(date +%s.%N)
  for i in $(seq "$w"); do
    "$bin" --db "$url" run --jobs --worker "bench-$i" >/dev/null 2>"$dir/worker-$w-$i.log" &
    workers+=($!)
  done
  state=""
  for _ in $(seq 6000); do
    state=$("$bin" --db "$url" jobs show "$job" --output json 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null || true)
    [ "$state" = done ] && break
    sleep 0.1
  done
  t1=$(date +%s.%N)
  [ "$state" = done ] || { echo "job $job of $w workers: $state" >&2; cat "$dir"/worker-"$w"-*.log >&2; exit 1; }
  for p in "${workers[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${workers[@]}"; do wait "$p" 2>/dev/null || true; done
  workers=()
  ok=$("$bin" --db "$url" jobs show "$job" --output json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["progress"]["ok"])')
  wsecs[$w]=$(python3 -c "print(round($t1-$t0, 2))")
  echo "$w worker(s): $wn nodes in ${wsecs[$w]} s, $ok ok" >&2
  PGOPTIONS=--client-min-messages=warning psql -q "$CONNEXA_TEST_PG_URL" \
    -c "DROP DATABASE IF EXISTS connexa_bench_workers_$w" >/dev/null || true
done

echo
echo "| workers (PostgreSQL) | nodes (handshake after $slow ms) | concurrency each | time to done | items/s | vs 1 worker |"
echo "|---:|---:|---:|---:|---:|---:|"
for w in 1 2 3; do
  python3 - "$w" "$wn" "$conc" "${wsecs[$w]}" "${wsecs[1]}" <<'PY'
import sys
w, n, c, s, s1 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print(f"| {w} | {n:,} | {c} | {s:.1f} s | {n / s:,.0f} | {s1 / s:.2f}x |")
PY
done
