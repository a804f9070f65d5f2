//! The node filter options, shared by `nodes list`, `nodes delete` and `export`.
//! They map one to one onto `connexa_core::domain::NodeFilter`.

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use connexa_core::domain::{NodeFilter, Risk, SortKey, Status, Words};

/// Which nodes.
#[derive(Debug, Clone, Default, Args)]
#[command(
    next_help_heading = "Filters (all given filters must match; text matches a case-insensitive substring)"
)]
pub struct FilterArgs {
    /// Only nodes in this status (repeatable or comma-separated):
    /// not_tested, ping_failed, ping_light, auth_failed, ping_ok, speed_ok, online, offline.
    #[arg(long, value_name = "STATUS", value_delimiter = ',', value_parser = parse_status)]
    pub status: Vec<Status>,
    /// IP address contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub ip: Option<String>,
    /// Login contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub login: Option<String>,
    /// Provider contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub provider: Option<String>,
    /// Country contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub country: Option<String>,
    /// State or region contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub state: Option<String>,
    /// City contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub city: Option<String>,
    /// Zip code contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub zip: Option<String>,
    /// Comment contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// Download speed at least MBPS (Mbit/s).
    #[arg(long, value_name = "MBPS", value_parser = parse_speed)]
    pub min_speed: Option<f64>,
    /// Download speed at most MBPS (Mbit/s).
    #[arg(long, value_name = "MBPS", value_parser = parse_speed)]
    pub max_speed: Option<f64>,
    /// Last checked before TIME (RFC 3339, e.g. 2026-01-31T12:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub checked_before: Option<DateTime<Utc>>,
    /// Last checked at or after TIME (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub checked_after: Option<DateTime<Utc>>,
    /// Only nodes with a running service (online or offline).
    #[arg(long, conflicts_with = "no_service")]
    pub has_service: bool,
    /// Only nodes without a running service.
    #[arg(long)]
    pub no_service: bool,
    /// Only nodes whose service is wanted (`service start`): with
    /// `--status speed_ok`, the ones waiting to start (see their last error).
    #[arg(long, conflicts_with = "not_wanted")]
    pub wanted: bool,
    /// Only nodes whose service is not wanted.
    #[arg(long)]
    pub not_wanted: bool,
    /// Fraud score at most SCORE (0-100; `test fraud`); nodes never scored do not match.
    #[arg(long, value_name = "SCORE")]
    pub fraud_max: Option<u8>,
    /// Only nodes of this fraud risk (repeatable or comma-separated): low, medium, high, very_high.
    #[arg(long, value_name = "RISK", value_delimiter = ',', value_parser = parse_risk)]
    pub risk: Vec<Risk>,
    /// Only nodes whose seller's country or state differs from the GEO lookup (`test geo`).
    #[arg(long, conflicts_with = "no_mismatch")]
    pub mismatch: bool,
    /// Only nodes whose GEO lookup agrees with the seller's location.
    #[arg(long)]
    pub no_mismatch: bool,
    /// Only nodes announced by this autonomous system (`AS7922` or `7922`; `test geo`).
    #[arg(long, value_name = "ASN", value_parser = parse_asn)]
    pub asn: Option<u32>,
}

impl FilterArgs {
    /// The core filter.
    pub fn to_filter(&self) -> NodeFilter {
        NodeFilter {
            ids: None,
            statuses: self.status.clone(),
            ip: self.ip.clone(),
            login: self.login.clone(),
            provider: self.provider.clone(),
            country: self.country.clone(),
            state: self.state.clone(),
            city: self.city.clone(),
            zipcode: self.zip.clone(),
            comment: self.comment.clone(),
            min_down_mbps: self.min_speed,
            max_down_mbps: self.max_speed,
            checked_before: self.checked_before,
            checked_after: self.checked_after,
            has_service: match (self.has_service, self.no_service) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            service_wanted: match (self.wanted, self.not_wanted) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            fraud_max: self.fraud_max,
            risks: self.risk.clone(),
            mismatch: match (self.mismatch, self.no_mismatch) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            asn: self.asn,
        }
    }

