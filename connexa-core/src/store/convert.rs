//! Rows <-> domain values.

use chrono::{DateTime, TimeZone, Utc};

use super::entity::{job_items, jobs, nodes, status_history};
use crate::domain::{Level, Node, NodeId, NodeMeta, PptpIdentity, Secret, ServiceEndpoint, Status};
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

pub(crate) fn node(m: nodes::Model) -> Result<Node, StoreError> {
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
            password: Secret::new(password),
        }),
        _ => None,
    };
    Ok(Node {
        id: NodeId(m.id),
        ip: m.ip.parse().map_err(|_| corrupt("ip", &m.ip))?,
        port: u16::try_from(m.port).map_err(|_| corrupt("port", &m.port.to_string()))?,
        login: m.login,
        password: Secret::new(m.password),
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
        service,
        service_wanted: m.service_wanted,
        created_at: from_ms(m.created_at),
        updated_at: from_ms(m.updated_at),
    })
}

pub(crate) fn level(n: i16) -> Option<Level> {
    Level::ALL.into_iter().find(|l| i16::from(l.as_u8()) == n)
}

pub(crate) fn history(m: status_history::Model) -> Result<HistoryRow, StoreError> {
    let event = if m.event == "deleted" {
        HistoryEvent::Deleted
    } else {
        use crate::domain::EventKind::*;
        let kind = [
            Tested,
            ServiceStarted,
            ServiceStartFailed,
            ServiceStopped,
            HealthOk,
            HealthFailed,
        ]
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
