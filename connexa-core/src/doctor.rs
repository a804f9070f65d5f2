//! `connexa doctor`: what this host and this configuration can do, checked
//! one by one, each with what to do when it fails.
//!
//! Every check only looks: the database is opened read-only and never
//! created or migrated, sockets are opened and closed, files are `stat`ed.
//! The one network check (the speed target) opens a TCP connection to the
//! configured target and closes it.
//!
//! ```no_run
//! # async fn demo() {
//! use connexa_core::config::Config;
//! use connexa_core::doctor;
//!
//! let report = doctor::run(&Config::default()).await;
//! for c in &report.checks {
//!     println!("{:?} {}: {}", c.status, c.name, c.detail);
//! }
//! std::process::exit(if report.ok() { 0 } else { 1 });
//! # }
//! ```

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::probe::{IcmpConfig, IcmpPinger};
use crate::speed::http::HttpUrl;
use crate::store::{Backend, SqlStore, sqlite_path};
use crate::tunnel::GreSocket;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Works.
    Ok,
    /// Works, but something deserves the operator's attention.
    Warn,
    /// Does not work.
    Fail,
    /// Not applicable with this configuration or build.
    Skip,
}

/// One check: what was looked at, what was found, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name (`database`, `raw-gre`, ...).
    pub name: &'static str,
    /// The outcome.
    pub status: CheckStatus,
    /// Whether a failure makes the report fail ([`Report::ok`]).
    pub required: bool,
    /// What was found, in one line.
    pub detail: String,
    /// What to do about a warning or failure, in one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, required: bool, status: CheckStatus, detail: String) -> Check {
        Check {
            name,
            status,
            required,
            detail,
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// `true` when no required check failed.
    pub fn ok(&self) -> bool {
        !self
            .checks
            .iter()
            .any(|c| c.required && c.status == CheckStatus::Fail)
    }
}

/// How far a speed target may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How far ahead of this host's clock a stored time may be before the clock
/// counts as gone backwards.
const CLOCK_SLACK_MS: i64 = 5 * 60 * 1000;

/// Largest tolerated skew between this host and PostgreSQL.
const MAX_SKEW_MS: i64 = 30 * 1000;

/// Runs every check against `config` (its `database` is the database checked:
/// set it to the effective URL first).
pub async fn run(config: &Config) -> Report {
    let mut checks = Vec::new();
    let db_url = config
        .database
        .clone()
        .unwrap_or_else(|| "sqlite://connexa.db?mode=rwc".to_owned());
    let schema = database(&db_url, &mut checks).await;
    checks.push(raw_gre());
    checks.push(icmp().await);
    checks.push(net_admin());
    checks.push(speed_target(config).await);
    checks.push(service_ports(config));
    checks.push(openvpn());
    checks.push(secrets(config, &db_url, schema.as_ref()).await);
    file_modes(config, &db_url, &mut checks);
    checks.push(clock(schema.as_ref()));
    Report { checks }
}

async fn database(url: &str, checks: &mut Vec<Check>) -> Option<crate::store::SchemaState> {
    let shown = crate::store::redact_url(url);
    match SqlStore::inspect(url).await {
        Ok(s) if s.pending == 0 => {
            checks.push(Check::new(
                "database",
                true,
                CheckStatus::Ok,
                format!(
                    "{shown}: reachable, schema current ({} migrations)",
                    s.applied
                ),
            ));
            Some(s)
        }
        Ok(s) => {
            checks.push(
                Check::new(
                    "database",
                    true,
                    CheckStatus::Fail,
                    format!(
                        "{shown}: reachable, {} of {} migrations not applied",
                        s.pending,
                        s.applied + s.pending
                    ),
                )
                .fix("any read-write command migrates it, e.g. `connexa stats`"),
            );
            Some(s)
        }
        Err(e) => {
            let missing = sqlite_path(url).is_some_and(|p| !p.exists());
            let fix = if missing {
                "create it: `connexa stats` (opens and migrates), or point --db / $CONNEXA_DB / `database` at the right file"
            } else {
                "check the URL (--db, $CONNEXA_DB or `database` in the config), that the server runs and the user may connect"
            };
            checks.push(Check::new("database", true, CheckStatus::Fail, e.to_string()).fix(fix));
            None
        }
    }
}

fn raw_gre() -> Check {
    match GreSocket::open() {
        Ok(_) => Check::new(
            "raw-gre",
            true,
            CheckStatus::Ok,
            "a raw GRE socket opens: auth and speed tests and SOCKS services can run".into(),
        ),
        Err(e) => Check::new(
            "raw-gre",
            true,
            CheckStatus::Fail,
            format!("no raw GRE socket ({e}): only light tests can run"),
        )
        .fix(
            "run as root, or `sudo setcap cap_net_raw+ep $(command -v connexa)`, \
             or AmbientCapabilities=CAP_NET_RAW in the systemd unit",
        ),
    }
}

