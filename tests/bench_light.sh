#!/usr/bin/env bash
# Light-test benchmark: a 10,000-node simulated fleet, nmap's pptp-version on 500
# of its nodes, and Debian's pptpd handshakes/s — all on loopback, in one run.
#
#   tests/bench_light.sh [bench_light args: --nodes N --concurrency C --nmap-nodes M --no-icmp]
#
# Run as root on Debian 12 (installs nmap and pptpd if missing; pptpd is started
# on 127.77.0.2:1723 by the benchmark itself and stopped when it ends).
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v nmap >/dev/null || missing+=(nmap)
[ -x /usr/sbin/pptpd ] || missing+=(pptpd)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
stop_stray_pptpd() { # a killed benchmark cannot run its own clean-up
  for f in /tmp/connexa-bench-pptpd-*/pptpd.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
}
trap stop_stray_pptpd EXIT
cargo build -q --release -p connexa-tests --bin bench_light
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"${CARGO_TARGET_DIR:-target}/release/bench_light" "$@"
