//! The sea-orm implementation of [`NodeStore`]: SQLite by default, Postgres for scale.
//!
//! ```no_run
//! # async fn demo() -> Result<(), connexa_core::ports::StoreError> {
//! use connexa_core::store::SqlStore;
//! let store = SqlStore::connect("sqlite://connexa.db?mode=rwc").await?; // file created if missing
//! # Ok(()) }
//! ```
//!
//! * SQLite is opened with WAL journaling, `synchronous=NORMAL`, a 30 s busy
//!   timeout and foreign keys on; every write transaction is `BEGIN IMMEDIATE`
//!   and, inside one process, writers queue on a mutex, so concurrent writers
//!   wait instead of failing with "database is locked".
//! * On Postgres, `apply` locks the affected rows (`SELECT ... ORDER BY id FOR
//!   UPDATE`) and job workers claim items with `FOR UPDATE SKIP LOCKED`, so
//!   several processes can share one database and one job queue.
//! * The `status` column is written by one function only (`apply::write_events`),
//!   which every status-changing method goes through.

pub mod accounts;
mod apply;
pub mod audit;
mod convert;
mod enrich;
mod entity;
mod imports;
mod jobs;
pub mod migration;
mod placement;
mod query;
pub mod sealing;
mod service_runtime;
#[cfg(feature = "sqlite")]
mod sqlite_memstatus;
#[cfg(feature = "sqlite")]
pub use sqlite_memstatus::disable_sqlite_memory_statistics;
mod tokens;
mod workers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::domain::{NewNode, Node, NodeFilter, NodeId, NodeMeta, Page, Status};
use crate::ports::{
    Applied, ApplyContext, ApplyRequest, ClaimedItem, CommittedItem, HistoryRow, ImportBatch,
    ImportRun, ImportSpec, InsertOutcome, ItemCursor, ItemFinished, ItemResult, ItemView, Job,
    JobId, JobKind, JobSpec, JobState, NodePage, NodeStore, OnConflict as ConflictPolicy, Progress,
    ServiceCounters, ServicePlacement, ServiceRuntime, StoreError, ValueField, WorkerRegistration,
    WorkerView,
};
use convert::ms;
use entity::{nodes, status_history};

/// Which database a [`SqlStore`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A [`NodeStore`] on SQLite or Postgres.
#[derive(Clone)]
pub struct SqlStore {
    db: DatabaseConnection,
    backend: Backend,
    /// In-process single-writer queue (SQLite only).
    writer: Arc<Mutex<()>>,
    /// The keys node passwords and SOCKS5 credentials are sealed with.
    keys: Arc<sealing::SecretKeys>,
    /// Who acts through this handle: operator actions are audited.
    actor: Option<Arc<audit::Actor>>,
}

/// The column names bound into sealed values.
const PASSWORD_COLUMN: &str = "nodes.password";
const SOCKS_PASSWORD_COLUMN: &str = "nodes.socks_password";

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

pub(crate) fn db_err(e: DbErr) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// `true` for PostgreSQL errors that abort a statement through no fault of its
/// own and succeed when it runs again: `deadlock_detected` (40P01) and
/// `serialization_failure` (40001).
fn is_transient_conflict(e: &DbErr) -> bool {
    let (DbErr::Exec(sea_orm::RuntimeErr::SqlxError(s))
    | DbErr::Query(sea_orm::RuntimeErr::SqlxError(s))) = e
    else {
        return false;
    };
    matches!(
        s.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("40P01" | "40001")
    )
}

/// A write transaction; dropping it without [`WriteTxn::finish`] rolls back.
pub(crate) struct WriteTxn {
    txn: DatabaseTransaction,
    _queue: Option<OwnedMutexGuard<()>>,
}

impl WriteTxn {
    async fn finish<T>(self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Ok(v) => {
                self.txn.commit().await.map_err(db_err)?;
                Ok(v)
            }
            Err(e) => {
                // Rolling back cannot make things worse; report the first error.
                let _ = self.txn.rollback().await;
                Err(e)
            }
        }
    }
}

