//! The domain: nodes, statuses, events and [`transition`](fn@transition). Pure: no I/O, no async,
//! no clock reads.

mod enrichment;
mod filter;
mod job;
pub(crate) use job::snake_names;
mod node;
mod outcome;
mod secret;
mod selection;
mod status;
pub mod transition;

pub use enrichment::{
    Enrichment, EnrichmentUpdate, FraudRecord, GeoFacts, GeoRecord, Risk, UnknownRisk,
};
pub use filter::{NodeFilter, Page, PageError, SortKey};
pub use job::{
    ImportCheckpoint, ImportRun, ImportSpec, ItemId, ItemState, ItemView, Job, JobId, JobKind,
    JobSpec, JobState, OnConflict, Progress,
};
pub use node::{
    DEFAULT_PORT, InvalidNode, Location, MAX_LOGIN, MAX_PASSWORD, NewNode, Node, NodeId, NodeMeta,
    OPENVPN_USER_PREFIX, PptpIdentity, ServiceEndpoint, ServiceKind,
};
pub use outcome::{Failure, Measurements, Outcome, control_result_meaning};
pub use secret::Secret;
pub use selection::{FilterError, Selection, SelectionError, Words};
pub use status::{Level, Status, UnknownStatus};
pub use transition::{Event, EventKind, Refused, transition};

#[cfg(test)]
mod transition_props;
#[cfg(test)]
mod transition_table_tests;
