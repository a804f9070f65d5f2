#!/usr/bin/env bash
# The package test (docs/install.md): builds the `connexa` Debian package
# from the workspace's DEBUG binaries (the ones tests/run.sh has just built;
# the user-facing route is the release build, `cargo deb -p connexa-cli`),
# installs it into THIS machine with dpkg -i, checks what it installed, runs
# the CLI, the login test and the API's first step as the `connexa` user with
# exactly the unit's capabilities, then purges it again.
#
#   tests/package.sh        # as root on Debian 12; tests/run.sh calls it
#
# Exit codes: 0 every check passed; 1 a check failed (each prints PASS/FAIL);
# 2 the test cannot run here (not root, no dpkg, cargo-deb cannot be
# installed, a `connexa` package or user exists already — it is never
# touched): tests/run.sh reports that as `unavailable` (fatal under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

# cargo-deb, pinned (builds with rustc >= 1.85; `--profile dev` is accepted
# with a warning that -q silences).
CARGO_DEB_VERSION=3.8.0

log() { printf '\033[1m[tests/package.sh]\033[0m %s\n' "$*" >&2; }
unavailable() { log "UNAVAILABLE: $*"; exit 2; }

failures=0
pass() { printf 'PASS: %s\n' "$1"; }
fail() { printf 'FAIL: %s\n' "$1"; [ $# -lt 2 ] || printf '%s\n' "$2" | sed 's/^/      /'; failures=$((failures + 1)); }
# check NAME COMMAND...: PASS if the command exits 0, else FAIL with its output.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}

[ "$(id -u)" = 0 ] || unavailable "needs root (dpkg -i into this machine, a system user)"
for c in dpkg dpkg-deb systemd-analyze setpriv runuser python3; do
  command -v "$c" >/dev/null || unavailable "no $c on this machine"
done
if dpkg-query -W -f='${Status}' connexa 2>/dev/null | grep -qv 'not-installed'; then
  unavailable "a connexa package is installed here already (the test would purge it and its database)"
fi
if getent passwd connexa >/dev/null || [ -e /var/lib/connexa ] || [ -e /etc/connexa ]; then
  unavailable "a connexa user, /var/lib/connexa or /etc/connexa exists already (the test would delete it)"
fi

# --- cargo-deb ------------------------------------------------------------------
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  log "cargo install cargo-deb --locked --version $CARGO_DEB_VERSION"
  t0=$SECONDS
  # Its own temporary target dir, not the workspace's.
  env -u CARGO_TARGET_DIR cargo install -q cargo-deb --locked --version "$CARGO_DEB_VERSION" \
    || unavailable "cargo install cargo-deb $CARGO_DEB_VERSION failed"
  log "cargo-deb installed in $((SECONDS - t0)) s"
fi

# --- the package -------------------------------------------------------------
work=$(mktemp -d /tmp/connexa-package.XXXXXX)
chmod 711 "$work" # the connexa user reaches its own directory and the fleet list in it
sim_pid=""
http_pid=""
installed=""
on_exit() {
  [ -z "$http_pid" ] || kill "$http_pid" 2>/dev/null || true
  [ -z "$sim_pid" ] || kill "$sim_pid" 2>/dev/null || true
  if [ -n "$installed" ] && dpkg-query -W -f='${Status}' connexa 2>/dev/null | grep -qv 'not-installed'; then
    dpkg --purge connexa >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap on_exit EXIT

# The same command as tests/run.sh's examples step, so in a tests/run.sh run
# it builds nothing (another feature set would rebuild connexa-core).
log "cargo build --workspace --bins (debug)"
t0=$SECONDS
cargo build -q --workspace --bins
log "binaries ready in $((SECONDS - t0)) s"
t0=$SECONDS
# --no-build: package what was just built; --fast: gzip-level compression.
cargo deb -q -p connexa-cli --profile dev --no-build --fast -o "$work/" >"$work/cargo-deb.out"
deb=$(tail -n1 "$work/cargo-deb.out")
[ -f "$deb" ] || { fail "cargo deb built a .deb" "$(cat "$work/cargo-deb.out")"; exit 1; }
log "built $(basename "$deb") ($(du -h "$deb" | cut -f1)) in $((SECONDS - t0)) s"
version=$(dpkg-deb -f "$deb" Version)
upstream=${version%-*}

# --- what the package declares -------------------------------------------------
check "the package is named connexa" test "$(dpkg-deb -f "$deb" Package)" = connexa
depends=$(dpkg-deb -f "$deb" Depends)
check "Depends computed by cargo-deb (libc6) plus adduser: $depends" \
  bash -c '[[ "$1" == *libc6* && "$1" == *adduser* ]]' _ "$depends"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/connexa ./usr/bin/connexa-http ./usr/lib/systemd/system/connexa.service \
  ./usr/lib/systemd/system/connexa-http.service ./etc/connexa/config.toml ./usr/share/doc/connexa/install.md; do
  check "the package holds $f" grep -q " $f\$" <<<"$contents"
done
dpkg-deb -e "$deb" "$work/control"
check "/etc/connexa/config.toml is a conffile" grep -qx /etc/connexa/config.toml "$work/control/conffiles"

# --- install ---------------------------------------------------------------------
installed=1
if ! out=$(dpkg -i "$deb" 2>&1); then
  # Missing dependencies: let apt bring them and finish the configuration.
  log "dpkg -i left dependencies to install: apt-get install -f"
  out+=$'\n'$(DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq 2>&1) || true
fi
if dpkg-query -W -f='${Status}' connexa 2>/dev/null | grep -qx 'install ok installed'; then
  pass "dpkg -i $(basename "$deb")"
else
  fail "dpkg -i $(basename "$deb")" "$out"
  exit 1
fi
check "dpkg -i enabled and started nothing (no systemd here, and enable = false)" \
  bash -c '! ls /etc/systemd/system/*/connexa*.service 2>/dev/null | grep -q .'

check "/usr/bin/connexa --version is connexa $upstream" \
  bash -c '[ "$(/usr/bin/connexa --version)" = "connexa $1" ]' _ "$upstream"
check "/usr/bin/connexa-http --version is connexa-http $upstream" \
  bash -c '[ "$(/usr/bin/connexa-http --version)" = "connexa-http $1" ]' _ "$upstream"

# --- the user, the directories, the config ------------------------------------
if entry=$(getent passwd connexa); then
  IFS=: read -r _ _ uid _ _ home shell <<<"$entry"
  check "connexa is a system user (uid $uid < 1000)" test "$uid" -lt 1000
  check "connexa's home is /var/lib/connexa (got $home)" test "$home" = /var/lib/connexa
  check "connexa cannot log in (shell $shell)" test "$shell" = /usr/sbin/nologin
  check "connexa's group is connexa ($(id -gn connexa))" test "$(id -gn connexa)" = connexa
else
  fail "id connexa: the package created the connexa user"
fi
check "/var/lib/connexa is connexa:connexa 750 ($(stat -c '%U:%G %a' /var/lib/connexa 2>&1))" \
  test "$(stat -c '%U:%G %a' /var/lib/connexa 2>&1)" = "connexa:connexa 750"
check "/etc/connexa/config.toml is root:connexa 640 ($(stat -c '%U:%G %a' /etc/connexa/config.toml 2>&1))" \
  test "$(stat -c '%U:%G %a' /etc/connexa/config.toml 2>&1)" = "root:connexa 640"

# --- the units -------------------------------------------------------------------
units=(/lib/systemd/system/connexa.service /lib/systemd/system/connexa-http.service)
# Exit 0 is not enough: unknown keys and bad values are only warned about.
if out=$(systemd-analyze verify "${units[@]}" 2>&1) && [ -z "$out" ]; then
  pass "systemd-analyze verify ${units[*]} (exit 0, nothing printed)"
else
  fail "systemd-analyze verify ${units[*]}" "$out"
fi
for u in "${units[@]}"; do
  name=$(basename "$u")
  for want in "User=connexa" "StateDirectory=connexa" "WorkingDirectory=/var/lib/connexa" \
    "AmbientCapabilities=CAP_NET_RAW" "CapabilityBoundingSet=CAP_NET_RAW" "NoNewPrivileges=yes" \
    "ProtectSystem=strict" "ProtectHome=yes" "PrivateTmp=yes" "UMask=0077" "Restart=on-failure" \
    "ExecStart=/usr/bin/connexa.* --config /etc/connexa/config.toml "; do
    check "$name: $want" grep -qx -- "$want.*" "$u"
  done
  exposure=$(systemd-analyze security --offline=true "$u" 2>&1 | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
  # systemd's scale: 0 (locked down) .. 10 (unprotected); "OK" is below 2.
  check "$name: systemd-analyze security exposure ${exposure:-?} is below 2.0 (OK)" \
    python3 -c 'import sys; sys.exit(not float(sys.argv[1]) < 2.0)' "${exposure:-99}"
done

# The units' own privileges, as setpriv arguments: the connexa user, its
# group, and exactly the capabilities of AmbientCapabilities= (capability
# bounding set included), no new privileges: what systemd gives the service.
caps=$(sed -n 's/^AmbientCapabilities=//p' /lib/systemd/system/connexa.service | tr '[:upper:]' '[:lower:]' \
  | sed 's/cap_//g; s/\([a-z_]\+\)/+\1/g; s/ /,/g')
as_service=(setpriv --reuid connexa --regid connexa --init-groups --inh-caps "-all,$caps"
  --ambient-caps "-all,$caps" --bounding-set "-all,$caps" --no-new-privs --)
as_plain_user=(setpriv --reuid connexa --regid connexa --init-groups --inh-caps -all --bounding-set -all --no-new-privs --)

# --- the config file --------------------------------------------------------------
run_dir="$work/run"
install -d -o connexa -g connexa -m 0700 "$run_dir"
db="sqlite://$run_dir/connexa.db?mode=rwc"
check "the connexa user reads /etc/connexa/config.toml (connexa stats)" \
  runuser -u connexa -- /usr/bin/connexa --config /etc/connexa/config.toml --db "$db" stats
# Every documented key, uncommented, parses; a misspelt one is refused (3).
sed -E 's/^# ([a-z_]+ = )/\1/; s/^# (\[providers)/\1/' /etc/connexa/config.toml >"$work/all-keys.toml"
# key_file must name a real key: one made here, in place of the example path.
/usr/bin/connexa secrets keygen "$work/secrets.key" >/dev/null
sed -i -E "s|^key_file = \"[^\"]*\"|key_file = \"$work/secrets.key\"|" "$work/all-keys.toml"
check "every key commented in config.toml parses when uncommented ($(grep -cE '^[a-z_]+ = ' "$work/all-keys.toml") keys)" \
  /usr/bin/connexa --config "$work/all-keys.toml" --db "sqlite://$work/keys.db?mode=rwc" stats
printf '[test]\nconcurency = 1\n' >>"$work/all-keys.toml"
/usr/bin/connexa --config "$work/all-keys.toml" --db "sqlite://$work/keys.db?mode=rwc" stats >/dev/null 2>&1 && rc=0 || rc=$?
check "a misspelt key is refused (exit $rc, want 3)" test "$rc" = 3

# --- connexa run --once as the connexa user ---------------------------------------
check "runuser -u connexa -- connexa run --once (temporary database) exits 0" \
  runuser -u connexa -- /usr/bin/connexa --config /etc/connexa/config.toml --db "$db" run --once
check "the database was created, owned by connexa ($(stat -c %U "$run_dir/connexa.db" 2>&1))" \
  test "$(stat -c %U "$run_dir/connexa.db" 2>&1)" = connexa

# --- the login test with the unit's capabilities only ------------------------------
# A loopback fleet (connexa sim, which serves PPTP logins over raw GRE) on
# 127.86.0.x; the connexa user logs into every node with exactly the
# capabilities the units grant, and is refused without them.
/usr/bin/connexa sim --nodes 3 --first-ip 127.86.0.1 --list "$work/fleet.txt" >"$work/sim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 100); do [ -s "$work/fleet.txt" ] && break; sleep 0.1; done
chmod 644 "$work/fleet.txt" 2>/dev/null || true
check "the connexa user imports a node list" \
  runuser -u connexa -- /usr/bin/connexa --config /etc/connexa/config.toml --db "$db" import "$work/fleet.txt"
"${as_plain_user[@]}" /usr/bin/connexa --db "$db" -q test auth --all >/dev/null 2>&1 && rc=0 || rc=$?
check "without capabilities the login test is refused (exit $rc, want 1)" test "$rc" = 1
check "with the unit's capabilities ($caps) the login test logs into 3 of 3 nodes" \
  "${as_service[@]}" /usr/bin/connexa --db "$db" -q test auth --all
ok=$(/usr/bin/connexa --db "$db" --output json stats 2>&1 | python3 -c '
import json, sys
print({s["status"]: s["count"] for s in json.load(sys.stdin)["by_status"]}["ping_ok"])' 2>&1 || true)
check "3 nodes are ping_ok (logged in) after it (got $ok)" test "$ok" = 3
kill "$sim_pid" 2>/dev/null || true
wait "$sim_pid" 2>/dev/null || true
sim_pid=""

# --- connexa-http: the first step, serve --init-admin ------------------------------
"${as_service[@]}" /usr/bin/connexa-http --config /etc/connexa/config.toml --db "$db" \
  token create --name admin --role admin >"$work/token" 2>"$work/http.log"
"${as_service[@]}" /usr/bin/connexa-http --config /etc/connexa/config.toml --db "$db" \
  serve --listen 127.0.0.1:0 --init-admin >"$work/password" 2>"$work/http.log" &
http_pid=$!
for _ in $(seq 200); do grep -q 'listening on' "$work/http.log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on http:\/\/\(.*\)/\1/p' "$work/http.log" | head -n1)
token=$(cat "$work/token")
check "connexa-http token create printed an admin token once" grep -qxE 'cxa_[0-9a-f]{64}' "$work/token"
check "connexa-http serve --init-admin printed the admin password once" grep -qxE '[A-Za-z0-9]{24}' "$work/password"
check "that password signs in (POST /api/v1/session)" python3 -c '
import json, sys, urllib.request
req = urllib.request.Request(f"http://{sys.argv[1]}/api/v1/session", data=json.dumps({"name": "admin", "password": sys.argv[2]}).encode(), headers={"Content-Type": "application/json"})
sys.exit("cx_session=" not in (urllib.request.urlopen(req, timeout=30).headers.get("Set-Cookie") or ""))' "${addr:-127.0.0.1:1}" "$(cat "$work/password")"
check "the API answers with that token (GET /api/v1/nodes: 3 nodes)" python3 -c '
import json, sys, urllib.request
req = urllib.request.Request(f"http://{sys.argv[1]}/api/v1/nodes?limit=1", headers={"Authorization": "Bearer " + sys.argv[2]})
sys.exit(json.load(urllib.request.urlopen(req, timeout=10))["total"] != 3)' "${addr:-127.0.0.1:1}" "$token"
kill -TERM "$http_pid" 2>/dev/null || true
wait "$http_pid" 2>/dev/null && rc=0 || rc=$?
http_pid=""
check "connexa-http stops on SIGTERM with exit 0 (got $rc)" test "$rc" = 0

# --- reinstall (the upgrade path) keeps a changed conffile ------------------------
echo '# changed by tests/package.sh' >>/etc/connexa/config.toml
check "dpkg -i again (upgrade path) succeeds" dpkg -i --force-confold "$deb"
check "the changed /etc/connexa/config.toml is kept" grep -qx '# changed by tests/package.sh' /etc/connexa/config.toml
check "and stays root:connexa 640" test "$(stat -c '%U:%G %a' /etc/connexa/config.toml)" = "root:connexa 640"

# --- purge -----------------------------------------------------------------------
check "dpkg --purge connexa" dpkg --purge connexa
installed=""
check "purge removed the binaries and units" \
  bash -c '! [ -e /usr/bin/connexa ] && ! [ -e /usr/bin/connexa-http ] && ! [ -e /lib/systemd/system/connexa.service ]'
check "purge removed /etc/connexa and /var/lib/connexa" bash -c '! [ -e /etc/connexa ] && ! [ -e /var/lib/connexa ]'
check "purge removed the connexa user and group" bash -c '! getent passwd connexa && ! getent group connexa'

if [ "$failures" -gt 0 ]; then
  log "$failures check(s) FAILED"
  exit 1
fi
log "all checks passed"
