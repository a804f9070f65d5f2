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

mod apply;
mod convert;
mod enrich;
mod entity;
mod jobs;
pub mod migration;
mod query;
mod service_runtime;
#[cfg(feature = "sqlite")]
mod sqlite_memstatus;
#[cfg(feature = "sqlite")]
pub use sqlite_memstatus::disable_sqlite_memory_statistics;
mod tokens;

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
    Applied, ApplyContext, ApplyRequest, ClaimedItem, CommittedItem, HistoryRow, InsertOutcome,
    ItemCursor, ItemFinished, ItemResult, ItemView, Job, JobId, JobSpec, JobState, NodePage,
    NodeStore, Progress, ServiceCounters, ServiceRuntime, StoreError,
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
}

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
    /// is created if missing) or `postgres://USER@HOST:PORT/DB`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
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
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying sea-orm connection (for read-only inspection in tests and tools).
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
        let w = self.begin_write().await?;
        let r = apply::write_events(&w.txn, &requests).await.map_err(db_err);
        w.finish(r).await
    }

    async fn get(&self, node: NodeId) -> Result<Option<Node>, StoreError> {
        nodes::Entity::find_by_id(node.0)
            .one(&self.db)
            .await
            .map_err(db_err)?
            .map(convert::node)
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
            .map(|r| convert::node(convert::node_model_by_index(r).map_err(db_err)?))
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
        let r = insert_nodes(&w.txn, &nodes, Utc::now()).await;
        w.finish(r).await
    }

    async fn replace(&self, pairs: Vec<(NodeId, NewNode)>) -> Result<Vec<NodeId>, StoreError> {
        let w = self.begin_write().await?;
        let r = async {
            let now = Utc::now();
            let old = NodeFilter::ids(pairs.iter().map(|(id, _)| *id));
            delete_nodes(&w.txn, &old, now).await?;
            let fresh: Vec<NewNode> = pairs.into_iter().map(|(_, n)| n).collect();
            insert_nodes(&w.txn, &fresh, now)
                .await?
                .into_iter()
                .map(|o| match o {
                    InsertOutcome::Inserted(id) => Ok(id),
                    other => Err(StoreError::Backend(format!(
                        "replacement collided again: {other:?}"
                    ))),
                })
                .collect()
        }
        .await;
        w.finish(r).await
    }

    async fn delete(&self, filter: &NodeFilter) -> Result<u64, StoreError> {
        let w = self.begin_write().await?;
        let r = delete_nodes(&w.txn, filter, Utc::now()).await;
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
            Ok(())
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
                r => return w.finish(r.map(|r| r.rows_affected).map_err(db_err)).await,
            }
        }
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
        let r = service_runtime::request_restart(&w.txn, nodes, at).await;
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

    async fn create_job(&self, spec: JobSpec, at: DateTime<Utc>) -> Result<Job, StoreError> {
        let w = self.begin_write().await?;
        let r = jobs::create(&w.txn, &spec, at).await;
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
        let r = jobs::set_state(&w.txn, job, state, at).await;
        w.finish(r).await
    }

    async fn claim_items(
        &self,
        job: JobId,
        worker: &str,
        max: u64,
        at: DateTime<Utc>,
    ) -> Result<Vec<ClaimedItem>, StoreError> {
        let w = self.begin_write().await?;
        let r = jobs::claim(&w.txn, job, worker, max, at).await;
        w.finish(r).await
    }

    async fn finish_items(
        &self,
        results: Vec<ItemResult>,
    ) -> Result<Vec<ItemFinished>, StoreError> {
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
        let before = existing(conn, &keys).await?;
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
                    password: Set(n.password().expose().to_owned()),
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
            existing(conn, &keys).await?
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
    Ok(rows
        .into_iter()
        .map(|(id, ip, port, login, pw)| ((ip, port, login), (id, pw)))
        .filter(|(k, _)| wanted.contains(k))
        .collect())
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
