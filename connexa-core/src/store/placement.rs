//! Service placement (`service_placements`, migration m0011): which live
//! services worker runs each wanted service.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::convert::{from_ms, ms};
use super::db_err;
use super::entity::{nodes, service_placements as sp, workers};
use crate::domain::{NodeId, Status};
use crate::ports::{ServicePlacement, StoreError, WorkerRole};

/// The key of the PostgreSQL advisory lock that serialises placements
/// ("cxplace" in ASCII).
const PLACEMENT_LOCK: i64 = 0x63_78_70_6c_61_63_65;

/// A live services worker: its capacity (`None`: no limit) and labels.
#[derive(Debug, Clone, Default)]
struct Live {
    cap: Option<u64>,
    labels: HashSet<String>,
}

/// Live services workers at `at`, by name.
async fn live_service_workers<C: ConnectionTrait>(
    conn: &C,
    at: DateTime<Utc>,
) -> Result<BTreeMap<String, Live>, StoreError> {
    let rows = workers::Entity::find()
        .filter(workers::Column::ExpiresAt.gt(ms(at)))
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .filter(|w| {
            w.roles
                .split(',')
                .any(|r| r == WorkerRole::Services.as_str())
        })
        .map(|w| {
            let live = Live {
                cap: w.max_services.map(|n| u64::try_from(n).unwrap_or(0)),
                labels: w
                    .labels
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            };
            (w.name, live)
        })
        .collect())
}

/// The wanted services (wanted, verified status), by id.
async fn wanted<C: ConnectionTrait>(conn: &C) -> Result<Vec<i64>, StoreError> {
    let verified: Vec<&str> = Status::VERIFIED.iter().map(|s| s.as_str()).collect();
    nodes::Entity::find()
        .select_only()
        .column(nodes::Column::Id)
        .filter(nodes::Column::ServiceWanted.eq(true))
        .filter(nodes::Column::Status.is_in(verified))
        .order_by_asc(nodes::Column::Id)
        .into_tuple()
        .all(conn)
        .await
        .map_err(db_err)
}

/// Where each wanted service goes: `rows` are the current placements, `live`
/// the live services workers with their capacity. Returns the rows to write
/// (node, worker, pinned) — only those that change.
fn plan(
    wanted: &[i64],
    rows: &HashMap<i64, sp::Model>,
    live: &BTreeMap<String, Live>,
) -> Vec<(i64, Option<String>)> {
    let mut load: BTreeMap<&str, u64> = live.keys().map(|w| (w.as_str(), 0)).collect();
    for id in wanted {
        if let Some(n) = rows
            .get(id)
            .and_then(|r| r.worker.as_deref())
            .and_then(|w| load.get_mut(w))
        {
            *n += 1;
        }
    }
    let room = |load: &BTreeMap<&str, u64>, w: &str| {
        live.get(w).is_some_and(|l| {
            l.cap
                .is_none_or(|cap| load.get(w).copied().unwrap_or(0) < cap)
        })
    };
    // A worker fit for a service with `label`: alive, with that label.
    let fits = |w: &str, label: Option<&str>| {
        live.get(w)
            .is_some_and(|l| label.is_none_or(|x| l.labels.contains(x)))
    };
    let mut changes = Vec::new();
    for id in wanted {
        let row = rows.get(id);
        let current = row.and_then(|r| r.worker.clone());
        let pinned = row.and_then(|r| r.pinned.clone());
        let label = row.and_then(|r| r.label.as_deref());
        let current_live = current.as_deref().is_some_and(|w| live.contains_key(w));
        let current_fits = current.as_deref().is_some_and(|w| fits(w, label));
        let target: Option<String> = match &pinned {
            // Pinned: only there, and only while it is alive (else it waits).
            Some(p) if current.as_deref() == Some(p.as_str()) && current_live => continue,
            Some(p) if room(&load, p) => Some(p.clone()),
            Some(_) if current_live => continue,
            Some(_) => None,
            None if current_fits => continue,
            None => load
                .iter()
                .filter(|(w, _)| room(&load, w) && fits(w, label))
                .min_by_key(|(w, n)| (**n, **w))
                .map(|(w, _)| (*w).to_owned()),
        };
        if target == current {
            continue;
        }
        if let Some(n) = current.as_deref().and_then(|w| load.get_mut(w)) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = target.as_deref().and_then(|w| load.get_mut(w)) {
            *n += 1;
        }
        changes.push((*id, target));
    }
    changes
}

