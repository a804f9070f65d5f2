//! Enrichment: what GEO databases and fraud-score providers say about a node's
//! address. Stored with the node, never a status event: nothing here goes
//! through [`transition`](super::transition), and a failed lookup changes nothing.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an address is and who announces it, according to one lookup. Every
/// field is optional: databases know more about some addresses than others.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GeoFacts {
    /// ISO 3166-1 alpha-2 country code (`US`).
    pub country_code: Option<String>,
    /// Country name in English.
    pub country: Option<String>,
    /// First-level subdivision (state, region) name.
    pub region: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Postal code.
    pub postal: Option<String>,
    /// Latitude in degrees.
    pub latitude: Option<f64>,
    /// Longitude in degrees.
    pub longitude: Option<f64>,
    /// IANA time zone (`America/Chicago`).
    pub time_zone: Option<String>,
    /// Autonomous system number (32 bits).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, maximum = 4294967295_u64))]
    pub asn: Option<u32>,
    /// The autonomous system's organisation.
    pub org: Option<String>,
}

impl GeoFacts {
    /// `true` when the lookup found nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == GeoFacts::default()
    }

    /// Fills the fields this one lacks from `other` (used to merge a city
    /// database's answer with an ASN database's).
    pub fn fill_from(&mut self, other: GeoFacts) {
        fn fill<T>(a: &mut Option<T>, b: Option<T>) {
            if a.is_none() {
                *a = b;
            }
        }
        fill(&mut self.country_code, other.country_code);
        fill(&mut self.country, other.country);
        fill(&mut self.region, other.region);
        fill(&mut self.city, other.city);
        fill(&mut self.postal, other.postal);
        fill(&mut self.latitude, other.latitude);
        fill(&mut self.longitude, other.longitude);
        fill(&mut self.time_zone, other.time_zone);
        fill(&mut self.asn, other.asn);
        fill(&mut self.org, other.org);
    }
}

/// A GEO lookup as stored with a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GeoRecord {
    /// The address looked up (the node's server address, or its exit address
    /// once one is recorded).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub ip: IpAddr,
    /// What the lookup found.
    #[serde(flatten)]
    pub facts: GeoFacts,
    /// Where it came from (`mmdb`, `ip-api`, `ipinfo`, ...).
    pub source: String,
    /// When it was looked up.
    pub at: DateTime<Utc>,
    /// `true` when the seller's country or state differs from the lookup's;
    /// `None` when the node claims no location or the lookup found none.
    pub location_mismatch: Option<bool>,
}

/// A fraud-risk level, normalised over providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Score below 25 (or the provider says low).
    Low,
    /// Score 25 to 49.
    Medium,
    /// Score 50 to 74.
    High,
    /// Score 75 and above.
    VeryHigh,
}

impl Risk {
    /// Every level, lowest first.
    pub const ALL: [Risk; 4] = [Risk::Low, Risk::Medium, Risk::High, Risk::VeryHigh];

    /// The stored name (`low`, `medium`, `high`, `very_high`).
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::VeryHigh => "very_high",
        }
    }

    /// The level of a 0–100 score, for providers that give no level of their own.
    ///
    /// ```
    /// use connexa_core::domain::Risk;
    /// assert_eq!(Risk::from_score(0), Risk::Low);
    /// assert_eq!(Risk::from_score(75), Risk::VeryHigh);
    /// ```
    pub fn from_score(score: u8) -> Risk {
        match score {
            0..25 => Risk::Low,
            25..50 => Risk::Medium,
            50..75 => Risk::High,
            _ => Risk::VeryHigh,
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A risk level name that is not one of [`Risk::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown risk level {0:?} (use low, medium, high or very_high)")]
pub struct UnknownRisk(pub String);

impl std::str::FromStr for Risk {
    type Err = UnknownRisk;
    fn from_str(s: &str) -> Result<Self, UnknownRisk> {
        let t = s.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        Risk::ALL
            .into_iter()
            .find(|r| r.as_str() == t)
            .ok_or_else(|| UnknownRisk(s.to_owned()))
    }
}

/// A fraud score as stored with a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FraudRecord {
    /// The address scored.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub ip: IpAddr,
    /// 0 (clean) to 100 (certainly abusive).
    pub score: u8,
    /// The risk level.
    pub risk: Risk,
    /// Who scored it (`ipqualityscore`, `abuseipdb`, `scamalytics`, `import`).
    pub provider: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Everything known about a node's address beyond the seller's word.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Enrichment {
    /// The last successful GEO lookup.
    pub geo: Option<GeoRecord>,
    /// The last successful fraud score.
    pub fraud: Option<FraudRecord>,
}

/// One enrichment result to store with a node
/// ([`NodeStore::enrich`](crate::ports::NodeStore::enrich)).
#[derive(Debug, Clone, PartialEq)]
// Built once per job item and moved into the commit: a box would cost an
// allocation per item for no gain.
#[allow(clippy::large_enum_variant)]
pub enum EnrichmentUpdate {
    /// Replace the node's GEO record.
    Geo(GeoRecord),
    /// Replace the node's fraud record.
    Fraud(FraudRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_empty_only_when_nothing_was_found() {
        assert!(GeoFacts::default().is_empty());
        let asn_only = GeoFacts {
            asn: Some(64_500),
            ..GeoFacts::default()
        };
        assert!(!asn_only.is_empty());
        let mut city = GeoFacts {
            city: Some("Phoenix".into()),
            ..GeoFacts::default()
        };
        assert!(!city.is_empty());
        city.fill_from(asn_only);
        assert_eq!(
            (city.city.as_deref(), city.asn),
            (Some("Phoenix"), Some(64_500))
        );
    }

    #[test]
    fn risk_levels_have_their_score_bands_and_names() {
        let bands = [
            (0, Risk::Low),
            (24, Risk::Low),
            (25, Risk::Medium),
            (49, Risk::Medium),
            (50, Risk::High),
            (74, Risk::High),
            (75, Risk::VeryHigh),
            (100, Risk::VeryHigh),
            (255, Risk::VeryHigh),
        ];
        for (score, risk) in bands {
            assert_eq!(Risk::from_score(score), risk, "{score}");
        }
        for r in Risk::ALL {
            assert_eq!(r.as_str().parse::<Risk>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(
            Risk::ALL.map(Risk::as_str),
            ["low", "medium", "high", "very_high"]
        );
        assert_eq!(" Very High ".parse::<Risk>(), Ok(Risk::VeryHigh));
        assert_eq!("very-high".parse::<Risk>(), Ok(Risk::VeryHigh));
        let e = "severe".parse::<Risk>().unwrap_err();
        assert_eq!(e, UnknownRisk("severe".into()));
        assert!(e.to_string().contains("low, medium, high or very_high"));
    }
}