impl SqlStore {
    /// Opens (and migrates) the database at `url`: `sqlite://PATH?mode=rwc` (the file
    /// is created if missing) or `postgres://USER@HOST:PORT/DB`, without a
    /// secrets key: secrets are stored as plaintext, and a database holding
    /// sealed ones is refused (use [`SqlStore::connect_with_keys`]).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_keys(url, sealing::SecretKeys::none()).await
    }

    /// Opens (and migrates) the database at `url` with the keys its secrets
    /// are sealed with ([`SqlStore::with_secret_keys`]).
    ///
    /// # Errors
    /// The database cannot be opened, or holds values sealed with a key
    /// `keys` lacks.
    pub async fn connect_with_keys(
        url: &str,
        keys: sealing::SecretKeys,
    ) -> Result<Self, StoreError> {
        Self::connect_unchecked(url)
            .await?
            .with_secret_keys(keys)
            .await
    }

    /// [`SqlStore::connect`] without looking at sealed values (`doctor`
    /// counts them).
    pub(crate) async fn connect_unchecked(url: &str) -> Result<Self, StoreError> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(redact_url(url)));
        };
        // `sqlite://PATH?mode=ro`: read-only commands (stats, lists, exports)
        // work on a file this process may not write.
        let read_only = backend == Backend::Sqlite
            && url
                .split_once('?')
                .is_some_and(|(_, q)| q.split('&').any(|kv| kv == "mode=ro"));
        if backend == Backend::Sqlite && !read_only {
            // The file holds node passwords: a new one is created 0600
            // (SQLite gives its -wal and -shm files the database's mode).
            if let Some(path) = sqlite_path(url) {
                create_private(&path)?;
            }
        }
        let mut opt = ConnectOptions::new(url.to_owned());
        opt.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(60));
        match backend {
            Backend::Sqlite => {
                // One connection per core plus one, 3..=8: SQLite runs each
                // query on its connection's thread, and more threads than
                // cores only add context switches (the HTTP API benchmark on
                // two cores: 3 connections served more listings than 8).
                let cores = std::thread::available_parallelism().map_or(2, usize::from);
                let conns = u32::try_from(cores + 1).unwrap_or(8).clamp(3, 8);
                opt.max_connections(conns).min_connections(1);
                opt.map_sqlx_sqlite_opts(move |o| {
                    use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
                    let o = o.busy_timeout(Duration::from_secs(30)).foreign_keys(true);
                    if read_only {
                        // Setting the journal mode is a write: keep the file's.
                        o.read_only(true)
                    } else {
                        o.journal_mode(SqliteJournalMode::Wal)
                            .synchronous(SqliteSynchronous::Normal)
                    }
                });
            }
            Backend::Postgres => {
                opt.max_connections(16);
            }
        }
        let db = Database::connect(opt)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", redact_url(url))))?;
        if read_only {
            // Migrating writes: a read-only database must already be current.
            let pending = migration::Migrator::get_pending_migrations(&db)
                .await
                .map_err(|e| {
                    StoreError::Backend(format!(
                        "{} is opened read-only and holds no Connexa schema to read ({e}): open it read-write once",
                        redact_url(url)
                    ))
                })?;
            if !pending.is_empty() {
                return Err(StoreError::Backend(format!(
                    "{} is opened read-only but needs {} schema migrations: open it read-write once",
                    redact_url(url),
                    pending.len()
                )));
            }
        } else {
            migration::Migrator::up(&db, None).await.map_err(db_err)?;
        }
        Ok(SqlStore {
            db,
            backend,
            writer: Arc::new(Mutex::new(())),
            keys: Arc::new(sealing::SecretKeys::none()),
            actor: None,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Seals node passwords and SOCKS5 credentials with `keys` from now on
    /// (see [`sealing`]): new values with the current key, and values sealed
    /// with any of the keys open. Without a current key values are stored as
    /// plaintext.
    ///
    /// # Errors
    /// The database holds values sealed with a key `keys` lacks (a wrong key
    /// file, or none configured): nothing is read or written with the wrong key.
    pub async fn with_secret_keys(mut self, keys: sealing::SecretKeys) -> Result<Self, StoreError> {
        let status = self.sealing_status().await?;
        sealing::check_keys(&keys, &status)?;
        self.keys = Arc::new(keys);
        Ok(self)
    }

    /// This store acting as `actor`: every operator action it writes (see
    /// [`audit`]) appends an audit row in the same transaction.
    pub fn acting_as(&self, actor: audit::Actor) -> SqlStore {
        let mut s = self.clone();
        s.actor = Some(Arc::new(actor));
        s
    }

    /// The newest `limit` audit rows, newest first.
    ///
    /// # Errors
    /// The database fails.
    pub async fn audit_log(&self, limit: u64) -> Result<Vec<audit::AuditEntry>, StoreError> {
        self.audit_query(&audit::AuditQuery {
            limit: Some(limit.clamp(1, audit::AuditQuery::MAX_LIMIT)),
            ..Default::default()
        })
        .await
    }

    /// The audit rows `q` selects, newest first (frontends refuse what
    /// [`AuditQuery::check`](audit::AuditQuery::check) refuses first; here a
    /// limit out of range is clamped).
    ///
    /// # Errors
    /// The database fails.
    pub async fn audit_query(
        &self,
        q: &audit::AuditQuery,
    ) -> Result<Vec<audit::AuditEntry>, StoreError> {
        let mut q = q.clone();
        q.limit = Some(
            q.limit
                .unwrap_or(audit::AuditQuery::DEFAULT_LIMIT)
                .clamp(1, audit::AuditQuery::MAX_LIMIT),
        );
        audit::query(&self.db, &q).await
    }

    /// Records `action` in the caller's transaction when this handle acts
    /// for someone and the action touched a row (`count` is not `Some(0)`).
    pub(crate) async fn audit<C: ConnectionTrait>(
        &self,
        conn: &C,
        action: &str,
        target: Option<String>,
        count: Option<u64>,
    ) -> Result<(), StoreError> {
        if count == Some(0) {
            // Nothing changed: nothing to record.
            return Ok(());
        }
        match self.actor.clone().or_else(audit::current) {
            Some(actor) => audit::record(conn, &actor, action, target, count).await,
            None => Ok(()),
        }
    }

    /// The keys in use.
    pub fn secret_keys(&self) -> &sealing::SecretKeys {
        &self.keys
    }

    /// How the stored secrets are kept: plaintext, or sealed with which key ids.
    ///
    /// # Errors
    /// The database fails.
    pub async fn sealing_status(&self) -> Result<sealing::SealingStatus, StoreError> {
        use sea_orm::{FromQueryResult, Statement, Value};
        #[derive(FromQueryResult)]
        struct Row {
            k: Option<String>,
            n: i64,
        }
        let b = self.db.get_database_backend();
        let p = |n: usize| match self.backend {
            Backend::Postgres => format!("${n}"),
            Backend::Sqlite => "?".to_owned(),
        };
        let mut status = sealing::SealingStatus::default();
        for col in ["password", "socks_password"] {
            // Key id = the 8 characters after the 5-character prefix.
            let sql = format!(
                "SELECT CASE WHEN substr({col}, 1, 5) = {} THEN substr({col}, 6, 8) ELSE '' END AS k, \
                 COUNT(*) AS n FROM nodes WHERE {col} IS NOT NULL GROUP BY 1",
                p(1)
            );
            let rows = Row::find_by_statement(Statement::from_sql_and_values(
                b,
                sql,
                [Value::from(sealing::SEALED_PREFIX)],
            ))
            .all(&self.db)
            .await
            .map_err(db_err)?;
            for r in rows {
                let n = u64::try_from(r.n).unwrap_or(0);
                match r.k.filter(|k| !k.is_empty()) {
                    Some(k) => *status.sealed.entry(k).or_default() += n,
                    None => status.plaintext += n,
                }
            }
        }
        Ok(status)
    }

    /// Seals every stored secret with the current key: plaintext values and
    /// values sealed with older keys (which must be configured as old keys).
    /// One transaction: all values or none; on SQLite the file is then
    /// rebuilt (`VACUUM`) and the WAL emptied, so no old plaintext lingers in
    /// free pages. Returns how many values were re-sealed.
    ///
    /// # Errors
    /// No current key, a value that does not open, or the database fails.
    pub async fn reseal_all(&self) -> Result<u64, StoreError> {
        let Some(current) = self.keys.current() else {
            return Err(StoreError::Backend(
                "no current secrets key: set [secrets] key_file (or $CONNEXA_SECRET_KEY)".into(),
            ));
        };
        let mine = format!("{}{}:", sealing::SEALED_PREFIX, current.id());
        let w = self.begin_write().await?;
        let r = async {
            let mut n = 0u64;
            let mut after = 0i64;
            loop {
                let rows: Vec<(i64, String, Option<String>)> = nodes::Entity::find()
                    .select_only()
                    .columns([
                        nodes::Column::Id,
                        nodes::Column::Password,
                        nodes::Column::SocksPassword,
                    ])
                    .filter(nodes::Column::Id.gt(after))
                    .order_by_asc(nodes::Column::Id)
                    .limit(1_000)
                    .into_tuple()
                    .all(&w.txn)
                    .await
                    .map_err(db_err)?;
                let Some(last) = rows.last() else { break };
                after = last.0;
                for (id, pw, socks) in rows {
                    let pw_stale = !pw.starts_with(&mine);
                    let socks_stale = socks.as_deref().is_some_and(|s| !s.starts_with(&mine));
                    if !pw_stale && !socks_stale {
                        continue;
                    }
                    let mut q = nodes::Entity::update_many().filter(nodes::Column::Id.eq(id));
                    if pw_stale {
                        let plain = self.keys.open(PASSWORD_COLUMN, &pw)?;
                        q = q.col_expr(
                            nodes::Column::Password,
                            Expr::value(self.keys.seal(PASSWORD_COLUMN, &plain)),
                        );
                        n += 1;
                    }
                    if let (true, Some(s)) = (socks_stale, socks) {
                        let plain = self.keys.open(SOCKS_PASSWORD_COLUMN, &s)?;
                        q = q.col_expr(
                            nodes::Column::SocksPassword,
                            Expr::value(self.keys.seal(SOCKS_PASSWORD_COLUMN, &plain)),
                        );
                        n += 1;
                    }
                    q.exec(&w.txn).await.map_err(db_err)?;
                }
            }
            self.audit(
                &w.txn,
                "secrets_rotate",
                Some(format!("key {}", current.id())),
                Some(n),
            )
            .await?;
            Ok(n)
        }
        .await;
        let n = w.finish(r).await?;
        if self.backend == Backend::Sqlite && n > 0 {
            // The rewritten rows' old plaintext may linger in free space and
            // in the WAL: rebuild the file and empty the WAL. The values are
            // sealed already; a clean-up that cannot run now (a busy reader)
            // is said, not an error.
            if let Err(e) = self.scrub_sqlite().await {
                tracing::warn!(error = %e, "secrets sealed; the SQLite file could not be rebuilt now (old plaintext may linger in free pages until `VACUUM`)");
            }
        }
        Ok(n)
    }

    /// `VACUUM` and a truncating WAL checkpoint that must not be busy.
    async fn scrub_sqlite(&self) -> Result<(), StoreError> {
        use sea_orm::{FromQueryResult, Statement};
        #[derive(FromQueryResult)]
        struct Checkpoint {
            busy: i64,
        }
        let checkpoint = || async {
            let r = Checkpoint::find_by_statement(Statement::from_string(
                self.db.get_database_backend(),
                "PRAGMA wal_checkpoint(TRUNCATE)",
            ))
            .one(&self.db)
            .await
            .map_err(db_err)?;
            match r {
                Some(c) if c.busy != 0 => Err(StoreError::Backend(
                    "the WAL checkpoint was blocked by a reader".into(),
                )),
                _ => Ok(()),
            }
        };
        checkpoint().await?;
        self.db.execute_unprepared("VACUUM").await.map_err(db_err)?;
        checkpoint().await
    }

    /// `req` with a started service's password sealed as it will be stored.
    fn sealed_request(&self, mut req: ApplyRequest) -> ApplyRequest {
        req.event = self.sealed_event(req.event);
        req
    }

    fn sealed_event(&self, event: crate::domain::Event) -> crate::domain::Event {
        match event {
            crate::domain::Event::ServiceStarted(mut ep) if self.keys.current().is_some() => {
                ep.password = crate::domain::Secret::new(
                    self.keys.seal(SOCKS_PASSWORD_COLUMN, ep.password.expose()),
                );
                crate::domain::Event::ServiceStarted(ep)
            }
            other => other,
        }
    }

    /// The underlying sea-orm connection, for tests only (feature
    /// `test-util`): whatever is written through it bypasses the store's
    /// rules (one status writer, history, sealing).
    #[cfg(any(test, feature = "test-util"))]
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub(crate) async fn begin_write(&self) -> Result<WriteTxn, StoreError> {
        let (queue, opts) = match self.backend {
            Backend::Sqlite => (
                Some(self.writer.clone().lock_owned().await),
                TransactionOptions {
                    sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    ..Default::default()
                },
            ),
            Backend::Postgres => (None, TransactionOptions::default()),
        };
        let txn = self.db.begin_with_options(opts).await.map_err(db_err)?;
        Ok(WriteTxn { txn, _queue: queue })
    }
}

/// The file of a `sqlite://PATH?...` (or `sqlite:PATH`) URL; `None` for
/// other URLs and in-memory databases.
///
/// ```
/// use connexa_core::store::sqlite_path;
/// use std::path::PathBuf;
/// assert_eq!(sqlite_path("sqlite://data/c.db?mode=rwc"), Some(PathBuf::from("data/c.db")));
/// assert_eq!(sqlite_path("sqlite:///var/lib/connexa/c.db"), Some(PathBuf::from("/var/lib/connexa/c.db")));
/// assert_eq!(sqlite_path("sqlite::memory:"), None);
/// assert_eq!(sqlite_path("postgres://u@h/db"), None);
/// ```
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.starts_with(':') {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

/// Creates `path` empty with mode 0600 if it does not exist (a file that
/// exists keeps its mode: the operator may have chosen it).
fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // A missing directory and the like: SQLite's own error says it
        // with the URL's words; let it.
        Err(_) => Ok(()),
    }
}

