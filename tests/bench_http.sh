#!/usr/bin/env bash
# HTTP API benchmark: `GET /api/v1/nodes?limit=100` on a 100,000-node SQLite
# database, 64 connections, with wrk; the baseline is `GET /healthz` (no auth,
# no database) measured by the same wrk on the same server in the same run.
# The deep page halfway through the fleet is read twice, by `offset` and by
# cursor (`after` = the id just before it: the same 100 rows); the last column
# compares every listing with the first page of the same run.
#
#   tests/bench_http.sh [NODES] [SECONDS]      # defaults: 100000 15
#   PROFILE=dev tests/bench_http.sh 1000000    # the debug build, a million nodes
#
# Installs wrk (Debian) if missing. Loopback only. Prints a Markdown table row
# set for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-100000}
secs=${2:-15}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v wrk >/dev/null; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
profile=${PROFILE:-release} # PROFILE=dev: the debug build (quicker to build, slower to run)
cargo build -q --profile "$profile" -p connexa-http
bin="${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")/connexa-http"
dir=$(mktemp -d /tmp/connexa-bench-http.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
db="sqlite://$dir/bench.db?mode=rwc"

# The node list: documentation-free private addresses 10.x.y.z, one per line.
python3 - "$nodes" >"$dir/list.txt" <<'PY'
import sys
n = int(sys.argv[1])
for i in range(n):
    print(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255 or 1}:user{i}:pw{i}")
PY

"$bin" --db "$db" token create --name admin --role admin >"$dir/token" 2>"$dir/log"
"$bin" --db "$db" serve --listen 127.0.0.1:0 >/dev/null 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$dir/log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on http:\/\/\(.*\)/\1/p' "$dir/log" | head -n1)
token=$(cat "$dir/token")
[ -n "$addr" ] && [ -n "$token" ] || { cat "$dir/log" >&2; exit 1; }

t0=$(date +%s.%N)
curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: text/plain' \
  --data-binary @"$dir/list.txt" "http://$addr/api/v1/import" -o "$dir/import.json"
# A large body is imported in the background (202): wait until every row is in.
count() { curl -sf -H "Authorization: Bearer $token" "http://$addr/api/v1/nodes?limit=0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }
for _ in $(seq 3600); do total=$(count); [ "$total" -ge "$nodes" ] && break; sleep 0.5; done
t1=$(date +%s.%N)
echo "imported $total nodes over HTTP in $(python3 -c "print(round($t1-$t0,1))") s" >&2

run() { # name, url, auth?
  local out
  if [ "$3" = auth ]; then
    out=$(wrk -t2 -c64 -d"${secs}s" --latency -H "Authorization: Bearer $token" "$2")
  else
    out=$(wrk -t2 -c64 -d"${secs}s" --latency "$2")
  fi
  echo "$out" >&2
  local rps p50 p99 non2xx
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$rps" "$p50" "$p99" "${non2xx:-0}"
}
base=$(run "GET /healthz (baseline)" "http://$addr/healthz" noauth)
list=$(run "GET /api/v1/nodes?limit=100" "http://$addr/api/v1/nodes?limit=100" auth)
half=$((total / 2))
# The id of the row just before the deep page: `after` it is the page at offset $half.
cursor=$(curl -sf -H "Authorization: Bearer $token" "http://$addr/api/v1/nodes?limit=1&offset=$((half - 1))" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])')
same=$(for q in "offset=$half" "after=$cursor"; do
  curl -sf -H "Authorization: Bearer $token" "http://$addr/api/v1/nodes?limit=100&$q" \
    | python3 -c 'import json,sys; print([n["id"] for n in json.load(sys.stdin)["items"]])'
done | uniq | wc -l)
[ "$same" = 1 ] || { echo "offset=$half and after=$cursor return different pages" >&2; exit 1; }
deep=$(run "GET /api/v1/nodes?limit=100&offset=$half" "http://$addr/api/v1/nodes?limit=100&offset=$half" auth)
after=$(run "GET /api/v1/nodes?limit=100&after=$cursor" "http://$addr/api/v1/nodes?limit=100&after=$cursor" auth)
flt=$(run "GET /api/v1/nodes?limit=100&login=user9" "http://$addr/api/v1/nodes?limit=100&login=user9" auth)
echo
echo "| request ($total nodes, SQLite, 64 connections, wrk -t2, ${secs}s) | requests/s | p50 | p99 | non-2xx | rps vs baseline | rps vs first page |"
echo "|---|---|---|---|---|---|---|"
b=$(echo "$base" | cut -f2)
first=$(echo "$list" | cut -f2)
for row in "$base" "$list" "$deep" "$after" "$flt"; do
  IFS=$'\t' read -r name rps p50 p99 bad <<<"$row"
  ratio=$(python3 -c "print(f'{float(\"$rps\")/float(\"$b\"):.3f}')")
  vs_first=-
  [ "$row" = "$base" ] || vs_first=$(python3 -c "print(f'{float(\"$rps\")/float(\"$first\"):.2f}')")
  echo "| \`$name\` | $rps | $p50 | $p99 | $bad | $ratio | $vs_first |"
done