async fn icmp() -> Check {
    let pinger = IcmpPinger::new(IcmpConfig::default());
    if pinger.available(std::net::Ipv4Addr::LOCALHOST.into()).await {
        Check::new(
            "icmp",
            false,
            CheckStatus::Ok,
            "ICMP echo sockets open: light tests measure latency by ping".into(),
        )
    } else {
        Check::new(
            "icmp",
            false,
            CheckStatus::Warn,
            "no ICMP socket: latency falls back to the PPTP handshake time".into(),
        )
        .fix("CAP_NET_RAW, or `sysctl -w net.ipv4.ping_group_range='0 2147483647'`")
    }
}

/// Bit 12 of the effective capability set (`CapEff` in /proc/self/status).
fn has_cap_net_admin() -> Option<bool> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let bits = u64::from_str_radix(hex, 16).ok()?;
    Some(bits & (1 << CAP_NET_ADMIN) != 0)
}

fn net_admin() -> Check {
    match has_cap_net_admin() {
        Some(true) => Check::new(
            "cap-net-admin",
            false,
            CheckStatus::Ok,
            "CAP_NET_ADMIN is held".into(),
        ),
        Some(false) => Check::new(
            "cap-net-admin",
            false,
            CheckStatus::Skip,
            "CAP_NET_ADMIN is not held; only TUN and OpenVPN service kinds would need it, \
             and this build runs SOCKS5 services only"
                .into(),
        ),
        None => Check::new(
            "cap-net-admin",
            false,
            CheckStatus::Skip,
            "cannot read /proc/self/status to tell".into(),
        ),
    }
}

async fn speed_target(config: &Config) -> Check {
    let (url, keyed) = match config.speed_self_url() {
        Some(u) => (u, true),
        None => (config.test.test_url.clone(), false),
    };
    let u = match HttpUrl::parse(&url) {
        Ok(u) => u,
        Err(e) => {
            return Check::new("speed-target", true, CheckStatus::Fail, e.to_string())
                .fix("set [test] test_url (or self_url) to an http:// or https:// URL");
        }
    };
    let host = u.host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host.parse() {
        Ok(ip) => ip,
        Err(_) => match crate::speed::resolve_here(host, u.port).await {
            Ok(ip) => ip,
            Err(e) => {
                return Check::new(
                    "speed-target",
                    true,
                    CheckStatus::Fail,
                    format!("{url}: {e}"),
                )
                .fix("check DNS on this host, or set [test] test_url / self_url");
            }
        },
    };
    let addr = SocketAddr::new(ip, u.port);
    let started = Instant::now();
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await;
    let kind = if keyed {
        "the keyed endpoint"
    } else if u.tls {
        "a public HTTPS target"
    } else {
        "a plain-http target (a node can fake it: prefer the keyed endpoint)"
    };
    match conn {
        Ok(Ok(_)) => {
            let ms = started.elapsed().as_millis();
            let status = if keyed || u.tls {
                CheckStatus::Ok
            } else {
                CheckStatus::Warn
            };
            let check = Check::new(
                "speed-target",
                true,
                status,
                format!("{url} ({kind}): {addr} accepts connections from this host ({ms} ms)"),
            );
            if status == CheckStatus::Warn {
                check.fix("set [test] self_url or [services] public_host to test against the keyed endpoint")
            } else {
                check
            }
        }
        Ok(Err(e)) => Check::new(
            "speed-target",
            true,
            CheckStatus::Fail,
            format!("{url} ({kind}): cannot connect to {addr}: {e}"),
        )
        .fix("start the endpoint, open the firewall, or set [test] test_url / self_url"),
        Err(_) => Check::new(
            "speed-target",
            true,
            CheckStatus::Fail,
            format!(
                "{url} ({kind}): {addr} did not accept a connection within {} s",
                CONNECT_TIMEOUT.as_secs()
            ),
        )
        .fix("check the route and firewall to it, or set [test] test_url / self_url"),
    }
}

