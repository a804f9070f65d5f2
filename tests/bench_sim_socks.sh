#!/usr/bin/env bash
# SOCKS5 services over the simulator: 100 services started at once by one
# SocksLauncher over PptpOpener, one per simulated node (MS-CHAPv2, MPPE-128,
# IPCP, an HTTP host behind each tunnel), then 100 concurrent downloads, each
# through its own service, every SHA-256 checked; the baseline in the same run
# is the same downloads straight through 100 tunnels (no SOCKS). Loopback only.
#
#   tests/bench_sim_socks.sh [--debug] [bench_sim_socks options...]
#     options: --services N (100) --mib M (2) --rounds R (3) --rate BYTES_PER_S (unlimited) --port P
#
# Run as root (raw GRE sockets need CAP_NET_RAW). The bench spawns the fleet
# as its own child process, so the memory figures are the client's alone.
# Figures only: nothing here asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [ "${1:-}" = "--debug" ]; then profile=debug; shift; fi
if [ "$(id -u)" != 0 ]; then echo "run as root (raw GRE sockets need CAP_NET_RAW)" >&2; exit 1; fi
if [ "$profile" = release ]; then
  cargo build -q --release -p connexa-tests --bin bench_sim_socks
else
  cargo build -q -p connexa-tests --bin bench_sim_socks
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench_sim_socks ($profile build)"
exec "${CARGO_TARGET_DIR:-target}/$profile/bench_sim_socks" "$@"
