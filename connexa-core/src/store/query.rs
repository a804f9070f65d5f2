//! The filter type turned into SQL: one condition for list, count, delete,
//! export, jobs and services, so every "all matching" means the same rows.

use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{ColumnTrait, Condition, DbBackend, Order};

use super::convert::ms;
use super::entity::nodes::Column;
use crate::domain::{NodeFilter, SortKey, Status};

/// Escapes LIKE wildcards in user text (`%`, `_` and the escape character itself).
fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for ch in text.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

/// `lower(col) LIKE 'text%'`: the column starts with `text`, case-insensitively.
pub(crate) fn starts_with(col: Column, text: &str) -> sea_orm::sea_query::SimpleExpr {
    let mut p = like_pattern(text);
    p.remove(0);
    Expr::expr(Func::lower(Expr::col(col))).like(LikeExpr::new(p).escape('\\'))
}

fn contains(col: Column, text: &str) -> sea_orm::sea_query::SimpleExpr {
    Expr::expr(Func::lower(Expr::col(col))).like(LikeExpr::new(like_pattern(text)).escape('\\'))
}

/// Id lists longer than this are bound as ONE parameter (a JSON array on
/// SQLite, an array literal on PostgreSQL) instead of one parameter per id:
/// SQLite refuses more than 32,766 variables in a statement and PostgreSQL more
/// than 65,535, and a long `IN (?, ?, ...)` list is slow to prepare anyway.
const INLINE_IDS: usize = 64;

/// `id IN ids` with a bounded number of bind parameters on every backend.
fn id_in(ids: &[i64], backend: DbBackend) -> sea_orm::sea_query::SimpleExpr {
    if ids.len() <= INLINE_IDS {
        return Column::Id.is_in(ids.iter().copied());
    }
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    match backend {
        DbBackend::Postgres => Expr::cust_with_values(
            r#""nodes"."id" IN (SELECT unnest(CAST($1 AS BIGINT[])))"#,
            [format!("{{{list}}}")],
        ),
        _ => Expr::cust_with_values(
            r#""nodes"."id" IN (SELECT "value" FROM json_each(?))"#,
            [format!("[{list}]")],
        ),
    }
}

/// The SQL condition for a filter.
///
/// A text filter holding a control character matches no node: such text cannot
/// be stored in a node (import and edits refuse it), and SQLite would read a
/// NUL byte as the end of the LIKE pattern, which then matched every node.
/// Frontends refuse such filters first ([`NodeFilter::validate`]); this is the
/// store failing closed for callers that did not.
pub(crate) fn condition(f: &NodeFilter, backend: DbBackend) -> Condition {
    let mut c = Condition::all();
    if let Some(ids) = &f.ids {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        c = c.add(id_in(&ids, backend));
    }
    if !f.statuses.is_empty() {
        c = c.add(Column::Status.is_in(f.statuses.iter().map(|s| s.as_str())));
    }
    let texts = [
        (Column::Ip, &f.ip),
        (Column::Login, &f.login),
        (Column::Provider, &f.provider),
        (Column::Country, &f.country),
        (Column::State, &f.state),
        (Column::City, &f.city),
        (Column::Zipcode, &f.zipcode),
        (Column::Comment, &f.comment),
    ];
    for (col, value) in texts {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            if v.chars().any(char::is_control) {
                c = c.add(Expr::val(1).eq(0));
            } else {
                c = c.add(contains(col, v));
            }
        }
    }
    if let Some(v) = f.min_down_mbps {
        c = c.add(Column::SpeedDownMbps.gte(v));
    }
    if let Some(v) = f.max_down_mbps {
        c = c.add(Column::SpeedDownMbps.lte(v));
    }
    if let Some(t) = f.checked_before {
        c = c.add(Column::LastCheckedAt.lt(ms(t)));
    }
    if let Some(t) = f.checked_after {
        c = c.add(Column::LastCheckedAt.gte(ms(t)));
    }
    let serving = [Status::Online.as_str(), Status::Offline.as_str()];
    match f.has_service {
        Some(true) => c = c.add(Column::Status.is_in(serving)),
        Some(false) => c = c.add(Column::Status.is_not_in(serving)),
        None => {}
    }
    if let Some(wanted) = f.service_wanted {
        c = c.add(Column::ServiceWanted.eq(wanted));
    }
    if let Some(max) = f.fraud_max {
        c = c.add(Column::FraudScore.lte(i32::from(max)));
    }
    if !f.risks.is_empty() {
        c = c.add(Column::FraudRisk.is_in(f.risks.iter().map(|r| r.as_str())));
    }
    if let Some(m) = f.mismatch {
        c = c.add(Column::LocationMismatch.eq(m));
    }
    if let Some(asn) = f.asn {
        c = c.add(Column::Asn.eq(i64::from(asn)));
    }
    c
}

/// The ORDER BY columns for a sort key (the id tiebreak is added by the caller).
pub(crate) fn order(sort: SortKey, desc: bool) -> Vec<(Column, Order)> {
    let dir = if desc { Order::Desc } else { Order::Asc };
    let cols: &[Column] = match sort {
        SortKey::Ip => &[Column::Ip],
        SortKey::Status => &[Column::Status],
        SortKey::LastChecked => &[Column::LastCheckedAt],
        SortKey::SpeedDown => &[Column::SpeedDownMbps],
        SortKey::Ping => &[Column::PingMs],
        SortKey::Location => &[Column::Country, Column::State, Column::City],
        _ => &[],
    };
    cols.iter()
        .map(|c| (*c, dir.clone()))
        .chain(std::iter::once((Column::Id, dir.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn wildcards_in_user_text_are_literal() {
        assert_eq!(like_pattern("10%_a\\"), "%10\\%\\_a\\\\%");
        assert_eq!(like_pattern("TeXaS"), "%texas%");
    }
}
