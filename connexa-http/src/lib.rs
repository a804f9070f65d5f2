//! `connexa-http`: Connexa's REST API (axum). [`app`] builds the router over an
//! [`AppState`] (the engine, whose store holds the nodes, and a token store);
//! handlers only parse, call connexa-core and serialise. See `docs/http.md`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
//! use connexa_core::probe::{LightProber, ProbeConfig};
//! use connexa_core::store::SqlStore;
//! use connexa_http::{AppState, HttpOptions, app};
//!
//! let store = Arc::new(SqlStore::connect("sqlite://connexa.db?mode=rwc").await?);
//! let engine = Engine::new(store.clone(), Arc::new(LightProber::new(ProbeConfig::default())),
//!     Arc::new(NotAvailable), Arc::new(NotAvailable), EngineConfig::default());
//! let state = AppState::new(engine, store, HttpOptions::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // The serve loop of the binary: timeouts, a connection cap, a minimum body
//! // rate, and the peer address the authentication rate limit needs.
//! connexa_http::serve::serve(listener, app(state), Default::default(), std::future::pending())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Served another way (e.g. `axum::serve` without
//! `into_make_service_with_connect_info`), the API has none of
//! [`serve`]'s protections, and without the peer address the rate limit on
//! failed authentications is off (a warning says so once).

pub mod auth;
pub mod console;
pub mod extract;
mod metrics;
pub mod openapi;
pub mod problem;
pub mod roles;
mod routes;
pub mod serve;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use connexa_core::engine::Engine;
use connexa_core::metrics::ProbeStats;
use connexa_core::ports::{AccountStore, NodeStore, TokenId, TokenStore};
use connexa_core::socks::SocksLauncher;
use connexa_core::speed::keyed::SpeedEndpoint;
use connexa_core::store::SqlStore;
use tokio::sync::watch;

use crate::auth::{AccountLimiter, AuthLimiter};
use crate::metrics::Metrics;
use crate::problem::{ApiError, Kind};

pub use crate::metrics::metrics_router;
pub use crate::routes::import::LISTED as BACKGROUND_IMPORTS_LISTED;