fn service_ports(config: &Config) -> Check {
    let s = &config.services;
    let (lo, hi) = (s.port_min, s.port_max);
    let total = usize::from(hi.saturating_sub(lo)) + 1;
    let free = (lo..=hi)
        .filter(|p| TcpListener::bind(SocketAddr::new(s.bind, *p)).is_ok())
        .count();
    let detail = format!("{free} of {total} ports free in {lo}-{hi} on {}", s.bind);
    if free == 0 {
        Check::new("service-ports", true, CheckStatus::Fail, detail)
            .fix("choose another range: [services] port_min / port_max, or another bind address")
    } else if free < total {
        Check::new("service-ports", true, CheckStatus::Warn, detail).fix(
            "ports in use belong to running services or other programs (`ss -ltnp`); \
             widen [services] port_min / port_max if services may run short",
        )
    } else {
        Check::new("service-ports", true, CheckStatus::Ok, detail)
    }
}

fn openvpn() -> Check {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("openvpn"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Check::new(
            "openvpn",
            false,
            CheckStatus::Ok,
            format!("{} is installed", p.display()),
        ),
        None => Check::new(
            "openvpn",
            false,
            CheckStatus::Skip,
            "no openvpn binary; this build runs SOCKS5 services only, which do not need it".into(),
        ),
    }
}