/// What [`SqlStore::inspect`] found in a database, without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaState {
    /// The backend.
    pub backend: Backend,
    /// Migrations applied.
    pub applied: usize,
    /// Migrations this build would still apply.
    pub pending: usize,
    /// The newest time the store records (status history, jobs), in Unix
    /// milliseconds: a clock behind it has gone backwards.
    pub newest_record_ms: Option<i64>,
    /// PostgreSQL's clock (`now()`) in Unix milliseconds, for the skew
    /// between this host and the server every worker shares.
    pub server_clock_ms: Option<i64>,
}

impl SqlStore {
    /// Looks at the database at `url` without creating, migrating or
    /// writing anything: a SQLite file is opened read-only (and must exist).
    ///
    /// # Errors
    /// The URL is not a database URL, the database cannot be reached, or it
    /// holds no Connexa schema.
    pub async fn inspect(url: &str) -> Result<SchemaState, StoreError> {
        let (backend, url) = if let Some(path) = sqlite_path(url) {
            if !path.exists() {
                return Err(StoreError::Backend(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            (
                Backend::Sqlite,
                format!("sqlite://{}?mode=ro", path.display()),
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::BadUrl(redact_url(url)));
        };
        let mut opt = ConnectOptions::new(url.clone());
        opt.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(10))
            .max_connections(1);
        let db = Database::connect(opt)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", redact_url(&url))))?;
        let result = Self::inspect_on(&db, backend).await;
        let _ = db.close().await;
        result
    }

    async fn inspect_on(
        db: &DatabaseConnection,
        backend: Backend,
    ) -> Result<SchemaState, StoreError> {
        use sea_orm::{FromQueryResult, Statement};
        #[derive(FromQueryResult)]
        struct One {
            v: Option<i64>,
        }
        let b = db.get_database_backend();
        let one = |sql: &str| Statement::from_string(b, sql.to_owned());
        let applied = migration::Migrator::get_applied_migrations_read_only(db)
            .await
            .map_err(db_err)?
            .len();
        let pending = migration::Migrator::get_pending_migrations_read_only(db)
            .await
            .map_err(db_err)?
            .len();
        let mut newest = None;
        if applied > 0 {
            for sql in [
                "SELECT MAX(at) AS v FROM status_history",
                "SELECT MAX(created_at) AS v FROM jobs",
            ] {
                if let Some(v) = One::find_by_statement(one(sql))
                    .one(db)
                    .await
                    .map_err(db_err)?
                    .and_then(|r| r.v)
                {
                    newest = Some(newest.map_or(v, |n: i64| n.max(v)));
                }
            }
        }
        let server_clock_ms = match backend {
            Backend::Postgres => One::find_by_statement(one(
                "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS v",
            ))
            .one(db)
            .await
            .map_err(db_err)?
            .and_then(|r| r.v),
            Backend::Sqlite => None,
        };
        Ok(SchemaState {
            backend,
            applied,
            pending,
            newest_record_ms: newest,
            server_clock_ms,
        })
    }
}

/// Hides the password of a `scheme://user:password@host` URL, for messages and logs.
///
/// ```
/// use connexa_core::store::redact_url;
/// assert_eq!(redact_url("postgres://app:hunter2@db:5432/x"), "postgres://app:***@db:5432/x");
/// assert_eq!(redact_url("sqlite://connexa.db?mode=rwc"), "sqlite://connexa.db?mode=rwc");
/// ```
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[async_trait]
impl NodeStore for SqlStore {
    async fn apply(
        &self,
        node: NodeId,
        event: crate::domain::Event,
        ctx: ApplyContext,
    ) -> Result<Applied, StoreError> {
        let req = ApplyRequest { node, event, ctx };
        let w = self.begin_write().await?;
        let req = self.sealed_request(req);
        let r = apply::write_events(&w.txn, std::slice::from_ref(&req))
            .await
            .map_err(db_err);
        let mut results = w.finish(r).await?;
        results.pop().unwrap_or(Err(StoreError::NotFound(node)))
    }

    async fn apply_many(
        &self,
        requests: Vec<ApplyRequest>,
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        let requests: Vec<ApplyRequest> = requests
            .into_iter()
            .map(|r| self.sealed_request(r))
            .collect();
        let w = self.begin_write().await?;
        let r = apply::write_events(&w.txn, &requests).await.map_err(db_err);
        w.finish(r).await
    }

    async fn get(&self, node: NodeId) -> Result<Option<Node>, StoreError> {
        nodes::Entity::find_by_id(node.0)
            .one(&self.db)
            .await
            .map_err(db_err)?
            .map(|m| convert::node(m, &self.keys))
            .transpose()
    }

    async fn list(&self, filter: &NodeFilter, page: Page) -> Result<NodePage, StoreError> {
        page.check()?;
        let total = nodes::Entity::find()
            .filter(query::condition(filter, self.db.get_database_backend()))
            .count(&self.db)
            .await
            .map_err(db_err)?;
        let nodes = self.list_page(filter, page).await?;
        Ok(NodePage { nodes, total })
    }

    async fn list_page(&self, filter: &NodeFilter, page: Page) -> Result<Vec<Node>, StoreError> {
        page.check()?;
        let mut q =
            nodes::Entity::find().filter(query::condition(filter, self.db.get_database_backend()));
        if let Some(after) = page.after {
            // Keyset pagination: the primary key index finds the start, so a
            // deep page costs what the first one does.
            q = q.filter(if page.desc {
                nodes::Column::Id.lt(after.0)
            } else {
                nodes::Column::Id.gt(after.0)
            });
        }
        for (col, dir) in query::order(page.sort, page.desc) {
            q = q.order_by(col, dir);
        }
        // LIMIT and OFFSET are written into the SQL, not bound: SQLite (3.46+)
        // plans with the values bound to LIMIT/OFFSET and re-prepares such a
        // statement at every execution, which cost an eighth of a listing's
        // time under load. They are integers (at most i64::MAX), so literal
        // text is safe.
        let mut stmt = sea_orm::QueryTrait::build(&q, self.db.get_database_backend());
        stmt.sql.push_str(&format!(
            " LIMIT {} OFFSET {}",
            page.limit.min(Page::MAX_LIMIT),
            page.offset.min(i64::MAX as u64)
        ));
        let rows = self.db.query_all_raw(stmt).await.map_err(db_err)?;
        rows.iter()
            .map(|r| convert::node(convert::node_model_by_index(r).map_err(db_err)?, &self.keys))
            .collect()
    }

    async fn enrich(
        &self,
        updates: Vec<(NodeId, crate::domain::EnrichmentUpdate)>,
    ) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = async {
            let mut n = 0;
            for (node, update) in &updates {
                n += u64::from(enrich::write(&w.txn, *node, update).await?);
            }
            Ok(n)
        }
        .await;
        w.finish(r).await
    }

    async fn cache_get(
        &self,
        provider: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        enrich::cache_get(&self.db, provider, key, since).await
    }

    async fn cache_put(
        &self,
        provider: &str,
        key: &str,
        value: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let w = self.begin_write().await?;
        let r = enrich::cache_put(&w.txn, provider, key, value, at).await;
        w.finish(r).await
    }

    async fn insert(&self, nodes: Vec<NewNode>) -> Result<Vec<InsertOutcome>, StoreError> {
        let w = self.begin_write().await?;
        let r = async {
            let out = insert_nodes(&w.txn, &nodes, Utc::now(), &self.keys).await?;
            let added: Vec<i64> = out
                .iter()
                .filter_map(|o| match o {
                    InsertOutcome::Inserted(id) => Some(id.0),
                    _ => None,
                })
                .collect();
            if !added.is_empty() {
                let target = (added.len() <= 20).then(|| format!("nodes {added:?}"));
                self.audit(&w.txn, "import", target, Some(added.len() as u64))
                    .await?;
            }
            Ok(out)
        }
        .await;
        w.finish(r).await
    }

    async fn replace(&self, pairs: Vec<(NodeId, NewNode)>) -> Result<Vec<NodeId>, StoreError> {
        let w = self.begin_write().await?;
        let r = async {
            let now = Utc::now();
            let old = NodeFilter::ids(pairs.iter().map(|(id, _)| *id));
            delete_nodes(&w.txn, &old, now).await?;
            let fresh: Vec<NewNode> = pairs.into_iter().map(|(_, n)| n).collect();
            let ids = insert_nodes(&w.txn, &fresh, now, &self.keys)
                .await?
                .into_iter()
                .map(|o| match o {
                    InsertOutcome::Inserted(id) => Ok(id),
                    other => Err(StoreError::Backend(format!(
                        "replacement collided again: {other:?}"
                    ))),
                })
                .collect::<Result<Vec<NodeId>, StoreError>>()?;
            self.audit(&w.txn, "import_replace", None, Some(ids.len() as u64))
                .await?;
            Ok(ids)
        }
        .await;
        w.finish(r).await
    }

    async fn delete(&self, filter: &NodeFilter) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = async {
            let n = delete_nodes(&w.txn, filter, Utc::now()).await?;
            self.audit(
                &w.txn,
                "delete",
                Some(audit::filter_target(filter)),
                Some(n),
            )
            .await?;
            Ok(n)
        }
        .await;
        w.finish(r).await
    }

