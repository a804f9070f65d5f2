#!/usr/bin/env bash
# tests/lab/lab.sh - Connexa's lab: a real Linux PPTP server (Debian pptpd + pppd,
# MS-CHAPv2, MPPE-128) in a tiny QEMU VM, reachable only inside a private network
# namespace. See tests/lab/README.md for the topology and how tests use it.
#
#   lab.sh build              host packages, Debian .debs, kernel + initramfs (cached)
#   lab.sh up                 build if needed, create the netns, boot the VM, wait until ready
#   lab.sh down               stop the VM(s), delete the netns
#   lab.sh status             is it up; pid, memory, sessions, shaping
#   lab.sh env                shell `export` lines for tests (CONNEXA_LAB=1, ...)
#   lab.sh exec CMD...        run CMD inside the lab's network namespace
#   lab.sh logs [-f]          the server's console + syslog (pptpd, pptpctrl, pppd)
#   lab.sh sessions           live pppd/pptpctrl processes in the VM + started/exited counts
#   lab.sh pptpd-stop|pptpd-start   SIGTERM pptpd and every call / start it again
#   lab.sh pptpd-kill         SIGKILL pptpd and every call (no goodbye at all); pptpd-start restarts
#   lab.sh vm-stop|vm-start   power the VM off (the netns stays: 10.77.0.2 vanishes) / boot it again
#   lab.sh pause|resume       freeze / thaw the VM (QEMU monitor stop/cont)
#   lab.sh shape RATE|unshape tc tbf rate limit (e.g. 4mbit) on both directions of the host link
#   lab.sh ctl CMD...         raw command to the VM's control port (ping, sessions, ps, tcp, mem, mark TEXT)
#   lab.sh selftest           a 2nd VM with Debian's pptp-linux: wrong password and unknown
#                             user rejected, right password -> MPPE-128, file through the tunnel;
#                             then 20 concurrent calls (tests/lab/calls.py), all cleaned up
#   lab.sh clean              down + delete the cache directory
#
# Environment:
#   CONNEXA_LAB_DIR    cache + run directory (default tests/lab/cache next to this script)
#   CONNEXA_LAB_NETNS  namespace name (default connexa-lab-<hash of CONNEXA_LAB_DIR>)
#   CONNEXA_LAB_ACCEL  auto (default) | kvm | tcg
#   CONNEXA_LAB_DEBUG  1: server pppd logs every LCP/CHAP/CCP/IPCP packet
#   CONNEXA_LAB_READY_TIMEOUT  seconds to wait for the VM (default 120)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
DIR=${CONNEXA_LAB_DIR:-$HERE/cache}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
NS=${CONNEXA_LAB_NETNS:-connexa-lab-$(printf '%s' "$DIR" | sha256sum | cut -c1-8)}
ACCEL=${CONNEXA_LAB_ACCEL:-auto}
READY_TIMEOUT=${CONNEXA_LAB_READY_TIMEOUT:-120}

DEBS=$DIR/debs KPKG=$DIR/kernel ROOTFS=$DIR/rootfs IMG=$DIR/image RUN=$DIR/run
HOST_IP=10.77.0.1 SERVER_IP=10.77.0.2 CLIENT_IP=10.77.0.3 PPP_SERVER_IP=10.78.0.1
LAB_USER=alice LAB_PASS=s3cret
CONNECTIONS=40           # pptpd `connections`: at least 20 concurrent logins, with headroom
SELFTEST_CALLS=20        # concurrent calls `selftest` opens
FILE_NAME=10M.bin FILE_SIZE=$((10 * 1024 * 1024))
VM_MEM=256               # MiB for the server VM
# Debian packages that must be inside the VM (plus their dependency closure)
VM_PKGS=(ppp pptpd pptp-linux busybox-static iproute2)
# kernel modules the VM loads (their dependencies are added automatically)
# (netem, ifb, ingress, mirred, matchall: `lab.sh netem`, loss and delay inside the guest)
VM_MODS=(virtio_pci virtio_net ppp_generic ppp_async ppp_mppe sch_netem ifb sch_ingress act_mirred cls_matchall)

