//! The operator's configuration file (TOML), shared by the CLI and the HTTP server.
//!
//! Every key is optional; a missing key takes the default shown below. An unknown
//! key is an error that names the key and its line, so a typo never silently
//! falls back to a default.
//!
//! ```toml
//! # connexa.toml
//! database = "sqlite://connexa.db?mode=rwc"
//!
//! [test]
//! concurrency = 500            # nodes tested at once
//! speed_concurrency = 4        # speed tests at once (they share this host's link)
//! connect_timeout_secs = 5.0   # TCP connect
//! light_timeout_secs = 10.0    # the whole control-channel handshake
//! auth_timeout_secs = 25.0     # login (MS-CHAPv2)
//! speed_timeout_secs = 60.0    # the whole speed test
//! speed_threshold_mbps = 1.0   # download goodput at or above: speed_ok
//! # self_url = "http://203.0.113.5:8080"  # your own keyed speed endpoint, as nodes reach it
//! #   (default: http://<services.public_host>:<http.listen port> when public_host is set)
//! self_upload = false          # also upload to <self_url>/speed/up
//! # speed_key_file = "/var/lib/connexa/connexa-speed.key"  # shared secret of the keyed endpoint
//! #   (default: connexa-speed.key next to the SQLite database, else in the working directory;
//! #   generated with mode 0600 on first use)
//! # speed_listen = "0.0.0.0:8081"  # `connexa run` serves the keyed endpoint here
//! speed_max_bytes = 1073741824 # the endpoint's largest download / upload
//! speed_requests_per_minute = 600  # the endpoint's requests per source address and minute
//! resolve_through_node = false # resolve test host names through the node's DNS
//! test_url = "https://speed.cloudflare.com/__down?bytes=25000000"   # without a self_url (http:// or https://)
//! extra_test_urls = []         # more download URLs; parallel streams are spread over all
//! upload_url = ""              # POST endpoint for the upload test; empty: no upload test
//! test_ca_file = ""            # PEM CA certificates trusted for https:// besides the Mozilla roots
//! speed_duration_secs = 10.0   # each direction, warm-up included
//! speed_warmup_secs = 2.0      # discarded start of each direction
//! speed_streams = 4            # parallel connections per direction
//!
//! [services]
//! bind = "127.0.0.1"           # where SOCKS5 services listen
//! port_min = 20000
//! port_max = 29999
//! # public_host = "proxy.example.net"  # host clients are given (default: bind)
//! max_connections = 256        # logged-in client connections at once per service
//! max_preauth = 128            # connections not logged in yet, per service (full: oldest idle evicted)
//! max_preauth_per_source = 16  # ...of them per source IPv4 address / IPv6 /64
//! preauth_timeout_secs = 3.0   # accept to completed login (greeting + username/password)
//! handshake_timeout_secs = 10.0  # accept to CONNECT request
//! connect_timeout_secs = 10.0
//! idle_timeout_secs = 300.0
//! drain_timeout_secs = 2.0     # on stop, time open connections get to finish
//! dns = "tunnel"               # or "local": where CONNECT host names are resolved
//! # check_target = "192.0.2.1:80"  # health: also CONNECT here through the tunnel
//! reconcile_interval_secs = 10.0  # `connexa run`: services made to match service_wanted
//! monitor_interval_secs = 30.0    # `connexa run`: health of running services checked
//! health_threshold = 3            # failed checks in a row before a node goes offline
//! restart_backoff_secs = 30.0     # wait after a failed start, doubled per failure...
//! restart_backoff_max_secs = 600.0  # ...up to this
//! # proxies_file = "/run/connexa/proxies.txt"  # host:port:user:pass per running service, rewritten atomically (0600)
//! tun_prefix = "cx"            # `tun` services: interface <prefix><node id> (needs CAP_NET_ADMIN)
//! openvpn_ports = "1194-1293"  # `openvpn` services: one UDP port each from this range
//! openvpn_subnets = "10.201.0.0/16"  # ...and one /24 client subnet each from this pool
//! openvpn_bind = "0.0.0.0"     # ...the servers listen here (profiles name public_host, else this)
//! # openvpn_dir = "/var/lib/connexa/openvpn"  # the CA (ca.key 0600) and the servers' files
//! #   (default: connexa-openvpn next to the SQLite database, else in the working directory)
//!
//! [http]
//! listen = "127.0.0.1:8080"
//!
//! [workers]                    # many `connexa run` processes on one PostgreSQL
//! heartbeat_secs = 5.0         # each worker's heartbeat: alive, and its items' leases extended
//! lease_secs = 30.0            # a claimed item not extended this long is reclaimed by a live worker
//! # max_services = 200         # most services placed on this worker (PostgreSQL; default: no limit)
//! # public_host = "w1.example.net"  # host this worker's services are reached at (default: [services] public_host)
//! # labels = ["eu"]            # placement labels: `service start --label eu` runs only on workers with it
//!
//! [geo]                        # `connexa test geo`: where each node's address really is
//! # city_db = "/var/lib/connexa/GeoLite2-City.mmdb"  # MaxMind-format city database
//! # asn_db = "/var/lib/connexa/GeoLite2-ASN.mmdb"    # MaxMind-format ASN database
//! online = []                  # then these providers, in order: "ip-api", "ipinfo"
//! cache_ttl_secs = 86400.0     # online answers (GEO and fraud) kept this long
//!
//! [fraud]                      # `connexa test fraud`
//! providers = []               # in order: "ipqualityscore", "abuseipdb", "scamalytics"
//!
//! # [providers.ipinfo]         # one table per provider used
//! # key_env = "IPINFO_TOKEN"   # the key from this environment variable (or key = "...")
//! # base_url = "https://ipinfo.io"  # default: the provider's public endpoint
//! # requests_per_minute = 60   # default: the free plan's limit
//! # user = "..."               # scamalytics only: the account name in its URL
//! ```
//!
//! ```
//! use connexa_core::config::Config;
//! let cfg = Config::from_toml_str("[test]\nconcurrency = 64\n").unwrap();
//! assert_eq!(cfg.test.concurrency, 64);
//! assert_eq!(cfg.services.port_min, 20000);
//!
//! let err = Config::from_toml_str("[test]\nconcurency = 64\n").unwrap_err();
//! assert_eq!(err.line(), Some(2));
//! assert!(err.to_string().contains("concurency"));
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Database URL used when neither `--db` nor `$CONNEXA_DB` is given.
    pub database: Option<String>,
    /// Defaults of test jobs.
    pub test: TestConfig,
    /// SOCKS5 services.
    pub services: ServicesConfig,
    /// The HTTP server.
    pub http: HttpConfig,
    /// GEO enrichment.
    pub geo: GeoConfig,
    /// Fraud scores.
    pub fraud: FraudConfig,
    /// Online providers' settings, by name (`ip-api`, `ipinfo`,
    /// `ipqualityscore`, `abuseipdb`, `scamalytics`).
    pub providers: std::collections::BTreeMap<String, ProviderConfig>,
    /// Secrets at rest.
    pub secrets: SecretsConfig,
    /// Worker processes: heartbeats and leases.
    pub workers: WorkersConfig,
}

