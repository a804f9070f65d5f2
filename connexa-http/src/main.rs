//! `connexa-http`: serves Connexa's REST API and runs the engine (job workers,
//! service reconciler, health monitor) in the same process. See docs/http.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::HeaderValue;
use clap::{Parser, Subcommand};
use connexa_core::config::Config;
use connexa_core::engine::RecoverPolicy;
use connexa_core::metrics::ProbeStats;
use connexa_core::ports::{Role, TokenId, TokenScope, TokenStore, WorkerRole};
use connexa_core::runtime::NetworkPorts;
use connexa_core::store::{SqlStore, redact_url};
use connexa_http::serve::ServeOptions;
use connexa_http::{AppState, HttpOptions, app, metrics_router};

/// mimalloc instead of glibc malloc: under concurrent load glibc's arenas and
/// `malloc_consolidate` cost a fifth of the CPU time (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The database used when neither `--db`, `$CONNEXA_DB` nor the config file names one.
const DEFAULT_DB: &str = "sqlite://connexa.db?mode=rwc";

/// Serve Connexa's REST API (and run its job workers, reconciler and monitor).
#[derive(Debug, Parser)]
#[command(name = "connexa-http", version, about, long_about = None)]
struct Args {
    /// Database URL [default: $CONNEXA_DB, else `database` in the config file, else sqlite://connexa.db?mode=rwc].
    #[arg(long, global = true, env = "CONNEXA_DB", hide_env_values = true)]
    db: Option<String>,
    /// The TOML configuration file shared with the `connexa` CLI.
    #[arg(long, global = true, value_name = "FILE", env = "CONNEXA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve(Box<ServeArgs>),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Operator accounts (console sign-in with a name and a password).
    #[command(subcommand)]
    User(UserCommand),
    /// Print the OpenAPI document.
    Openapi,
}

/// `--max-import-mib` when not given.
const MAX_IMPORT_MIB: u64 = 512;
/// `--background-import-mib` when not given.
const BACKGROUND_IMPORT_MIB: u64 = 4;
/// `--max-background-imports` when not given.
const MAX_BACKGROUND_IMPORTS: u64 = 4;

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Listen address [default: `http.listen` in the config file, else 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Also serve /metrics WITHOUT authentication on this address (for a scraper).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// If no account exists yet, create the account "admin" (role admin)
    /// with a random password and print the password once on stdout.
    #[arg(long)]
    init_admin: bool,
    /// A console session ends after this many minutes without a request.
    #[arg(long, value_name = "MIN", default_value_t = SESSION_IDLE_MIN, value_parser = clap::value_parser!(u64).range(1..))]
    session_idle_minutes: u64,
    /// A console session ends this many hours after sign-in, whatever its use.
    #[arg(long, value_name = "H", default_value_t = SESSION_LIFETIME_H, value_parser = clap::value_parser!(u64).range(1..))]
    session_lifetime_hours: u64,
    /// Always mark the session cookie Secure (HTTPS terminated by a proxy
    /// that sends no X-Forwarded-Proto). Without it the cookie is Secure when
    /// a --trusted-proxy says X-Forwarded-Proto: https.
    #[arg(long)]
    secure_cookies: bool,
    /// Allow this browser origin (CORS; repeatable). Without it, no CORS headers are sent.
    #[arg(long, value_name = "ORIGIN")]
    cors_origin: Vec<String>,
    /// Largest import body, MiB.
    #[arg(long, default_value_t = MAX_IMPORT_MIB)]
    max_import_mib: u64,
    /// Import bodies whose Content-Length is over this many MiB run in the
    /// background (202 + progress at /api/v1/imports/{id}) unless `background=false`.
    #[arg(long, default_value_t = BACKGROUND_IMPORT_MIB)]
    background_import_mib: u64,
    /// Directory for the spool files of background imports [default: the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// Background imports receiving or importing at once; more are refused
    /// with 503 and Retry-After before their body is read.
    #[arg(long, default_value_t = MAX_BACKGROUND_IMPORTS, value_parser = clap::value_parser!(u64).range(1..))]
    max_background_imports: u64,
    /// Synchronous imports running at once; more are refused with 503 and
    /// Retry-After before their body is read.
    #[arg(long, default_value_t = MAX_SYNC_IMPORTS, value_parser = clap::value_parser!(u64).range(1..))]
    max_sync_imports: u64,
    /// What to do at start-up with jobs a previous process left unfinished.
    #[arg(long, value_enum, default_value_t = Recover::Resume)]
    recover: Recover,
    /// API and console only: run no job items and no services (jobs created
    /// here wait for `connexa run` workers). Registers with the role http.
    #[arg(long)]
    no_workers: bool,
    /// This process's worker name, unique among live workers (default: HOST-pPID).
    #[arg(long, value_name = "NAME")]
    worker: Option<String>,
    /// Close a connection whose request head is not complete this many seconds
    /// after its first byte (or after the connection opened).
    #[arg(long, value_name = "SECS", default_value_t = HEADER_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Close a keep-alive connection idle (no request in flight) this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = IDLE_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Connections open at once; more are answered 503 and closed (keep it
    /// under the process's file limit, `ulimit -n`).
    #[arg(long, default_value_t = MAX_CONNECTIONS, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Cut a request body (408) slower than this many bytes/s over
    /// --body-rate-window seconds of waiting for it; 0: no minimum.
    #[arg(long, value_name = "BYTES_PER_SEC", default_value_t = MIN_BODY_RATE)]
    min_body_rate: u64,
    /// The window of --min-body-rate, seconds.
    #[arg(long, value_name = "SECS", default_value_t = BODY_RATE_WINDOW_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    body_rate_window: u64,
    /// A reverse proxy (address or CIDR prefix; repeatable) whose
    /// X-Forwarded-For names the client for the authentication rate limit.
    /// Without it, X-Forwarded-For is ignored.
    #[arg(long, value_name = "ADDR")]
    trusted_proxy: Vec<connexa_http::auth::IpNet>,
    /// Failed authentication attempts allowed per client address (IPv6: per
    /// /64) and minute; past it the address is answered 429 until the
    /// minute has passed.
    #[arg(long, value_name = "N", default_value_t = AUTH_FAILURES_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..))]
    auth_failures_per_minute: u32,
}

