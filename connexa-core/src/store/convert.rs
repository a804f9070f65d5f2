//! Rows <-> domain values.

use chrono::{DateTime, TimeZone, Utc};

use super::entity::{job_items, jobs, nodes, status_history};
use crate::domain::{
    Enrichment, FraudRecord, GeoFacts, GeoRecord, Level, Node, NodeId, NodeMeta, PptpIdentity,
    Risk, Secret, ServiceEndpoint, Status,
};
use crate::ports::{HistoryEvent, HistoryRow, ItemId, ItemView, Job, JobId, StoreError};

pub(crate) fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Backend(format!("corrupt row: bad {what} {value:?}"))
}

pub(crate) fn status(text: &str) -> Result<Status, StoreError> {
    text.parse().map_err(|_| corrupt("status", text))
}

/// The columns of `nodes` in the order `nodes::Entity::find()` selects them
/// (the entity's field order), which [`node_model_by_index`] reads; a test
/// holds the entity to it.
#[cfg(test)]
pub(crate) const NODE_COLUMNS: [&str; 50] = [
    "id",
    "ip",
    "port",
    "login",
    "password",
    "provider",
    "country",
    "state",
    "city",
    "zipcode",
    "comment",
    "status",
    "last_checked_at",
    "last_error",
    "consecutive_failures",
    "ping_ms",
    "speed_down_mbps",
    "speed_up_mbps",
    "pptp_version",
    "pptp_hostname",
    "pptp_vendor",
    "pptp_firmware",
    "socks_host",
    "socks_port",
    "socks_user",
    "socks_password",
    "service_wanted",
    "created_at",
    "updated_at",
    "geo_ip",
    "geo_country_code",
    "geo_country",
    "geo_region",
    "geo_city",
    "geo_postal",
    "geo_latitude",
    "geo_longitude",
    "geo_time_zone",
    "geo_source",
    "geo_at",
    "asn",
    "asn_org",
    "location_mismatch",
    "fraud_ip",
    "fraud_score",
    "fraud_risk",
    "fraud_provider",
    "fraud_at",
    "exit_ip",
    "service_kind",
];

/// A `nodes` row of `SELECT <all columns>` read by column position: the
/// derived decoder looks every column up by a name it formats for each row
/// and formats an error for each NULL, which made it a fifth of the time of
/// a large listing.
pub(crate) fn node_model_by_index(
    r: &sea_orm::QueryResult,
) -> Result<nodes::Model, sea_orm::DbErr> {
    Ok(nodes::Model {
        id: r.try_get_by_index(0)?,
        ip: r.try_get_by_index(1)?,
        port: r.try_get_by_index(2)?,
        login: r.try_get_by_index(3)?,
        password: r.try_get_by_index(4)?,
        provider: r.try_get_by_index(5)?,
        country: r.try_get_by_index(6)?,
        state: r.try_get_by_index(7)?,
        city: r.try_get_by_index(8)?,
        zipcode: r.try_get_by_index(9)?,
        comment: r.try_get_by_index(10)?,
        status: r.try_get_by_index(11)?,
        last_checked_at: r.try_get_by_index(12)?,
        last_error: r.try_get_by_index(13)?,
        consecutive_failures: r.try_get_by_index(14)?,
        ping_ms: r.try_get_by_index(15)?,
        speed_down_mbps: r.try_get_by_index(16)?,
        speed_up_mbps: r.try_get_by_index(17)?,
        pptp_version: r.try_get_by_index(18)?,
        pptp_hostname: r.try_get_by_index(19)?,
        pptp_vendor: r.try_get_by_index(20)?,
        pptp_firmware: r.try_get_by_index(21)?,
        socks_host: r.try_get_by_index(22)?,
        socks_port: r.try_get_by_index(23)?,
        socks_user: r.try_get_by_index(24)?,
        socks_password: r.try_get_by_index(25)?,
        service_wanted: r.try_get_by_index(26)?,
        created_at: r.try_get_by_index(27)?,
        updated_at: r.try_get_by_index(28)?,
        geo_ip: r.try_get_by_index(29)?,
        geo_country_code: r.try_get_by_index(30)?,
        geo_country: r.try_get_by_index(31)?,
        geo_region: r.try_get_by_index(32)?,
        geo_city: r.try_get_by_index(33)?,
        geo_postal: r.try_get_by_index(34)?,
        geo_latitude: r.try_get_by_index(35)?,
        geo_longitude: r.try_get_by_index(36)?,
        geo_time_zone: r.try_get_by_index(37)?,
        geo_source: r.try_get_by_index(38)?,
        geo_at: r.try_get_by_index(39)?,
        asn: r.try_get_by_index(40)?,
        asn_org: r.try_get_by_index(41)?,
        location_mismatch: r.try_get_by_index(42)?,
        fraud_ip: r.try_get_by_index(43)?,
        fraud_score: r.try_get_by_index(44)?,
        fraud_risk: r.try_get_by_index(45)?,
        fraud_provider: r.try_get_by_index(46)?,
        fraud_at: r.try_get_by_index(47)?,
        exit_ip: r.try_get_by_index(48)?,
        service_kind: r.try_get_by_index(49)?,
    })
}

