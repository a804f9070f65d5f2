#!/usr/bin/env bash
# An openvpn service against a SOCKS5 service through the same PPTP node (the
# lab: Debian pptpd in a QEMU VM, two calls), in the same run: the lab file
# downloaded by curl through each, alternately; Mbit/s of each, the ratio, and
# the memory of an openvpn service (its server process, and what this process
# grew by). See tests/src/bin/bench_openvpn.rs.
#
#   tests/bench_openvpn.sh [--debug] [--rounds N]
#
# Run as root with openvpn and nftables installed (tests/run.sh installs them);
# brings the lab up if it is down. Figures only: nothing here asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [ "${1:-}" = "--debug" ]; then profile=debug; shift; fi
if [ "$(id -u)" != 0 ]; then echo "run as root (TUN devices, rules, raw GRE)" >&2; exit 1; fi
if [ "$profile" = release ]; then
  cargo build -q --release -p connexa-tests --bin bench_openvpn
else
  cargo build -q -p connexa-tests --bin bench_openvpn
fi
lab_status=$(tests/lab/lab.sh status 2>/dev/null || true)
[[ $lab_status == *"server VM: pid"* ]] || tests/lab/lab.sh up
eval "$(tests/lab/lab.sh env)"
echo "bench_openvpn ($profile build)"
exec "${CARGO_TARGET_DIR:-target}/$profile/bench_openvpn" "$@"
