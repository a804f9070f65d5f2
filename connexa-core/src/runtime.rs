//! The engine's network ports built from the operator's configuration file,
//! the same way for every front end (the `connexa` CLI, `connexa-http`, your
//! own program): the light/auth prober, the speed tester and the SOCKS5
//! launcher share one raw GRE socket (the prober's, opened on first use).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use connexa_core::config::Config;
//! use connexa_core::runtime::NetworkPorts;
//! use connexa_core::store::SqlStore;
//!
//! let config = Config::default();
//! let store = Arc::new(SqlStore::connect("sqlite://connexa.db?mode=rwc").await?);
//! let ports = NetworkPorts::from_config(&config);
//! let engine = ports.engine(store, &config);
//! # let _ = engine; Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ServicesConfig, TestConfig};
use crate::domain::Secret;
use crate::engine::{Engine, EngineConfig};
use crate::geo::online::{Cached, FraudChain, GeoChain, Limited, Provider, ProviderKind};
use crate::geo::{GeoOpenError, MmdbGeo};
use crate::metrics::{Instrumented, ProbeStats};
use crate::ports::{FraudScorer, GeoLookup, NodeStore};
use crate::probe::{LightProber, ProbeConfig};
use crate::service::{KindLauncher, PptpOpener};
use crate::socks::proto::TargetAddr;
use crate::socks::{ServerOptions, SocksConfig, SocksLauncher};
use crate::speed::keyed::{EndpointLimits, SpeedEndpoint, SpeedKey};
use crate::speed::{HttpSpeedTester, KeyedTarget, SpeedConfig};
use crate::tun::{TunConfig, TunLauncher};
use crate::tunnel::AuthConfig;
use crate::tunnel::SharedGre;

/// The prober of the `[test]` settings: `connect_timeout_secs` and
/// `light_timeout_secs` for the handshake (light and auth), `auth_timeout_secs`
/// for the login's MS-CHAPv2 exchange; ICMP on.
pub fn prober(t: &TestConfig) -> LightProber {
    let p = LightProber::new(ProbeConfig {
        connect_timeout: t.connect_timeout(),
        handshake_timeout: t.light_timeout(),
        ..ProbeConfig::default()
    });
    let auth = AuthConfig {
        auth_timeout: t.auth_timeout(),
        ..p.auth_config().clone()
    };
    p.with_auth_config(auth)
}

/// The engine settings of the configuration: `[test] concurrency` (0 keeps
/// the default), `[test] speed_concurrency`, the `[services]` reconciler and
/// monitor settings and the `[workers]` heartbeat and lease.
pub fn engine_config(config: &Config) -> EngineConfig {
    let mut c = EngineConfig::default();
    if config.test.concurrency > 0 {
        c.concurrency = config.test.concurrency as usize;
    }
    c.speed_concurrency = (config.test.speed_concurrency as usize).max(1);
    c.geo_after_light = config.geo.after_light;
    let s = &config.services;
    c.reconcile_interval = Duration::from_secs_f64(s.reconcile_interval_secs);
    c.monitor_interval = Duration::from_secs_f64(s.monitor_interval_secs);
    c.health_threshold = s.health_threshold;
    c.restart_backoff = Duration::from_secs_f64(s.restart_backoff_secs);
    c.restart_backoff_max = Duration::from_secs_f64(s.restart_backoff_max_secs);
    c.proxies_file = s.proxies_file.clone().filter(|p| !p.as_os_str().is_empty());
    c.heartbeat_interval = Duration::from_secs_f64(config.workers.heartbeat_secs);
    c.lease = Duration::from_secs_f64(config.workers.lease_secs);
    c.max_services = config.workers.max_services;
    c.labels = config.workers.labels.clone();
    c
}

/// [`engine_config`] for a worker process named `worker` (default
/// `HOST-pPID`) with `roles` (empty: the default, jobs and services).
pub fn worker_config(
    config: &Config,
    worker: Option<String>,
    roles: Vec<crate::ports::WorkerRole>,
) -> EngineConfig {
    let mut c = engine_config(config);
    if let Some(name) = worker {
        c.worker = name;
    }
    if !roles.is_empty() {
        c.roles = roles;
    }
    c
}

