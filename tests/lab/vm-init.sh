#!/bin/sh
# /init of the Connexa lab VM (busybox sh, PID 1). Packed into the initramfs by
# tests/lab/lab.sh; see tests/lab/README.md. Two roles, chosen on the kernel
# command line (lab.role=...):
#
#   server  pptpd + pppd (MS-CHAPv2, MPPE-128 required), busybox httpd with fixed
#           files, echo/discard ports, and a control loop on the second serial port
#   client  the harness self-test: Debian's pptp-linux + pppd log in to the
#           server with a wrong password, then the right one, fetch a file
#           through the tunnel, print its sha256, power off
#
# Everything printed as "LAB: ..." is read by lab.sh; keep those lines stable.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# pptpd allocates a pty per call: devpts is mandatory
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /run
mkdir -p /run/pptp /var/run/pptp /var/lock /var/log /tmp
exec </dev/console >/dev/console 2>&1

role=server ip=10.77.0.2/24 server=10.77.0.2 user=alice pass=s3cret debug=0
conns=40 fetch=/10M.bin filesize=
for arg in $(cat /proc/cmdline); do
  case $arg in
    lab.role=*) role=${arg#*=} ;;
    lab.ip=*) ip=${arg#*=} ;;
    lab.server=*) server=${arg#*=} ;;
    lab.user=*) user=${arg#*=} ;;
    lab.pass=*) pass=${arg#*=} ;;
    lab.debug=*) debug=${arg#*=} ;;
    lab.conns=*) conns=${arg#*=} ;;
    lab.fetch=*) fetch=${arg#*=} ;;
    lab.filesize=*) filesize=${arg#*=} ;;
    lab.streams=*) streams=${arg#*=} ;;
    lab.secs=*) secs=${arg#*=} ;;
    lab.warmup=*) warmup=${arg#*=} ;;
  esac
done

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# kernel modules, dependencies first (list written by lab.sh at build time)
while read -r ko; do
  insmod "$ko" || echo "LAB: ERROR insmod $ko failed"
done </etc/lab-modules
[ -c /dev/ppp ] || mknod /dev/ppp c 108 0

hostname "lab-$role"
ip link set lo up
ip link set eth0 up
ip addr add "$ip" dev eth0
# syslog to the console: pptpd, pptpctrl and pppd log through syslog, and the
# console is the file lab.sh exposes as the server log
syslogd -n -O - &
echo "LAB: role=$role ip=$ip uptime=$(uptime_s)"

# ---------------------------------------------------------------- server role
write_pptpd_config() {
  # Our own pptpd.conf: Debian's default one enables `logwtmp`, whose plugin
  # needs utmp/wtmp that this initramfs does not have -> every call would fail.
  cat >/etc/pptpd.conf <<EOF
option /etc/ppp/pptpd-options
connections $conns
localip 10.78.0.1
remoteip 10.78.0.100-199
EOF
  cat >/etc/ppp/pptpd-options <<EOF
name pptpd
refuse-pap
refuse-chap
refuse-mschap
require-mschap-v2
require-mppe-128
ms-dns 10.78.0.1
nodefaultroute
nobsdcomp
nodeflate
novj
novjccomp
noipx
mtu 1400
mru 1400
EOF
  [ "$debug" = 1 ] && echo debug >>/etc/ppp/pptpd-options
  printf '%s\t*\t%s\t*\n' "$user" "$pass" >/etc/ppp/chap-secrets
  chmod 600 /etc/ppp/chap-secrets
}

write_www() {
  # /srv/www/10M.bin and friends arrive in the second (uncompressed) initramfs
  # archive that lab.sh appends; the CGI byte source and sink are written here.
  mkdir -p /srv/www/cgi-bin
  printf 'hello from the connexa lab\n' >/srv/www/hello.txt
  cat >/srv/www/cgi-bin/bytes <<'EOF'
#!/bin/sh
# GET /cgi-bin/bytes?N -> N zero bytes (default 1 MiB): a download source of any size
n=${QUERY_STRING:-1048576}
case $n in ''|*[!0-9]*) n=1048576 ;; esac
printf 'Content-Type: application/octet-stream\r\nContent-Length: %s\r\n\r\n' "$n"
exec head -c "$n" /dev/zero
EOF
  cat >/srv/www/cgi-bin/sink <<'EOF'
#!/bin/sh
# POST /cgi-bin/sink -> reads the request body, answers how many bytes arrived
n=$(head -c "${CONTENT_LENGTH:-0}" | wc -c)
printf 'Content-Type: text/plain\r\n\r\nreceived %s bytes\n' "$n"
EOF
  chmod +x /srv/www/cgi-bin/bytes /srv/www/cgi-bin/sink
  if [ -n "$filesize" ] && [ "$(stat -c %s /srv/www/10M.bin 2>/dev/null)" != "$filesize" ]; then
    echo "LAB: ERROR /srv/www/10M.bin missing or not $filesize bytes (second initramfs archive not unpacked?)"
  fi
  printf '#!/bin/sh\nexec cat >/dev/null\n' >/bin/lab-discard
  chmod +x /bin/lab-discard
}