/// Limits and switches of the API.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest JSON body accepted, bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Largest import body accepted, bytes. Default 512 MiB (the import streams).
    pub max_import_bytes: u64,
    /// An import body whose `Content-Length` is larger than this runs in the
    /// background (`202` and a progress resource) unless the request says
    /// `background=false`. Default 4 MiB.
    pub background_import_bytes: u64,
    /// Where background imports spool their upload; `None` (the default): the
    /// system's temporary directory. Each spool file is deleted when its import ends.
    pub spool_dir: Option<std::path::PathBuf>,
    /// Background imports that may run (spooling or importing) at once; one
    /// more is answered `503 unavailable` (with `Retry-After`) before its body
    /// is read. Default 4.
    pub max_background_imports: usize,
    /// Time limit of a request (not of streams: imports, exports, events). Default 30 s.
    pub request_timeout: Duration,
    /// Origins allowed by CORS; empty (the default) = no CORS headers at all.
    pub cors_origins: Vec<HeaderValue>,
    /// Failed authentication attempts allowed per client address and minute
    /// (IPv6 addresses count per /64). Default 20.
    pub auth_failures_per_minute: u32,
    /// Client addresses the failure counter remembers (least recently used
    /// forgotten first). Default 100,000.
    pub auth_limiter_capacity: usize,
    /// Reverse proxies whose `X-Forwarded-For` names the client (addresses or
    /// CIDR prefixes); from any other peer the header is ignored. Default: none.
    pub trusted_proxies: Vec<auth::IpNet>,
    /// Synchronous imports that may run at once; one more is answered
    /// `503 unavailable` (with `Retry-After`) before its body is read. Default 4.
    pub max_sync_imports: usize,
    /// A sign-in session ends after this long without a request. Default 30 min.
    pub session_idle_timeout: Duration,
    /// A sign-in session ends this long after it opened, whatever its use. Default 12 h.
    pub session_lifetime: Duration,
    /// Failed sign-ins per account name within [`HttpOptions::sign_in_window`]
    /// before it is locked for one window (see [`auth::AccountLimiter`]). Default 10.
    pub sign_in_failures_per_account: u32,
    /// The window of [`HttpOptions::sign_in_failures_per_account`]. Default 15 min.
    pub sign_in_window: Duration,
    /// Mark the session cookie `Secure` on every request (the server is
    /// reached over HTTPS through a proxy that does not send
    /// `X-Forwarded-Proto`). Without it the cookie is `Secure` when a trusted
    /// proxy says `X-Forwarded-Proto: https`. Default false.
    pub secure_cookies: bool,
    /// Where the CA of `openvpn` services is (`[services] openvpn_dir`, see
    /// `Config::openvpn_dir`), for `GET /services/{id}/profile`. Default
    /// `connexa-openvpn` in the working directory.
    pub openvpn_dir: std::path::PathBuf,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_body_bytes: 1 << 20,
            max_import_bytes: 512 << 20,
            background_import_bytes: 4 << 20,
            spool_dir: None,
            max_background_imports: 4,
            request_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            auth_failures_per_minute: 20,
            auth_limiter_capacity: 100_000,
            trusted_proxies: Vec::new(),
            max_sync_imports: 4,
            session_idle_timeout: Duration::from_secs(30 * 60),
            session_lifetime: Duration::from_secs(12 * 3600),
            sign_in_failures_per_account: 10,
            sign_in_window: Duration::from_secs(15 * 60),
            secure_cookies: false,
            openvpn_dir: "connexa-openvpn".into(),
        }
    }
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    engine: Engine,
    tokens: Arc<dyn TokenStore>,
    options: HttpOptions,
    limiter: AuthLimiter,
    /// Failed sign-ins per account name.
    account_limiter: AccountLimiter,
    /// Operator accounts and sessions, if set ([`AppState::with_accounts`]).
    accounts: Mutex<Option<Arc<dyn AccountStore>>>,
    metrics: Metrics,
    /// Probe latency histograms exported by `/metrics`, if the engine's ports record them.
    probe_stats: Mutex<Option<Arc<ProbeStats>>>,
    /// SOCKS5 service counters exported by `/metrics`, if set.
    socks: Mutex<Option<Arc<SocksLauncher>>>,
    /// The keyed speed endpoint served at `/speed/...`, if set.
    speed: Mutex<Option<Arc<SpeedEndpoint>>>,
    touched: Mutex<HashMap<TokenId, std::time::Instant>>,
    /// Totals of recent listings per filter (see [`AppState::total`]).
    totals: Mutex<HashMap<String, TotalSlot>>,
    /// Accepted token hashes, for [`auth::TOKEN_CACHE_TTL`].
    token_cache: Mutex<HashMap<String, (connexa_core::ports::ApiToken, std::time::Instant)>>,
    /// Hashes of tokens accepted recently, and when (see [`auth::KNOWN_TTL`]).
    known_tokens: Mutex<HashMap<String, std::time::Instant>>,
    shutdown: watch::Sender<bool>,
    /// Where `GET /audit` reads the audit trail, if set.
    audit: Mutex<Option<SqlStore>>,
    /// One permit per background upload being spooled.
    spooling: Arc<tokio::sync::Semaphore>,
    /// One permit per synchronous import running.
    sync_imports: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("options", &self.0.options)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over an engine (whose store the API reads and writes) and a token store.
    pub fn new(engine: Engine, tokens: Arc<dyn TokenStore>, options: HttpOptions) -> Self {
        let spooling = Arc::new(tokio::sync::Semaphore::new(
            options
                .max_background_imports
                .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        ));
        AppState(Arc::new(Shared {
            limiter: AuthLimiter::new(options.auth_failures_per_minute, Duration::from_secs(60))
                .with_capacity(options.auth_limiter_capacity),
            account_limiter: AccountLimiter::new(
                options.sign_in_failures_per_account,
                options.sign_in_window,
            ),
            accounts: Mutex::new(None),
            sync_imports: Arc::new(tokio::sync::Semaphore::new(
                options
                    .max_sync_imports
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            engine,
            tokens,
            options,
            metrics: Metrics::default(),
            probe_stats: Mutex::new(None),
            socks: Mutex::new(None),
            speed: Mutex::new(None),
            touched: Mutex::new(HashMap::new()),
            token_cache: Mutex::new(HashMap::new()),
            known_tokens: Mutex::new(HashMap::new()),
            totals: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            audit: Mutex::new(None),
            spooling,
        }))
    }

    /// Lets operator accounts sign in (`/api/v1/session`, the `cx_session`
    /// cookie; see [`session`]) with the accounts of `accounts`. Without it
    /// only bearer tokens authenticate. A later call replaces the store.
    pub fn with_accounts(self, accounts: Arc<dyn AccountStore>) -> Self {
        *self
            .0
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(accounts);
        self
    }

    /// The account store, if any ([`with_accounts`](Self::with_accounts)).
    pub fn accounts(&self) -> Option<Arc<dyn AccountStore>> {
        self.0
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Exports `stats` on `/metrics` (`connexa_probe_*` histograms): pass the
    /// collector the engine's ports record into, e.g. the one given to
    /// [`NetworkPorts::engine_with_stats`](connexa_core::runtime::NetworkPorts::engine_with_stats).
    /// Without it `/metrics` has no probe histograms. A later call replaces
    /// the collector.
    pub fn with_probe_stats(self, stats: Arc<ProbeStats>) -> Self {
        *self
            .0
            .probe_stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stats);
        self
    }

    /// The probe histograms exported on `/metrics`, if any ([`with_probe_stats`](Self::with_probe_stats)).
    pub fn probe_stats(&self) -> Option<Arc<ProbeStats>> {
        self.0
            .probe_stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Exports the counters of `launcher`'s SOCKS5 services on `/metrics`
    /// (`connexa_socks_*`: connections, pre-auth evictions and timeouts, relays,
    /// bytes), totalled over every service it ran. A later call replaces it.
    pub fn with_socks_launcher(self, launcher: Arc<SocksLauncher>) -> Self {
        *self
            .0
            .socks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(launcher);
        self
    }

    /// The launcher whose counters `/metrics` exports, if any
    /// ([`with_socks_launcher`](Self::with_socks_launcher)).
    pub fn socks_launcher(&self) -> Option<Arc<SocksLauncher>> {
        self.0
            .socks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Serves `endpoint` at `/speed/down` and `/speed/up` (no token; a valid
    /// signed nonce instead, see connexa-core's `speed::keyed`). Without it
    /// those paths answer `404`. A later call replaces it.
    pub fn with_speed_endpoint(self, endpoint: Arc<SpeedEndpoint>) -> Self {
        *self
            .0
            .speed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(endpoint);
        self
    }

    /// The keyed speed endpoint, if any ([`with_speed_endpoint`](Self::with_speed_endpoint)).
    pub fn speed_endpoint(&self) -> Option<Arc<SpeedEndpoint>> {
        self.0
            .speed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Serves the audit trail of `store` at `GET /api/v1/audit` (without it
    /// that route answers 404). Writes are audited whatever the store: every
    /// authenticated request acts as its caller
    /// ([`connexa_core::store::audit::scope`]).
    pub fn with_audit_trail(self, store: SqlStore) -> Self {
        *self
            .0
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store);
        self
    }

    /// The store `GET /audit` reads, if any ([`with_audit_trail`](Self::with_audit_trail)).
    pub fn audit_trail(&self) -> Option<SqlStore> {
        self.0
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    /// The node store.
    pub fn store(&self) -> &Arc<dyn NodeStore> {
        self.0.engine.store()
    }

    /// The options.
    pub fn options(&self) -> &HttpOptions {
        &self.0.options
    }

    /// Ends every open event stream (call on shutdown, so that graceful shutdown
    /// does not wait for clients that follow a job) and refuses new background
    /// imports ([`AppState::background_imports_ended`] pauses the running ones).
    pub fn shutdown(&self) {
        self.0.shutdown.send_replace(true);
    }

    /// Stops the background imports running in this process after their
    /// current batch (they are import jobs: the next start of the server on
    /// this host resumes them from their checkpoint, spool files kept) and
    /// resolves once they stopped.
    pub async fn background_imports_ended(&self) {
        self.0.engine.pause_imports().await;
    }

    pub(crate) fn spooling(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.0.spooling
    }

    pub(crate) fn sync_imports(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.0.sync_imports
    }

    /// How many nodes match `filter`: counted at most once per [`TOTAL_TTL`]
    /// per distinct filter (counting is what makes a listing of a large table
    /// slow), and by one request at a time: concurrent listings with the same
    /// filter wait for that one count instead of each counting the table. Any
    /// write request through the API forgets the cached totals.
    pub async fn total(
        &self,
        filter: &connexa_core::domain::NodeFilter,
    ) -> Result<u64, connexa_core::ports::StoreError> {
        let key = serde_json::to_string(filter).unwrap_or_default();
        let slot = {
            let mut totals = self
                .0
                .totals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if totals.len() > 1_000 {
                totals.clear();
            }
            Arc::clone(totals.entry(key).or_default())
        };
        let mut cached = slot.lock().await;
        if let Some((n, at)) = *cached
            && at.elapsed() < TOTAL_TTL
        {
            return Ok(n);
        }
        let n = connexa_core::ops::count(self.store().as_ref(), filter).await?;
        *cached = Some((n, std::time::Instant::now()));
        Ok(n)
    }

    pub(crate) fn forget_totals(&self) {
        self.0
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    pub(crate) fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.0.shutdown.subscribe()
    }
}

/// A cached listing total and when it was counted; the async lock lets one
/// request count while the others with the same filter wait for its result.
type TotalSlot = Arc<tokio::sync::Mutex<Option<(u64, std::time::Instant)>>>;

/// How long a listing's `total` may be reused (see [`AppState::total`]).
pub const TOTAL_TTL: Duration = Duration::from_secs(1);

/// The whole API: `/healthz`, the keyed speed endpoint at `/speed/...`
/// ([`AppState::with_speed_endpoint`]) and the web console at `/` (no auth), and, behind a bearer token, `/metrics`
/// and everything under `/api/v1` (see [`openapi::ApiDoc`]).
pub fn app(state: AppState) -> Router {
    let o = state.options().clone();
    // Requests that finish quickly: a time limit and the JSON body limit.
    let quick = Router::new()
        .route(
            "/nodes",
            get(routes::nodes::list)
                .post(routes::nodes::create)
                .delete(routes::nodes::delete_matching),
        )
        .route("/nodes/values", get(routes::nodes::values))
        .route(
            "/nodes/{id}",
            get(routes::nodes::get_one)
                .patch(routes::nodes::patch)
                .delete(routes::nodes::delete_one),
        )
        .route("/nodes/{id}/history", get(routes::nodes::history))
        .route("/jobs", get(routes::jobs::list).post(routes::jobs::create))
        .route("/jobs/{id}", get(routes::jobs::get_one))
        .route("/jobs/cancel", post(routes::jobs::cancel_all))
        .route("/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route(
            "/jobs/{id}/retest-failed",
            post(routes::jobs::retest_failed),
        )
        .route("/imports", get(routes::import::list))
        .route("/imports/{id}", get(routes::import::get_one))
        .route("/services", get(routes::services::list))
        .route("/services/start", post(routes::services::start))
        .route("/services/stop", post(routes::services::stop))
        .route("/services/restart", post(routes::services::restart))
        .route("/services/{id}/profile", get(routes::services::profile))
        .route("/stats", get(routes::stats::stats))
        .route("/workers", get(routes::workers::list))
        .route("/token", get(routes::token::current))
        .route("/audit", get(routes::audit::list))
        .route(
            "/session",
            get(session::current)
                .post(session::sign_in)
                .delete(session::sign_out),
        )
        .route("/session/password", post(session::change_password))
        .route("/openapi.json", get(openapi::serve))
        .layer(DefaultBodyLimit::max(o.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit));
    // Streams: no overall time limit.
    let streams = Router::new()
        .route(
            "/import",
            post(routes::import::import).layer(DefaultBodyLimit::disable()),
        )
        .route("/export", get(routes::export::export))
        .route("/jobs/{id}/events", get(routes::jobs::events))
        .route("/imports/{id}/events", get(routes::import::events));
    let api = quick
        .merge(streams)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forget_totals_on_write,
        ))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed);
    let protected = Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics::metrics))
        // Each request acts as its caller: the store audits its changes.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            routes::audit::act_as_caller,
        ))
        // The role each route needs (roles::ROUTES), checked after the token.
        .layer(middleware::from_fn(roles::require_role))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        // The keyed speed endpoint: no token, a signed nonce instead.
        .route("/speed/down", get(routes::speed::down))
        .route(
            "/speed/up",
            post(routes::speed::up).layer(DefaultBodyLimit::disable()),
        )
        // The web console's static files: no token (the page holds no data).
        .merge(console::router())
        .merge(protected)
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        // Every error answer is a problem, also axum's own (405, 413, …).
        .layer(middleware::from_fn(problem::problem_bodies))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ));
    if !o.cors_origins.is_empty() {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(o.cors_origins.clone()))
                .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderName::from_static("last-event-id"),
                    axum::http::HeaderName::from_static(session::CSRF_HEADER),
                ]),
        );
    }
    router.with_state(state)
}

/// `GET /healthz`: liveness, no authentication.
#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(Kind::MethodNotAllowed, "method not allowed on this path")
}

async fn forget_totals_on_write(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let write = req.method() != Method::GET;
    let res = next.run(req).await;
    if write {
        st.forget_totals();
    }
    res
}

async fn time_limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(st.options().request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(Kind::Timeout, "the request took too long").into_response(),
    }
}