    async fn update_meta(&self, node: NodeId, meta: NodeMeta) -> Result<(), StoreError> {
        let w = self.begin_write().await?;
        let r = async {
            let res = nodes::Entity::update_many()
                .col_expr(nodes::Column::Provider, Expr::value(meta.provider))
                .col_expr(nodes::Column::Country, Expr::value(meta.country))
                .col_expr(nodes::Column::State, Expr::value(meta.state))
                .col_expr(nodes::Column::City, Expr::value(meta.city))
                .col_expr(nodes::Column::Zipcode, Expr::value(meta.zipcode))
                .col_expr(nodes::Column::Comment, Expr::value(meta.comment))
                .col_expr(nodes::Column::UpdatedAt, Expr::value(ms(Utc::now())))
                .filter(nodes::Column::Id.eq(node.0))
                .exec(&w.txn)
                .await
                .map_err(db_err)?;
            if res.rows_affected == 0 {
                return Err(StoreError::NotFound(node));
            }
            self.audit(
                &w.txn,
                "node_edit",
                Some(format!("nodes [{}]", node.0)),
                Some(1),
            )
            .await
        }
        .await;
        w.finish(r).await
    }

    async fn set_service_wanted(
        &self,
        filter: &NodeFilter,
        wanted: bool,
    ) -> Result<u64, StoreError> {
        // One idempotent statement over many rows: on PostgreSQL it can lose a
        // deadlock against a concurrent `apply_many` that locks the same rows in
        // another order; it is then simply run again.
        let mut attempt = 0u32;
        loop {
            let w = self.begin_write().await?;
            let r = nodes::Entity::update_many()
                .col_expr(nodes::Column::ServiceWanted, Expr::value(wanted))
                .col_expr(nodes::Column::UpdatedAt, Expr::value(ms(Utc::now())))
                .filter(query::condition(filter, self.db.get_database_backend()))
                .filter(nodes::Column::ServiceWanted.ne(wanted))
                .exec(&w.txn)
                .await;
            match r {
                Err(e) if attempt < 5 && is_transient_conflict(&e) => {
                    tracing::debug!(error = %e, attempt, "set_service_wanted: retrying");
                    let _ = w.txn.rollback().await;
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(5 << attempt)).await;
                }
                Err(e) => return w.finish(Err(db_err(e))).await,
                Ok(res) => {
                    let n = res.rows_affected;
                    let action = if wanted {
                        "service_want"
                    } else {
                        "service_unwant"
                    };
                    let a = self
                        .audit(&w.txn, action, Some(audit::filter_target(filter)), Some(n))
                        .await;
                    return w.finish(a.map(|()| n)).await;
                }
            }
        }
    }

    async fn set_service_kind(
        &self,
        filter: &NodeFilter,
        kind: crate::domain::ServiceKind,
    ) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = nodes::Entity::update_many()
            .col_expr(nodes::Column::ServiceKind, Expr::value(kind.as_str()))
            .col_expr(nodes::Column::UpdatedAt, Expr::value(ms(Utc::now())))
            .filter(query::condition(filter, self.db.get_database_backend()))
            .filter(nodes::Column::ServiceKind.ne(kind.as_str()))
            .exec(&w.txn)
            .await;
        let r = match r {
            Err(e) => Err(db_err(e)),
            Ok(res) => {
                let n = res.rows_affected;
                self.audit(
                    &w.txn,
                    &format!("service_kind_{kind}"),
                    Some(audit::filter_target(filter)),
                    Some(n),
                )
                .await
                .map(|()| n)
            }
        };
        w.finish(r).await
    }

    async fn service_runtime(&self, nodes: &[NodeId]) -> Result<Vec<ServiceRuntime>, StoreError> {
        service_runtime::read(&self.db, nodes).await
    }

    async fn put_service_counters(
        &self,
        counters: Vec<(NodeId, ServiceCounters)>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if counters.is_empty() {
            return Ok(());
        }
        let w = self.begin_write().await?;
        let r = service_runtime::put_counters(&w.txn, counters, at).await;
        w.finish(r).await
    }

    async fn request_service_restart(
        &self,
        nodes: &[NodeId],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let w = self.begin_write().await?;
        let r = async {
            service_runtime::request_restart(&w.txn, nodes, at).await?;
            let ids: Vec<i64> = nodes.iter().map(|n| n.0).collect();
            self.audit(
                &w.txn,
                "service_restart",
                Some(format!("nodes {ids:?}")),
                Some(nodes.len() as u64),
            )
            .await
        }
        .await;
        w.finish(r).await
    }

    async fn finish_service_restart(
        &self,
        node: NodeId,
        requested_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let w = self.begin_write().await?;
        let r = service_runtime::finish_restart(&w.txn, node, requested_at).await;
        w.finish(r).await
    }

    async fn history(&self, node: NodeId) -> Result<Vec<HistoryRow>, StoreError> {
        status_history::Entity::find()
            .filter(status_history::Column::NodeId.eq(node.0))
            .order_by_asc(status_history::Column::Id)
            .all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(convert::history)
            .collect()
    }

    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = nodes::Entity::find()
            .select_only()
            .column(nodes::Column::Status)
            .column_as(nodes::Column::Id.count(), "n")
            .group_by(nodes::Column::Status)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(db_err)?;
        let mut out = rows
            .into_iter()
            .map(|(s, n)| Ok((convert::status(&s)?, u64::try_from(n).unwrap_or(0))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by_key(|(s, _)| Status::ALL.iter().position(|x| x == s));
        Ok(out)
    }

    async fn field_values(
        &self,
        field: ValueField,
        prefix: Option<String>,
        limit: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let col = match field {
            ValueField::Provider => nodes::Column::Provider,
            ValueField::Country => nodes::Column::Country,
            ValueField::State => nodes::Column::State,
            ValueField::City => nodes::Column::City,
        };
        let mut q = nodes::Entity::find()
            .select_only()
            .column(col)
            .column_as(nodes::Column::Id.count(), "n")
            .filter(col.is_not_null())
            .filter(col.ne(""));
        if let Some(p) = prefix.as_deref().filter(|p| !p.is_empty()) {
            q = q.filter(query::starts_with(col, p));
        }
        let rows: Vec<(String, i64)> = q
            .group_by(col)
            .order_by(nodes::Column::Id.count(), sea_orm::Order::Desc)
            .order_by(col, sea_orm::Order::Asc)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(db_err)?;
        Ok(rows
            .into_iter()
            .map(|(v, n)| (v, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn create_job(&self, spec: JobSpec, at: DateTime<Utc>) -> Result<Job, StoreError> {
        let w = self.begin_write().await?;
        let r = async {
            let job = jobs::create(&w.txn, &spec, at).await?;
            let target = format!(
                "job {} ({}): {}",
                job.id,
                spec.kind.as_str(),
                audit::filter_target(&spec.filter)
            );
            // A job of no items is still a job created: recorded without a count.
            let count = (job.total > 0).then_some(job.total);
            self.audit(&w.txn, "job_create", Some(target), count)
                .await?;
            Ok(job)
        }
        .await;
        w.finish(r).await
    }

    async fn job(&self, job: JobId) -> Result<Job, StoreError> {
        jobs::get(&self.db, job).await
    }

    async fn jobs(&self, limit: u64) -> Result<Vec<Job>, StoreError> {
        jobs::recent(&self.db, limit).await
    }

    async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        jobs::unfinished(&self.db).await
    }

    async fn set_job_state(
        &self,
        job: JobId,
        state: JobState,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let w = self.begin_write().await?;
        let r = async {
            jobs::set_state(&w.txn, job, state, at).await?;
            if state == JobState::Cancelled {
                self.audit(&w.txn, "job_cancel", Some(format!("job {job}")), None)
                    .await?;
            }
            Ok(())
        }
        .await;
        w.finish(r).await
    }

    async fn claim_items(
        &self,
        job: JobId,
        worker: &str,
        max: u64,
        at: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<ClaimedItem>, StoreError> {
        let w = self.begin_write().await?;
        let r = jobs::claim(&w.txn, job, worker, max, at, lease).await;
        w.finish(r).await
    }

    async fn finish_items(
        &self,
        results: Vec<ItemResult>,
    ) -> Result<Vec<ItemFinished>, StoreError> {
        let results = results
            .into_iter()
            .map(|mut r| {
                r.event = r.event.map(|e| self.sealed_event(e));
                r
            })
            .collect();
        let w = self.begin_write().await?;
        let r = jobs::finish(&w.txn, results).await;
        w.finish(r).await
    }

    async fn cancel_pending(&self, job: JobId, at: DateTime<Utc>) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = jobs::cancel_pending(&w.txn, job, at).await;
        w.finish(r).await
    }

    async fn requeue_running(&self, job: JobId) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = jobs::requeue_running(&w.txn, job).await;
        w.finish(r).await
    }

    async fn requeue_orphans(
        &self,
        job: JobId,
        me: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = jobs::requeue_orphans(&w.txn, job, me, at).await;
        w.finish(r).await
    }

    async fn claimable(&self, job: JobId, at: DateTime<Utc>) -> Result<u64, StoreError> {
        jobs::claimable(&self.db, job, at).await
    }

    async fn register_worker(
        &self,
        worker: &WorkerRegistration,
        at: DateTime<Utc>,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let w = self.begin_write().await?;
        let r = workers::register(&w.txn, worker, at, lease).await;
        w.finish(r).await
    }

    async fn heartbeat(
        &self,
        worker: &WorkerRegistration,
        at: DateTime<Utc>,
        lease: Duration,
    ) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = workers::heartbeat(&w.txn, worker, at, lease).await;
        w.finish(r).await
    }

    async fn extend_leases(
        &self,
        worker: &str,
        at: DateTime<Utc>,
        lease: Duration,
    ) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = workers::extend_leases(&w.txn, worker, at, lease).await;
        w.finish(r).await
    }

    async fn deregister_worker(&self, name: &str) -> Result<bool, StoreError> {
        let w = self.begin_write().await?;
        let r = workers::deregister(&w.txn, name).await;
        w.finish(r).await
    }

    async fn workers(&self, at: DateTime<Utc>) -> Result<Vec<WorkerView>, StoreError> {
        workers::list(&self.db, at).await
    }

    async fn place_services(
        &self,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Vec<NodeId>>, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(None);
        }
        let w = self.begin_write().await?;
        let r = placement::place(&w.txn, worker, at).await.map(Some);
        w.finish(r).await
    }

    async fn pin_services(
        &self,
        nodes: &[NodeId],
        worker: Option<String>,
    ) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = placement::pin(&w.txn, nodes, worker).await;
        w.finish(r).await
    }

    async fn label_services(
        &self,
        nodes: &[NodeId],
        label: Option<String>,
    ) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = placement::label(&w.txn, nodes, label).await;
        w.finish(r).await
    }

    async fn service_placements(&self) -> Result<Vec<ServicePlacement>, StoreError> {
        placement::list(&self.db).await
    }

    async fn progress(&self, job: JobId) -> Result<Progress, StoreError> {
        jobs::progress(&self.db, job).await
    }

    async fn recent_items(&self, job: JobId, limit: u64) -> Result<Vec<ItemView>, StoreError> {
        jobs::recent_items(&self.db, job, limit).await
    }

    async fn items_since(
        &self,
        job: JobId,
        cursor: ItemCursor,
        limit: u64,
    ) -> Result<Vec<CommittedItem>, StoreError> {
        jobs::items_since(&self.db, job, cursor, limit).await
    }

    async fn create_import(&self, spec: &ImportSpec, at: DateTime<Utc>) -> Result<Job, StoreError> {
        let options = serde_json::to_value(spec).map_err(|e| StoreError::Backend(e.to_string()))?;
        let w = self.begin_write().await?;
        let r = async {
            let mut job = jobs::create(
                &w.txn,
                &JobSpec {
                    kind: JobKind::Import,
                    filter: NodeFilter::ids([]),
                    options,
                    deadline: None,
                },
                at,
            )
            .await?;
            job.total = spec.bytes_total;
            jobs::set_total(&w.txn, job.id, spec.bytes_total).await?;
            imports::create(&w.txn, &job, spec).await?;
            let target = format!("job {} (import): {}", job.id, spec.source);
            self.audit(&w.txn, "job_create", Some(target), None).await?;
            Ok(job)
        }
        .await;
        w.finish(r).await
    }

    async fn import_run(&self, job: JobId) -> Result<ImportRun, StoreError> {
        imports::get(&self.db, job).await
    }

    async fn claim_import(
        &self,
        job: JobId,
        worker: &str,
        at: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<ImportRun>, StoreError> {
        let w = self.begin_write().await?;
        let r = imports::claim(&w.txn, job, worker, at, lease).await;
        w.finish(r).await
    }

    async fn import_batch(
        &self,
        job: JobId,
        worker: &str,
        at: DateTime<Utc>,
        lease: std::time::Duration,
        batch: ImportBatch,
    ) -> Result<bool, StoreError> {
        let ImportBatch {
            nodes,
            on_conflict,
            through_rows,
            checkpoint,
        } = batch;
        let w = self.begin_write().await?;
        let r = async {
            let committed = imports::hold(&w.txn, job, worker, at, lease).await?;
            if through_rows <= committed {
                return Ok(false);
            }
            let now = Utc::now();
            let out = insert_nodes(&w.txn, &nodes, now, &self.keys).await?;
            let mut replaced = Vec::new();
            if on_conflict == ConflictPolicy::Replace {
                let pairs: Vec<(NodeId, &NewNode)> = out
                    .iter()
                    .zip(&nodes)
                    .filter_map(|(o, n)| match o {
                        InsertOutcome::Conflict(old) => Some((*old, n)),
                        _ => None,
                    })
                    .collect();
                if !pairs.is_empty() {
                    let old = NodeFilter::ids(pairs.iter().map(|(id, _)| *id));
                    delete_nodes(&w.txn, &old, now).await?;
                    let fresh: Vec<NewNode> = pairs.iter().map(|(_, n)| (*n).clone()).collect();
                    for o in insert_nodes(&w.txn, &fresh, now, &self.keys).await? {
                        match o {
                            InsertOutcome::Inserted(id) => replaced.push(id),
                            other => {
                                return Err(StoreError::Backend(format!(
                                    "replacement collided again: {other:?}"
                                )));
                            }
                        }
                    }
                    self.audit(&w.txn, "import_replace", None, Some(replaced.len() as u64))
                        .await?;
                }
            }
            let added = out
                .iter()
                .filter(|o| matches!(o, InsertOutcome::Inserted(_)))
                .count();
            if added > 0 {
                self.audit(
                    &w.txn,
                    "import",
                    Some(format!("job {job}")),
                    Some(added as u64),
                )
                .await?;
            }
            imports::checkpoint(&w.txn, job, &checkpoint(&out, &replaced)).await?;
            Ok(true)
        }
        .await;
        w.finish(r).await
    }

    async fn import_parts(&self, job: JobId) -> Result<Vec<serde_json::Value>, StoreError> {
        imports::parts(&self.db, job).await
    }

    async fn end_import(
        &self,
        job: JobId,
        worker: &str,
        state: JobState,
        test_job: Option<JobId>,
        error: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let w = self.begin_write().await?;
        let r = imports::end(&w.txn, job, worker, state, test_job, error, at).await;
        w.finish(r).await
    }

    async fn release_import(&self, job: JobId, worker: &str) -> Result<(), StoreError> {
        let w = self.begin_write().await?;
        let r = imports::release(&w.txn, job, worker).await;
        w.finish(r).await
    }
}