/// Worker processes (`[workers]`): each `connexa run` and `connexa-http serve`
/// registers as a worker and beats every `heartbeat_secs`; a job item it
/// claimed is its own until `lease_secs` after its last heartbeat, then any
/// live worker may reclaim it (and this worker's late result is refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// Seconds between heartbeats.
    pub heartbeat_secs: f64,
    /// Seconds a claimed item stays held without a heartbeat; at least twice
    /// `heartbeat_secs`.
    pub lease_secs: f64,
    /// Most services placed on this worker at once (PostgreSQL placement);
    /// `None`: no limit.
    pub max_services: Option<u64>,
    /// The host SOCKS5 clients reach this worker's services at (stored in
    /// each endpoint it starts); `None`: `[services] public_host`, else its
    /// `bind`.
    pub public_host: Option<String>,
    /// This worker's placement labels: a service wanted with a label
    /// (`connexa service start --label`) is placed only on workers that have it.
    pub labels: Vec<String>,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            heartbeat_secs: 5.0,
            lease_secs: 30.0,
            max_services: None,
            public_host: None,
            labels: Vec::new(),
        }
    }
}

/// Secrets at rest (`[secrets]`): node passwords and SOCKS5 credentials are
/// sealed in the database with a key (XChaCha20-Poly1305). Without a key they
/// are stored as plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// The current key: a file of 64 hex digits, mode 0600 (`connexa secrets
    /// keygen FILE`). `$CONNEXA_SECRET_KEY` (the 64 hex digits themselves)
    /// takes precedence.
    pub key_file: Option<PathBuf>,
    /// Older keys, only to open values sealed with them during a rotation
    /// (`connexa secrets rotate` re-seals everything with the current key;
    /// then they can go).
    pub old_key_files: Vec<PathBuf>,
}

/// Fraud scores (`fraud` jobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FraudConfig {
    /// Providers asked in order until one answers.
    pub providers: Vec<String>,
}

/// One online provider. Keys are never logged nor printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// The endpoint (default: the provider's public one).
    pub base_url: Option<String>,
    /// The API key, written in the file.
    pub key: Option<String>,
    /// The name of an environment variable holding the API key.
    pub key_env: Option<String>,
    /// Scamalytics' account name.
    pub user: Option<String>,
    /// Requests per minute at most (default: the provider's free plan).
    pub requests_per_minute: Option<u32>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("base_url", &self.base_url)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("key_env", &self.key_env)
            .field("user", &self.user)
            .field("requests_per_minute", &self.requests_per_minute)
            .finish()
    }
}

