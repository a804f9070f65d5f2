//! The work of `geo` and `fraud` job items: look the node's address up and
//! hand the result to the committer as enrichment, never as an event.

use std::time::Duration;

use chrono::Utc;

use super::Inner;
use super::runner::Finish;
use crate::domain::{EnrichmentUpdate, FraudRecord, GeoRecord, Node};
use crate::ports::{ItemState, LookupError};

/// Longest wait for a provider that asked us to slow down, per attempt (the
/// item's own budget bounds the total).
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Wait when a rate-limited provider did not say how long.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);

/// Runs `f` again while the source is rate limited, waiting as asked; the
/// per-node budget and the job's deadline end the item if it never answers.
async fn patiently<T, F, Fut>(mut f: F) -> Result<T, LookupError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LookupError>>,
{
    loop {
        match f().await {
            Err(LookupError::RateLimited { retry_after, .. }) => {
                let wait = retry_after.unwrap_or(DEFAULT_BACKOFF).min(MAX_BACKOFF);
                tracing::debug!(?wait, "rate limited: waiting");
                tokio::time::sleep(wait).await;
            }
            r => return r,
        }
    }
}

fn failed(e: LookupError) -> Finish {
    let mut f = Finish::new(ItemState::Failed, None, Some(e.to_string()));
    if let LookupError::Unavailable(why) = e {
        f.fatal = Some(why);
    }
    f
}

pub(super) async fn geo(inner: &Inner, node: &Node) -> Finish {
    let Some(lookup) = inner.geo() else {
        return failed(LookupError::Unavailable(
            "no GEO source is configured (set [geo] city_db or asn_db in the config file)".into(),
        ));
    };
    let ip = crate::geo::enrichment_address(node);
    match patiently(|| lookup.lookup(ip)).await {
        Ok(facts) => {
            let detail = crate::geo::summary(&facts);
            let record = GeoRecord {
                ip,
                location_mismatch: crate::geo::location_mismatch(&node.meta, &facts),
                facts,
                source: lookup.answered_by(ip).unwrap_or_else(|| lookup.source()),
                at: Utc::now(),
            };
            let mut f = Finish::new(ItemState::Ok, None, Some(detail));
            f.enrichment = Some(EnrichmentUpdate::Geo(record));
            f
        }
        Err(e) => failed(e),
    }
}

pub(super) async fn fraud(inner: &Inner, node: &Node) -> Finish {
    let Some(scorer) = inner.fraud() else {
        return failed(LookupError::Unavailable(
            "no fraud-score provider is configured (see [fraud] in the config file)".into(),
        ));
    };
    let ip = crate::geo::enrichment_address(node);
    match patiently(|| scorer.score(ip)).await {
        Ok(s) => {
            let record = FraudRecord {
                ip,
                score: s.score,
                risk: s.risk,
                provider: scorer.answered_by(ip).unwrap_or_else(|| scorer.source()),
                at: Utc::now(),
            };
            let mut f = Finish::new(
                ItemState::Ok,
                None,
                Some(format!("score {} ({})", s.score, s.risk)),
            );
            f.enrichment = Some(EnrichmentUpdate::Fraud(record));
            f
        }
        Err(e) => failed(e),
    }
}

/// `[geo] after_light`: one lookup of a node that just proved a PPTP server,
/// bounded to 5 s and never retried (a rate-limited or failing source skips
/// it: the test's result does not wait for enrichment, and nothing is
/// recorded then).
pub(super) async fn geo_after_test(inner: &Inner, node: &Node) -> Option<EnrichmentUpdate> {
    let lookup = inner.geo()?;
    let ip = crate::geo::enrichment_address(node);
    match tokio::time::timeout(Duration::from_secs(5), lookup.lookup(ip)).await {
        Ok(Ok(facts)) => Some(EnrichmentUpdate::Geo(GeoRecord {
            ip,
            location_mismatch: crate::geo::location_mismatch(&node.meta, &facts),
            facts,
            source: lookup.answered_by(ip).unwrap_or_else(|| lookup.source()),
            at: Utc::now(),
        })),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %ip, "GEO after the test: skipped");
            None
        }
        Err(_) => {
            tracing::debug!(%ip, "GEO after the test: no answer within 5 s, skipped");
            None
        }
    }
}