/// `--session-idle-minutes` when not given.
const SESSION_IDLE_MIN: u64 = 30;
/// `--session-lifetime-hours` when not given.
const SESSION_LIFETIME_H: u64 = 12;

/// `--auth-failures-per-minute` when not given.
const AUTH_FAILURES_PER_MINUTE: u32 = 20;

/// `--max-sync-imports` when not given.
const MAX_SYNC_IMPORTS: u64 = 4;
/// `--header-timeout` when not given.
const HEADER_TIMEOUT_SECS: u64 = 10;
/// `--idle-timeout` when not given.
const IDLE_TIMEOUT_SECS: u64 = 60;
/// `--max-connections` when not given.
const MAX_CONNECTIONS: u64 = 1024;
/// `--min-body-rate` when not given.
const MIN_BODY_RATE: u64 = 1024;
/// `--body-rate-window` when not given.
const BODY_RATE_WINDOW_SECS: u64 = 10;

/// `serve` without options (what runs without a subcommand): the same defaults
/// as clap's (a derived `Default` would make the import limits 0 MiB).
impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            listen: None,
            metrics_listen: None,
            init_admin: false,
            session_idle_minutes: SESSION_IDLE_MIN,
            session_lifetime_hours: SESSION_LIFETIME_H,
            secure_cookies: false,
            cors_origin: Vec::new(),
            max_import_mib: MAX_IMPORT_MIB,
            background_import_mib: BACKGROUND_IMPORT_MIB,
            spool_dir: None,
            max_background_imports: MAX_BACKGROUND_IMPORTS,
            max_sync_imports: MAX_SYNC_IMPORTS,
            recover: Recover::Resume,
            no_workers: false,
            worker: None,
            header_timeout: HEADER_TIMEOUT_SECS,
            idle_timeout: IDLE_TIMEOUT_SECS,
            max_connections: MAX_CONNECTIONS,
            min_body_rate: MIN_BODY_RATE,
            body_rate_window: BODY_RATE_WINDOW_SECS,
            trusted_proxy: Vec::new(),
            auth_failures_per_minute: AUTH_FAILURES_PER_MINUTE,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