pub(crate) fn node(m: nodes::Model, keys: &super::sealing::SecretKeys) -> Result<Node, StoreError> {
    let pptp = match (
        m.pptp_version,
        m.pptp_hostname,
        m.pptp_vendor,
        m.pptp_firmware,
    ) {
        (None, None, None, None) => None,
        (v, h, ve, f) => Some(PptpIdentity {
            protocol_version: v.unwrap_or(0) as u16,
            hostname: h.unwrap_or_default(),
            vendor: ve.unwrap_or_default(),
            firmware: f.unwrap_or(0) as u16,
        }),
    };
    let service = match (m.socks_host, m.socks_port, m.socks_user, m.socks_password) {
        (Some(host), Some(port), Some(username), Some(password)) => Some(ServiceEndpoint {
            host,
            port: u16::try_from(port).map_err(|_| corrupt("socks port", &port.to_string()))?,
            username,
            password: Secret::new(keys.open(super::SOCKS_PASSWORD_COLUMN, &password)?),
        }),
        _ => None,
    };
    Ok(Node {
        id: NodeId(m.id),
        ip: m.ip.parse().map_err(|_| corrupt("ip", &m.ip))?,
        port: u16::try_from(m.port).map_err(|_| corrupt("port", &m.port.to_string()))?,
        login: m.login,
        password: Secret::new(keys.open(super::PASSWORD_COLUMN, &m.password)?),
        meta: NodeMeta {
            provider: m.provider,
            country: m.country,
            state: m.state,
            city: m.city,
            zipcode: m.zipcode,
            comment: m.comment,
        },
        status: status(&m.status)?,
        last_checked_at: m.last_checked_at.map(from_ms),
        last_error: m.last_error,
        consecutive_failures: u32::try_from(m.consecutive_failures).unwrap_or(0),
        ping_ms: m.ping_ms,
        speed_down_mbps: m.speed_down_mbps,
        speed_up_mbps: m.speed_up_mbps,
        pptp,
        exit_ip: m.exit_ip.as_deref().and_then(|a| a.parse().ok()),
        service,
        service_wanted: m.service_wanted,
        service_kind: m
            .service_kind
            .parse()
            .map_err(|_| corrupt("service kind", &m.service_kind))?,
        enrichment: enrichment(
            &m.ip,
            GeoColumns {
                ip: m.geo_ip,
                facts: GeoFacts {
                    country_code: m.geo_country_code,
                    country: m.geo_country,
                    region: m.geo_region,
                    city: m.geo_city,
                    postal: m.geo_postal,
                    latitude: m.geo_latitude,
                    longitude: m.geo_longitude,
                    time_zone: m.geo_time_zone,
                    asn: m.asn.and_then(|a| u32::try_from(a).ok()),
                    org: m.asn_org,
                },
                source: m.geo_source,
                at: m.geo_at,
                mismatch: m.location_mismatch,
            },
            FraudColumns {
                ip: m.fraud_ip,
                score: m.fraud_score,
                risk: m.fraud_risk,
                provider: m.fraud_provider,
                at: m.fraud_at,
            },
        ),
        created_at: from_ms(m.created_at),
        updated_at: from_ms(m.updated_at),
    })
}

