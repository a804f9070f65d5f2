//! The job model: what a job does to each node ([`JobKind`]), where a job and
//! its items are ([`JobState`], [`ItemState`]) and its [`Progress`], counted
//! from committed items. Pure data; the engine runs jobs, the store keeps them.

use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{NodeFilter, NodeId, Status};

/// Identifier of a job (a batch test, an import, a service start or stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifier of one job item (one node in one job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ItemId(pub i64);

/// What a job does to each of its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobKind {
    /// PPTP control-channel handshake.
    Light,
    /// Login with MS-CHAPv2.
    Auth,
    /// Throughput through the tunnel.
    Speed,
    /// Light, then auth, then speed; a node goes as far as it can.
    Pipeline,
    /// Start SOCKS5 services.
    ServiceStart,
    /// Stop SOCKS5 services.
    ServiceStop,
    /// Look up where each node's address is (GEO databases, online providers).
    Geo,
    /// Look up each node's address's fraud score.
    Fraud,
    /// Read a spooled node list into the store (no items: its progress is the
    /// bytes of the list committed, see [`Progress`]).
    Import,
}

/// The lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Created, no worker yet.
    Queued,
    /// Workers are taking items.
    Running,
    /// Every item ended.
    Done,
    /// Cancelled on request; finished results stay.
    Cancelled,
    /// The process stopped and the job was closed instead of resumed.
    Interrupted,
}

/// The lifecycle of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    /// Waiting for a worker.
    Pending,
    /// A worker took it.
    Running,
    /// Finished; the test reached what it aimed for (or the action succeeded).
    Ok,
    /// Finished with a failure (recorded on the node).
    Failed,
    /// The per-node time budget or the job deadline ran out.
    TimedOut,
    /// The job was cancelled before the item ran.
    Cancelled,
}

macro_rules! snake_names {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The stored snake_case name.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($name => Ok(Self::$variant),)+ other => Err(format!("unknown {} {other:?}", stringify!($ty))) }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}
pub(crate) use snake_names;

snake_names!(JobKind { Light => "light", Auth => "auth", Speed => "speed", Pipeline => "pipeline", ServiceStart => "service_start", ServiceStop => "service_stop", Geo => "geo", Fraud => "fraud", Import => "import" });
snake_names!(JobState { Queued => "queued", Running => "running", Done => "done", Cancelled => "cancelled", Interrupted => "interrupted" });
snake_names!(ItemState { Pending => "pending", Running => "running", Ok => "ok", Failed => "failed", TimedOut => "timed_out", Cancelled => "cancelled" });

impl ItemState {
    /// `true` once the item has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ItemState::Pending | ItemState::Running)
    }
}

/// What to create a job for.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// What to do.
    pub kind: JobKind,
    /// Which nodes (resolved once, when the job is created).
    pub filter: NodeFilter,
    /// Engine options, stored as JSON so any process can resume the job.
    pub options: serde_json::Value,
    /// The job's deadline, if any.
    pub deadline: Option<DateTime<Utc>>,
}

/// What to do with a row whose ip, port and login are stored with another password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// Keep the stored node and report the row (the default).
    #[default]
    Skip,
    /// Delete the stored node (with a history row) and add the row as a new node.
    Replace,
}

/// What an import job reads and how. Stored as the job's options, so that
/// any process on the spool's host can resume the import after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportSpec {
    /// The source's name in the report (a file name, `body`).
    pub source: String,
    /// The node list, a file on [`host`](Self::host).
    pub spool: PathBuf,
    /// `true`: the spool file is the import's own (an upload spooled by the
    /// HTTP API) and is deleted when the import ends; `false`: an operator's
    /// file, left alone.
    pub delete_spool: bool,
    /// The host whose file system holds the spool: only processes on it
    /// resume the import.
    pub host: String,
    /// The spool's size when the import was created, bytes.
    pub bytes_total: u64,
    /// Conflict policy.
    pub on_conflict: OnConflict,
    /// A test job to start on exactly the added nodes once every row is in:
    /// its kind and its options (the JSON stored for jobs).
    pub test: Option<(JobKind, serde_json::Value)>,
    /// Who created the import (the audit trail records its writes under
    /// them, also after a resume); `None`: nobody's.
    #[serde(default)]
    pub actor: Option<String>,
    /// Where they acted from, if known.
    #[serde(default)]
    pub actor_source: Option<String>,
}

/// An import job as stored: how far it got and who holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRun {
    /// The job.
    pub job: JobId,
    /// How many rows of the parser's output (nodes, errors, ignored lines,
    /// in input order) the committed batches cover; 0: none.
    pub rows: u64,
    /// Bytes of the spool the parser had read at the last committed batch.
    pub bytes_done: u64,
    /// The spool's size.
    pub bytes_total: u64,
    /// The worker running it, if one holds it.
    pub worker: Option<String>,
    /// Until when that worker's hold lasts without a further batch.
    pub lease_until: Option<DateTime<Utc>>,
    /// The test job started on the added nodes, once started.
    pub test_job: Option<JobId>,
    /// Why the import stopped before its last row, if it did.
    pub error: Option<String>,
}