/// The SOCKS5 launcher's settings of the `[services]` section: the
/// conversion lives here so that `socks` does not depend on `config`.
impl TunConfig {
    /// The settings of a `[services]` section (`tun_prefix`).
    pub fn from_services(c: &ServicesConfig) -> Self {
        TunConfig {
            prefix: c.tun_prefix.clone(),
            ..TunConfig::default()
        }
    }
}

impl crate::openvpn::OpenvpnConfig {
    /// The settings of `config`'s `[services]` section (`openvpn_*` keys,
    /// `tun_prefix`, `public_host`; already validated by [`Config::validate`],
    /// invalid values fall back to the defaults).
    pub fn from_config(config: &Config) -> Self {
        let c = &config.services;
        let d = crate::openvpn::OpenvpnConfig::default();
        crate::openvpn::OpenvpnConfig {
            tun: TunConfig::from_services(c),
            dir: config.openvpn_dir(),
            ports: crate::openvpn::parse_port_range(&c.openvpn_ports).unwrap_or(d.ports.clone()),
            subnets: crate::openvpn::parse_subnet_pool(&c.openvpn_subnets).unwrap_or(d.subnets),
            bind: c.openvpn_bind,
            public_host: c.public_host.clone().filter(|h| !h.is_empty()),
            ..d
        }
    }
}

impl SocksConfig {
    /// The settings of a `[services]` configuration section (already validated by
    /// [`Config::validate`]).
    pub fn from_services(c: &ServicesConfig) -> Self {
        SocksConfig {
            bind: c.bind,
            public_host: c.public_host.clone(),
            port_min: c.port_min.max(1),
            port_max: c.port_max.max(c.port_min.max(1)),
            server: ServerOptions {
                max_connections: c.max_connections.max(1),
                max_preauth: c.max_preauth.max(1),
                max_preauth_per_source: c.max_preauth_per_source.max(1),
                preauth_timeout: secs(c.preauth_timeout_secs),
                handshake_timeout: secs(c.handshake_timeout_secs),
                connect_timeout: secs(c.connect_timeout_secs),
                idle_timeout: secs(c.idle_timeout_secs),
                drain_timeout: secs(c.drain_timeout_secs),
                dns: c.dns,
            },
            check_target: c.check_target.as_deref().and_then(TargetAddr::parse),
        }
    }
}

/// A configured number of seconds (validated, so finite and not negative;
/// 10 s otherwise).
fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or(Duration::from_secs(10))
}

/// The speed tester's settings of the `[test]` section (and of the
/// operator's own endpoint): the conversion lives here so that `speed` does
/// not depend on `config`.
impl SpeedConfig {
    /// The settings of the operator's configuration file (`[test]`).
    pub fn from_test_config(t: &TestConfig) -> Self {
        let mut urls = vec![t.test_url.clone()];
        urls.extend(t.extra_test_urls.iter().cloned());
        SpeedConfig {
            download_urls: urls,
            upload_url: t.upload_url.clone().filter(|u| !u.is_empty()),
            duration: Duration::from_secs_f64(t.speed_duration_secs),
            streams: t.speed_streams.max(1) as usize,
            warmup: Duration::from_secs_f64(t.speed_warmup_secs),
            threshold_mbps: t.speed_threshold_mbps,
            ca_file: t
                .test_ca_file
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from),
            tunnel: crate::tunnel::TunnelConfig {
                auth: AuthConfig {
                    connect_timeout: t.connect_timeout(),
                    handshake_timeout: t.light_timeout(),
                    auth_timeout: t.auth_timeout(),
                    ..Default::default()
                },
                ..crate::tunnel::TunnelConfig::default()
            },
            timeout: t.speed_timeout(),
            keyed: None,
            resolve_through_node: t.resolve_through_node,
        }
    }

    /// The settings of the whole configuration: [`SpeedConfig::from_test_config`],
    /// testing against the operator's own endpoint ([`Config::speed_self_url`])
    /// with `key` when there is one.
    pub fn from_config(config: &Config, key: Option<SpeedKey>) -> Self {
        let mut c = Self::from_test_config(&config.test);
        if let (Some(url), Some(key)) = (config.speed_self_url(), key) {
            let mut k = KeyedTarget::new(&url, key);
            k.upload = config.test.self_upload;
            // Never more than our own endpoint would serve.
            k.request_bytes = k.request_bytes.min(config.test.speed_max_bytes.max(1));
            c.keyed = Some(k);
        }
        c
    }
}

