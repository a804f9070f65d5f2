//! `connexa import FILE...`.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use connexa_core::domain::{NodeFilter, NodeId};
use connexa_core::engine::JobOptions;
use connexa_core::import::{ImportOptions, OnConflict, import_into};
use connexa_core::ops::ImportSummary;
use connexa_core::ports::JobKind;

use crate::cli::Ctx;
use crate::exit::{Exit, WithCode, fail};
use crate::output::{Cell, Color, OutputFormat, Table};
use crate::progress::follow;
use crate::wiring;

/// Import node lists into the database.
#[derive(Debug, Args)]
#[command(after_help = "\
Every known list format is detected per block and may be mixed in one file
(docs/import-export.md). Nodes are added as not_tested; importing never changes
a stored node's status. Re-importing the same list adds nothing.

Examples:
  connexa import fleet.txt more.csv
  cat list.txt | connexa import -
  connexa import --on-conflict replace new-passwords.txt
  connexa import fleet.txt --test light                   # and light-test the added nodes
  connexa import fleet.txt --output json | jq '.[0].added | length'")]
pub struct ImportArgs {
    /// Node list files; `-` reads stdin.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// A row with the ip, port and login of a stored node but another password:
    /// keep the stored node (skip) or replace it (replace).
    #[arg(long, value_enum, default_value_t = ConflictArg::Skip)]
    pub on_conflict: ConflictArg,
    /// Then test exactly the nodes this import added, with live progress
    /// (`--output json` prints {"import": [...], "job": {...}}).
    #[arg(long, value_enum, value_name = "KIND")]
    pub test: Option<TestArg>,
}

/// `--on-conflict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConflictArg {
    /// Keep the stored node and report the row.
    Skip,
    /// Delete the stored node (kept in its history) and add the row.
    Replace,
}

/// `--test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TestArg {
    /// The PPTP control-channel handshake.
    Light,
    /// Light, then login, then speed.
    Pipeline,
}

/// Imports each file in turn and prints one report per file.
pub async fn exec(ctx: &Ctx, args: ImportArgs) -> anyhow::Result<Exit> {
    let options = ImportOptions {
        on_conflict: match args.on_conflict {
            ConflictArg::Skip => OnConflict::Skip,
            ConflictArg::Replace => OnConflict::Replace,
        },
        ..ImportOptions::default()
    };
    // Open every input first: a missing file imports nothing.
    let inputs = open_inputs(ctx, &args.files)?;
    let store = ctx.store().await?;
    let mut summaries = Vec::new();
    for (name, reader) in inputs {
        let report = import_into(store.clone(), reader, options).await;
        tracing::info!(source = %name, "{}", report.to_string().lines().next().unwrap_or(""));
        summaries.push(ImportSummary::new(name, &report));
        if report.failure.is_some() {
            break;
        }
    }
    let json = ctx.out.format == OutputFormat::Json;
    if !json || args.test.is_none() {
        print(ctx, &summaries)?;
    }
    if let Some(s) = summaries.iter().find(|s| s.failure.is_some()) {
        if json && args.test.is_some() {
            ctx.out
                .json(&serde_json::json!({ "import": summaries, "job": null }))?;
        }
        return Err(fail(
            Exit::Config,
            format_args!(
                "import of {} stopped: {}; {} parsed rows were not inserted",
                s.source,
                s.failure.as_deref().unwrap_or(""),
                s.not_inserted.len()
            ),
        ));
    }
    let import_exit = if summaries.iter().any(|s| !s.errors.is_empty()) {
        Exit::Partial
    } else {
        Exit::Ok
    };
    match args.test {
        None => Ok(import_exit),
        Some(test) => test_added(ctx, &summaries, test, import_exit).await,
    }
}

/// The files (`-`: stdin, once), each opened: a missing file is a usage error.
fn open_inputs(
    ctx: &Ctx,
    files: &[PathBuf],
) -> anyhow::Result<Vec<(String, Box<dyn Read + Send>)>> {
    let mut inputs: Vec<(String, Box<dyn Read + Send>)> = Vec::new();
    let mut stdin_used = false;
    for path in files {
        if path.as_os_str() == "-" {
            if stdin_used {
                return Err(fail(Exit::Usage, "`-` (stdin) given twice"));
            }
            stdin_used = true;
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                ctx.out
                    .note("reading the node list from the terminal; end it with Ctrl-D");
            }
            inputs.push(("-".into(), Box::new(std::io::stdin())));
        } else {
            let file = File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))
                .code(Exit::Usage)?;
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                return Err(fail(
                    Exit::Usage,
                    format_args!("cannot read {}: is a directory", path.display()),
                ));
            }
            inputs.push((path.display().to_string(), Box::new(file)));
        }
    }
    Ok(inputs)
}

