//! `connexa export`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use connexa_core::export::ExportFormat;
use connexa_core::ops;
use serde::Serialize;

use crate::cli::Ctx;
use crate::exit::{Exit, WithCode, fail};
use crate::filter::FilterArgs;
use crate::output::OutputFormat;

/// Write matching nodes in a list format.
#[derive(Debug, Args)]
#[command(after_help = "\
Formats: txt (ip login password country), csv, json, pptp (ip:login:password),
socks (socks5://user:pass@host:port) and socks-colon (host:port:user:pass);
the socks formats list only nodes with a running service. txt, csv, json and
pptp read back with `connexa import`. Passwords are written in clear.

ovpn writes the OpenVPN client profile of each selected node's running
openvpn service: with -o DIR one file DIR/node<ID>.ovpn each (mode 0600; DIR is
created), without -o the profile on stdout when exactly one node is selected.
Every selected node must run an openvpn service (the others are named and
nothing is written).

Examples:
  connexa export --format pptp --status speed_ok,online -o good.txt
  connexa export --format socks --country DE
  connexa export --format csv -o all.csv --force
  connexa export --format ovpn --status online -o profiles")]
pub struct ExportArgs {
    /// The format: txt, csv, json, pptp, socks, socks-colon or ovpn.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Format,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Write to FILE instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite FILE if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
}

/// A list format, or OpenVPN profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One of connexa-core's list formats.
    List(ExportFormat),
    /// One `.ovpn` profile per node.
    Ovpn,
}

fn parse_format(s: &str) -> Result<Format, String> {
    if s.trim().eq_ignore_ascii_case("ovpn") {
        return Ok(Format::Ovpn);
    }
    s.parse()
        .map(Format::List)
        .map_err(|e: connexa_core::export::UnknownFormat| format!("{e}, or ovpn"))
}

/// `--format ovpn`: the profiles, to DIR or (one) to stdout.
async fn profiles(ctx: &Ctx, args: &ExportArgs) -> anyhow::Result<Exit> {
    use std::io::Write as _;
    use std::os::unix::fs::DirBuilderExt as _;
    let filter = args.filter.validated()?;
    let store = ctx.store().await?;
    let dir = ctx.effective_config().openvpn_dir();
    let list = ops::service_profiles(store.as_ref(), &filter, &dir)
        .await
        .map_err(|e| fail(Exit::Failure, e))?;
    let Some(out_dir) = &args.out else {
        let [(_, text)] = &list[..] else {
            return Err(fail(
                Exit::Usage,
                format_args!(
                    "{} profiles selected: give -o DIR (one file per node) or select one node",
                    list.len()
                ),
            ));
        };
        std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("writing the profile to stdout")?;
        return Ok(Exit::Ok);
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))
        .code(Exit::Usage)?;
    for (id, text) in &list {
        let path = out_dir.join(format!("node{id}.ovpn"));
        let mut f = crate::output::private_file(&path, args.force)?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let n = list.len();
    match ctx.out.format {
        OutputFormat::Json => ctx.out.json(&ExportJson {
            written: n,
            format: "ovpn",
            file: out_dir.display().to_string(),
        })?,
        OutputFormat::Csv => ctx.out.line(format_args!(
            "written,format,file\n{n},ovpn,{}",
            crate::output::csv_cell(&out_dir.display().to_string())
        ))?,
        OutputFormat::Human => ctx.out.line(format_args!(
            "exported {n} OpenVPN profiles to {}",
            out_dir.display()
        ))?,
    }
    Ok(Exit::Ok)
}

#[derive(Serialize)]
struct ExportJson<'a> {
    written: usize,
    format: &'a str,
    file: String,
}

/// Writes the export.
pub async fn exec(ctx: &Ctx, args: ExportArgs) -> anyhow::Result<Exit> {
    let format = match args.format {
        Format::Ovpn => return profiles(ctx, &args).await,
        Format::List(f) => f,
    };
    let filter = args.filter.validated()?;
    let Some(path) = &args.out else {
        let store = ctx.store().await?;
        let n = ops::export(store.as_ref(), &filter, format, std::io::stdout().lock())
            .await
            .context("writing the export to stdout")?;
        ctx.out.note(format_args!("exported {n} nodes"));
        return Ok(Exit::Ok);
    };
    // Open the database first so a bad --db never leaves an empty file behind.
    let store = ctx.store().await?;
    // Exports carry passwords: the file is readable by its owner only.
    let file = crate::output::private_file(path, args.force)?;
    let n = ops::export(store.as_ref(), &filter, format, file)
        .await
        .with_context(|| format!("writing {}", path.display()))?;
    match ctx.out.format {
        OutputFormat::Json => ctx.out.json(&ExportJson {
            written: n,
            format: format.as_str(),
            file: path.display().to_string(),
        })?,
        OutputFormat::Csv => ctx.out.line(format_args!(
            "written,format,file\n{n},{},{}",
            format,
            crate::output::csv_cell(&path.display().to_string())
        ))?,
        OutputFormat::Human => ctx.out.line(format_args!(
            "exported {n} nodes as {} to {}",
            format,
            path.display()
        ))?,
    }
    Ok(Exit::Ok)
}