/// The keys of secrets at rest (`[secrets]`): the current one from
/// `$CONNEXA_SECRET_KEY` or `key_file`, older ones from `old_key_files`.
/// No key configured: [`SecretKeys::none`](crate::store::sealing::SecretKeys::none).
///
/// # Errors
/// A key file cannot be read, is readable by others, or holds no key.
pub fn secret_keys(
    config: &Config,
) -> Result<crate::store::sealing::SecretKeys, crate::store::sealing::KeyError> {
    use crate::store::sealing::{SecretKey, SecretKeys};
    let current = match std::env::var(SECRET_KEY_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        Some(hex) => Some(SecretKey::from_hex(&hex, &format!("${SECRET_KEY_ENV}"))?),
        None => match &config.secrets.key_file {
            Some(p) if !p.as_os_str().is_empty() => Some(SecretKey::from_file(p)?),
            _ => None,
        },
    };
    let old = config
        .secrets
        .old_key_files
        .iter()
        .map(|p| SecretKey::from_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SecretKeys::new(current, old))
}

/// The environment variable holding the current secrets key (64 hex digits);
/// it takes precedence over `[secrets] key_file`.
pub const SECRET_KEY_ENV: &str = "CONNEXA_SECRET_KEY";

/// The warning a long-running process logs once at start when secrets are
/// stored as plaintext.
pub const PLAINTEXT_SECRETS_WARNING: &str = "node passwords and SOCKS5 credentials are stored as plaintext in the database: set [secrets] key_file (connexa secrets keygen FILE) to seal them";

/// The keyed speed endpoint's shared secret: the file
/// [`Config::speed_key_path`], generated (mode 0600) when absent.
///
/// # Errors
/// The file cannot be read or written, or holds no key.
pub fn speed_key(config: &Config) -> std::io::Result<SpeedKey> {
    SpeedKey::load_or_create(&config.speed_key_path())
}

/// The keyed speed endpoint of `config` (its key from [`speed_key`], its
/// limits from `[test] speed_max_bytes` and `speed_requests_per_minute`),
/// which `connexa-http` serves at `/speed/...` and `connexa run` on
/// `[test] speed_listen`.
///
/// # Errors
/// As [`speed_key`].
pub fn speed_endpoint(config: &Config) -> std::io::Result<Arc<SpeedEndpoint>> {
    Ok(Arc::new(SpeedEndpoint::new(
        speed_key(config)?,
        EndpointLimits {
            max_bytes: config.test.speed_max_bytes,
            requests_per_minute: config.test.speed_requests_per_minute,
            ..EndpointLimits::default()
        },
    )))
}

/// The keyed speed endpoint a server process (`connexa-http`, `connexa run`)
/// serves: [`speed_endpoint`] when a self URL is configured
/// ([`Config::speed_self_url`]), `[test] speed_key_file` is set, or the key
/// file exists already; `None` otherwise (no key file is created then).
///
/// # Errors
/// As [`speed_key`].
pub fn served_speed_endpoint(config: &Config) -> std::io::Result<Option<Arc<SpeedEndpoint>>> {
    let wanted = config.speed_self_url().is_some()
        || config
            .test
            .speed_key_file
            .as_deref()
            .is_some_and(|p| !p.is_empty())
        || config.speed_key_path().exists();
    if wanted {
        speed_endpoint(config).map(Some)
    } else {
        Ok(None)
    }
}

/// `true` when the configuration names a GEO source (`geo` jobs can run).
pub fn geo_configured(config: &Config) -> bool {
    config.geo.city_db.is_some() || config.geo.asn_db.is_some() || !config.geo.online.is_empty()
}

/// `true` when the configuration names a fraud-score provider (`fraud` jobs can run).
pub fn fraud_configured(config: &Config) -> bool {
    !config.fraud.providers.is_empty()
}

