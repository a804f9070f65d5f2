//! Enrichment writes: their own UPDATE of the enrichment columns only. They
//! never read or write `status`, the evidence columns or `status_history`, so
//! no enrichment result can change what the transition table decided.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};

use super::convert::ms;
use super::db_err;
use super::entity::{enrichment_cache, nodes};
use crate::domain::{EnrichmentUpdate, NodeId};
use crate::ports::StoreError;

/// Writes one enrichment result; `false` when the node does not exist.
pub(crate) async fn write<C: ConnectionTrait>(
    conn: &C,
    node: NodeId,
    update: &EnrichmentUpdate,
) -> Result<bool, StoreError> {
    use nodes::Column as C;
    let q = nodes::Entity::update_many();
    let q = match update {
        EnrichmentUpdate::Geo(g) => {
            let f = &g.facts;
            q.col_expr(C::GeoIp, Expr::value(g.ip.to_string()))
                .col_expr(C::GeoCountryCode, Expr::value(f.country_code.clone()))
                .col_expr(C::GeoCountry, Expr::value(f.country.clone()))
                .col_expr(C::GeoRegion, Expr::value(f.region.clone()))
                .col_expr(C::GeoCity, Expr::value(f.city.clone()))
                .col_expr(C::GeoPostal, Expr::value(f.postal.clone()))
                .col_expr(C::GeoLatitude, Expr::value(f.latitude))
                .col_expr(C::GeoLongitude, Expr::value(f.longitude))
                .col_expr(C::GeoTimeZone, Expr::value(f.time_zone.clone()))
                .col_expr(C::GeoSource, Expr::value(g.source.clone()))
                .col_expr(C::GeoAt, Expr::value(ms(g.at)))
                .col_expr(C::Asn, Expr::value(f.asn.map(i64::from)))
                .col_expr(C::AsnOrg, Expr::value(f.org.clone()))
                .col_expr(C::LocationMismatch, Expr::value(g.location_mismatch))
        }
        EnrichmentUpdate::Fraud(r) => q
            .col_expr(C::FraudIp, Expr::value(r.ip.to_string()))
            .col_expr(C::FraudScore, Expr::value(i32::from(r.score)))
            .col_expr(C::FraudRisk, Expr::value(r.risk.as_str()))
            .col_expr(C::FraudProvider, Expr::value(r.provider.clone()))
            .col_expr(C::FraudAt, Expr::value(ms(r.at))),
    };
    let res = q
        .filter(C::Id.eq(node.0))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(res.rows_affected > 0)
}

pub(crate) async fn cache_get<C: ConnectionTrait>(
    conn: &C,
    provider: &str,
    key: &str,
    since: DateTime<Utc>,
) -> Result<Option<String>, StoreError> {
    Ok(enrichment_cache::Entity::find()
        .filter(enrichment_cache::Column::Provider.eq(provider))
        .filter(enrichment_cache::Column::Key.eq(key))
        .filter(enrichment_cache::Column::FetchedAt.gte(ms(since)))
        .one(conn)
        .await
        .map_err(db_err)?
        .map(|m| m.value))
}

pub(crate) async fn cache_put<C: ConnectionTrait>(
    conn: &C,
    provider: &str,
    key: &str,
    value: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let row = enrichment_cache::ActiveModel {
        provider: Set(provider.to_owned()),
        key: Set(key.to_owned()),
        value: Set(value.to_owned()),
        fetched_at: Set(ms(at)),
    };
    enrichment_cache::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([
                enrichment_cache::Column::Provider,
                enrichment_cache::Column::Key,
            ])
            .update_columns([
                enrichment_cache::Column::Value,
                enrichment_cache::Column::FetchedAt,
            ])
            .to_owned(),
        )
        .exec_without_returning(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}