pub(crate) async fn place<C: ConnectionTrait>(
    conn: &C,
    worker: &str,
    at: DateTime<Utc>,
) -> Result<Vec<NodeId>, StoreError> {
    if conn.get_database_backend() == DbBackend::Postgres {
        // One placement at a time across every process: each one sees the
        // load the previous one left.
        conn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({PLACEMENT_LOCK})"))
            .await
            .map_err(db_err)?;
    }
    let live = live_service_workers(conn, at).await?;
    let wanted = wanted(conn).await?;
    let wanted_set: HashSet<i64> = wanted.iter().copied().collect();
    let rows: HashMap<i64, sp::Model> = sp::Entity::find()
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|r| (r.node_id, r))
        .collect();
    // Services no longer wanted lose their placement (a pin stays).
    let (gone_pinned, gone): (Vec<&sp::Model>, Vec<&sp::Model>) = rows
        .values()
        .filter(|r| !wanted_set.contains(&r.node_id))
        .partition(|r| r.pinned.is_some());
    for chunk in gone
        .iter()
        .map(|r| r.node_id)
        .collect::<Vec<_>>()
        .chunks(10_000)
    {
        sp::Entity::delete_many()
            .filter(sp::Column::NodeId.is_in(chunk.iter().copied()))
            .exec(conn)
            .await
            .map_err(db_err)?;
    }
    let unplace: Vec<i64> = gone_pinned
        .iter()
        .filter(|r| r.worker.is_some())
        .map(|r| r.node_id)
        .collect();
    for chunk in unplace.chunks(10_000) {
        sp::Entity::update_many()
            .col_expr(
                sp::Column::Worker,
                sea_orm::sea_query::Expr::value(Option::<String>::None),
            )
            .col_expr(
                sp::Column::PlacedAt,
                sea_orm::sea_query::Expr::value(Option::<i64>::None),
            )
            .filter(sp::Column::NodeId.is_in(chunk.iter().copied()))
            .exec(conn)
            .await
            .map_err(db_err)?;
    }
    let changes = plan(&wanted, &rows, &live);
    for (id, target) in &changes {
        let placed_at = target.as_ref().map(|_| ms(at));
        sp::Entity::insert(sp::ActiveModel {
            node_id: Set(*id),
            worker: Set(target.clone()),
            pinned: Set(rows.get(id).and_then(|r| r.pinned.clone())),
            label: Set(rows.get(id).and_then(|r| r.label.clone())),
            placed_at: Set(placed_at),
        })
        .on_conflict(
            OnConflict::column(sp::Column::NodeId)
                .update_columns([sp::Column::Worker, sp::Column::PlacedAt])
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await
        .map_err(db_err)?;
        match target {
            Some(w) => tracing::info!(node = id, worker = %w, "service placed"),
            None => tracing::info!(
                node = id,
                "service unplaced: no live services worker can take it"
            ),
        }
    }
    let changed: HashMap<i64, Option<String>> = changes.into_iter().collect();
    Ok(wanted
        .into_iter()
        .filter(|id| {
            let w = match changed.get(id) {
                Some(w) => w.as_deref(),
                None => rows.get(id).and_then(|r| r.worker.as_deref()),
            };
            w == Some(worker)
        })
        .map(NodeId)
        .collect())
}

