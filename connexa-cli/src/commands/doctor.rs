//! `connexa doctor`: checks what this host and configuration can do, one
//! line each with the fix (connexa-core's `doctor`).

use clap::Args;
use connexa_core::doctor::{self, CheckStatus};

use crate::cli::Ctx;
use crate::exit::Exit;
use crate::output::{Cell, Color, OutputFormat, Table};

/// Check the database, capabilities, the speed target, ports, file modes and the clock.
#[derive(Debug, Args)]
#[command(after_help = "\
Each check prints one line: ok, warn, fail or skip, what was found and, for
warn and fail, the fix. Nothing is changed: the database is opened read-only
(never created or migrated); the speed target gets one TCP connection.

Required checks: database (reachable, schema current), raw-gre (CAP_NET_RAW:
auth and speed tests, services), speed-target (accepts connections from this
host), service-ports (some free), file-modes (database and keys readable by
their owner only), clock. Optional: icmp, cap-net-admin, openvpn.

Exit codes: 0 every required check passed, 1 a required check failed.

Examples:
  connexa doctor
  connexa --db postgres://connexa@db/connexa doctor --output json")]
pub struct DoctorArgs {}

/// Runs the checks.
pub async fn exec(ctx: &Ctx, _args: DoctorArgs) -> anyhow::Result<Exit> {
    let report = doctor::run(&ctx.effective_config()).await;
    match ctx.out.format {
        OutputFormat::Json => ctx.out.json(&serde_json::json!({
            "ok": report.ok(),
            "checks": report.checks,
        }))?,
        OutputFormat::Csv => csv(ctx, &report)?,
        OutputFormat::Human => human(ctx, &report)?,
    }
    Ok(if report.ok() { Exit::Ok } else { Exit::Failure })
}

fn csv(ctx: &Ctx, report: &doctor::Report) -> anyhow::Result<()> {
    let mut t = Table::new(&["result", "check", "required", "detail", "fix"]);
    for c in &report.checks {
        t.row(vec![
            Cell::text(word(c)),
            Cell::text(c.name),
            Cell::text(c.required.to_string()),
            Cell::text(c.detail.clone()),
            Cell::text(c.fix.clone().unwrap_or_default()),
        ]);
    }
    ctx.out.table(&t)
}

fn human(ctx: &Ctx, report: &doctor::Report) -> anyhow::Result<()> {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &report.checks {
        let color = match c.status {
            CheckStatus::Ok => Color::Green,
            CheckStatus::Warn => Color::Yellow,
            CheckStatus::Fail if c.required => Color::Red,
            CheckStatus::Fail => Color::Yellow,
            CheckStatus::Skip => Color::Dim,
        };
        let w = word(c);
        let w = if ctx.out.color {
            format!("\x1b[{}m{w:<4}\x1b[0m", color.code())
        } else {
            format!("{w:<4}")
        };
        match &c.fix {
            Some(fix) if c.status != CheckStatus::Ok => ctx.out.line(format_args!(
                "{w}  {:<width$}  {} — fix: {fix}",
                c.name, c.detail
            ))?,
            _ => ctx
                .out
                .line(format_args!("{w}  {:<width$}  {}", c.name, c.detail))?,
        }
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| c.required && c.status == CheckStatus::Fail)
        .count();
    if failed == 0 {
        ctx.out.line("every required check passed")
    } else {
        ctx.out.line(format_args!(
            "{failed} required check{} failed",
            if failed == 1 { "" } else { "s" }
        ))
    }
}

/// The one word of a check's outcome (a failed required check in capitals).
fn word(c: &doctor::Check) -> &'static str {
    match c.status {
        CheckStatus::Ok => "ok",
        CheckStatus::Warn => "warn",
        CheckStatus::Fail if c.required => "FAIL",
        CheckStatus::Fail => "fail",
        CheckStatus::Skip => "skip",
    }
}