/// Why the enrichment sources of the configuration cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrichmentConfigError {
    /// A GEO database is missing or corrupt.
    #[error(transparent)]
    Database(#[from] GeoOpenError),
    /// A provider is misconfigured (no key, a bad base URL...).
    #[error("{0}")]
    Provider(String),
}

/// One online provider of the configuration, behind its rate limit and the
/// store's cache.
fn provider(
    config: &Config,
    name: &str,
    store: &Arc<dyn NodeStore>,
) -> Result<Cached<Limited<Provider>>, EnrichmentConfigError> {
    let kind: ProviderKind = name.parse().map_err(EnrichmentConfigError::Provider)?;
    let p = config
        .providers
        .get(kind.as_str())
        .cloned()
        .unwrap_or_default();
    let key = match (&p.key, &p.key_env) {
        (Some(k), _) => Some(Secret::new(k.clone())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) => Some(Secret::new(v)),
            Err(_) => {
                return Err(EnrichmentConfigError::Provider(format!(
                    "{}: the environment variable {var} (providers.{}.key_env) is not set",
                    kind.as_str(),
                    kind.as_str()
                )));
            }
        },
        (None, None) => None,
    };
    let inner = Provider::new(kind, p.base_url.as_deref(), key, p.user.clone())
        .map_err(EnrichmentConfigError::Provider)?;
    let per_minute = p.requests_per_minute.unwrap_or(kind.default_per_minute());
    let limited = Limited::new(inner, kind.as_str(), per_minute, Duration::from_secs(60));
    Ok(Cached::new(
        limited,
        Arc::clone(store),
        Duration::from_secs_f64(config.geo.cache_ttl_secs),
    ))
}

/// The GEO source of the configuration: the `[geo]` databases, then the
/// `online` providers in order; `None` when nothing is configured.
///
/// # Errors
/// A configured database that is missing, unreadable or not a MaxMind DB; a
/// provider without its key.
pub fn geo_lookup(
    config: &Config,
    store: &Arc<dyn NodeStore>,
) -> Result<Option<Arc<dyn GeoLookup>>, EnrichmentConfigError> {
    let g = &config.geo;
    let mut sources: Vec<Arc<dyn GeoLookup>> = Vec::new();
    if g.city_db.is_some() || g.asn_db.is_some() {
        sources.push(Arc::new(MmdbGeo::open(
            g.city_db.as_deref(),
            g.asn_db.as_deref(),
        )?));
    }
    for name in &g.online {
        sources.push(Arc::new(provider(config, name, store)?));
    }
    Ok(match sources.len() {
        0 => None,
        1 => sources.pop(),
        _ => Some(Arc::new(GeoChain::new(sources))),
    })
}

/// The fraud scorer of the configuration: `[fraud] providers` in order.
///
/// # Errors
/// A provider without its key or with a bad base URL.
pub fn fraud_scorer(
    config: &Config,
    store: &Arc<dyn NodeStore>,
) -> Result<Option<Arc<dyn FraudScorer>>, EnrichmentConfigError> {
    let mut sources: Vec<Arc<dyn FraudScorer>> = Vec::new();
    for name in &config.fraud.providers {
        sources.push(Arc::new(provider(config, name, store)?));
    }
    Ok(match sources.len() {
        0 => None,
        1 => sources.pop(),
        _ => Some(Arc::new(FraudChain::new(sources))),
    })
}

/// Gives `engine` the enrichment sources of the configuration (`geo` and
/// `fraud` jobs without one stop at once, saying what to configure).
///
/// # Errors
/// As [`geo_lookup`] and [`fraud_scorer`]: the operator learns at start that
/// a file or a key is wrong.
pub fn attach_enrichment(engine: &Engine, config: &Config) -> Result<(), EnrichmentConfigError> {
    let store = Arc::clone(engine.store());
    if let Some(geo) = geo_lookup(config, &store)? {
        engine.set_geo(geo);
    }
    if let Some(fraud) = fraud_scorer(config, &store)? {
        engine.set_fraud(fraud);
    }
    Ok(())
}