/// GEO enrichment (`geo` jobs). A database that is missing or not a MaxMind
/// DB is an error when the engine is built, naming the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// A MaxMind-format city database (GeoIP2/GeoLite2 City, or the flat
    /// layout of the ip-location-db packages).
    pub city_db: Option<PathBuf>,
    /// A MaxMind-format ASN database (GeoLite2 ASN layout).
    pub asn_db: Option<PathBuf>,
    /// Online GEO providers asked, in order, for addresses the databases do
    /// not know (`ip-api`, `ipinfo`). Empty by default: nothing leaves the
    /// machine unless configured.
    pub online: Vec<String>,
    /// How long online answers (GEO and fraud) are reused, seconds.
    pub cache_ttl_secs: f64,
    /// Look every node that passes a light test up too (light, auth, speed and
    /// pipeline jobs), stored with its result in the same commit; a lookup
    /// that fails or takes over 5 s is skipped and changes nothing. Default
    /// false.
    pub after_light: bool,
}

impl Default for GeoConfig {
    fn default() -> Self {
        GeoConfig {
            city_db: None,
            asn_db: None,
            online: Vec::new(),
            cache_ttl_secs: 86_400.0,
            after_light: false,
        }
    }
}

/// Defaults of test jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestConfig {
    /// Nodes tested at once.
    pub concurrency: u32,
    /// Speed tests at once in a process (default 4): parallel downloads share
    /// this host's link, so too many make every node look slower than it is.
    /// Waiting for a slot does not count against a node's budget.
    pub speed_concurrency: u32,
    /// TCP connect timeout, seconds.
    pub connect_timeout_secs: f64,
    /// Time budget of a light test (the control-channel handshake), seconds.
    pub light_timeout_secs: f64,
    /// Time budget of a login test, seconds.
    pub auth_timeout_secs: f64,
    /// Time budget of a speed test, seconds.
    pub speed_timeout_secs: f64,
    /// Download speed (Mbit/s) at or above which a node is `speed_ok` (> 0).
    pub speed_threshold_mbps: f64,
    /// Base URL (`http[s]://host[:port]`) of the operator's own keyed speed
    /// endpoint as the nodes reach it; when set (or derived from
    /// `[services] public_host`, see [`Config::speed_self_url`]) the speed
    /// test downloads its verified keyed stream instead of `test_url`.
    pub self_url: Option<String>,
    /// With a self URL, also run the upload test against its `/speed/up`.
    pub self_upload: bool,
    /// File of the keyed endpoint's shared secret (64 hex digits), generated
    /// with mode 0600 when absent (see [`Config::speed_key_path`]).
    pub speed_key_file: Option<String>,
    /// Where `connexa run` serves the keyed endpoint (`None`: it does not;
    /// `connexa-http` serves it on its own listener at `/speed/...`).
    pub speed_listen: Option<SocketAddr>,
    /// The endpoint's largest download (`bytes`) and upload body, bytes; the
    /// tester's requests (256 MiB each) are capped to it too.
    pub speed_max_bytes: u64,
    /// The endpoint's requests per source address (IPv6: /64) and minute.
    pub speed_requests_per_minute: u32,
    /// Resolve test host names through the node's DNS instead of on this
    /// host (default `false`: a node cannot redirect the test by lying).
    pub resolve_through_node: bool,
    /// What the speed test downloads through the tunnel when no self URL is
    /// set (`http://` or `https://`).
    pub test_url: String,
    /// More download URLs; the parallel streams are spread over all of them.
    pub extra_test_urls: Vec<String>,
    /// Where the speed test uploads (`POST`); `None` or empty: no upload test.
    pub upload_url: Option<String>,
    /// PEM file of CA certificates trusted for `https://` test endpoints in
    /// addition to the built-in Mozilla roots; `None` or empty: only those.
    pub test_ca_file: Option<String>,
    /// Length of each direction of the speed test, warm-up included, seconds.
    pub speed_duration_secs: f64,
    /// Discarded start of each direction, seconds.
    pub speed_warmup_secs: f64,
    /// Parallel connections per direction.
    pub speed_streams: u32,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            concurrency: 500,
            speed_concurrency: 4,
            connect_timeout_secs: 5.0,
            light_timeout_secs: 10.0,
            auth_timeout_secs: 25.0,
            speed_timeout_secs: 60.0,
            speed_threshold_mbps: 1.0,
            self_url: None,
            self_upload: false,
            speed_key_file: None,
            speed_listen: None,
            speed_max_bytes: 1 << 30,
            speed_requests_per_minute: 600,
            resolve_through_node: false,
            // Public, HTTPS (verified with TLS, so a node cannot answer it
            // itself), no account, sized by the query.
            test_url: DEFAULT_TEST_URL.into(),
            extra_test_urls: Vec::new(),
            upload_url: None,
            test_ca_file: None,
            speed_duration_secs: 10.0,
            speed_warmup_secs: 2.0,
            speed_streams: 4,
        }
    }
}

