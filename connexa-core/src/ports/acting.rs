//! Who acts: the caller a store records in the audit trail.
//!
//! A value ([`Actor`]) and a task-local scope ([`scope`]): a server runs each
//! request inside `scope(caller, ...)`, and every audited write a store makes
//! on that task is recorded under the caller. Tasks spawned meanwhile do not
//! inherit it (the engine's own work is nobody's action); [`carry`] and
//! [`within`] hand it over on purpose.

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static ACTING: Arc<Actor>;
}

/// Runs `f` acting as `actor`: audited writes any
/// [`SqlStore`](crate::store::SqlStore) makes while `f` runs on this task are
/// recorded under `actor` (a store made with
/// [`SqlStore::acting_as`](crate::store::SqlStore::acting_as) keeps its own actor).
pub async fn scope<F: Future>(actor: Arc<Actor>, f: F) -> F::Output {
    ACTING.scope(actor, f).await
}

/// The actor of the [`scope`] this task runs in, if any.
pub fn current() -> Option<Arc<Actor>> {
    ACTING.try_with(Arc::clone).ok()
}

/// `f`, to run in the [`scope`] of the actor this task acts for now (if
/// any): wrap a future handed to `tokio::spawn` that finishes the caller's
/// work, so its writes are recorded under the caller.
pub fn carry<F: Future>(f: F) -> impl Future<Output = F::Output> {
    within(current(), f)
}

/// Who acts: an account, an API token or an OS user (`os:alice`), and from
/// where (a client address), if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The name recorded (`os:root`, `token:ci`, ...).
    pub name: String,
    /// Where the request came from, if known.
    pub source: Option<String>,
}

impl Actor {
    /// The OS user running this process: `os:<$USER>`, else `os:uid<N>`.
    pub fn os_user() -> Actor {
        let name = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty() && !u.chars().any(char::is_control))
            .or_else(|| {
                std::fs::read_to_string("/proc/self/status")
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("Uid:"))
                            .and_then(|v| v.split_whitespace().nth(1).map(|u| format!("uid{u}")))
                    })
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Actor {
            name: format!("os:{name}"),
            source: None,
        }
    }
}

/// Runs `f` acting as `actor` when it is `Some` (captured earlier with
/// [`current`], e.g. before a blocking section that calls
/// `Handle::block_on`); otherwise as nobody.
pub async fn within<F: Future>(actor: Option<Arc<Actor>>, f: F) -> F::Output {
    match actor {
        Some(a) => ACTING.scope(a, f).await,
        None => f.await,
    }
}