/// Files whose mode is checked: the database (and its WAL and shared-memory
/// files) and the speed key must be readable by their owner only; a secrets
/// key may also be readable by its group (`root:connexa 0640`), never by
/// others.
fn file_modes(config: &Config, db_url: &str, checks: &mut Vec<Check>) {
    const OWNER_ONLY: u32 = 0o077;
    const NOT_OTHERS: u32 = 0o007;
    let mut secret: Vec<(PathBuf, &'static str, u32)> = Vec::new();
    if let Some(db) = sqlite_path(db_url) {
        let wal = PathBuf::from(format!("{}-wal", db.display()));
        let shm = PathBuf::from(format!("{}-shm", db.display()));
        secret.push((db, "database, holds node passwords", OWNER_ONLY));
        secret.push((wal, "database WAL", OWNER_ONLY));
        secret.push((shm, "database shared memory", OWNER_ONLY));
    }
    secret.push((config.speed_key_path(), "speed endpoint key", OWNER_ONLY));
    for p in config
        .secrets
        .key_file
        .iter()
        .chain(&config.secrets.old_key_files)
    {
        secret.push((p.clone(), "secrets key", NOT_OTHERS));
    }
    let mut bad = Vec::new();
    let mut files = Vec::new();
    let mut seen = 0;
    for (path, what, mask) in &secret {
        match mode(path) {
            Some(m) if m & mask != 0 => {
                bad.push(format!("{} ({what}) is {:04o}", path.display(), m & 0o7777));
                files.push(path.display().to_string());
            }
            Some(_) => seen += 1,
            None => {}
        }
    }
    if bad.is_empty() {
        checks.push(Check::new(
            "file-modes",
            true,
            if seen == 0 {
                CheckStatus::Skip
            } else {
                CheckStatus::Ok
            },
            if seen == 0 {
                "no database file or key file here yet".into()
            } else {
                format!("{seen} secret files closed to other users")
            },
        ));
    } else {
        checks.push(
            Check::new("file-modes", true, CheckStatus::Fail, bad.join("; "))
                .fix(format!("chmod 600 {}", files.join(" "))),
        );
    }
}

async fn secrets(
    config: &Config,
    db_url: &str,
    schema: Option<&crate::store::SchemaState>,
) -> Check {
    let keys = match crate::runtime::secret_keys(config) {
        Ok(k) => k,
        Err(e) => {
            return Check::new("secrets", true, CheckStatus::Fail, e.to_string())
                .fix("fix [secrets] key_file / old_key_files or $CONNEXA_SECRET_KEY");
        }
    };
    // The stored values, when the database is there and current (opening it
    // then migrates nothing; a SQLite file is opened read-only).
    let status = match schema.filter(|s| s.pending == 0) {
        Some(_) => {
            let url = match sqlite_path(db_url) {
                Some(p) => format!("sqlite://{}?mode=ro", p.display()),
                None => db_url.to_owned(),
            };
            match SqlStore::connect_unchecked(&url).await {
                Ok(store) => store.sealing_status().await.ok(),
                Err(_) => None,
            }
        }
        None => None,
    };
    if let Some(st) = &status
        && let Some(unknown) = st.sealed.keys().find(|id| !keys.knows(id))
    {
        return Check::new(
            "secrets",
            true,
            CheckStatus::Fail,
            format!(
                "{} values are sealed with key {unknown}, which is not configured",
                st.sealed[unknown]
            ),
        )
        .fix("set [secrets] key_file (or old_key_files) to that key's file");
    }
    match keys.current() {
        None => Check::new(
            "secrets",
            true,
            CheckStatus::Warn,
            "no secrets key: node passwords and SOCKS5 credentials are stored as plaintext".into(),
        )
        .fix(
            "`connexa secrets keygen FILE`, set [secrets] key_file, then `connexa secrets rotate`",
        ),
        Some(k) => {
            let stale = status
                .as_ref()
                .map(|st| {
                    st.plaintext
                        + st.sealed
                            .iter()
                            .filter(|(id, _)| *id != k.id())
                            .map(|(_, n)| n)
                            .sum::<u64>()
                })
                .unwrap_or(0);
            if stale > 0 {
                Check::new(
                    "secrets",
                    true,
                    CheckStatus::Warn,
                    format!(
                        "sealing with key {}; {stale} stored values are not sealed with it yet",
                        k.id()
                    ),
                )
                .fix("`connexa secrets rotate`")
            } else {
                Check::new(
                    "secrets",
                    true,
                    CheckStatus::Ok,
                    format!("every stored secret is sealed with key {}", k.id()),
                )
            }
        }
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

#[cfg(not(unix))]
fn mode(_path: &Path) -> Option<u32> {
    None
}

fn clock(schema: Option<&crate::store::SchemaState>) -> Check {
    let now = chrono::Utc::now();
    let shown = now.format("%Y-%m-%d %H:%M:%S UTC");
    let now_ms = now.timestamp_millis();
    // Connexa did not exist before 2025: a clock before it is unset.
    if now.timestamp() < 1_735_689_600 {
        return Check::new(
            "clock",
            true,
            CheckStatus::Fail,
            format!("this host's clock says {shown}, before 2025"),
        )
        .fix("set the clock (e.g. enable systemd-timesyncd or chrony)");
    }
    if let Some(s) = schema {
        if let Some(newest) = s.newest_record_ms.filter(|n| *n > now_ms + CLOCK_SLACK_MS) {
            return Check::new(
                "clock",
                true,
                CheckStatus::Fail,
                format!(
                    "the database records a time {} s ahead of this host's clock: the clock went backwards",
                    (newest - now_ms) / 1000
                ),
            )
            .fix("set the clock (NTP); history and job deadlines depend on it");
        }
        if let (Backend::Postgres, Some(server)) = (s.backend, s.server_clock_ms) {
            let skew = server - now_ms;
            if skew.abs() > MAX_SKEW_MS {
                return Check::new(
                    "clock",
                    true,
                    CheckStatus::Fail,
                    format!("this host's clock is {} s off PostgreSQL's", -skew / 1000),
                )
                .fix("run NTP on every worker host and the database server");
            }
            return Check::new(
                "clock",
                true,
                CheckStatus::Ok,
                format!("{shown}, within {} ms of PostgreSQL's", skew.abs()),
            );
        }
    }
    Check::new("clock", true, CheckStatus::Ok, format!("{shown}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_optional_check_keeps_the_report_ok_and_a_failed_required_one_does_not() {
        let mut r = Report {
            checks: vec![Check::new("a", false, CheckStatus::Fail, String::new())],
        };
        assert!(r.ok());
        r.checks
            .push(Check::new("b", true, CheckStatus::Warn, String::new()));
        assert!(r.ok());
        r.checks
            .push(Check::new("c", true, CheckStatus::Fail, String::new()));
        assert!(!r.ok());
    }

    #[test]
    fn a_stored_time_ahead_of_the_clock_fails_the_clock_check() {
        let ahead = chrono::Utc::now().timestamp_millis() + 3_600_000;
        let s = crate::store::SchemaState {
            backend: Backend::Sqlite,
            applied: 1,
            pending: 0,
            newest_record_ms: Some(ahead),
            server_clock_ms: None,
        };
        assert_eq!(clock(Some(&s)).status, CheckStatus::Fail);
        let s = crate::store::SchemaState {
            newest_record_ms: Some(ahead - 7_200_000),
            ..s
        };
        assert_eq!(clock(Some(&s)).status, CheckStatus::Ok);
    }

    #[test]
    fn a_skewed_postgres_clock_fails_the_clock_check() {
        let now = chrono::Utc::now().timestamp_millis();
        let s = crate::store::SchemaState {
            backend: Backend::Postgres,
            applied: 1,
            pending: 0,
            newest_record_ms: None,
            server_clock_ms: Some(now + 120_000),
        };
        assert_eq!(clock(Some(&s)).status, CheckStatus::Fail);
        let s = crate::store::SchemaState {
            server_clock_ms: Some(now + 1_000),
            ..s
        };
        assert_eq!(clock(Some(&s)).status, CheckStatus::Ok);
    }
}