enum Recover {
    /// Run them again from where they stopped.
    #[default]
    Resume,
    /// Close them as interrupted.
    Interrupt,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (it is shown once and stored only hashed).
    Create {
        /// Who or what uses it.
        #[arg(long)]
        name: String,
        /// What it may do: viewer (reads, secrets masked), operator (also
        /// imports, tests, services, masked exports) or admin (everything).
        /// Least privilege: viewer unless said.
        #[arg(long, default_value = "viewer", value_parser = parse_role)]
        role: Role,
        /// A scraper's token: it may only GET /metrics.
        #[arg(long)]
        metrics: bool,
        /// Expire after this many days.
        #[arg(long)]
        expires_days: Option<u32>,
    },
    /// List tokens (never the tokens themselves).
    List,
    /// Revoke a token by id.
    Revoke {
        /// Token id (from `token list`).
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account. The password is read from one line of stdin (no
    /// prompt; at least 12 characters), or with --generate made up and
    /// printed once on stdout.
    Add {
        /// The sign-in name (letters, digits, '.', '_', '-', '@').
        name: String,
        /// What it may do: viewer, operator or admin.
        #[arg(long, default_value = "viewer", value_parser = parse_role)]
        role: Role,
        /// Make up a random password and print it once instead of reading stdin.
        #[arg(long)]
        generate: bool,
    },
    /// List accounts (never a password or a hash).
    List,
    /// Set an account's password from one line of stdin; ends its sessions.
    Passwd {
        /// The account.
        name: String,
    },
    /// Disable an account: it cannot sign in and its sessions end.
    Disable {
        /// The account.
        name: String,
    },
    /// Enable a disabled account: it may sign in again.
    Enable {
        /// The account.
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    // Before any thread exists, so before any use of SQLite (see its docs).
    #[allow(unsafe_code)]
    // SAFETY: nothing has used SQLite yet; the process is single-threaded here.
    let _ = unsafe { connexa_core::store::disable_sqlite_memory_statistics() };
    let args = Args::parse();
    // RUST_LOG (e.g. `RUST_LOG=connexa_http=debug,info`) when set; else INFO.
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::INFO.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = match args.config.as_deref().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let command = args.command.unwrap_or(Command::Serve(Box::default()));
    if let Command::Openapi = command {
        println!("{}", connexa_http::openapi::json());
        return Ok(());
    }
    let url = args
        .db
        .filter(|s| !s.is_empty())
        .or(config.database.clone())
        .unwrap_or_else(|| DEFAULT_DB.to_owned());
    let keys = connexa_core::runtime::secret_keys(&config)?;
    let store = Arc::new(
        SqlStore::connect_with_keys(&url, keys)
            .await
            .with_context(|| format!("opening {}", redact_url(&url)))?,
    );
    match command {
        // A local root tool, like the CLI: audited under the OS user.
        Command::Token(t) => {
            let store = store.acting_as(connexa_core::store::audit::Actor::os_user());
            token(&store, t).await
        }
        Command::User(u) => {
            let store = store.acting_as(connexa_core::store::audit::Actor::os_user());
            user(&store, u).await
        }
        Command::Serve(s) => {
            // The effective database: the speed key file defaults to its directory.
            let mut config = config.clone();
            config.database = Some(url.clone());
            serve(store, &config, *s).await
        }
        Command::Openapi => Ok(()),
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|e: connexa_core::ports::UnknownRole| e.to_string())
}

async fn token(store: &SqlStore, t: TokenCommand) -> anyhow::Result<()> {
    match t {
        TokenCommand::Create {
            name,
            role,
            metrics,
            expires_days,
        } => {
            let expires =
                expires_days.map(|d| chrono::Utc::now() + chrono::Duration::days(d.into()));
            let scope = if metrics {
                TokenScope::Metrics
            } else {
                TokenScope::Full
            };
            let (token, row) =
                connexa_http::auth::create_token_with(store, &name, role, scope, expires).await?;
            eprintln!(
                "token #{} {:?} created (role {}{}); it is shown once:",
                row.id,
                row.name,
                row.role,
                if metrics {
                    ", scope metrics: GET /metrics only"
                } else {
                    ""
                }
            );
            println!("{token}");
        }
        TokenCommand::List => {
            for t in store.tokens().await? {
                println!(
                    "{}\t{}\t{}\t{}\tcreated {}\tlast used {}\t{}",
                    t.id,
                    t.name,
                    t.role,
                    t.scope.as_str(),
                    t.created_at.format("%Y-%m-%d %H:%M:%S"),
                    t.last_used_at
                        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "never".into()),
                    if t.revoked {
                        "revoked".to_owned()
                    } else {
                        t.expires_at
                            .map(|e| format!("expires {}", e.format("%Y-%m-%d")))
                            .unwrap_or_else(|| "active".into())
                    }
                );
            }
        }
        TokenCommand::Revoke { id } => {
            if !store.revoke_token(TokenId(id)).await? {
                anyhow::bail!("no active token with id {id}");
            }
            eprintln!("token #{id} revoked");
        }
    }
    Ok(())
}

/// One line of stdin without its line end (no prompt, no echo handling: pipe it).
fn read_password_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        anyhow::bail!("no password on stdin (give one line, or use --generate)");
    }
    Ok(pw.to_owned())
}