impl TestConfig {
    /// The connect timeout as a [`Duration`].
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout_secs)
    }

    /// The light-test budget as a [`Duration`].
    pub fn light_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.light_timeout_secs)
    }

    /// The login-test budget as a [`Duration`].
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.auth_timeout_secs)
    }

    /// The speed-test budget as a [`Duration`].
    pub fn speed_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.speed_timeout_secs)
    }
}

/// The speed test's download without a self URL: Cloudflare's public speed
/// test endpoint (HTTPS, no account, `bytes` chooses the size).
pub const DEFAULT_TEST_URL: &str = crate::speed::DEFAULT_TEST_URL;

/// Largest `services.max_preauth` (each admission scans the pre-auth slots).
pub const MAX_PREAUTH: usize = 65_536;

/// SOCKS5 services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesConfig {
    /// Address services listen on.
    pub bind: IpAddr,
    /// Lowest port given to a service.
    pub port_min: u16,
    /// Highest port given to a service.
    pub port_max: u16,
    /// Host name or address clients are given (default: `bind`).
    pub public_host: Option<String>,
    /// Logged-in client connections at once per service.
    pub max_connections: usize,
    /// Connections that have not logged in yet, at once per service (when
    /// full, an older one is evicted for a newcomer).
    pub max_preauth: usize,
    /// Connections that have not logged in yet, at once per source address
    /// (IPv4 address, IPv6 /64) per service; at most `max_preauth`.
    pub max_preauth_per_source: usize,
    /// Time a client has from connecting to a completed login (greeting +
    /// username/password), seconds.
    pub preauth_timeout_secs: f64,
    /// Time a client has for the whole SOCKS5 negotiation, seconds.
    pub handshake_timeout_secs: f64,
    /// Time for resolving and connecting through the tunnel, seconds.
    pub connect_timeout_secs: f64,
    /// A relayed connection idle this long is closed, seconds.
    pub idle_timeout_secs: f64,
    /// On stop, how long open connections may finish, seconds.
    pub drain_timeout_secs: f64,
    /// Where host names of CONNECT requests are resolved.
    pub dns: crate::socks::DnsMode,
    /// `host:port` the health check connects to through the tunnel (none: the
    /// check is the tunnel's liveness only).
    pub check_target: Option<String>,
    /// How often a running engine (`connexa run`, connexa-http) makes services
    /// match `service_wanted`, seconds.
    pub reconcile_interval_secs: f64,
    /// How often a running engine checks the health of running services, seconds.
    pub monitor_interval_secs: f64,
    /// Failed health checks in a row before an `online` node goes `offline`.
    pub health_threshold: u32,
    /// Wait after a failed service start before the reconciler tries that node
    /// again, seconds; doubled after each further failure (0: every pass).
    pub restart_backoff_secs: f64,
    /// Longest wait between start attempts of one node, seconds.
    pub restart_backoff_max_secs: f64,
    /// The file of running proxies: a running engine rewrites it atomically
    /// (mode 0600) with one `host:port:user:pass` line per service it runs,
    /// in node id order, whenever that set changes. Default: none.
    pub proxies_file: Option<PathBuf>,
    /// `tun` services: the network interface of a node's service is named
    /// `<tun_prefix><node id>` (default `cx`: `cx7`). 1 to 8 characters of
    /// `a-z`, `0-9`, `_`, `-`, starting with a letter.
    pub tun_prefix: String,
    /// `openvpn` services: the UDP ports given to them, `LOW-HIGH`.
    pub openvpn_ports: String,
    /// `openvpn` services: the pool of client subnets (an IPv4 network from
    /// /8 to /24), split into one /24 per service.
    pub openvpn_subnets: String,
    /// `openvpn` services: the address the servers listen on (profiles name
    /// `public_host`, else this address).
    pub openvpn_bind: IpAddr,
    /// `openvpn` services: where the CA and the servers' files are kept
    /// (default: see [`Config::openvpn_dir`]).
    pub openvpn_dir: Option<PathBuf>,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_min: 20000,
            port_max: 29999,
            public_host: None,
            max_connections: 256,
            max_preauth: 128,
            max_preauth_per_source: 16,
            preauth_timeout_secs: 3.0,
            handshake_timeout_secs: 10.0,
            connect_timeout_secs: 10.0,
            idle_timeout_secs: 300.0,
            drain_timeout_secs: 2.0,
            dns: crate::socks::DnsMode::Tunnel,
            check_target: None,
            reconcile_interval_secs: 10.0,
            monitor_interval_secs: 30.0,
            health_threshold: 3,
            restart_backoff_secs: 30.0,
            restart_backoff_max_secs: 600.0,
            proxies_file: None,
            tun_prefix: "cx".into(),
            openvpn_ports: "1194-1293".into(),
            openvpn_subnets: "10.201.0.0/16".into(),
            openvpn_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            openvpn_dir: None,
        }
    }
}