# pptpd runs in the foreground under this supervisor; `pptpd-stop` on the
# control port creates /run/pptpd.off, `pptpd-start` removes it.
pptpd_supervisor() {
  while :; do
    if [ -e /run/pptpd.off ]; then sleep 0.2; continue; fi
    pptpd -f -c /etc/pptpd.conf
    echo "LAB: pptpd exited rc=$? uptime=$(uptime_s)"
    sleep 0.5
  done
}

# iproute2's tc and ip (busybox's sh runs its own applets before $PATH, and
# busybox's tc has no netem)
TC=/sbin/tc
netem_off() {
  $TC qdisc del dev eth0 root 2>/dev/null
  $TC qdisc del dev eth0 ingress 2>/dev/null
  $TC qdisc del dev ifb0 root 2>/dev/null
  return 0
}

# Commands from the host arrive line by line on /dev/ttyS1 (a unix socket on
# the host side, see `lab.sh ctl`). Each reply ends with "LABCTL-END rc=N".
ctl_cmd() {
  case $1 in
    ping) echo pong ;;
    sessions)
      # live processes: after every client has hung up both must be 0
      echo "pppd=$(pidof pppd | wc -w) pptpctrl=$(pidof pptpctrl | wc -w)" ;;
    pptpd-stop)
      touch /run/pptpd.off
      # the manager, then every call: the server is gone as if it had crashed
      killall pptpd 2>/dev/null
      killall pptpctrl 2>/dev/null
      killall pppd 2>/dev/null
      i=0
      while [ $i -lt 50 ] && pidof pptpd pptpctrl pppd >/dev/null; do sleep 0.1; i=$((i + 1)); done
      killall -9 pptpd pptpctrl pppd 2>/dev/null
      echo "pptpd stopped" ;;
    pptpd-kill)
      # SIGKILL: no LCP Terminate, no StopCCRQ, no "Exit." in the log
      touch /run/pptpd.off
      killall -9 pptpd pptpctrl pppd 2>/dev/null
      echo "pptpd killed" ;;
    pptpd-start)
      rm -f /run/pptpd.off
      i=0
      while [ $i -lt 100 ] && ! netstat -ltn | grep -q ':1723 '; do sleep 0.1; i=$((i + 1)); done
      if netstat -ltn | grep -q ':1723 '; then echo "pptpd listening"; else echo "pptpd did not start"; return 1; fi ;;
    ps) ps ;;
    tcp) netstat -tn 2>/dev/null | grep '^tcp' ;;
    mem) free -k | awk '/^Mem:/ { printf "mem_total_kib=%s mem_used_kib=%s mem_free_kib=%s\n", $2, $3, $4 }' ;;
    mark) shift; logger -t lab "MARK $*"; echo "marked" ;;
    netem)
      # netem LOSS_PERCENT DELAY_MS JITTER_MS: see `lab.sh netem`
      loss=$2 delay=$3 jitter=${4:-0}
      jit=""
      [ "$jitter" != 0 ] && jit="$jitter""ms distribution normal"
      netem_off
      # shellcheck disable=SC2086
      $TC qdisc add dev eth0 root netem limit 10000 delay "$delay"ms $jit loss "$loss"% || return 1
      /bin/ip link add ifb0 type ifb 2>/dev/null
      /bin/ip link set ifb0 up
      $TC qdisc add dev eth0 handle ffff: ingress || return 1
      $TC filter add dev eth0 parent ffff: matchall action mirred egress redirect dev ifb0 || return 1
      $TC qdisc add dev ifb0 root netem limit 10000 loss "$loss"% || return 1
      logger -t lab "netem loss=$loss% delay=${delay}ms jitter=${jitter}ms"
      echo "netem loss=$loss% delay=${delay}ms jitter=${jitter}ms" ;;
    ppp-txqueuelen)
      # txqueuelen of every live ppp interface (pppd's default is 3)
      for d in $(ls /sys/class/net | grep '^ppp'); do /bin/ip link set "$d" txqueuelen "$2"; done
      ls /sys/class/net | grep '^ppp' | while read -r d; do echo "$d $(cat /sys/class/net/$d/tx_queue_len)"; done ;;
    netem-off) netem_off; logger -t lab "netem off"; echo "netem off" ;;
    *) echo "unknown command: $1 (ping sessions pptpd-stop pptpd-kill pptpd-start ps tcp mem mark netem netem-off)"; return 2 ;;
  esac
}