async fn find_account(
    store: &SqlStore,
    name: &str,
) -> anyhow::Result<connexa_core::ports::Account> {
    use connexa_core::ports::AccountStore;
    store
        .account_by_name(name)
        .await?
        .map(|(a, _)| a)
        .with_context(|| format!("no account named {name:?}"))
}

async fn user(store: &SqlStore, u: UserCommand) -> anyhow::Result<()> {
    use connexa_core::ports::AccountStore;
    use connexa_core::store::accounts;
    match u {
        UserCommand::Add {
            name,
            role,
            generate,
        } => {
            let password = if generate {
                accounts::generate_password()?
            } else {
                read_password_line()?
            };
            let a = accounts::create_account(store, &name, &password, role).await?;
            eprintln!("account #{} {:?} created (role {})", a.id, a.name, a.role);
            if generate {
                eprintln!("its password is shown once:");
                println!("{password}");
            }
        }
        UserCommand::List => {
            for a in store.accounts().await? {
                println!(
                    "{}\t{}\t{}\tcreated {}\tpassword set {}\t{}",
                    a.id,
                    a.name,
                    a.role,
                    a.created_at.format("%Y-%m-%d %H:%M:%S"),
                    a.password_changed_at
                        .unwrap_or(a.created_at)
                        .format("%Y-%m-%d %H:%M:%S"),
                    if a.disabled { "disabled" } else { "active" }
                );
            }
        }
        UserCommand::Passwd { name } => {
            let a = find_account(store, &name).await?;
            let password = read_password_line()?;
            if !accounts::change_password(store, a.id, &password, None).await? {
                anyhow::bail!("no account named {name:?}");
            }
            eprintln!("password of {name:?} changed; its sessions are ended");
        }
        UserCommand::Disable { name } => {
            let a = find_account(store, &name).await?;
            if !store.disable_account(a.id).await? {
                anyhow::bail!("account {name:?} is disabled already");
            }
            eprintln!("account {name:?} disabled; its sessions are ended");
        }
        UserCommand::Enable { name } => {
            let a = find_account(store, &name).await?;
            if !store.enable_account(a.id).await? {
                anyhow::bail!("account {name:?} is enabled already");
            }
            eprintln!("account {name:?} enabled; it may sign in again");
        }
    }
    Ok(())
}

/// `--init-admin`: the account `admin` with a random password printed once,
/// if no account exists.
async fn init_admin(store: &SqlStore) -> anyhow::Result<()> {
    use connexa_core::ports::AccountStore;
    use connexa_core::store::accounts;
    if !store.accounts().await?.is_empty() {
        eprintln!("--init-admin: accounts exist already; none created");
        return Ok(());
    }
    let password = accounts::generate_password()?;
    let store = store.acting_as(connexa_core::store::audit::Actor::os_user());
    accounts::create_account(&store, "admin", &password, Role::Admin).await?;
    eprintln!("first run: account \"admin\" (role admin) created; its password is shown once:");
    println!("{password}");
    Ok(())
}