/// The three network ports of an [`Engine`], sharing one raw GRE socket.
#[derive(Debug, Clone)]
pub struct NetworkPorts {
    /// Light and auth tests.
    pub prober: Arc<LightProber>,
    /// Speed tests through each node's MPPE tunnel (`[test]` URLs).
    pub speed: Arc<HttpSpeedTester>,
    /// SOCKS5 services through each node's tunnel (`[services]`).
    pub launcher: Arc<SocksLauncher>,
    /// `tun` services: each node's tunnel as a TUN interface (`[services] tun_prefix`).
    pub tun: Arc<TunLauncher>,
    /// `openvpn` services (`[services] openvpn_*`).
    pub openvpn: Arc<crate::openvpn::OpenvpnLauncher>,
    /// The launcher the engine is given: [`launcher`](Self::launcher),
    /// [`tun`](Self::tun) or [`openvpn`](Self::openvpn) by each node's wanted
    /// service kind.
    pub services: Arc<KindLauncher>,
    /// The process's one raw GRE socket, shared by the prober, the speed
    /// tester and the service opener (opened by whichever needs it first).
    pub gre: SharedGre,
}

impl NetworkPorts {
    /// A process's end: records the final traffic counters of the services
    /// this process runs, stops them all (SOCKS5, `tun`, `openvpn`; they stay
    /// wanted, so the next start brings them back on their stored ports with
    /// their stored credentials) and rewrites the proxies file. Returns how
    /// many ran.
    pub async fn stop_services(&self, engine: &crate::engine::Engine) -> usize {
        use crate::ports::ServiceLauncher as _;
        let running = self.launcher.running().await.len()
            + self.tun.running().await.len()
            + self.openvpn.running().await.len();
        engine.record_final_service_counters().await;
        self.launcher.stop_all().await;
        self.tun.stop_all().await;
        self.openvpn.stop_all().await;
        engine.refresh_proxies_file().await;
        running
    }

