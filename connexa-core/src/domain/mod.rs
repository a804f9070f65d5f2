//! The domain: nodes, statuses, events and [`transition`]. Pure: no I/O, no async,
//! no clock reads.

mod enrichment;
mod filter;
mod node;
mod outcome;
mod secret;
mod selection;
mod status;
mod transition;

pub use enrichment::{
    Enrichment, EnrichmentUpdate, FraudRecord, GeoFacts, GeoRecord, Risk, UnknownRisk,
};
pub use filter::{NodeFilter, Page, PageError, SortKey};
pub use node::{
    DEFAULT_PORT, InvalidNode, MAX_LOGIN, MAX_PASSWORD, NewNode, Node, NodeId, NodeMeta,
    PptpIdentity, ServiceEndpoint, ServiceKind,
};
pub use outcome::{Failure, Measurements, Outcome, control_result_meaning};
pub use secret::Secret;
pub use selection::{FilterError, Selection, SelectionError};
pub use status::{Level, Status, UnknownStatus};
pub use transition::{Event, EventKind, Refused, transition};

#[cfg(test)]
mod transition_props;
#[cfg(test)]
mod transition_table_tests;
