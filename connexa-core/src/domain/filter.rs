//! The one filter type behind list, bulk delete, export, jobs and services, so that
//! "select all matching" and "delete all matching" can never disagree.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{NodeId, Status};

/// Which nodes. Every set field narrows the selection (AND); text fields match a
/// case-insensitive substring. The default filter matches every node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct NodeFilter {
    /// Only these ids (`None` = any id; `Some(vec![])` matches nothing).
    pub ids: Option<Vec<NodeId>>,
    /// Only these statuses (empty = any).
    pub statuses: Vec<Status>,
    /// IP address substring.
    pub ip: Option<String>,
    /// Login substring.
    pub login: Option<String>,
    /// Provider substring.
    pub provider: Option<String>,
    /// Country substring.
    pub country: Option<String>,
    /// State substring.
    pub state: Option<String>,
    /// City substring.
    pub city: Option<String>,
    /// Zip code substring.
    pub zipcode: Option<String>,
    /// Comment substring.
    pub comment: Option<String>,
    /// Download speed at least this many Mbit/s.
    pub min_down_mbps: Option<f64>,
    /// Download speed at most this many Mbit/s.
    pub max_down_mbps: Option<f64>,
    /// Last checked strictly before this instant.
    pub checked_before: Option<DateTime<Utc>>,
    /// Last checked at or after this instant.
    pub checked_after: Option<DateTime<Utc>>,
    /// With (`true`) or without (`false`) a running service (status `online` or `offline`).
    pub has_service: Option<bool>,
    /// With (`true`) or without (`false`) a service wanted (the desired state the
    /// engine's reconciler works towards).
    pub service_wanted: Option<bool>,
}

impl NodeFilter {
    /// A filter that matches every node.
    pub fn all() -> Self {
        Self::default()
    }

    /// A filter on explicit ids.
    pub fn ids(ids: impl IntoIterator<Item = NodeId>) -> Self {
        NodeFilter {
            ids: Some(ids.into_iter().collect()),
            ..Self::default()
        }
    }

    /// A filter on statuses.
    pub fn statuses(statuses: impl IntoIterator<Item = Status>) -> Self {
        NodeFilter {
            statuses: statuses.into_iter().collect(),
            ..Self::default()
        }
    }
}

/// Sort order of a listing. Ties are always broken by id, so pages are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SortKey {
    /// Insertion order.
    #[default]
    Id,
    /// IP address (as text).
    Ip,
    /// Status name.
    Status,
    /// Last check time.
    LastChecked,
    /// Download speed.
    SpeedDown,
    /// Latency.
    Ping,
    /// Country, then state, then city.
    Location,
}

/// A page of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Page {
    /// Rows to skip.
    pub offset: u64,
    /// Rows to return (the store caps it at 10,000).
    pub limit: u64,
    /// Sort key.
    pub sort: SortKey,
    /// Descending order.
    pub desc: bool,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            offset: 0,
            limit: 100,
            sort: SortKey::Id,
            desc: false,
        }
    }
}

impl Page {
    /// The largest page a store returns.
    pub const MAX_LIMIT: u64 = 10_000;

    /// Page `number` (1-based) of `limit` rows.
    pub fn number(number: u64, limit: u64) -> Self {
        Page {
            offset: number.saturating_sub(1).saturating_mul(limit),
            limit,
            ..Page::default()
        }
    }
}
