#!/usr/bin/env bash
# Slowloris benchmark: p99 of `GET /api/v1/nodes?limit=100` on a NODES-node
# SQLite database with and without SLOW connections trickling never-ending
# request heads, as a ratio against the baseline measured in the same run
# (tests/src/bin/bench_slowloris.rs). The server runs with its default
# timeouts and --max-connections above SLOW, so that every slow connection is
# held (up to the header timeout) rather than refused.
#
#   tests/bench_slowloris.sh [NODES] [SLOW] [REQUESTS]   # defaults: 100000 2000 2000
#   PROFILE=debug tests/bench_slowloris.sh ...           # without a release build
#
# Loopback only. Needs `ulimit -n` above 2 × SLOW + 100 (raised here if the hard limit allows).
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-100000}
slow=${2:-2000}
requests=${3:-2000}
profile=${PROFILE:-release}
ulimit -n $((2 * slow + 1000)) 2>/dev/null || true
if [ "$profile" = release ]; then
  cargo build -q --release -p connexa-http -p connexa-tests --bin connexa-http --bin bench_slowloris
else
  cargo build -q -p connexa-http -p connexa-tests --bin connexa-http --bin bench_slowloris
fi
out="${CARGO_TARGET_DIR:-target}/$profile"
dir=$(mktemp -d /tmp/connexa-bench-slowloris.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
db="sqlite://$dir/bench.db?mode=rwc"

python3 - "$nodes" >"$dir/list.txt" <<'PY'
import sys
n = int(sys.argv[1])
for i in range(n):
    print(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255 or 1}:user{i}:pw{i}")
PY

"$out/connexa-http" --db "$db" token create --name admin --role admin >"$dir/token" 2>"$dir/log"
"$out/connexa-http" --db "$db" serve --listen 127.0.0.1:0 \
  --max-connections $((slow + 500)) --max-import-mib 1024 >/dev/null 2>"$dir/log" &
pid=$!
for _ in $(seq 300); do grep -q 'listening on' "$dir/log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on http:\/\/\(.*\)/\1/p' "$dir/log" | head -n1)
token=$(cat "$dir/token")
[ -n "$addr" ] && [ -n "$token" ] || { cat "$dir/log" >&2; exit 1; }
curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: text/plain' \
  --data-binary @"$dir/list.txt" "http://$addr/api/v1/import?background=false" -o "$dir/import.json" \
  || { echo "import failed:" >&2; cat "$dir/import.json" "$dir/log" >&2; exit 1; }
total=$(curl -sf -H "Authorization: Bearer $token" "http://$addr/api/v1/nodes?limit=0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
echo "$total nodes, $profile build, $(nproc) cores" >&2
"$out/bench_slowloris" "$addr" "$token" --slow "$slow" --requests "$requests"