struct GeoColumns {
    ip: Option<String>,
    facts: GeoFacts,
    source: Option<String>,
    at: Option<i64>,
    mismatch: Option<bool>,
}

struct FraudColumns {
    ip: Option<String>,
    score: Option<i32>,
    risk: Option<String>,
    provider: Option<String>,
    at: Option<i64>,
}

/// The enrichment columns as domain values. A record whose time or source is
/// missing, or whose values do not parse, reads as absent (enrichment is
/// advisory: a damaged record must not make the node unreadable).
fn enrichment(node_ip: &str, g: GeoColumns, f: FraudColumns) -> Enrichment {
    let ip_or_node = |ip: Option<String>| ip.as_deref().unwrap_or(node_ip).parse().ok();
    let geo = match (g.source, g.at) {
        (Some(source), Some(at)) => ip_or_node(g.ip).map(|ip| GeoRecord {
            ip,
            facts: g.facts,
            source,
            at: from_ms(at),
            location_mismatch: g.mismatch,
        }),
        _ => None,
    };
    let fraud = match (f.score, f.risk, f.provider, f.at) {
        (Some(score), Some(risk), Some(provider), Some(at)) => {
            match (
                ip_or_node(f.ip),
                u8::try_from(score).ok(),
                risk.parse::<Risk>().ok(),
            ) {
                (Some(ip), Some(score), Some(risk)) => Some(FraudRecord {
                    ip,
                    score,
                    risk,
                    provider,
                    at: from_ms(at),
                }),
                _ => None,
            }
        }
        _ => None,
    };
    Enrichment { geo, fraud }
}

pub(crate) fn level(n: i16) -> Option<Level> {
    Level::ALL.into_iter().find(|l| i16::from(l.as_u8()) == n)
}

pub(crate) fn history(m: status_history::Model) -> Result<HistoryRow, StoreError> {
    let event = if m.event == "deleted" {
        HistoryEvent::Deleted
    } else {
        let kind = crate::domain::EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == m.event)
            .ok_or_else(|| corrupt("event", &m.event))?;
        HistoryEvent::Applied(kind)
    };
    Ok(HistoryRow {
        node: NodeId(m.node_id),
        from: status(&m.from_status)?,
        to: m.to_status.as_deref().map(status).transpose()?,
        event,
        reached: m.reached.and_then(level),
        failure: match m.failure {
            Some(json) => Some(serde_json::from_str(&json).map_err(|_| corrupt("failure", &json))?),
            None => None,
        },
        detail: m.detail,
        job: m.job_id.map(JobId),
        at: from_ms(m.at),
    })
}

pub(crate) fn job(m: jobs::Model) -> Result<Job, StoreError> {
    Ok(Job {
        id: JobId(m.id),
        kind: m.kind.parse().map_err(|_| corrupt("job kind", &m.kind))?,
        state: m
            .state
            .parse()
            .map_err(|_| corrupt("job state", &m.state))?,
        options: serde_json::from_str(&m.options).unwrap_or(serde_json::Value::Null),
        total: u64::try_from(m.total).unwrap_or(0),
        created_at: from_ms(m.created_at),
        finished_at: m.finished_at.map(from_ms),
        deadline: m.deadline_at.map(from_ms),
    })
}

pub(crate) fn item_view(m: job_items::Model) -> Result<ItemView, StoreError> {
    Ok(ItemView {
        item: ItemId(m.id),
        node: NodeId(m.node_id),
        state: m
            .state
            .parse()
            .map_err(|_| corrupt("item state", &m.state))?,
        status: m.result_status.as_deref().map(status).transpose()?,
        detail: m.detail,
        finished_at: m.finished_at.map(from_ms),
    })
}

#[cfg(test)]
mod tests {
    use sea_orm::Iterable;

    use super::*;

    #[test]
    fn positional_decoder_follows_the_entitys_column_order() {
        let selected: Vec<String> = nodes::Column::iter()
            .map(|c| sea_orm::IdenStatic::as_str(&c).to_owned())
            .collect();
        assert_eq!(selected, NODE_COLUMNS);
    }
}