    /// The core filter, checked by connexa-core's one rule
    /// ([`NodeFilter::validate`]); a bad value is a usage error.
    pub fn validated(&self) -> anyhow::Result<NodeFilter> {
        let f = self.to_filter();
        f.validate()
            .map_err(|e| crate::exit::fail(crate::exit::Exit::Usage, e.message(&CLI_WORDS)))?;
        Ok(f)
    }
}

/// How the CLI spells the words of connexa-core's refusals
/// ([`Words`]): options as flags (`--zip`, `--min-speed`, `--timeout`), and
/// `filters` and `--all`. The refusals are the core's, the same as the HTTP API's.
pub const CLI_WORDS: Words = Words {
    field: flag,
    filter: "filters",
    all: "--all",
};

fn flag(field: &str) -> String {
    match field {
        "zipcode" => "--zip".to_owned(),
        "min_down_mbps" => "--min-speed".to_owned(),
        "max_down_mbps" => "--max-speed".to_owned(),
        "node_timeout_secs" => "--timeout".to_owned(),
        "deadline_secs" => "--deadline".to_owned(),
        f => format!("--{}", f.replace('_', "-")),
    }
}

fn parse_status(s: &str) -> Result<Status, String> {
    s.trim().parse::<Status>().map_err(|e| e.to_string())
}

fn parse_risk(s: &str) -> Result<Risk, String> {
    s.parse::<Risk>().map_err(|e| e.to_string())
}

fn parse_asn(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t
        .strip_prefix("AS")
        .or_else(|| t.strip_prefix("as"))
        .unwrap_or(t);
    digits
        .parse::<u32>()
        .map_err(|_| format!("{s:?} is not an AS number (e.g. AS7922 or 7922)"))
}

/// A number; its range is connexa-core's to check ([`NodeFilter::validate`]).
fn parse_speed(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| format!("{s:?} is not a speed in Mbit/s (a number)"))
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z ({e})"))
}

/// Sort keys of `nodes list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SortArg {
    /// Import order.
    #[default]
    Id,
    /// IP address (as text).
    Ip,
    /// Status name.
    Status,
    /// Last check time.
    LastChecked,
    /// Download speed.
    Speed,
    /// Latency.
    Ping,
    /// Country, state, city.
    Location,
}

impl From<SortArg> for SortKey {
    fn from(s: SortArg) -> Self {
        match s {
            SortArg::Id => SortKey::Id,
            SortArg::Ip => SortKey::Ip,
            SortArg::Status => SortKey::Status,
            SortArg::LastChecked => SortKey::LastChecked,
            SortArg::Speed => SortKey::SpeedDown,
            SortArg::Ping => SortKey::Ping,
            SortArg::Location => SortKey::Location,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_maps() {
        let f = FilterArgs {
            status: vec![Status::SpeedOk],
            zip: Some("750".into()),
            min_speed: Some(2.0),
            no_service: true,
            wanted: true,
            ..FilterArgs::default()
        }
        .to_filter();
        assert_eq!(f.service_wanted, Some(true));
        assert_eq!(f.statuses, vec![Status::SpeedOk]);
        assert_eq!(f.zipcode.as_deref(), Some("750"));
        assert_eq!(f.min_down_mbps, Some(2.0));
        assert_eq!(f.has_service, Some(false));
        assert!(FilterArgs::default().to_filter().is_everything());
    }

    #[test]
    fn bad_values_name_the_valid_ones() {
        let e = parse_status("fast").unwrap_err();
        assert!(e.contains("speed_ok") && e.contains("fast"), "{e}");
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-01-31T12:00:00+02:00").is_ok());
        // A number parses; its range is the core's (the same refusal as the API's).
        assert_eq!(parse_speed("-1"), Ok(-1.0));
        assert!(parse_speed("fast").is_err());
        let f = FilterArgs {
            min_speed: Some(-1.0),
            ..FilterArgs::default()
        };
        let e = f.to_filter().validate().unwrap_err();
        assert_eq!(
            e.message(&CLI_WORDS),
            "--min-speed: must be a number of Mbit/s from 0 to 1000000"
        );
        assert_eq!(parse_asn("AS7922"), Ok(7922));
        assert_eq!(parse_asn("7922"), Ok(7922));
        assert!(parse_asn("ASX").is_err());
        assert_eq!(parse_risk("Very High"), Ok(Risk::VeryHigh));
        assert!(parse_risk("severe").unwrap_err().contains("very_high"));
    }
}