type Key = (String, i32, String);

/// Rows per insert statement (12 columns).
const INSERT_CHUNK: usize = 1_000;

/// The fraud provider of scores stated in a seller's list.
const SELLER_SCAMALYTICS: &str = "seller:scamalytics";

async fn insert_nodes<C: ConnectionTrait>(
    conn: &C,
    input: &[NewNode],
    now: DateTime<Utc>,
    secrets: &sealing::SecretKeys,
) -> Result<Vec<InsertOutcome>, StoreError> {
    let now = ms(now);
    let mut out = Vec::with_capacity(input.len());
    for chunk in input.chunks(INSERT_CHUNK) {
        let key = |n: &NewNode| {
            (
                n.ip().to_string(),
                i32::from(n.port()),
                n.login().to_owned(),
            )
        };
        let keys: Vec<Key> = chunk.iter().map(key).collect();
        let before = existing(conn, &keys, secrets).await?;
        // First occurrence in this chunk of each new key: index into `chunk`.
        let mut first: HashMap<&Key, usize> = HashMap::new();
        let mut fresh = Vec::new();
        for (i, (n, k)) in chunk.iter().zip(&keys).enumerate() {
            if !before.contains_key(k) && !first.contains_key(k) {
                first.insert(k, i);
                fresh.push(nodes::ActiveModel {
                    ip: Set(k.0.clone()),
                    port: Set(k.1),
                    login: Set(k.2.clone()),
                    password: Set(secrets.seal(PASSWORD_COLUMN, n.password().expose())),
                    provider: Set(n.meta.provider.clone()),
                    country: Set(n.meta.country.clone()),
                    state: Set(n.meta.state.clone()),
                    city: Set(n.meta.city.clone()),
                    zipcode: Set(n.meta.zipcode.clone()),
                    comment: Set(n.meta.comment.clone()),
                    fraud_ip: Set(n.seller_fraud.map(|_| k.0.clone())),
                    fraud_score: Set(n.seller_fraud.map(|(s, _)| i32::from(s))),
                    fraud_risk: Set(n.seller_fraud.map(|(_, r)| r.as_str().to_owned())),
                    fraud_provider: Set(n.seller_fraud.map(|_| SELLER_SCAMALYTICS.to_owned())),
                    fraud_at: Set(n.seller_fraud.map(|_| now)),
                    created_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                });
            }
        }
        if !fresh.is_empty() {
            nodes::Entity::insert_many(fresh)
                .on_conflict(
                    OnConflict::columns([
                        nodes::Column::Ip,
                        nodes::Column::Port,
                        nodes::Column::Login,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_without_returning(conn)
                .await
                .map_err(db_err)?;
        }
        let after = if first.is_empty() {
            HashMap::new()
        } else {
            existing(conn, &keys, secrets).await?
        };
        for (i, (n, k)) in chunk.iter().zip(&keys).enumerate() {
            let pw = n.password().expose();
            let outcome = if let Some((id, stored)) = before.get(k) {
                same(*id, stored == pw)
            } else {
                let (id, stored) = after.get(k).ok_or_else(|| {
                    StoreError::Backend(format!("row for {}:{} vanished during insert", k.0, k.1))
                })?;
                if first.get(k) == Some(&i) && stored == pw {
                    InsertOutcome::Inserted(NodeId(*id))
                } else {
                    same(*id, stored == pw)
                }
            };
            out.push(outcome);
        }
    }
    Ok(out)
}

fn same(id: i64, same_password: bool) -> InsertOutcome {
    if same_password {
        InsertOutcome::Duplicate(NodeId(id))
    } else {
        InsertOutcome::Conflict(NodeId(id))
    }
}

/// Stored (id, password) of the given identities.
async fn existing<C: ConnectionTrait>(
    conn: &C,
    keys: &[Key],
    secrets: &sealing::SecretKeys,
) -> Result<HashMap<Key, (i64, String)>, StoreError> {
    let mut ips: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    ips.sort_unstable();
    ips.dedup();
    let rows: Vec<(i64, String, i32, String, String)> = nodes::Entity::find()
        .select_only()
        .columns([
            nodes::Column::Id,
            nodes::Column::Ip,
            nodes::Column::Port,
            nodes::Column::Login,
            nodes::Column::Password,
        ])
        .filter(nodes::Column::Ip.is_in(ips))
        .into_tuple()
        .all(conn)
        .await
        .map_err(db_err)?;
    let wanted: std::collections::HashSet<&Key> = keys.iter().collect();
    rows.into_iter()
        .map(|(id, ip, port, login, pw)| ((ip, port, login), (id, pw)))
        .filter(|(k, _)| wanted.contains(k))
        .map(|(k, (id, pw))| Ok((k, (id, secrets.open(PASSWORD_COLUMN, &pw)?))))
        .collect()
}

async fn delete_nodes<C: ConnectionTrait>(
    conn: &C,
    filter: &NodeFilter,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let victims: Vec<(i64, String)> = nodes::Entity::find()
        .select_only()
        .columns([nodes::Column::Id, nodes::Column::Status])
        .filter(query::condition(filter, conn.get_database_backend()))
        .order_by_asc(nodes::Column::Id)
        .into_tuple()
        .all(conn)
        .await
        .map_err(db_err)?;
    let at = ms(now);
    let mut deleted = 0;
    for chunk in victims.chunks(INSERT_CHUNK) {
        let rows = chunk
            .iter()
            .map(|(id, status)| status_history::ActiveModel {
                node_id: Set(*id),
                from_status: Set(status.clone()),
                to_status: Set(None),
                event: Set("deleted".to_owned()),
                at: Set(at),
                ..Default::default()
            });
        status_history::Entity::insert_many(rows)
            .exec_without_returning(conn)
            .await
            .map_err(db_err)?;
        let ids: Vec<NodeId> = chunk.iter().map(|(id, _)| NodeId(*id)).collect();
        service_runtime::forget(conn, &ids).await?;
        deleted += nodes::Entity::delete_many()
            .filter(nodes::Column::Id.is_in(chunk.iter().map(|(id, _)| *id)))
            .exec(conn)
            .await
            .map_err(db_err)?
            .rows_affected;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            super::redact_url("postgres://u:pw@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(
            super::redact_url("sqlite://x.db?mode=rwc"),
            "sqlite://x.db?mode=rwc"
        );
    }
}