ctl_loop() {
  stty -F /dev/ttyS1 raw -echo 2>/dev/null
  while :; do
    while read -r line; do
      # shellcheck disable=SC2086
      ctl_cmd $line
      echo "LABCTL-END rc=$?"
    done </dev/ttyS1 >/dev/ttyS1 2>&1
    sleep 0.2
  done
}

if [ "$role" = server ]; then
  echo 1 >/proc/sys/net/ipv4/ip_forward
  write_pptpd_config
  write_www
  httpd -p 80 -h /srv/www
  nc -ll -p 7 -e /bin/cat &          # echo
  nc -ll -p 9 -e /bin/lab-discard &  # discard (upload sink)
  pptpd_supervisor &
  ctl_loop &
  i=0
  while ! netstat -ltn | grep -q ':1723 '; do
    sleep 0.1; i=$((i + 1)); [ $i -gt 300 ] && break
  done
  echo "LAB: READY uptime=$(uptime_s) files: $(cd /srv/www && ls | tr '\n' ' ')"
  while :; do sleep 3600; done
fi

# ---------------------------------------------------------------- client role
opts="noauth refuse-pap refuse-chap refuse-mschap refuse-eap require-mppe-128 remotename pptpd
 nobsdcomp nodeflate novj novjccomp nodefaultroute nodetach maxfail 1 lcp-echo-interval 0"
pty="pptp $server --nolaunchpppd --nohostroute --loglevel 0"
# pptp-linux calls /bin/ip (iproute2's, in the image for `lab.sh netem`)

# Role speed: the kernel's PPTP client (pptp-linux + pppd + ppp_mppe) logs in
# and downloads the file with STREAMS parallel connections (re-opened as they
# finish) for SECS seconds; the octets of the window after WARMUP seconds give
# the kernel TCP baseline of `lab.sh kernel-speed`.
if [ "$role" = speed ]; then
  # shellcheck disable=SC2086
  pppd pty "$pty" name "$user" password "$pass" $opts &
  pppd_pid=$!
  i=0
  while ! ip -4 addr show dev ppp0 2>/dev/null | grep -q inet; do
    sleep 0.1; i=$((i + 1)); [ $i -gt 600 ] && break
  done
  if ip -4 addr show dev ppp0 2>/dev/null | grep -q inet; then
    n=0
    while [ $n -lt "${streams:-4}" ]; do
      (while :; do wget -q -O - "http://10.78.0.1$fetch"; done) >/tmp/s$n 2>/dev/null &
      n=$((n + 1))
    done
    total() { cat /tmp/s* | wc -c; }
    sleep "${warmup:-2}"
    a=$(uptime_s); b0=$(total)
    sleep $(( ${secs:-10} - ${warmup:-2} ))
    b=$(uptime_s); b1=$(total)
    echo "LAB: RESULT kernel-speed streams=${streams:-4} bytes=$((b1 - b0)) secs=$(awk "BEGIN{print $b-$a}") mbps=$(awk "BEGIN{printf \"%.3f\", ($b1-$b0)*8/($b-$a)/1e6}")"
  else
    echo "LAB: RESULT kernel-speed ppp0 did not come up"
  fi
  kill $pppd_pid 2>/dev/null
  echo "LAB: CLIENT DONE"
  poweroff -f
fi

echo "LAB: client: wrong password"
# shellcheck disable=SC2086
pppd pty "$pty" name "$user" password "wrong-$pass" $opts
echo "LAB: RESULT badpass rc=$?"

echo "LAB: client: unknown user"
# shellcheck disable=SC2086
pppd pty "$pty" name "nobody-$user" password "$pass" $opts
echo "LAB: RESULT baduser rc=$?"

echo "LAB: client: right password"
t0=$(uptime_s)
# shellcheck disable=SC2086
pppd pty "$pty" name "$user" password "$pass" $opts &
pppd_pid=$!
i=0
while ! ip -4 addr show dev ppp0 2>/dev/null | grep -q inet; do
  sleep 0.1; i=$((i + 1)); [ $i -gt 300 ] && break
done
if ip -4 addr show dev ppp0 2>/dev/null | grep -q inet; then
  t1=$(uptime_s)
  echo "LAB: RESULT ppp0 up in $(awk "BEGIN{print $t1-$t0}")s: $(ip -4 -o addr show dev ppp0 | awk '{print $4,$5,$6}')"
  a=$(uptime_s)
  wget -q -O /tmp/fetched "http://10.78.0.1$fetch"
  b=$(uptime_s)
  echo "LAB: RESULT fetched bytes=$(wc -c </tmp/fetched) secs=$(awk "BEGIN{print $b-$a}")"
  echo "LAB: RESULT sha256=$(sha256sum </tmp/fetched | cut -d' ' -f1)"
else
  echo "LAB: RESULT ppp0 did not come up"
fi
kill $pppd_pid 2>/dev/null
wait $pppd_pid
echo "LAB: RESULT goodpass pppd rc=$?"
echo "LAB: CLIENT DONE"
poweroff -f
