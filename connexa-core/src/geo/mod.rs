//! GEO and fraud enrichment: where a node's address really is, and what the
//! web thinks of it.
//!
//! * [`MmdbGeo`]: the offline [`GeoLookup`](crate::ports::GeoLookup) over
//!   MaxMind-format databases (`.mmdb`): a city database (GeoIP2/GeoLite2
//!   City, or the flat `country_code, state1, city, postcode, latitude,
//!   longitude, timezone` layout of the ip-location-db packages) and an ASN
//!   database (`autonomous_system_number`, `autonomous_system_organization`).
//! * [`MmdbWriter`]: writes small databases of that format (tests, demos,
//!   benchmarks).
//! * [`location_mismatch`]: does the seller's claimed country or state differ
//!   from the lookup?
//!
//! Enrichment is not a status event: results are stored with
//! [`NodeStore::enrich`](crate::ports::NodeStore::enrich) (or with a job's
//! item results) and never go through [`transition`](fn@crate::domain::transition).

mod mmdb;
pub mod online;
mod writer;

use std::net::IpAddr;

pub use mmdb::{GeoOpenError, MmdbGeo};
pub use writer::{MmdbWriter, WriteError};

use crate::domain::{GeoFacts, Node, NodeMeta};
use crate::import::location;

/// The address to enrich for a node: the address websites see — its exit
/// address ([`Node::exit_ip`], recorded by the last speed test against the
/// keyed endpoint) when known, else the PPTP server's address. The stored
/// GEO and fraud records name the address they describe, so both are shown.
pub fn enrichment_address(node: &Node) -> IpAddr {
    node.exit_ip.unwrap_or(node.ip)
}

fn norm_country(text: &str) -> String {
    location::country(text)
        .map(str::to_owned)
        .unwrap_or_else(|| text.trim().to_owned())
        .to_lowercase()
}

fn norm_state(text: &str) -> String {
    location::us_state(text)
        .map(str::to_owned)
        .unwrap_or_else(|| text.trim().to_owned())
        .to_lowercase()
}

/// `Some(true)` when the seller's country or state (from `meta`) differs from
/// the lookup's, `Some(false)` when what can be compared agrees, `None` when
/// nothing can be compared (no claim, or no answer). Codes and names compare
/// equal (`US` = `United States`, `TX` = `Texas`), case-insensitively.
///
/// ```
/// use connexa_core::domain::{GeoFacts, NodeMeta};
/// use connexa_core::geo::location_mismatch;
/// let facts = GeoFacts { country_code: Some("US".into()), region: Some("Texas".into()), ..GeoFacts::default() };
/// let claim = |c: &str, s: &str| NodeMeta { country: Some(c.into()), state: Some(s.into()), ..NodeMeta::default() };
/// assert_eq!(location_mismatch(&claim("United States", "TX"), &facts), Some(false));
/// assert_eq!(location_mismatch(&claim("United States", "Ohio"), &facts), Some(true));
/// assert_eq!(location_mismatch(&claim("Germany", "Texas"), &facts), Some(true));
/// assert_eq!(location_mismatch(&NodeMeta::default(), &facts), None);
/// ```
pub fn location_mismatch(meta: &NodeMeta, facts: &GeoFacts) -> Option<bool> {
    let mut compared = false;
    let mut differs = false;
    let claimed = meta.country.as_deref().filter(|c| !c.trim().is_empty());
    let found: Vec<String> = [&facts.country_code, &facts.country]
        .into_iter()
        .flatten()
        .map(|c| norm_country(c))
        .collect();
    if let Some(c) = claimed
        && !found.is_empty()
    {
        compared = true;
        differs |= !found.contains(&norm_country(c));
    }
    let claimed = meta.state.as_deref().filter(|s| !s.trim().is_empty());
    if let (Some(s), Some(region)) = (claimed, facts.region.as_deref()) {
        compared = true;
        differs |= norm_state(s) != norm_state(region);
    }
    compared.then_some(differs)
}

/// A one-line summary of a lookup for job item details (`US, Texas, Austin, AS7922 Comcast`).
pub fn summary(f: &GeoFacts) -> String {
    let mut parts: Vec<String> = [&f.country_code, &f.region, &f.city]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if let Some(asn) = f.asn {
        parts.push(match &f.org {
            Some(org) => format!("AS{asn} {org}"),
            None => format!("AS{asn}"),
        });
    }
    if parts.is_empty() {
        "no data".into()
    } else {
        parts.join(", ")
    }
}
