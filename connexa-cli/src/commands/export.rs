//! `connexa export`.

use std::fs::OpenOptions;
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

Examples:
  connexa export --format pptp --status speed_ok,online -o good.txt
  connexa export --format socks --country DE
  connexa export --format csv -o all.csv --force")]
pub struct ExportArgs {
    /// The list format.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: ExportFormat,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Write to FILE instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite FILE if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
}

fn parse_format(s: &str) -> Result<ExportFormat, String> {
    s.parse()
        .map_err(|e: connexa_core::export::UnknownFormat| e.to_string())
}

#[derive(Serialize)]
struct ExportJson<'a> {
    written: usize,
    format: &'a str,
    file: String,
}

/// Writes the export.
pub async fn exec(ctx: &Ctx, args: ExportArgs) -> anyhow::Result<Exit> {
    let filter = args.filter.validated()?;
    let Some(path) = &args.out else {
        let store = ctx.store().await?;
        let n = ops::export(
            store.as_ref(),
            &filter,
            args.format,
            std::io::stdout().lock(),
        )
        .await
        .context("writing the export to stdout")?;
        ctx.out.note(format_args!("exported {n} nodes"));
        return Ok(Exit::Ok);
    };
    let mut open = OpenOptions::new();
    open.write(true);
    // Exports carry passwords: a new file is readable by its owner only.
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    if args.force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    // Open the database first so a bad --db never leaves an empty file behind.
    let store = ctx.store().await?;
    let file = match open.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(fail(
                Exit::Usage,
                format_args!("refusing to overwrite {} (pass --force)", path.display()),
            ));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create {}", path.display()))
                .code(Exit::Usage);
        }
    };
    // `--force` over an existing file: it gets the new file's mode too.
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    let n = ops::export(store.as_ref(), &filter, args.format, file)
        .await
        .with_context(|| format!("writing {}", path.display()))?;
    match ctx.out.format {
        OutputFormat::Json => ctx.out.json(&ExportJson {
            written: n,
            format: args.format.as_str(),
            file: path.display().to_string(),
        })?,
        OutputFormat::Csv => ctx.out.line(format_args!(
            "written,format,file\n{n},{},{}",
            args.format,
            crate::output::csv_cell(&path.display().to_string())
        ))?,
        OutputFormat::Human => ctx.out.line(format_args!(
            "exported {n} nodes as {} to {}",
            args.format,
            path.display()
        ))?,
    }
    Ok(Exit::Ok)
}