/// The HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// A configuration file could not be used. Displays on one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error (in the message; not a separate source, so the one-line
        /// error chain does not say it twice).
        error: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("{}line {line}, column {column}: {message}", origin(path))]
    Parse {
        /// The file, if read from one.
        path: Option<PathBuf>,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What is wrong (names the key).
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("{}invalid value: {message}", origin(path))]
    Invalid {
        /// The file, if read from one.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("config file {}: ", p.display()),
        None => "config: ".into(),
    }
}

impl ConfigError {
    /// The 1-based line of a parse error.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Parse { line, .. } => Some(*line),
            _ => None,
        }
    }

    fn with_path(self, p: &Path) -> Self {
        match self {
            ConfigError::Parse {
                line,
                column,
                message,
                ..
            } => ConfigError::Parse {
                path: Some(p.to_owned()),
                line,
                column,
                message,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: Some(p.to_owned()),
                message,
            },
            other => other,
        }
    }
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
            let before = text.get(..offset).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = before
                .rsplit('\n')
                .next()
                .map(|l| l.chars().count())
                .unwrap_or(0)
                + 1;
            ConfigError::Parse {
                path: None,
                line,
                column,
                message: one_line(e.message()),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::from_toml_str(&text).map_err(|e| e.with_path(path))
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| {
            Err(ConfigError::Invalid {
                path: None,
                message,
            })
        };
        let t = &self.test;
        if t.concurrency == 0 {
            return bad("test.concurrency must be at least 1".into());
        }
        if t.speed_concurrency == 0 {
            return bad("test.speed_concurrency must be at least 1".into());
        }
        for (name, v) in [
            ("connect_timeout_secs", t.connect_timeout_secs),
            ("light_timeout_secs", t.light_timeout_secs),
            ("auth_timeout_secs", t.auth_timeout_secs),
            ("speed_timeout_secs", t.speed_timeout_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return bad(format!(
                    "test.{name} must be between 0 and 86400 seconds, got {v}"
                ));
            }
        }
        if !(t.speed_duration_secs.is_finite()
            && t.speed_duration_secs > 0.0
            && t.speed_duration_secs <= 3600.0)
        {
            return bad(format!(
                "test.speed_duration_secs must be between 0 and 3600 seconds, got {}",
                t.speed_duration_secs
            ));
        }
        if !(t.speed_warmup_secs.is_finite()
            && t.speed_warmup_secs >= 0.0
            && t.speed_warmup_secs < t.speed_duration_secs)
        {
            return bad(format!(
                "test.speed_warmup_secs must be at least 0 and below speed_duration_secs, got {}",
                t.speed_warmup_secs
            ));
        }
        if t.speed_streams == 0 || t.speed_streams > 64 {
            return bad(format!(
                "test.speed_streams must be between 1 and 64, got {}",
                t.speed_streams
            ));
        }
        if !(t.speed_threshold_mbps.is_finite() && t.speed_threshold_mbps > 0.0) {
            return bad(format!(
                "test.speed_threshold_mbps must be above 0 (0 would pass a node that moved nothing), got {}",
                t.speed_threshold_mbps
            ));
        }
        if let Some(u) = t.self_url.as_deref().filter(|u| !u.is_empty())
            && let Err(e) = crate::speed::http::HttpUrl::parse(u)
        {
            return bad(format!("test.self_url: {e}"));
        }
        if t.speed_max_bytes == 0 {
            return bad("test.speed_max_bytes must be at least 1".into());
        }
        if t.speed_requests_per_minute == 0 {
            return bad("test.speed_requests_per_minute must be at least 1".into());
        }
        if let Some(path) = t.test_ca_file.as_deref().filter(|p| !p.is_empty())
            && let Err(e) = crate::speed::tls::load_ca_file(Path::new(path))
        {
            return bad(format!("test.test_ca_file: {e}"));
        }
        let s = &self.services;
        if !crate::tun::valid_prefix(&s.tun_prefix) {
            return bad(format!(
                "services.tun_prefix ({:?}) must be 1 to 8 characters of a-z, 0-9, _ and -, starting with a letter",
                s.tun_prefix
            ));
        }
        if let Err(e) = crate::openvpn::parse_port_range(&s.openvpn_ports) {
            return bad(format!("services.openvpn_ports: {e}"));
        }
        if let Err(e) = crate::openvpn::parse_subnet_pool(&s.openvpn_subnets) {
            return bad(format!("services.openvpn_subnets: {e}"));
        }
        if s.port_min == 0 || s.port_min > s.port_max {
            return bad(format!(
                "services.port_min ({}) must be at least 1 and at most services.port_max ({})",
                s.port_min, s.port_max
            ));
        }
        if s.max_connections == 0 {
            return bad("services.max_connections must be at least 1".into());
        }
        if !(1..=MAX_PREAUTH).contains(&s.max_preauth) {
            return bad(format!(
                "services.max_preauth must be between 1 and {MAX_PREAUTH}, got {}",
                s.max_preauth
            ));
        }
        if s.max_preauth_per_source == 0 || s.max_preauth_per_source > s.max_preauth {
            return bad(format!(
                "services.max_preauth_per_source ({}) must be at least 1 and at most services.max_preauth ({})",
                s.max_preauth_per_source, s.max_preauth
            ));
        }
        for (name, v) in [
            ("preauth_timeout_secs", s.preauth_timeout_secs),
            ("handshake_timeout_secs", s.handshake_timeout_secs),
            ("connect_timeout_secs", s.connect_timeout_secs),
            ("idle_timeout_secs", s.idle_timeout_secs),
            ("drain_timeout_secs", s.drain_timeout_secs),
            ("reconcile_interval_secs", s.reconcile_interval_secs),
            ("monitor_interval_secs", s.monitor_interval_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return bad(format!(
                    "services.{name} must be between 0 and 86400 seconds, got {v}"
                ));
            }
        }
        if s.health_threshold == 0 {
            return bad("services.health_threshold must be at least 1".into());
        }
        if !(s.restart_backoff_secs.is_finite()
            && s.restart_backoff_secs >= 0.0
            && s.restart_backoff_max_secs.is_finite()
            && s.restart_backoff_max_secs >= s.restart_backoff_secs
            && s.restart_backoff_max_secs <= 86_400.0)
        {
            return bad(format!(
                "services.restart_backoff_secs ({}) must be at least 0 and at most services.restart_backoff_max_secs ({}), itself at most 86400",
                s.restart_backoff_secs, s.restart_backoff_max_secs
            ));
        }
        let w = &self.workers;
        if !(w.heartbeat_secs.is_finite()
            && w.heartbeat_secs > 0.0
            && w.lease_secs.is_finite()
            && w.lease_secs >= 2.0 * w.heartbeat_secs
            && w.lease_secs <= 86_400.0)
        {
            return bad(format!(
                "workers.lease_secs ({}) must be at least twice workers.heartbeat_secs ({}), which must be above 0, and at most 86400",
                w.lease_secs, w.heartbeat_secs
            ));
        }
        let g = &self.geo;
        if !(g.cache_ttl_secs.is_finite() && g.cache_ttl_secs >= 0.0) {
            return bad(format!(
                "geo.cache_ttl_secs must be a non-negative number of seconds, got {}",
                g.cache_ttl_secs
            ));
        }
        let names = g.online.iter().map(|n| ("geo.online", n, true));
        let names = names.chain(
            self.fraud
                .providers
                .iter()
                .map(|n| ("fraud.providers", n, false)),
        );
        for (key, name, geo) in names {
            match name.parse::<crate::geo::online::ProviderKind>() {
                Ok(kind) if kind.is_geo() == geo => {}
                Ok(_) => {
                    return bad(format!(
                        "{key}: {name:?} is a {} provider",
                        if geo { "fraud-score" } else { "GEO" }
                    ));
                }
                Err(e) => return bad(format!("{key}: {e}")),
            }
        }
        for name in self.providers.keys() {
            if let Err(e) = name.parse::<crate::geo::online::ProviderKind>() {
                return bad(format!("providers.{name}: {e}"));
            }
        }
        if let Some(t) = &s.check_target
            && crate::socks::proto::TargetAddr::parse(t).is_none()
        {
            return bad(format!(
                "services.check_target must be host:port, got {t:?}"
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The base URL of the operator's own keyed speed endpoint, as nodes reach
    /// it: `[test] self_url`, else `http://<[services] public_host>:<[http]
    /// listen port>` when `public_host` is set (connexa-http serves
    /// `/speed/...` there), else none.
    pub fn speed_self_url(&self) -> Option<String> {
        if let Some(u) = self.test.self_url.as_deref().filter(|u| !u.is_empty()) {
            return Some(u.trim_end_matches('/').to_owned());
        }
        let host = self
            .services
            .public_host
            .as_deref()
            .filter(|h| !h.is_empty())?;
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Some(format!("http://{host}:{}", self.http.listen.port()))
    }

    /// The directory of `openvpn` services' CA and files: `[services]
    /// openvpn_dir`, else `connexa-openvpn` next to the SQLite database of
    /// `database` (`sqlite://path...`), else in the working directory.
    pub fn openvpn_dir(&self) -> PathBuf {
        if let Some(p) = self
            .services
            .openvpn_dir
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            return p.clone();
        }
        self.next_to_database("connexa-openvpn")
    }

    /// `name` in the SQLite database's directory, else in the working directory.
    fn next_to_database(&self, name: &str) -> PathBuf {
        let db = self
            .database
            .as_deref()
            .and_then(|d| d.strip_prefix("sqlite://").or(d.strip_prefix("sqlite:")))
            .map(|d| d.split('?').next().unwrap_or(d))
            .filter(|d| !d.is_empty() && !d.starts_with(':'));
        match db.and_then(|d| Path::new(d).parent()) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
            _ => PathBuf::from(name),
        }
    }

    /// The file of the keyed endpoint's shared secret: `[test]
    /// speed_key_file`, else `connexa-speed.key` next to the SQLite database
    /// of `database` (`sqlite://path...`), else in the working directory.
    pub fn speed_key_path(&self) -> PathBuf {
        if let Some(p) = self
            .test
            .speed_key_file
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            return PathBuf::from(p);
        }
        const NAME: &str = "connexa-speed.key";
        let db = self
            .database
            .as_deref()
            .and_then(|d| d.strip_prefix("sqlite://").or(d.strip_prefix("sqlite:")))
            .map(|d| d.split('?').next().unwrap_or(d))
            .filter(|d| !d.is_empty() && !d.starts_with(':'));
        match db.and_then(|d| Path::new(d).parent()) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(NAME),
            _ => PathBuf::from(NAME),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
    }

    #[test]
    fn every_documented_key_parses() {
        let text = "database = \"sqlite://x.db?mode=rwc\"\n[test]\nconcurrency = 8\nconnect_timeout_secs = 1\n\
                    light_timeout_secs = 2.5\nauth_timeout_secs = 3\nspeed_timeout_secs = 4\n\
                    speed_threshold_mbps = 0.5\ntest_url = \"http://127.0.0.1/x\"\n\
                    [services]\nbind = \"127.0.0.2\"\nport_min = 100\nport_max = 200\n\
                    reconcile_interval_secs = 5\nmonitor_interval_secs = 7.5\nhealth_threshold = 2\n\
                    restart_backoff_secs = 0\nrestart_backoff_max_secs = 60\n\
                    proxies_file = \"/run/connexa/proxies.txt\"\n\
                    [http]\nlisten = \"127.0.0.1:9000\"\n";
        let c = Config::from_toml_str(text).unwrap();
        assert_eq!(c.database.as_deref(), Some("sqlite://x.db?mode=rwc"));
        assert_eq!(c.test.concurrency, 8);
        assert_eq!(c.test.light_timeout(), Duration::from_millis(2500));
        assert_eq!(c.services.port_max, 200);
        assert_eq!(c.services.monitor_interval_secs, 7.5);
        assert_eq!(c.services.health_threshold, 2);
        assert_eq!(c.services.restart_backoff_max_secs, 60.0);
        assert_eq!(c.http.listen.port(), 9000);
    }

    #[test]
    fn enrichment_sections_parse_and_wrong_providers_are_named() {
        let c = Config::from_toml_str(
            "[geo]\ncity_db = \"/x/city.mmdb\"\nonline = [\"ip-api\", \"ipinfo\"]\ncache_ttl_secs = 60\n\
             [fraud]\nproviders = [\"scamalytics\"]\n\
             [providers.scamalytics]\nuser = \"acme\"\nkey_env = \"SCAM_KEY\"\nrequests_per_minute = 10\n\
             [providers.ipinfo]\nkey = \"s3cr3t\"\nbase_url = \"http://127.0.0.1:9\"\n",
        )
        .unwrap();
        assert_eq!(c.geo.online, ["ip-api", "ipinfo"]);
        assert_eq!(c.geo.cache_ttl_secs, 60.0);
        assert_eq!(c.providers["scamalytics"].requests_per_minute, Some(10));
        assert!(!format!("{c:?}").contains("s3cr3t"), "Debug hides keys");
        for (text, needle) in [
            (
                "[geo]\nonline = [\"scamalytics\"]\n",
                "fraud-score provider",
            ),
            ("[fraud]\nproviders = [\"ipinfo\"]\n", "GEO provider"),
            ("[fraud]\nproviders = [\"maxmind\"]\n", "unknown provider"),
            ("[providers.foo]\nkey = \"k\"\n", "providers.foo"),
            ("[geo]\ncache_ttl_secs = -1\n", "cache_ttl_secs"),
        ] {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err =
            Config::from_toml_str("[test]\nconcurrency = 8\n\nspeed_treshold = 1\n").unwrap_err();
        assert_eq!(err.line(), Some(4));
        let msg = err.to_string();
        assert!(msg.contains("speed_treshold"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn unknown_section_and_wrong_type_are_errors() {
        let e = Config::from_toml_str("[tset]\n").unwrap_err();
        assert!(e.to_string().contains("tset"), "{e}");
        let e = Config::from_toml_str("[test]\nconcurrency = \"many\"\n").unwrap_err();
        assert_eq!(e.line(), Some(2));
        let e = Config::from_toml_str("[test\n").unwrap_err();
        assert_eq!(e.line(), Some(1));
    }

    #[test]
    fn nonsense_values_are_rejected() {
        for text in [
            "[test]\nconcurrency = 0\n",
            "[test]\nlight_timeout_secs = -1\n",
            "[services]\nport_min = 300\nport_max = 200\n",
            "[services]\nmax_connections = 0\n",
            "[services]\nmax_preauth = 0\n",
            "[services]\nmax_preauth = 70000\n",
            "[services]\nmax_preauth_per_source = 0\n",
            "[services]\nmax_preauth = 8\nmax_preauth_per_source = 9\n",
            "[services]\npreauth_timeout_secs = 0\n",
            "[services]\nidle_timeout_secs = 0\n",
            "[services]\ncheck_target = \"no-port\"\n",
            "[services]\nreconcile_interval_secs = 0\n",
            "[services]\nhealth_threshold = 0\n",
            "[services]\nrestart_backoff_secs = -1\n",
            "[services]\nrestart_backoff_secs = 60\nrestart_backoff_max_secs = 30\n",
            "[test]\nspeed_threshold_mbps = 0\n",
            "[test]\nspeed_threshold_mbps = -1\n",
            "[test]\nself_url = \"ftp://x/\"\n",
            "[test]\nspeed_max_bytes = 0\n",
            "[test]\nspeed_requests_per_minute = 0\n",
        ] {
            let e = Config::from_toml_str(text).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{text}: {e}");
        }
    }

    #[test]
    fn test_ca_file_must_hold_a_pem_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            |path: &Path| format!("[test]\ntest_ca_file = {:?}\n", path.display().to_string());
        let missing = dir.path().join("missing.pem");
        let e = Config::from_toml_str(&cfg(&missing))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.test_ca_file") && e.contains("missing.pem"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = Config::from_toml_str(&cfg(&empty)).unwrap_err().to_string();
        assert!(e.contains("no PEM CERTIFICATE"), "{e}");

        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let c = Config::from_toml_str(&cfg(&good)).unwrap();
        let speed = crate::speed::SpeedConfig::from_test_config(&c.test);
        assert_eq!(speed.ca_file.as_deref(), Some(good.as_path()));
        assert!(crate::speed::tls::connector(speed.ca_file.as_deref()).is_ok());
        // Empty means none.
        let c = Config::from_toml_str("[test]\ntest_ca_file = \"\"\n").unwrap();
        assert_eq!(
            crate::speed::SpeedConfig::from_test_config(&c.test).ca_file,
            None
        );
    }

    #[test]
    fn threshold_zero_is_refused_with_a_reason() {
        let e = Config::from_toml_str("[test]\nspeed_threshold_mbps = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("speed_threshold_mbps must be above 0"), "{e}");
        assert!(Config::from_toml_str("[test]\nspeed_threshold_mbps = 0.01\n").is_ok());
    }

    #[test]
    fn self_url_and_key_path_defaults() {
        let c = Config::default();
        assert_eq!(c.speed_self_url(), None);
        assert_eq!(c.test.test_url, DEFAULT_TEST_URL);
        assert!(c.test.test_url.starts_with("https://"));
        assert_eq!(c.speed_key_path(), PathBuf::from("connexa-speed.key"));
        let c = Config::from_toml_str(
            "database = \"sqlite:///var/lib/cx/c.db?mode=rwc\"\n[services]\npublic_host = \"vpn.example\"\n[http]\nlisten = \"0.0.0.0:9000\"\n",
        )
        .unwrap();
        assert_eq!(
            c.speed_self_url().as_deref(),
            Some("http://vpn.example:9000")
        );
        assert_eq!(
            c.speed_key_path(),
            PathBuf::from("/var/lib/cx/connexa-speed.key")
        );
        let c = Config::from_toml_str(
            "[test]\nself_url = \"https://me.example:8443/\"\nspeed_key_file = \"/k\"\n[services]\npublic_host = \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            c.speed_self_url().as_deref(),
            Some("https://me.example:8443")
        );
        assert_eq!(c.speed_key_path(), PathBuf::from("/k"));
        let key = crate::speed::keyed::SpeedKey::from_bytes([2; 32]);
        let keyed = crate::speed::SpeedConfig::from_config(&c, Some(key))
            .keyed
            .expect("a self URL and a key make a keyed target");
        assert_eq!(keyed.base_url, "https://me.example:8443");
        assert_eq!(keyed.request_bytes, 256 << 20);
        assert!(
            crate::speed::SpeedConfig::from_config(&c, None)
                .keyed
                .is_none()
        );
        let small =
            Config::from_toml_str("[test]\nself_url = \"http://h\"\nspeed_max_bytes = 1000\n")
                .unwrap();
        let keyed = crate::speed::SpeedConfig::from_config(&small, Some(key))
            .keyed
            .unwrap();
        assert_eq!(
            keyed.request_bytes, 1000,
            "never more than the endpoint serves"
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "bogus = 1\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("c.toml") && e.contains("line 1") && e.contains("bogus"),
            "{e}"
        );
        let e = Config::load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }
}
