//! The handlers, one module per resource. Each parses, calls connexa-core, and
//! serialises.

pub mod audit;
pub mod export;
pub mod import;
pub mod jobs;
pub mod nodes;
pub mod services;
pub mod speed;
pub mod stats;
pub mod token;
pub mod workers;

use chrono::{DateTime, Utc};
use connexa_core::domain::{
    NodeFilter, NodeId, Page, Selection as CoreSelection, SortKey, Status, Words,
};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::problem::ApiError;

/// Declares a query-string struct with the node filter parameters (the same
/// names everywhere: list, delete, export, services) plus `$extra` fields.
macro_rules! filter_query {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Default, ::serde::Deserialize, ::utoipa::IntoParams)]
        #[serde(deny_unknown_fields)]
        #[into_params(parameter_in = Query)]
        pub struct $name {
            /// Only these node ids, comma-separated (`1,2,3`).
            pub ids: Option<String>,
            /// Only these statuses, comma-separated: not_tested, ping_failed,
            /// ping_light, auth_failed, ping_ok, speed_ok, online, offline.
            pub status: Option<String>,
            /// IP address contains (case-insensitive).
            pub ip: Option<String>,
            /// Login contains.
            pub login: Option<String>,
            /// Provider contains.
            pub provider: Option<String>,
            /// Country contains.
            pub country: Option<String>,
            /// State or region contains.
            pub state: Option<String>,
            /// City contains.
            pub city: Option<String>,
            /// Zip code contains.
            pub zip: Option<String>,
            /// Comment contains.
            pub comment: Option<String>,
            /// Download speed at least this many Mbit/s.
            pub min_speed: Option<f64>,
            /// Download speed at most this many Mbit/s.
            pub max_speed: Option<f64>,
            /// Last checked before this RFC 3339 time.
            pub checked_before: Option<::chrono::DateTime<::chrono::Utc>>,
            /// Last checked at or after this RFC 3339 time.
            pub checked_after: Option<::chrono::DateTime<::chrono::Utc>>,
            /// With (`true`) or without (`false`) a running service.
            pub has_service: Option<bool>,
            /// With (`true`) or without (`false`) a service wanted.
            pub service_wanted: Option<bool>,
            /// Fraud score at most this (0-100); nodes never scored do not match.
            #[param(maximum = 100)]
            pub fraud_max: Option<u8>,
            /// Only these fraud risk levels, comma-separated: low, medium, high, very_high.
            pub risk: Option<String>,
            /// With (`true`) or without (`false`) a location mismatch (the seller's
            /// country or state differs from the GEO lookup).
            pub mismatch: Option<bool>,
            /// Announced by this autonomous system number (GEO lookup; 32 bits).
            #[param(value_type = Option<u64>, maximum = 4294967295_u64)]
            pub asn: Option<u32>,
            $($(#[$fm])* pub $f: $t,)*
        }

        impl $name {
            /// The core filter, validated.
            pub fn filter(&self) -> Result<::connexa_core::domain::NodeFilter, $crate::problem::ApiError> {
                $crate::routes::filter_from($crate::routes::FilterParts {
                    ids: self.ids.as_deref(),
                    status: self.status.as_deref(),
                    text: [
                        self.ip.clone(), self.login.clone(), self.provider.clone(),
                        self.country.clone(), self.state.clone(), self.city.clone(),
                        self.zip.clone(), self.comment.clone(),
                    ],
                    min_speed: self.min_speed,
                    max_speed: self.max_speed,
                    checked_before: self.checked_before,
                    checked_after: self.checked_after,
                    has_service: self.has_service,
                    service_wanted: self.service_wanted,
                    fraud_max: self.fraud_max,
                    risk: self.risk.as_deref(),
                    mismatch: self.mismatch,
                    asn: self.asn,
                })
            }
        }
    };
}
pub(crate) use filter_query;

pub(crate) struct FilterParts<'a> {
    ids: Option<&'a str>,
    status: Option<&'a str>,
    text: [Option<String>; 8],
    min_speed: Option<f64>,
    max_speed: Option<f64>,
    checked_before: Option<DateTime<Utc>>,
    checked_after: Option<DateTime<Utc>>,
    has_service: Option<bool>,
    service_wanted: Option<bool>,
    fraud_max: Option<u8>,
    risk: Option<&'a str>,
    mismatch: Option<bool>,
    asn: Option<u32>,
}

/// Most ids in one `ids` query parameter (a URL stays a few hundred kB at
/// most; JSON selections take up to [`CoreSelection::MAX_IDS`]).
const MAX_QUERY_IDS: usize = 10_000;