async fn serve(store: Arc<SqlStore>, config: &Config, s: ServeArgs) -> anyhow::Result<()> {
    if s.init_admin {
        init_admin(&store).await?;
    }
    if store.secret_keys().current().is_none() {
        tracing::warn!("{}", connexa_core::runtime::PLAINTEXT_SECRETS_WARNING);
    }
    // The same ports as the CLI: prober, speed tester and SOCKS5 launcher
    // from the config file, sharing one raw GRE socket; every probe the
    // engine runs is timed for /metrics.
    let ports = NetworkPorts::from_config(config);
    let probe_stats = Arc::new(ProbeStats::new());
    let roles = if s.no_workers {
        vec![WorkerRole::Http]
    } else {
        vec![WorkerRole::Jobs, WorkerRole::Services, WorkerRole::Http]
    };
    let engine = ports.engine_with_stats_as(
        store.clone(),
        config,
        Arc::clone(&probe_stats),
        s.worker.clone(),
        roles,
    );
    connexa_core::runtime::attach_enrichment(&engine, config)?;
    engine.register().await?;
    let policy = match s.recover {
        Recover::Resume => RecoverPolicy::Resume,
        Recover::Interrupt => RecoverPolicy::Interrupt,
    };
    if s.no_workers {
        // Background imports run where their spool is, whatever the roles.
        let recovered = engine.recover_imports(policy).await?;
        if !recovered.is_empty() {
            tracing::info!(jobs = ?recovered, "recovered unfinished imports");
        }
    } else {
        let recovered = engine.recover(policy).await?;
        if !recovered.is_empty() {
            tracing::info!(jobs = ?recovered, "recovered unfinished jobs");
        }
    }
    let cors_origins = s
        .cors_origin
        .iter()
        .map(|o| HeaderValue::from_str(o).with_context(|| format!("bad --cors-origin {o:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = HttpOptions {
        cors_origins,
        max_import_bytes: s.max_import_mib.saturating_mul(1 << 20),
        background_import_bytes: s.background_import_mib.saturating_mul(1 << 20),
        spool_dir: s.spool_dir.clone(),
        max_background_imports: usize::try_from(s.max_background_imports).unwrap_or(usize::MAX),
        max_sync_imports: usize::try_from(s.max_sync_imports).unwrap_or(usize::MAX),
        trusted_proxies: s.trusted_proxy.clone(),
        auth_failures_per_minute: s.auth_failures_per_minute,
        session_idle_timeout: Duration::from_secs(s.session_idle_minutes.saturating_mul(60)),
        session_lifetime: Duration::from_secs(s.session_lifetime_hours.saturating_mul(3600)),
        secure_cookies: s.secure_cookies,
        openvpn_dir: config.openvpn_dir(),
        ..HttpOptions::default()
    };
    let mut state = AppState::new(engine.clone(), store.clone(), options)
        .with_accounts(store.clone())
        .with_probe_stats(probe_stats)
        .with_socks_launcher(ports.launcher.clone())
        .with_audit_trail(store.as_ref().clone());
    // The keyed speed endpoint at /speed/... when a self URL or a key is set up.
    match connexa_core::runtime::served_speed_endpoint(config) {
        Ok(Some(ep)) => state = state.with_speed_endpoint(ep),
        Ok(None) => {}
        Err(e) => tracing::error!("the keyed speed endpoint is off: {e}"),
    }
    let listen = s.listen.unwrap_or(config.http.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // The test harness and scripts read this line to find an ephemeral port.
    eprintln!("listening on http://{}", listener.local_addr()?);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(addr) = s.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("metrics on http://{}/metrics", l.local_addr()?);
        let router = metrics_router(state.clone());
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(l, router)
                .with_graceful_shutdown(stopped(rx))
                .await;
        });
    }
    let signals = {
        let state = state.clone();
        async move {
            shutdown_signal().await;
            tracing::info!(
                "shutting down: no new requests; running jobs stop claiming and resume at the next start"
            );
            state.shutdown();
            stop_tx.send_replace(true);
        }
    };
    tokio::spawn(signals);
    let engine_task = {
        let rx = stop_rx.clone();
        let engine = engine.clone();
        tokio::spawn(async move { engine.run(stopped(rx)).await })
    };
    let limits = ServeOptions {
        header_timeout: Duration::from_secs(s.header_timeout),
        idle_timeout: Duration::from_secs(s.idle_timeout),
        max_connections: usize::try_from(s.max_connections).unwrap_or(usize::MAX),
        min_body_rate: s.min_body_rate,
        body_rate_window: Duration::from_secs(s.body_rate_window),
        ..ServeOptions::default()
    };
    connexa_http::serve::serve(
        listener,
        app(state.clone()),
        limits,
        stopped(stop_rx.clone()),
    )
    .await?;
    // Background imports stop after their current batch and delete their spool files.
    if tokio::time::timeout(Duration::from_secs(30), state.background_imports_ended())
        .await
        .is_err()
    {
        tracing::warn!("background imports did not stop within 30 s");
    }
    // The engine lets items in flight finish and commit; give it a bound.
    if tokio::time::timeout(Duration::from_secs(30), engine_task)
        .await
        .is_err()
    {
        tracing::warn!(
            "engine did not stop within 30 s; unfinished items resume at the next start"
        );
    }
    // Services stop with the process; they stay wanted, so the next start
    // brings them back on their stored ports with their stored credentials.
    ports.stop_services(&engine).await;
    if let Err(e) = engine.deregister().await {
        tracing::warn!(error = %e, "could not remove this worker's row; it expires by itself");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn args_definition_is_valid() {
        super::Args::command().debug_assert();
    }

    /// No subcommand runs `serve` with `ServeArgs::default()`: it must equal
    /// what `serve` without options parses to.
    #[test]
    fn serve_defaults_match_clap_defaults() {
        use clap::Parser;
        let parsed = super::Args::parse_from(["connexa-http", "serve"]);
        let Some(super::Command::Serve(s)) = parsed.command else {
            panic!("not serve");
        };
        assert_eq!(
            format!("{s:?}"),
            format!("{:?}", super::ServeArgs::default())
        );
    }
}