/// What one committed batch of an import job records besides its nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportCheckpoint {
    /// The parser rows covered once the batch is in (see [`ImportRun::rows`]).
    pub rows: u64,
    /// Bytes of the spool read so far.
    pub bytes_done: u64,
    /// The batch's part of the report (an import summary as JSON).
    pub part: serde_json::Value,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Identifier.
    pub id: JobId,
    /// What it does.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// Engine options.
    pub options: serde_json::Value,
    /// Number of items.
    pub total: u64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Ended (done, cancelled or interrupted).
    pub finished_at: Option<DateTime<Utc>>,
    /// Deadline.
    pub deadline: Option<DateTime<Utc>>,
}

impl Job {
    /// The spec of an import job (its stored options); `None` for other kinds.
    pub fn import_spec(&self) -> Option<ImportSpec> {
        (self.kind == JobKind::Import)
            .then(|| serde_json::from_value(self.options.clone()).ok())
            .flatten()
    }
}

/// A finished item, for progress displays.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemView {
    /// The item.
    pub item: ItemId,
    /// The node.
    pub node: NodeId,
    /// Its state.
    pub state: ItemState,
    /// The node's status after the item.
    pub status: Option<Status>,
    /// The summary.
    pub detail: Option<String>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job's progress, computed from committed rows: every observer sees the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// Items in all.
    pub total: u64,
    /// Waiting.
    pub pending: u64,
    /// Being worked on.
    pub running: u64,
    /// Ended ok.
    pub ok: u64,
    /// Ended with a failure.
    pub failed: u64,
    /// Ended by a timeout.
    pub timed_out: u64,
    /// Ended by cancellation.
    pub cancelled: u64,
}

impl Progress {
    /// Items that ended (ok + failed + timed out + cancelled).
    pub fn done(&self) -> u64 {
        self.ok + self.failed + self.timed_out + self.cancelled
    }

    /// `true` when every item ended.
    pub fn is_complete(&self) -> bool {
        self.done() == self.total
    }

    /// Percentage done, 0..=100 (an empty job is 100 %).
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            self.done() as f64 * 100.0 / self.total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        use JobKind::*;
        let kinds = [
            Light,
            Auth,
            Speed,
            Pipeline,
            ServiceStart,
            ServiceStop,
            Geo,
            Fraud,
            Import,
        ];
        for k in kinds {
            assert_eq!(k.as_str().parse::<JobKind>(), Ok(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!(ServiceStart.as_str(), "service_start");
        assert!(
            "Light"
                .parse::<JobKind>()
                .unwrap_err()
                .contains("unknown JobKind")
        );
        for st in [
            JobState::Queued,
            JobState::Running,
            JobState::Done,
            JobState::Cancelled,
            JobState::Interrupted,
        ] {
            assert_eq!(st.to_string().parse::<JobState>(), Ok(st));
        }
        assert_eq!(ItemState::TimedOut.as_str(), "timed_out");
    }

    #[test]
    fn only_pending_and_running_items_are_unfinished() {
        use ItemState::*;
        let terminal: Vec<bool> = [Pending, Running, Ok, Failed, TimedOut, Cancelled]
            .map(ItemState::is_terminal)
            .to_vec();
        assert_eq!(terminal, [false, false, true, true, true, true]);
    }

    #[test]
    fn only_an_import_job_has_an_import_spec() {
        let spec = ImportSpec {
            source: "fleet.txt".into(),
            spool: "/var/lib/connexa/spool/x.spool".into(),
            delete_spool: true,
            host: "h".into(),
            bytes_total: 42,
            on_conflict: OnConflict::Replace,
            test: Some((JobKind::Light, serde_json::json!({}))),
            actor: Some("token:ci".into()),
            actor_source: None,
        };
        let job = |kind, options| Job {
            id: JobId(1),
            kind,
            state: JobState::Queued,
            options,
            total: 42,
            created_at: Utc::now(),
            finished_at: None,
            deadline: None,
        };
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            job(JobKind::Import, stored.clone()).import_spec(),
            Some(spec)
        );
        assert_eq!(job(JobKind::Light, stored).import_spec(), None);
        assert_eq!(
            job(JobKind::Import, serde_json::json!({"source": 1})).import_spec(),
            None
        );
    }

    #[test]
    fn progress_counts_ended_items() {
        let p = Progress {
            total: 8,
            pending: 2,
            running: 2,
            ok: 1,
            failed: 1,
            timed_out: 1,
            cancelled: 1,
        };
        assert_eq!(p.done(), 4);
        assert!(!p.is_complete());
        assert_eq!(p.percent(), 50.0);
        assert_eq!(Progress::default().percent(), 100.0);
        assert!(Progress::default().is_complete());
    }
}