log() { printf '\033[1m[lab %s]\033[0m %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, tap devices, apt-get)"; }
nsx() { ip netns exec "$NS" "$@"; }
ns_exists() { [ -e "/run/netns/$NS" ]; }

# One mutating command at a time per lab directory (tests/run.sh in two worktrees
# uses two directories, hence two namespaces, and never collides).
lock() { exec 9>"$DIR/.lock"; flock -w 900 9 || die "timed out waiting for $DIR/.lock"; }

# ---------------------------------------------------------------------- host packages
host_packages() {
  local need=()
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  command -v cpio >/dev/null || need+=(cpio)
  command -v python3 >/dev/null || need+=(python3)
  command -v ip >/dev/null || need+=(iproute2)
  command -v tc >/dev/null || need+=(iproute2)
  command -v flock >/dev/null || need+=(util-linux)
  command -v dpkg-deb >/dev/null || need+=(dpkg)
  command -v ping >/dev/null || need+=(iputils-ping)   # lab_tun: ping -I cx<id>
  command -v curl >/dev/null || need+=(curl)
  [ ${#need[@]} -eq 0 ] && return 0
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  # --no-remove: never let bookworm's qemu-system-x86 7.2 remove a newer,
  # preinstalled qemu-utils (e.g. from bookworm-backports).
  if apt-get install -y -qq --no-install-recommends --no-remove "${need[@]}" >/dev/null; then return 0; fi
  log "plain install would remove packages; trying bookworm-backports (private apt lists under $DIR/apt)"
  local a=$DIR/apt mirror keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mirror=$(awk '/^URIs:/ { print $2; exit } /^deb / { print ($2 ~ /^\[/ ? $3 : $2); exit }' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || die "no Debian mirror found in the apt sources"
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
  printf 'deb [signed-by=%s] %s bookworm main\ndeb [signed-by=%s] %s bookworm-backports main\n' \
    "$keyring" "$mirror" "$keyring" "$mirror" >"$a/sources.list"
  local o=(-o Dir::Etc::SourceList="$a/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o Dir::State::Lists="$a/lists" -o Dir::Cache="$a/cache")
  apt-get "${o[@]}" update -qq
  apt-get "${o[@]}" install -y -qq --no-install-recommends --no-remove -t bookworm-backports "${need[@]}" >/dev/null ||
    die "cannot install ${need[*]} without removing packages"
}

# ---------------------------------------------------------------------- image build
# Download the VM's packages: their dependency closure is computed by apt itself
# against an empty dpkg status (as on an empty machine), minus packages a
# busybox initramfs never needs (perl, dpkg, PAM modules, ...).
fetch_debs() {
  [ -f "$DEBS/.complete" ] && return 0
  log "downloading Debian packages into $DEBS"
  rm -rf "$DEBS"
  mkdir -p "$DEBS"
  apt-get update -qq || true
  local kernel
  kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [ -n "$kernel" ] || die "cannot resolve linux-image-amd64 to a kernel package"
  : >"$DEBS/empty-status"
  local pkgs
  pkgs=$(apt-get -s -o Dir::State::status="$DEBS/empty-status" install --no-install-recommends "${VM_PKGS[@]}" |
    awk '/^Inst / { print $2 }' |
    grep -v -E '^(perl|perl-.*|lib.*-perl|libperl.*|dpkg|tar|usrmerge|debconf|init-system-helpers|sysvinit-utils|lsb-base|procps|libproc2-0|libpam-modules.*|libpam-runtime|libdb5\.3|libgdbm.*|libtinfo6|libncursesw6|libacl1|libbz2-1\.0|gcc-12-base|libaudit-common)$') ||
    die "apt-get could not resolve ${VM_PKGS[*]}"
  # shellcheck disable=SC2086
  (cd "$DEBS" && { apt-get download -qq $pkgs "$kernel" 2>&1 | grep -v 'Download is performed unsandboxed' || true; })
  ls "$DEBS"/linux-image-*.deb >/dev/null 2>&1 || die "kernel package $kernel was not downloaded"
  local p
  for p in "${VM_PKGS[@]}"; do ls "$DEBS/${p}_"*.deb >/dev/null 2>&1 || die "package $p was not downloaded"; done
  echo "$kernel" >"$DEBS/.kernel"
  touch "$DEBS/.complete"
}

# Module files (relative to /lib/modules/<ver>) in load order, dependencies
# first, from each module's own "depends=" modinfo field.
module_order() {
  local moddir=$1
  shift
  declare -A path=() seen=()
  local f n
  while IFS= read -r f; do
    n=$(basename "$f" .ko)
    path[${n//-/_}]=${f#"$moddir"/}
  done < <(find "$moddir/kernel" -name '*.ko')
  visit() {
    local m=${1//-/_} deps d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    if [ -z "${path[$m]:-}" ]; then
      grep -q -E "/${m}\.ko" "$moddir/modules.builtin" && return 0 # built into the kernel
      die "kernel module $m not found"
    fi
    deps=$(tr '\0' '\n' <"$moddir/${path[$m]}" | sed -n 's/^depends=//p' | head -n1)
    for d in ${deps//,/ }; do visit "$d"; done
    echo "${path[$m]}"
  }
  for n in "$@"; do visit "$n"; done
}

# The served test file: deterministic bytes (SHA-256 in counter mode), so
# anyone can regenerate and check it; its sha256 is published in image/www.sha256.
make_www() {
  local www=$IMG/www
  rm -rf "$www" "$IMG/www-root"
  mkdir -p "$www" "$IMG/www-root/srv/www"
  python3 - "$www/$FILE_NAME" "$FILE_SIZE" <<'PY'
import hashlib, sys
path, size = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    i, left = 0, size
    while left > 0:
        block = hashlib.sha256(b"connexa-lab:%d" % i).digest()
        f.write(block[:left])
        left -= len(block)
        i += 1
PY
  (cd "$www" && sha256sum "$FILE_NAME" >"$IMG/www.sha256")
  cp "$www/$FILE_NAME" "$IMG/www-root/srv/www/"
}

image_stamp() { cat "$SELF" "$HERE/vm-init.sh" | sha256sum | cut -c1-16; }

build() {
  if [ -s "$IMG/initrd" ] && [ -s "$IMG/vmlinuz" ] && [ "$(cat "$IMG/.stamp" 2>/dev/null)" = "$(image_stamp)" ]; then
    log "image up to date ($IMG)"
    return 0
  fi
  local t0=$SECONDS
  host_packages
  fetch_debs
  if [ ! -f "$KPKG/.complete" ]; then
    log "extracting the kernel package"
    rm -rf "$KPKG"
    mkdir -p "$KPKG"
    dpkg-deb -x "$(ls "$DEBS"/linux-image-*.deb | head -n1)" "$KPKG"
    touch "$KPKG/.complete"
  fi
  local kver
  kver=$(ls "$KPKG/lib/modules" | head -n1)
  log "building the root filesystem (kernel $kver)"
  rm -rf "$ROOTFS" "$IMG"
  mkdir -p "$ROOTFS" "$IMG"
  local deb
  for deb in "$DEBS"/*.deb; do
    case $deb in */linux-image-*) continue ;; esac
    dpkg-deb -x "$deb" "$ROOTFS"
  done
  mkdir -p "$ROOTFS"/{proc,sys,dev,run,tmp,root,sbin,usr/bin,usr/sbin,srv/www,var/log,var/lock,var/run}
  chroot "$ROOTFS" /bin/busybox --install -s
  [ -e "$ROOTFS/bin/ip" ] || ln -s busybox "$ROOTFS/bin/ip" # pptp-linux runs /bin/ip
  local bin
  for bin in /usr/sbin/pppd /usr/sbin/pptpd /usr/sbin/pptpctrl /usr/sbin/pptp /sbin/tc; do
    if chroot "$ROOTFS" /lib64/ld-linux-x86-64.so.2 --list "$bin" | grep 'not found'; then
      die "$bin: missing shared libraries in the image"
    fi
  done
  local m mods
  mods=$(module_order "$KPKG/lib/modules/$kver" "${VM_MODS[@]}")
  : >"$ROOTFS/etc/lab-modules"
  for m in $mods; do
    mkdir -p "$ROOTFS/lib/modules/$kver/$(dirname "$m")"
    cp "$KPKG/lib/modules/$kver/$m" "$ROOTFS/lib/modules/$kver/$m"
    echo "/lib/modules/$kver/$m" >>"$ROOTFS/etc/lab-modules"
  done
  rm -rf "$ROOTFS"/usr/share/{doc,man,info,locale,lintian} "$ROOTFS"/usr/lib/x86_64-linux-gnu/gconv
  install -m 0755 "$HERE/vm-init.sh" "$ROOTFS/init"
  make_www
  log "packing the initramfs"
  # system archive (gzip) + the served files as a second, uncompressed archive:
  # the kernel unpacks both, and 10 MiB of random bytes are not worth gzipping
  (cd "$ROOTFS" && find . -print0 | cpio --null -o -H newc --quiet | gzip -6) >"$IMG/initrd.tmp"
  # the kernel finds the next archive only at a 4-byte aligned offset (it skips zero padding)
  truncate -s %4 "$IMG/initrd.tmp"
  (cd "$IMG/www-root" && find . -print0 | cpio --null -o -H newc --quiet) >>"$IMG/initrd.tmp"
  mv "$IMG/initrd.tmp" "$IMG/initrd"
  cp "$KPKG/boot/vmlinuz-$kver" "$IMG/vmlinuz"
  image_stamp >"$IMG/.stamp"
  log "image ready in $((SECONDS - t0))s: vmlinuz $(du -h "$IMG/vmlinuz" | cut -f1), initrd $(du -h "$IMG/initrd" | cut -f1)"
}

# ---------------------------------------------------------------------- namespace + VM
accel_args() {
  local a=$ACCEL
  if [ "$a" = auto ]; then
    # A stock kernel needs hardware virtualization (kvm_intel / kvm_amd); a
    # /dev/kvm backed by something else (e.g. PVM) hangs the boot -> emulate.
    if [ -c /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then a=kvm; else a=tcg; fi
  fi
  case $a in
    kvm) echo "-enable-kvm -cpu host" ;;
    tcg) echo "-accel tcg,thread=multi,tb-size=64" ;; # 64 MiB translation cache (default 1 GiB)
    *) die "CONNEXA_LAB_ACCEL must be auto, kvm or tcg" ;;
  esac
}

# Topology, all inside $NS (nothing is connected to the outside world):
#
#   host0 10.77.0.1 ==veth== lab0 --+
#                                   br0 --- tap0 --- server VM 10.77.0.2
#                                    +----- tap1 --- selftest client VM 10.77.0.3
#
# Tests run where host0 is. lab0's egress carries server->host traffic
# (download), host0's egress host->server traffic (upload): `shape` puts a
# tbf qdisc on both.
netns_create() {
  ip netns add "$NS"
  nsx sysctl -qw net.ipv6.conf.all.disable_ipv6=1
  nsx sysctl -qw net.ipv6.conf.default.disable_ipv6=1
  nsx ip link set lo up
  nsx ip link add br0 type bridge
  nsx ip link set br0 up
  nsx ip link add host0 type veth peer name lab0
  nsx ip link set lab0 master br0
  nsx ip link set lab0 up
  nsx ip addr add "$HOST_IP/24" dev host0
  nsx ip link set host0 up
  # the server's PPP clients (10.78.0.100-199, a user-space tunnel's address
  # too) are reached through the server VM, which forwards: a service of the
  # tests on 10.77.0.1 (e.g. a keyed speed endpoint) can answer through a tunnel
  nsx ip route add 10.78.0.0/24 via "$SERVER_IP" dev host0
  local t
  for t in tap0 tap1; do
    nsx ip tuntap add dev "$t" mode tap
    nsx ip link set "$t" master br0
    nsx ip link set "$t" up
  done
}

qemu_pid() { # pidfile tag -> pid of a live qemu we started, or nothing
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-name $2" && echo "$pid"
  return 0
}

stop_qemu() { # pidfile tag
  local pid
  pid=$(qemu_pid "$1" "$2")
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

# Run a command without our open file descriptors beyond stdin/out/err: a
# daemonized qemu must not keep the lock (fd 9) or a caller's pipe open.
no_inherit() (
  local fd
  for fd in /proc/"$BASHPID"/fd/*; do
    fd=${fd##*/}
    [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
  done
  exec "$@"
)

http_ok() { # GET /hello.txt on the server from inside the namespace
  nsx timeout 2 bash -c "exec 3<>/dev/tcp/$SERVER_IP/80 && printf 'GET /hello.txt HTTP/1.0\r\n\r\n' >&3 && grep -q 'hello from the connexa lab' <&3" 2>/dev/null
}

vm_start() {
  [ -f "$IMG/initrd" ] || die "no image: run '$SELF build' first"
  ns_exists || die "namespace $NS does not exist: run '$SELF up'"
  stop_qemu "$RUN/server.pid" "connexa-lab-server"
  mkdir -p "$RUN"
  rm -f "$RUN/ctl.sock" "$RUN/monitor.sock" "$RUN/ready-secs"
  [ -s "$RUN/server.log" ] && mv "$RUN/server.log" "$RUN/server.log.prev" # the previous boot's log
  : >"$RUN/server.log"
  local t0
  t0=$(date +%s.%N)
  # shellcheck disable=SC2046
  no_inherit ip netns exec "$NS" qemu-system-x86_64 -name connexa-lab-server $(accel_args) -smp 1 -m "$VM_MEM" \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial file:"$RUN/server.log" \
    -serial unix:"$RUN/ctl.sock",server=on,wait=off \
    -monitor unix:"$RUN/monitor.sock",server=on,wait=off \
    -pidfile "$RUN/server.pid" -daemonize \
    -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd" \
    -append "console=ttyS0 quiet panic=-1 lab.role=server lab.ip=$SERVER_IP/24 lab.user=$LAB_USER lab.pass=$LAB_PASS lab.conns=$CONNECTIONS lab.filesize=$FILE_SIZE lab.debug=${CONNEXA_LAB_DEBUG:-0}" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:77:00:02
  log "server VM pid $(cat "$RUN/server.pid"), $(accel_args); waiting for it (log: $RUN/server.log)"
  local deadline=$((SECONDS + READY_TIMEOUT))
  until grep -q '^LAB: READY' "$RUN/server.log" 2>/dev/null && http_ok; do
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$RUN/server.log" >&2; die "VM not ready after ${READY_TIMEOUT}s"; }
    [ -n "$(qemu_pid "$RUN/server.pid" connexa-lab-server)" ] || { tail -n 30 "$RUN/server.log" >&2; die "qemu exited"; }
    sleep 0.2
  done
  grep -q '^LAB: ERROR' "$RUN/server.log" && { grep '^LAB: ERROR' "$RUN/server.log" >&2; die "VM reported errors"; }
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  echo "$secs" >"$RUN/ready-secs"
  log "READY in ${secs}s: pptpd $SERVER_IP:1723, http://$SERVER_IP/ (netns $NS)"
}

vm_stop() { stop_qemu "$RUN/server.pid" connexa-lab-server; log "server VM stopped"; }

up() {
  build
  down_quiet
  netns_create
  vm_start
}

down_quiet() {
  stop_qemu "$RUN/client.pid" connexa-lab-client
  stop_qemu "$RUN/server.pid" connexa-lab-server
  if ns_exists; then ip netns del "$NS"; fi
  rm -f "$RUN/shaped"
}

down() { down_quiet; log "down (netns $NS deleted)"; }

# ---------------------------------------------------------------------- control
# Send one line to the VM's control loop (2nd serial port, a unix socket here)
# and print its answer up to the LABCTL-END marker; exit status = the VM's.
ctl() {
  [ -S "$RUN/ctl.sock" ] || die "the lab is not up"
  (
    flock -w 60 8 || exit 1
    python3 - "$RUN/ctl.sock" "$*" <<'PY'
import socket, sys, re
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
buf = b""
while True:
    m = re.search(rb"LABCTL-END rc=(\d+)", buf)
    if m and buf.endswith(b"\n"):
        break
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("control connection closed")
    buf += chunk
text = buf.decode(errors="replace").replace("\r", "")
body, _, _ = text.rpartition("LABCTL-END")
sys.stdout.write(body)
sys.exit(int(m.group(1)))
PY
  ) 8>"$RUN/ctl.lock"
}

monitor() { # QEMU human monitor command
  [ -S "$RUN/monitor.sock" ] || die "the lab is not up"
  python3 - "$RUN/monitor.sock" "$*" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
time.sleep(0.2); s.recv(65536)          # banner
s.sendall(sys.argv[2].encode() + b"\n")
time.sleep(0.3)
PY
}

sessions() {
  ctl sessions
  local log=$RUN/server.log
  echo "pppd_started=$(grep -c -E 'pppd\[[0-9]+\]: pppd [0-9.]+ started' "$log" || true)" \
    "pppd_exited=$(grep -c -E 'pppd\[[0-9]+\]: Exit\.' "$log" || true)" \
    "calls_started=$(grep -c 'control connection started' "$log" || true)" \
    "calls_finished=$(grep -c 'control connection finished' "$log" || true)"
}

shape() {
  local rate=${1:?usage: lab.sh shape RATE (e.g. 4mbit)}
  ns_exists || die "the lab is not up"
  # burst: a few full-size frames; limit: ~100 ms of queue. Rates are L2
  # (Ethernet + IP + GRE + PPP/MPPE headers count against the rate).
  local dev
  for dev in lab0 host0; do
    nsx tc qdisc replace dev "$dev" root tbf rate "$rate" burst 16kb latency 100ms
  done
  echo "$rate" >"$RUN/shaped"
  log "shaped to $rate both ways (tbf on lab0 and host0 in $NS)"
}

# Loss and delay inside the server VM's own kernel (sch_netem; the host's
# kernel may have none): egress (server -> tests) delays every packet by the
# whole round trip DELAY_MS (± JITTER_MS, normal distribution) and loses
# LOSS %; ingress (tests -> server, through ifb0) loses LOSS % too. Delaying
# one direction by the round trip is the same for both ends' timers as
# delaying each by half.
netem() {
  ns_exists || die "the lab is not up"
  case ${1:-} in
    off) ctl netem-off ;;
    '') die "usage: lab.sh netem LOSS_PERCENT DELAY_MS [JITTER_MS] | off" ;;
    *) ctl netem "$1" "${2:-0}" "${3:-0}" ;;
  esac
}

unshape() {
  ns_exists || die "the lab is not up"
  local dev
  for dev in lab0 host0; do nsx tc qdisc del dev "$dev" root 2>/dev/null || true; done
  rm -f "$RUN/shaped"
  log "unshaped"
}

status() {
  local pid
  pid=$(qemu_pid "$RUN/server.pid" connexa-lab-server)
  echo "dir:       $DIR"
  echo "netns:     $NS $(ns_exists && echo '(exists)' || echo '(absent)')"
  if [ -z "$pid" ]; then
    echo "server VM: not running"
    return 3
  fi
  echo "server VM: pid $pid, RSS $(awk '/VmRSS/ { printf "%d MiB", $2 / 1024 }' "/proc/$pid/status"), ready in $(cat "$RUN/ready-secs" 2>/dev/null || echo '?')s"
  echo "shaping:   $(cat "$RUN/shaped" 2>/dev/null || echo none)"
  echo "sessions:  $(sessions | tr '\n' ' ')"
}

env_lines() {
  local sha
  sha=$(cut -d' ' -f1 "$IMG/www.sha256" 2>/dev/null) || die "no image: run '$SELF build' first"
  cat <<EOF
export CONNEXA_LAB=1
export CONNEXA_LAB_SH=$SELF
export CONNEXA_LAB_DIR=$DIR
export CONNEXA_LAB_NETNS=$NS
export CONNEXA_LAB_HOST_IP=$HOST_IP
export CONNEXA_LAB_SERVER=$SERVER_IP
export CONNEXA_LAB_PPP_SERVER=$PPP_SERVER_IP
export CONNEXA_LAB_USER=$LAB_USER
export CONNEXA_LAB_PASSWORD=$LAB_PASS
export CONNEXA_LAB_CONNECTIONS=$CONNECTIONS
export CONNEXA_LAB_FILE=$IMG/www/$FILE_NAME
export CONNEXA_LAB_FILE_URL=http://$PPP_SERVER_IP/$FILE_NAME
export CONNEXA_LAB_FILE_SIZE=$FILE_SIZE
export CONNEXA_LAB_FILE_SHA256=$sha
export CONNEXA_LAB_LOG=$RUN/server.log
EOF
}

# ---------------------------------------------------------------------- selftest
selftest() {
  [ -n "$(qemu_pid "$RUN/server.pid" connexa-lab-server)" ] || die "the lab is not up: run '$SELF up' first"
  local t0=$SECONDS
  : >"$RUN/client.log"
  # shellcheck disable=SC2046
  nsx timeout 300 qemu-system-x86_64 -name connexa-lab-client $(accel_args) -smp 1 -m 256 \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial file:"$RUN/client.log" -pidfile "$RUN/client.pid" \
    -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd" \
    -append "console=ttyS0 quiet panic=-1 lab.role=client lab.ip=$CLIENT_IP/24 lab.server=$SERVER_IP lab.user=$LAB_USER lab.pass=$LAB_PASS lab.fetch=/$FILE_NAME" \
    -netdev tap,id=n1,ifname=tap1,script=no,downscript=no \
    -device virtio-net-pci,netdev=n1,mac=52:54:00:77:00:03 || true
  rm -f "$RUN/client.pid"
  local secs=$((SECONDS - t0)) ok=1 want
  want=$(cut -d' ' -f1 "$IMG/www.sha256")
  grep -E '^LAB: RESULT' "$RUN/client.log" | sed 's/^/  /' >&2 || true
  check() { grep -q -E "$1" "$RUN/client.log" || { log "FAIL: $2"; ok=0; }; }
  # pppd exit status 19 = authentication failed
  check '^LAB: RESULT badpass rc=19' "wrong password was not rejected (pppd exit 19)"
  check '^LAB: RESULT baduser rc=19' "unknown user was not rejected (pppd exit 19)"
  check 'MPPE 128-bit stateless compression enabled' "no MPPE-128 with the right password"
  check "^LAB: RESULT fetched bytes=$FILE_SIZE " "file through the tunnel has the wrong size"
  check "^LAB: RESULT sha256=$want" "file through the tunnel has the wrong sha256"
  check '^LAB: CLIENT DONE' "client VM did not finish"
  [ $ok = 1 ] || die "SELFTEST FAILED after ${secs}s (client log: $RUN/client.log, server log: $RUN/server.log)"
  log "pptp-linux client passed in ${secs}s; now $SELFTEST_CALLS concurrent calls (each until the server's pppd speaks LCP)"
  nsx python3 "$HERE/calls.py" "$SERVER_IP" "$SELFTEST_CALLS" >&2 || die "SELFTEST FAILED: not all $SELFTEST_CALLS concurrent calls got a pppd"
  # every call torn down on the server: no pppd / pptpctrl left, each pppd logged Exit.
  local s deadline=$((SECONDS + 20))
  while :; do
    s=$(sessions | tr '\n' ' ')
    if [[ $s =~ pppd=0\ pptpctrl=0 ]] && [[ $s =~ pppd_started=([0-9]+)\ pppd_exited=([0-9]+) ]] &&
      [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ]; then break; fi
    [ $SECONDS -lt $deadline ] || die "SELFTEST FAILED: sessions left on the server: $s"
    sleep 0.5
  done
  log "server after the calls: $s"
  log "SELFTEST PASSED in $((SECONDS - t0))s (client VM: wrong password, unknown user, right password + MPPE-128 + $FILE_NAME sha256; $SELFTEST_CALLS concurrent calls, all cleaned up)"
}

# The kernel's PPTP client as a speed baseline: the client VM logs in with
# pptp-linux + pppd (kernel MPPE, kernel TCP) and downloads the file with
# STREAMS connections for SECS seconds; prints the Mbit/s of the window after
# WARMUP seconds (body octets, as Connexa's speed test counts them).
kernel_speed() {
  local streams=${1:-4} secs=${2:-10} warmup=${3:-2}
  [ -n "$(qemu_pid "$RUN/server.pid" connexa-lab-server)" ] || die "the lab is not up: run '$SELF up' first"
  : >"$RUN/speed.log"
  # shellcheck disable=SC2046
  nsx timeout 300 qemu-system-x86_64 -name connexa-lab-client $(accel_args) -smp 1 -m 256 \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial file:"$RUN/speed.log" -pidfile "$RUN/client.pid" \
    -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd" \
    -append "console=ttyS0 quiet panic=-1 lab.role=speed lab.ip=$CLIENT_IP/24 lab.server=$SERVER_IP lab.user=$LAB_USER lab.pass=$LAB_PASS lab.fetch=/$FILE_NAME lab.streams=$streams lab.secs=$secs lab.warmup=$warmup" \
    -netdev tap,id=n1,ifname=tap1,script=no,downscript=no \
    -device virtio-net-pci,netdev=n1,mac=52:54:00:77:00:03 || true
  rm -f "$RUN/client.pid"
  grep -E '^LAB: RESULT kernel-speed' "$RUN/speed.log" | sed 's/^LAB: RESULT //' || die "no result (log: $RUN/speed.log)"
}

# ---------------------------------------------------------------------- main
cmd=${1:-help}
case $cmd:$ACCEL in
  *:auto | *:kvm | *:tcg) ;;
  up:* | vm-start:* | selftest:*) die "CONNEXA_LAB_ACCEL must be auto, kvm or tcg (not '$ACCEL')" ;;
esac
[ $# -gt 0 ] && shift
case $cmd in
  build) need_root; lock; build ;;
  up) need_root; lock; up ;;
  down) need_root; lock; down ;;
  status) status ;;
  env) env_lines ;;
  exec) need_root; ns_exists || die "the lab is not up"; [ $# -gt 0 ] || die "usage: lab.sh exec CMD..."; exec ip netns exec "$NS" "$@" ;;
  logs) if [ "${1:-}" = -f ]; then exec tail -n +1 -f "$RUN/server.log"; else cat "$RUN/server.log"; fi ;;
  sessions) sessions ;;
  netem) netem "$@" ;;
  kernel-speed) need_root; kernel_speed "$@" ;;
  ctl) ctl "$@" ;;
  pptpd-stop) ctl pptpd-stop ;;
  pptpd-kill) ctl pptpd-kill ;;
  pptpd-start) ctl pptpd-start ;;
  vm-stop) need_root; lock; vm_stop ;;
  vm-start) need_root; lock; vm_start ;;
  pause) monitor stop; log "VM paused" ;;
  resume) monitor cont; log "VM resumed" ;;
  shape) need_root; shape "$@" ;;
  unshape) need_root; unshape ;;
  selftest) need_root; lock; selftest ;;
  clean) need_root; lock; down_quiet; rm -rf "$DEBS" "$KPKG" "$ROOTFS" "$IMG" "$RUN" "$DIR/apt"; log "cleaned $DIR" ;;
  help | -h | --help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown command '$cmd' (see: lab.sh help)" ;;
esac