/// `--test`: tests exactly the nodes this import added (replacements
/// included) with live progress.
async fn test_added(
    ctx: &Ctx,
    summaries: &[ImportSummary],
    test: TestArg,
    import_exit: Exit,
) -> anyhow::Result<Exit> {
    let json = ctx.out.format == OutputFormat::Json;
    let ids: Vec<NodeId> = summaries
        .iter()
        .flat_map(|s| {
            s.added
                .iter()
                .map(|a| a.id)
                .chain(s.replaced.iter().map(|r| r.new))
        })
        .collect();
    if ids.is_empty() {
        ctx.out.note("no nodes were added: nothing to test");
        if json {
            ctx.out
                .json(&serde_json::json!({ "import": summaries, "job": null }))?;
        }
        return Ok(import_exit);
    }
    let kind = match test {
        TestArg::Light => JobKind::Light,
        TestArg::Pipeline => JobKind::Pipeline,
    };
    let prober = wiring::prober(ctx);
    if kind == JobKind::Pipeline
        && let Err(e) = prober.gre_socket().await
    {
        ctx.out.note(format_args!(
            "note: the pipeline stops after the light stage: {e}"
        ));
    }
    let engine = wiring::engine_with(ctx, Arc::new(prober)).await?;
    let job = engine
        .start_job(kind, NodeFilter::ids(ids), JobOptions::default())
        .await?;
    let followed = follow(ctx, &engine, job).await?;
    if json {
        ctx.out
            .json(&serde_json::json!({ "import": summaries, "job": followed.json() }))?;
    } else {
        ctx.out.line(followed.line())?;
    }
    Ok(match (followed.exit(), import_exit) {
        (Exit::Interrupted, _) => Exit::Interrupted,
        (Exit::Ok, e) => e,
        (e, _) => e,
    })
}

fn print(ctx: &Ctx, summaries: &[ImportSummary]) -> anyhow::Result<()> {
    if ctx.out.format == OutputFormat::Json {
        return ctx.out.json(&summaries);
    }
    let mut t = Table::new(&[
        "SOURCE",
        "ADDED",
        "REPLACED",
        "DUPLICATES",
        "CONFLICTS",
        "ERRORS",
        "IGNORED",
    ]);
    for s in summaries {
        let errors = Cell::num(s.errors.len());
        t.row(vec![
            Cell::text(&s.source),
            Cell::num(s.added.len()).colored(Color::Green),
            Cell::num(s.replaced.len()),
            Cell::num(s.duplicates.len()),
            Cell::num(s.conflicts.len()),
            if s.errors.is_empty() {
                errors
            } else {
                errors.colored(Color::Red)
            },
            Cell::num(s.ignored.len()),
        ]);
    }
    ctx.out.table(&t)?;
    if ctx.out.format == OutputFormat::Csv {
        return Ok(());
    }
    // The rows that need a look, with their line numbers.
    for s in summaries {
        for r in &s.replaced {
            ctx.out.line(format_args!(
                "{} line {}: replaced node {} (new password) with node {}",
                s.source, r.line, r.old, r.new
            ))?;
        }
        for c in &s.conflicts {
            let with = match (c.with_line, c.with_node) {
                (Some(l), _) => format!("line {l}"),
                (_, Some(id)) => format!("stored node {id}"),
                _ => "another row".into(),
            };
            ctx.out.line(format_args!(
                "{} line {}: conflict: same ip, port and login as {with} with another password (kept the existing one)",
                s.source, c.line
            ))?;
        }
        if ctx.global.verbose > 0 {
            for d in &s.duplicates {
                let of = match (d.with_line, d.with_node) {
                    (Some(l), _) => format!("line {l}"),
                    (_, Some(id)) => format!("stored node {id}"),
                    _ => "another row".into(),
                };
                ctx.out.line(format_args!(
                    "{} line {}: duplicate of {of}",
                    s.source, d.line
                ))?;
            }
        }
        for e in &s.errors {
            let text = if e.text.is_empty() {
                String::new()
            } else {
                format!(": {}", e.text)
            };
            ctx.out.line(format_args!(
                "{} line {}: error: {}{text}",
                s.source, e.line, e.reason
            ))?;
        }
        if ctx.global.verbose > 0 {
            for e in &s.ignored {
                ctx.out.line(format_args!(
                    "{} line {}: ignored (not a node): {}",
                    s.source, e.line, e.text
                ))?;
            }
        } else if !s.ignored.is_empty() {
            ctx.out.note(format_args!(
                "{}: {} lines hold no node (headers, names) and were ignored; -v lists them",
                s.source,
                s.ignored.len()
            ));
        }
    }
    Ok(())
}