pub(crate) async fn pin<C: ConnectionTrait>(
    conn: &C,
    nodes: &[NodeId],
    worker: Option<String>,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for id in nodes {
        let old = sp::Entity::find_by_id(id.0)
            .one(conn)
            .await
            .map_err(db_err)?;
        if old.as_ref().and_then(|r| r.pinned.as_ref()) == worker.as_ref() {
            continue;
        }
        sp::Entity::insert(sp::ActiveModel {
            node_id: Set(id.0),
            worker: Set(old.as_ref().and_then(|r| r.worker.clone())),
            pinned: Set(worker.clone()),
            label: Set(old.as_ref().and_then(|r| r.label.clone())),
            placed_at: Set(old.as_ref().and_then(|r| r.placed_at)),
        })
        .on_conflict(
            OnConflict::column(sp::Column::NodeId)
                .update_column(sp::Column::Pinned)
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await
        .map_err(db_err)?;
        n += 1;
    }
    Ok(n)
}

pub(crate) async fn label<C: ConnectionTrait>(
    conn: &C,
    nodes: &[NodeId],
    label: Option<String>,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for id in nodes {
        let old = sp::Entity::find_by_id(id.0)
            .one(conn)
            .await
            .map_err(db_err)?;
        if old.as_ref().and_then(|r| r.label.as_ref()) == label.as_ref() {
            continue;
        }
        sp::Entity::insert(sp::ActiveModel {
            node_id: Set(id.0),
            worker: Set(old.as_ref().and_then(|r| r.worker.clone())),
            pinned: Set(old.as_ref().and_then(|r| r.pinned.clone())),
            label: Set(label.clone()),
            placed_at: Set(old.as_ref().and_then(|r| r.placed_at)),
        })
        .on_conflict(
            OnConflict::column(sp::Column::NodeId)
                .update_column(sp::Column::Label)
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await
        .map_err(db_err)?;
        n += 1;
    }
    Ok(n)
}

pub(crate) async fn list<C: ConnectionTrait>(
    conn: &C,
) -> Result<Vec<ServicePlacement>, StoreError> {
    Ok(sp::Entity::find()
        .order_by_asc(sp::Column::NodeId)
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|r| ServicePlacement {
            node: NodeId(r.node_id),
            worker: r.worker,
            pinned: r.pinned,
            label: r.label,
            placed_at: r.placed_at.map(from_ms),
        })
        .collect())
}

/// Wanted services placed on each worker.
pub(crate) async fn held<C: ConnectionTrait>(conn: &C) -> Result<HashMap<String, u64>, StoreError> {
    let wanted: HashSet<i64> = wanted(conn).await?.into_iter().collect();
    let mut by: HashMap<String, u64> = HashMap::new();
    for r in sp::Entity::find().all(conn).await.map_err(db_err)? {
        if let (Some(w), true) = (r.worker, wanted.contains(&r.node_id)) {
            *by.entry(w).or_insert(0) += 1;
        }
    }
    Ok(by)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, worker: Option<&str>, pinned: Option<&str>) -> (i64, sp::Model) {
        (
            id,
            sp::Model {
                node_id: id,
                worker: worker.map(str::to_owned),
                pinned: pinned.map(str::to_owned),
                label: None,
                placed_at: None,
            },
        )
    }

    fn live(ws: &[(&str, Option<u64>)]) -> BTreeMap<String, Live> {
        ws.iter()
            .map(|(w, c)| {
                let labels = if *w == "b" {
                    ["eu".to_owned()].into()
                } else {
                    HashSet::new()
                };
                ((*w).to_owned(), Live { cap: *c, labels })
            })
            .collect()
    }

    #[test]
    fn a_service_with_a_label_goes_to_a_worker_with_that_label() {
        let mut rows: HashMap<i64, sp::Model> = [row(1, Some("a"), None), row(2, None, None)]
            .into_iter()
            .collect();
        for r in rows.values_mut() {
            r.label = Some("eu".into());
        }
        // Only b has "eu": 1 moves from a to b, 2 goes to b although a is emptier.
        let changes = plan(&[1, 2], &rows, &live(&[("a", None), ("b", None)]));
        assert_eq!(changes, vec![(1, Some("b".into())), (2, Some("b".into()))]);
        // No live worker with the label: unplaced.
        let changes = plan(&[1, 2], &rows, &live(&[("a", None)]));
        assert_eq!(changes, vec![(1, None)]);
    }

    #[test]
    fn new_services_go_to_the_least_loaded_worker_with_room() {
        let rows: HashMap<i64, sp::Model> = [row(1, Some("a"), None)].into_iter().collect();
        let changes = plan(&[1, 2, 3, 4], &rows, &live(&[("a", None), ("b", None)]));
        // 1 stays on a; 2 to b (a has one), 3 to a (tie: by name), 4 to b.
        assert_eq!(
            changes,
            vec![
                (2, Some("b".into())),
                (3, Some("a".into())),
                (4, Some("b".into()))
            ]
        );
        // Capacity: b takes at most one.
        let changes = plan(&[1, 2, 3], &rows, &live(&[("a", None), ("b", Some(1))]));
        assert_eq!(changes, vec![(2, Some("b".into())), (3, Some("a".into()))]);
        // Nobody has room: unplaced (no change from no row).
        let changes = plan(&[2], &HashMap::new(), &live(&[("a", Some(0))]));
        assert_eq!(changes, vec![]);
    }

    #[test]
    fn services_of_a_dead_worker_move_and_pins_are_kept() {
        let rows: HashMap<i64, sp::Model> = [
            row(1, Some("dead"), None),
            row(2, Some("dead"), Some("dead")),
            row(3, Some("a"), Some("b")),
            row(4, Some("b"), None),
        ]
        .into_iter()
        .collect();
        let changes = plan(&[1, 2, 3, 4], &rows, &live(&[("a", None), ("b", None)]));
        // 1 moves to the least loaded (a: 1 with node 3, b: 1 -> a by name);
        // 2 waits for its pinned worker; 3 goes to its pinned worker.
        assert_eq!(
            changes,
            vec![(1, Some("a".into())), (2, None), (3, Some("b".into()))]
        );
    }
}