    /// The ports of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self::with_prober(config, Arc::new(prober(&config.test)))
    }

    /// The ports of `config` around a prober of your own: its GRE handle
    /// ([`LightProber::gre`]) becomes the ports' [`gre`](Self::gre), shared
    /// with the speed tester and the service opener.
    ///
    /// With a self URL ([`Config::speed_self_url`]) the speed tester tests
    /// against the keyed endpoint with the key of [`speed_key`]; when that key
    /// cannot be read or created, every speed test is refused as not runnable
    /// (`Err`, no node is marked) with the reason.
    pub fn with_prober(config: &Config, prober: Arc<LightProber>) -> Self {
        let (speed_config, key_error) = match config.speed_self_url() {
            None => (SpeedConfig::from_config(config, None), None),
            Some(_) => match speed_key(config) {
                Ok(key) => (SpeedConfig::from_config(config, Some(key)), None),
                Err(e) => (
                    SpeedConfig::from_config(config, None),
                    Some(format!("the keyed speed endpoint's key: {e}")),
                ),
            },
        };
        let gre = prober.gre().clone();
        let opener = PptpOpener::with_gre(speed_config.tunnel.clone(), gre.clone());
        let mut speed = HttpSpeedTester::with_gre(speed_config, gre.clone());
        if let Some(e) = key_error {
            tracing::error!("{e}");
            speed = speed.refusing(e);
        }
        let opener: Arc<PptpOpener> = Arc::new(opener);
        let mut socks = SocksConfig::from_services(&config.services);
        // This worker's own public host (`[workers] public_host`, `connexa run
        // --public-host`) wins over the shared `[services] public_host`.
        if let Some(h) = config.workers.public_host.clone() {
            socks.public_host = Some(h);
        }
        let launcher = Arc::new(SocksLauncher::new(opener.clone(), socks));
        let tun = Arc::new(TunLauncher::new(
            opener.clone(),
            TunConfig::from_services(&config.services),
        ));
        let openvpn = Arc::new(crate::openvpn::OpenvpnLauncher::new(
            opener,
            crate::openvpn::OpenvpnConfig::from_config(config),
        ));
        NetworkPorts {
            speed: Arc::new(speed),
            services: Arc::new(
                KindLauncher::new(launcher.clone(), tun.clone()).with_openvpn(openvpn.clone()),
            ),
            launcher,
            tun,
            openvpn,
            prober,
            gre,
        }
    }

    /// An engine over `store` with these ports and [`engine_config`].
    pub fn engine(&self, store: Arc<dyn NodeStore>, config: &Config) -> Engine {
        self.engine_as(store, config, None, Vec::new())
    }

    /// As [`engine`](Self::engine), for a worker process: its name (default
    /// `HOST-pPID`) and roles (empty: the default, jobs and services).
    pub fn engine_as(
        &self,
        store: Arc<dyn NodeStore>,
        config: &Config,
        worker: Option<String>,
        roles: Vec<crate::ports::WorkerRole>,
    ) -> Engine {
        Engine::new(
            store,
            self.prober.clone(),
            self.speed.clone(),
            self.services.clone(),
            worker_config(config, worker, roles),
        )
    }

    /// As [`engine`](Self::engine), with the prober and the speed tester
    /// [`Instrumented`]: every light, auth and speed test the engine runs is
    /// recorded in `stats` (export it with [`ProbeStats::render`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use connexa_core::config::Config;
    /// use connexa_core::metrics::ProbeStats;
    /// use connexa_core::runtime::NetworkPorts;
    /// use connexa_core::store::SqlStore;
    ///
    /// let config = Config::default();
    /// let store = Arc::new(SqlStore::connect("sqlite://connexa.db?mode=rwc").await?);
    /// let stats = Arc::new(ProbeStats::new());
    /// let engine = NetworkPorts::from_config(&config).engine_with_stats(store, &config, stats.clone());
    /// // ... run jobs ...
    /// print!("{}", stats.render());
    /// # let _ = engine; Ok(()) }
    /// ```
    pub fn engine_with_stats(
        &self,
        store: Arc<dyn NodeStore>,
        config: &Config,
        stats: Arc<ProbeStats>,
    ) -> Engine {
        self.engine_with_stats_as(store, config, stats, None, Vec::new())
    }

    /// As [`engine_with_stats`](Self::engine_with_stats), for a worker
    /// process: its name (default `HOST-pPID`) and roles (empty: the
    /// default, jobs and services).
    pub fn engine_with_stats_as(
        &self,
        store: Arc<dyn NodeStore>,
        config: &Config,
        stats: Arc<ProbeStats>,
        worker: Option<String>,
        roles: Vec<crate::ports::WorkerRole>,
    ) -> Engine {
        Engine::new(
            store,
            Arc::new(Instrumented::new(self.prober.clone(), Arc::clone(&stats))),
            Arc::new(Instrumented::new(self.speed.clone(), stats)),
            self.services.clone(),
            worker_config(config, worker, roles),
        )
    }
}

