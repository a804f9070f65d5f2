//! The one filter type behind list, bulk delete, export, jobs and services, so that
//! "select all matching" and "delete all matching" can never disagree.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{NodeId, Risk, Status};

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
    /// Fraud score at most this (0-100); nodes never scored do not match.
    pub fraud_max: Option<u8>,
    /// Only these fraud risk levels (empty = any; nodes never scored do not
    /// match a non-empty list).
    pub risks: Vec<Risk>,
    /// With (`true`) or without (`false`) a location mismatch: the seller's
    /// country or state differs from the GEO lookup's. Nodes never looked up
    /// (or claiming no location) match neither.
    pub mismatch: Option<bool>,
    /// Announced by this autonomous system (GEO lookup).
    pub asn: Option<u32>,
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

/// A page of a listing: by position (`offset`) or, with `sort = id`, by cursor
/// (`after`).
///
/// Offset pages cost more the deeper they are (the database reads and throws
/// away `offset` rows) and shift when nodes are added or deleted between two
/// requests, so a walk by growing offsets can skip or repeat nodes. A cursor page
/// starts right after the id `after` (before it when `desc`): every page costs
/// the same, and a walk that follows the last id of each page returns every node
/// that exists for the whole walk exactly once (nodes added meanwhile appear
/// only if their id is still ahead of the cursor; ids only grow).
///
/// ```
/// use connexa_core::domain::{NodeId, Page, PageError, SortKey};
/// let next = Page { after: Some(NodeId(41)), limit: 500, ..Page::default() };
/// assert_eq!(next.check(), Ok(()));
/// let by_ip = Page { sort: SortKey::Ip, ..next };
/// assert_eq!(by_ip.check(), Err(PageError::AfterNeedsIdSort));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Page {
    /// Rows to skip (must be 0 with `after`).
    pub offset: u64,
    /// Rows to return (the store caps it at 10,000).
    pub limit: u64,
    /// Sort key.
    pub sort: SortKey,
    /// Descending order.
    pub desc: bool,
    /// Cursor: only nodes with an id greater than this one (smaller when `desc`).
    /// Needs `sort = id` and `offset = 0` ([`Page::check`]); `None` starts at
    /// the first node.
    pub after: Option<NodeId>,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            offset: 0,
            limit: 100,
            sort: SortKey::Id,
            desc: false,
            after: None,
        }
    }
}

/// Why a [`Page`] cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PageError {
    /// `after` with a sort key other than `id`.
    #[error("cursor pagination (after) needs sort=id")]
    AfterNeedsIdSort,
    /// `after` together with a non-zero `offset`.
    #[error("cursor pagination (after) cannot be combined with offset")]
    AfterWithOffset,
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

    /// `limit` rows in id order after the node `after` (from the first node when `None`).
    pub fn cursor(after: Option<NodeId>, limit: u64) -> Self {
        Page {
            limit,
            after,
            ..Page::default()
        }
    }

    /// Whether a store can serve this page: `after` needs `sort = id` and `offset = 0`.
    pub fn check(&self) -> Result<(), PageError> {
        match self.after {
            Some(_) if self.sort != SortKey::Id => Err(PageError::AfterNeedsIdSort),
            Some(_) if self.offset != 0 => Err(PageError::AfterWithOffset),
            _ => Ok(()),
        }
    }

    /// The cursor of the page after one that returned `rows`: the id of the
    /// last row when this page is sorted by id and full (a shorter page is the
    /// last one), else `None`.
    pub fn next_after(&self, rows: &[super::Node]) -> Option<NodeId> {
        let full = self.limit > 0 && rows.len() as u64 >= self.limit.min(Self::MAX_LIMIT);
        if self.sort == SortKey::Id && full {
            rows.last().map(|n| n.id)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Node, Secret};

    fn nodes(ids: std::ops::RangeInclusive<i64>) -> Vec<Node> {
        ids.map(|i| {
            Node::added(
                NodeId(i),
                "127.0.0.1".parse().unwrap(),
                1723,
                "u",
                Secret::new("p"),
                chrono::Utc::now(),
            )
        })
        .collect()
    }

    #[test]
    fn pages_by_number_and_cursor() {
        assert_eq!(Page::number(1, 50).offset, 0);
        assert_eq!(
            (Page::number(3, 50).offset, Page::number(3, 50).limit),
            (100, 50)
        );
        assert_eq!(Page::number(0, 50).offset, 0);
        assert_eq!(Page::number(u64::MAX, u64::MAX).offset, u64::MAX);
        let c = Page::cursor(Some(NodeId(7)), 20);
        assert_eq!(
            (c.after, c.limit, c.offset, c.sort),
            (Some(NodeId(7)), 20, 0, SortKey::Id)
        );
        assert_eq!(Page::default().limit, 100);
    }

    #[test]
    fn a_cursor_needs_id_order_and_no_offset() {
        assert_eq!(Page::cursor(Some(NodeId(1)), 5).check(), Ok(()));
        assert_eq!(Page::default().check(), Ok(()));
        let by_ip = Page {
            sort: SortKey::Ip,
            ..Page::cursor(Some(NodeId(1)), 5)
        };
        assert_eq!(by_ip.check(), Err(PageError::AfterNeedsIdSort));
        let with_offset = Page {
            offset: 5,
            ..Page::cursor(Some(NodeId(1)), 5)
        };
        assert_eq!(with_offset.check(), Err(PageError::AfterWithOffset));
        // Without a cursor, any sort and offset.
        let plain = Page {
            sort: SortKey::Ip,
            offset: 5,
            ..Page::default()
        };
        assert_eq!(plain.check(), Ok(()));
    }

    #[test]
    fn the_next_cursor_is_the_last_id_of_a_full_page_in_id_order() {
        let p = Page::cursor(None, 3);
        assert_eq!(p.next_after(&nodes(4..=6)), Some(NodeId(6)));
        assert_eq!(
            p.next_after(&nodes(4..=5)),
            None,
            "a short page is the last"
        );
        assert_eq!(p.next_after(&[]), None);
        let by_ip = Page {
            sort: SortKey::Ip,
            ..p
        };
        assert_eq!(by_ip.next_after(&nodes(4..=6)), None);
        let empty = Page { limit: 0, ..p };
        assert_eq!(empty.next_after(&nodes(4..=6)), None);
        // A limit above the store's maximum: a page of MAX_LIMIT rows is full.
        let huge = Page {
            limit: Page::MAX_LIMIT + 5,
            ..p
        };
        let max = Page::MAX_LIMIT as i64;
        assert_eq!(huge.next_after(&nodes(1..=max)), Some(NodeId(max)));
    }

    #[test]
    fn filters_on_ids_and_statuses() {
        let f = NodeFilter::ids([NodeId(2), NodeId(3)]);
        assert_eq!(f.ids, Some(vec![NodeId(2), NodeId(3)]));
        assert_eq!(f.statuses, Vec::new());
        let s = NodeFilter::statuses([Status::SpeedOk]);
        assert_eq!((s.ids, s.statuses), (None, vec![Status::SpeedOk]));
        assert_eq!(NodeFilter::all(), NodeFilter::default());
    }
}
