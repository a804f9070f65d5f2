//! `connexa audit`: the audit trail, newest first.

use clap::Args;
use connexa_core::store::audit::AuditQuery;

use crate::cli::Ctx;
use crate::exit::{Exit, WithCode as _};
use crate::output::{Cell, OutputFormat, Table, escape};

/// Who changed what, when, from where.
#[derive(Debug, Args)]
#[command(after_help = "\
Every operator action is one row, written in the same transaction as the
change: imports and nodes added (`import`), `node_edit`, `delete`,
`service_want` / `service_unwant` / `service_restart`, `job_create`,
`job_cancel`, `secrets_rotate`, `token_create`, `token_revoke`. The CLI
records them under the OS user (`os:NAME`), the HTTP API under the token
(`token:NAME`) with the client address. Passwords never appear.

Examples:
  connexa audit
  connexa audit --action delete --limit 500 --output json
  connexa audit --actor token:ci --before 1200")]
pub struct AuditArgs {
    /// How many rows, newest first.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Only rows older than this id (the last ID of the previous page).
    #[arg(long, value_name = "ID")]
    pub before: Option<i64>,
    /// Only this actor, exactly (`os:root`, `token:ci`).
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
    /// Only this action, exactly (`delete`, `import`, ...).
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
}

/// Prints the newest rows.
pub async fn exec(ctx: &Ctx, a: AuditArgs) -> anyhow::Result<Exit> {
    let q = AuditQuery {
        limit: Some(a.limit),
        before: a.before,
        actor: a.actor,
        action: a.action,
    };
    q.check().code(Exit::Usage)?;
    let store = ctx.store().await?;
    let rows = store.audit_query(&q).await.code(Exit::Config)?;
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&rows)?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&["ID", "AT", "ACTOR", "FROM", "ACTION", "COUNT", "TARGET"]);
    for r in &rows {
        t.row(vec![
            Cell::num(r.id),
            Cell::text(r.at.format("%Y-%m-%d %H:%M:%S").to_string()),
            Cell::text(escape(&r.actor).into_owned()),
            Cell::opt(r.source.as_deref().map(|s| escape(s).into_owned())),
            Cell::text(r.action.clone()),
            Cell::opt(r.count),
            Cell::opt(r.target.as_deref().map(|s| escape(s).into_owned())),
        ]);
    }
    ctx.out.table(&t)?;
    Ok(Exit::Ok)
}