/// The filter of a query string, validated by the one rule of connexa-core
/// ([`NodeFilter::validate`]: no control characters, no empty text, bounded
/// lengths and numbers).
pub(crate) fn filter_from(p: FilterParts<'_>) -> Result<NodeFilter, ApiError> {
    let ids = match p.ids {
        None => None,
        Some(s) => {
            let ids: Vec<NodeId> = s
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    t.parse::<i64>()
                        .map(NodeId)
                        .map_err(|_| ApiError::bad_request(format!("ids: {t:?} is not a node id")))
                })
                .collect::<Result<_, _>>()?;
            if ids.len() > MAX_QUERY_IDS {
                return Err(ApiError::bad_request(format!(
                    "ids: at most {MAX_QUERY_IDS} ids in a query string (send more in a JSON selection)"
                )));
            }
            Some(ids)
        }
    };
    let statuses = match p.status {
        None => Vec::new(),
        Some(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<Status>()
                    .map_err(|e| ApiError::bad_request(format!("status: {e}")))
            })
            .collect::<Result<_, _>>()?,
    };
    let risks = match p.risk {
        None => Vec::new(),
        Some(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<connexa_core::domain::Risk>()
                    .map_err(|e| ApiError::bad_request(format!("risk: {e}")))
            })
            .collect::<Result<_, _>>()?,
    };
    let [ip, login, provider, country, state, city, zipcode, comment] = p.text;
    let filter = NodeFilter {
        ids,
        statuses,
        ip,
        login,
        provider,
        country,
        state,
        city,
        zipcode,
        comment,
        min_down_mbps: p.min_speed,
        max_down_mbps: p.max_speed,
        checked_before: p.checked_before,
        checked_after: p.checked_after,
        has_service: p.has_service,
        service_wanted: p.service_wanted,
        fraud_max: p.fraud_max,
        risks,
        mismatch: p.mismatch,
        asn: p.asn,
    };
    filter
        .validate()
        .map_err(|e| ApiError::bad_request(e.message(&QUERY_WORDS)))?;
    Ok(filter)
}

/// How a query string spells connexa-core's refusals ([`Words`]): its own
/// parameter names (`zip`, `min_speed`, `max_speed`) and `all=true`. JSON
/// bodies use the core's names ([`Words::API`]).
pub(crate) const QUERY_WORDS: Words = Words {
    field: query_name,
    filter: "a filter",
    all: "all=true",
};

fn query_name(field: &str) -> String {
    match field {
        "zipcode" => "zip",
        "min_down_mbps" => "min_speed",
        "max_down_mbps" => "max_speed",
        f => f,
    }
    .to_owned()
}

/// A page request from `offset`, `limit`, `sort`, `desc`, `after`.
pub(crate) fn page(
    offset: Option<u64>,
    limit: Option<u64>,
    sort: Option<SortKey>,
    desc: Option<bool>,
    after: Option<i64>,
) -> Result<Page, ApiError> {
    let limit = limit.unwrap_or(100);
    if limit > Page::MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit: at most {}",
            Page::MAX_LIMIT
        )));
    }
    let offset = offset.unwrap_or(0);
    if offset > i64::MAX as u64 {
        return Err(ApiError::bad_request("offset: too large"));
    }
    let page = Page {
        offset,
        limit,
        sort: sort.unwrap_or_default(),
        desc: desc.unwrap_or(false),
        after: after.map(NodeId),
    };
    page.check()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(page)
}

/// Which nodes an action applies to: exactly one of `ids`, `filter` or `all: true`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// These nodes.
    #[serde(default)]
    pub ids: Option<Vec<NodeId>>,
    /// The nodes matching this filter (the JSON form of the store's filter).
    #[serde(default)]
    #[schema(value_type = Option<NodeFilter>)]
    pub filter: Option<serde_json::Value>,
    /// Every node.
    #[serde(default)]
    pub all: bool,
}

impl Selection {
    /// The core selection, validated by connexa-core's one rule
    /// ([`CoreSelection::new`]). An unknown key in `filter` is an error (a typo
    /// must not widen the selection to every node).
    pub fn selection(&self) -> Result<CoreSelection, ApiError> {
        let filter = match &self.filter {
            None => None,
            Some(f) => {
                let known = serde_json::to_value(NodeFilter::all()).unwrap_or_default();
                let (Some(obj), Some(known)) = (f.as_object(), known.as_object()) else {
                    return Err(ApiError::invalid_body("filter: must be an object"));
                };
                if let Some(k) = obj.keys().find(|k| !known.contains_key(*k)) {
                    return Err(ApiError::invalid_body(format!(
                        "filter: unknown key {k:?} (known: {})",
                        known.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                let filter: NodeFilter = serde_json::from_value(f.clone())
                    .map_err(|e| ApiError::invalid_body(format!("filter: {e}")))?;
                Some(filter)
            }
        };
        CoreSelection::new(self.ids.clone(), filter, self.all)
            .map_err(|e| ApiError::invalid_body(e.to_string()))
    }
}