/// The demo's settings ([`ops::demo`](crate::ops::demo)): `config`'s, with the speed test pointed at the keyed
/// endpoint of the simulator's tunnel host and kept short.
#[cfg(feature = "sim")]
pub fn demo_config(config: &Config) -> Config {
    let mut c = config.clone();
    c.test.self_url = Some(format!("http://{}", crate::sim::TUNNEL_HOST));
    c.test.self_upload = false;
    c.test.extra_test_urls.clear();
    c.test.upload_url = None;
    c.test.speed_duration_secs = 2.0;
    c.test.speed_warmup_secs = 0.5;
    c.test.speed_streams = 2;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `[test]` timeout reaches the component that enforces it.
    #[test]
    fn test_timeouts_of_the_config_file_reach_the_prober_and_the_speed_tester() {
        let t = TestConfig {
            connect_timeout_secs: 1.5,
            light_timeout_secs: 2.5,
            auth_timeout_secs: 3.5,
            speed_timeout_secs: 4.5,
            ..TestConfig::default()
        };
        let p = prober(&t);
        let auth = p.auth_config();
        assert_eq!(auth.connect_timeout, Duration::from_millis(1500));
        assert_eq!(auth.handshake_timeout, Duration::from_millis(2500));
        assert_eq!(auth.auth_timeout, Duration::from_millis(3500));
        let ports = NetworkPorts::with_prober(
            &Config {
                test: t,
                ..Config::default()
            },
            Arc::new(p),
        );
        let speed = ports.speed.config();
        assert_eq!(speed.timeout, Duration::from_millis(4500));
        assert_eq!(
            speed.tunnel.auth.connect_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            speed.tunnel.auth.handshake_timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(speed.tunnel.auth.auth_timeout, Duration::from_millis(3500));
    }

    /// One raw GRE socket per process: the prober, the speed tester and the
    /// ports share one handle, and a socket one of them opens is the others'.
    #[tokio::test]
    async fn the_ports_share_one_gre_handle() {
        let ports = NetworkPorts::from_config(&Config::default());
        assert!(ports.prober.gre().shares_with(&ports.gre));
        assert!(ports.speed.gre().shares_with(&ports.gre));
        assert!(!SharedGre::new().shares_with(&ports.gre));
        // Opening needs CAP_NET_RAW (CI runs as root); without it, the handles
        // above are the proof.
        if let Ok(g) = ports.prober.gre_socket().await {
            let seen = ports
                .speed
                .gre()
                .opened()
                .expect("opened through the prober");
            assert!(Arc::ptr_eq(g, seen));
        }
    }

    #[test]
    fn config_from_services_section() {
        let text = "[services]\nbind = \"127.0.0.3\"\nport_min = 31000\nport_max = 31010\n\
                    public_host = \"proxy.example\"\nmax_connections = 7\nidle_timeout_secs = 1.5\n\
                    max_preauth = 40\nmax_preauth_per_source = 4\npreauth_timeout_secs = 0.25\n\
                    dns = \"local\"\ncheck_target = \"127.0.0.1:80\"\n";
        let cfg = Config::from_toml_str(text).unwrap();
        let s = SocksConfig::from_services(&cfg.services);
        assert_eq!(s.host(), "proxy.example");
        assert_eq!((s.port_min, s.port_max), (31000, 31010));
        assert_eq!(s.server.max_connections, 7);
        assert_eq!(
            (s.server.max_preauth, s.server.max_preauth_per_source),
            (40, 4)
        );
        assert_eq!(
            s.server.preauth_timeout,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            SocksConfig::default().server,
            ServerOptions::default(),
            "the config defaults are the server defaults"
        );
        assert_eq!(
            s.server.idle_timeout,
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(s.server.dns, crate::socks::DnsMode::Local);
        assert_eq!(
            s.check_target,
            Some(TargetAddr::Ip("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(SocksConfig::default().host(), "127.0.0.1");
        // The component's own defaults are the file's.
        assert_eq!(
            SocksConfig::default(),
            SocksConfig::from_services(&ServicesConfig::default())
        );
    }

    #[test]
    fn engine_config_of_every_services_key() {
        let text = "[test]\nconcurrency = 8\n\
                    [services]\nreconcile_interval_secs = 5\nmonitor_interval_secs = 7.5\n\
                    health_threshold = 2\nrestart_backoff_secs = 0\nrestart_backoff_max_secs = 60\n\
                    proxies_file = \"/run/connexa/proxies.txt\"\n";
        let c = Config::from_toml_str(text).unwrap();
        let e = engine_config(&c);
        assert_eq!(e.reconcile_interval, Duration::from_secs(5));
        assert_eq!(e.monitor_interval, Duration::from_millis(7500));
        assert_eq!(e.health_threshold, 2);
        assert_eq!(e.restart_backoff, Duration::ZERO);
        assert_eq!(e.restart_backoff_max, Duration::from_secs(60));
        assert_eq!(
            e.proxies_file.as_deref(),
            Some(std::path::Path::new("/run/connexa/proxies.txt"))
        );
        assert_eq!(
            engine_config(&Config::default()).proxies_file,
            None,
            "no proxies file unless configured"
        );
        let d = engine_config(&Config::default());
        let engine_default = EngineConfig::default();
        assert_eq!(
            (
                d.reconcile_interval,
                d.monitor_interval,
                d.health_threshold,
                d.restart_backoff,
                d.restart_backoff_max
            ),
            (
                engine_default.reconcile_interval,
                engine_default.monitor_interval,
                engine_default.health_threshold,
                engine_default.restart_backoff,
                engine_default.restart_backoff_max
            ),
            "the file's defaults are the engine's"
        );
        assert_eq!(e.concurrency, 8);
    }
}
