//! `connexa secrets keygen|status|rotate`: secrets at rest (node passwords
//! and SOCKS5 credentials sealed in the database; connexa-core's
//! `store::sealing`).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use connexa_core::store::sealing::SecretKey;

use crate::cli::Ctx;
use crate::exit::{Exit, WithCode as _, fail};
use crate::output::{Cell, OutputFormat, Table};

/// Seal node passwords and SOCKS5 credentials in the database with a key.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Write a new random key (64 hex digits) to FILE, mode 0600.
    #[command(after_help = "\
Then name it in the config file, and seal what is stored already:

  [secrets]
  key_file = \"/var/lib/connexa/secrets.key\"

  connexa secrets rotate

Examples:
  connexa secrets keygen /var/lib/connexa/secrets.key")]
    Keygen(KeygenArgs),
    /// How stored secrets are kept: plaintext, or sealed with which key.
    #[command(after_help = "\
Examples:
  connexa secrets status
  connexa secrets status --output json")]
    Status,
    /// Seal every stored secret with the current key (plaintext ones, and those sealed with an old key).
    #[command(after_help = "\
Rotating to a new key, with workers running:
  1. connexa secrets keygen new.key
  2. config: key_file = \"new.key\", old_key_files = [\"old.key\"]; restart the processes
  3. connexa secrets rotate        (one transaction: every value or none)
  4. config: remove old_key_files; the old key is no longer needed

Examples:
  connexa secrets rotate")]
    Rotate,
}

/// `secrets keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key (refused if it exists).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs a `secrets` subcommand.
pub async fn exec(ctx: &Ctx, c: SecretsCommand) -> anyhow::Result<Exit> {
    match c {
        SecretsCommand::Keygen(a) => keygen(ctx, a),
        SecretsCommand::Status => status(ctx).await,
        SecretsCommand::Rotate => rotate(ctx).await,
    }
}

fn keygen(ctx: &Ctx, a: KeygenArgs) -> anyhow::Result<Exit> {
    let (bytes, key) = SecretKey::generate();
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut file = match open.open(&a.file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(fail(
                Exit::Usage,
                format_args!(
                    "refusing to overwrite {} (a key in use would be lost)",
                    a.file.display()
                ),
            ));
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot create {}", a.file.display()));
        }
    };
    writeln!(file, "{}", hex::encode(bytes))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", a.file.display()))?;
    if ctx.out.format == OutputFormat::Json {
        ctx.out
            .json(&serde_json::json!({"file": a.file, "key_id": key.id()}))?;
    } else {
        ctx.out.line(format_args!(
            "key {} written to {} (mode 0600); name it in [secrets] key_file, then run `connexa secrets rotate`",
            key.id(),
            a.file.display()
        ))?;
    }
    Ok(Exit::Ok)
}

async fn status(ctx: &Ctx) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let s = store.sealing_status().await.code(Exit::Config)?;
    let keys = store.secret_keys();
    let current = keys.current().map(|k| k.id().to_owned());
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&serde_json::json!({
            "current_key": current,
            "keys": keys.ids(),
            "plaintext": s.plaintext,
            "sealed": s.sealed,
        }))?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&["STORED AS", "VALUES"]);
    t.row(vec![Cell::text("plaintext"), Cell::num(s.plaintext)]);
    for (id, n) in &s.sealed {
        let role = if current.as_deref() == Some(id.as_str()) {
            "current"
        } else {
            "old"
        };
        t.row(vec![
            Cell::text(format!("sealed with key {id} ({role})")),
            Cell::num(*n),
        ]);
    }
    ctx.out.table(&t)?;
    if ctx.out.format == OutputFormat::Human {
        match &current {
            None => ctx.out.line(
                "no key configured: new secrets are stored as plaintext ([secrets] key_file)",
            )?,
            Some(id) if s.plaintext > 0 || s.sealed.keys().any(|k| k != id) => ctx
                .out
                .line("run `connexa secrets rotate` to seal every value with the current key")?,
            Some(_) => ctx
                .out
                .line("every stored secret is sealed with the current key")?,
        }
    }
    Ok(Exit::Ok)
}

async fn rotate(ctx: &Ctx) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let Some(current) = store.secret_keys().current().map(|k| k.id().to_owned()) else {
        return Err(fail(
            Exit::Config,
            "no current secrets key: set [secrets] key_file or $CONNEXA_SECRET_KEY (create one with `connexa secrets keygen FILE`)",
        ));
    };
    let n = store.reseal_all().await.code(Exit::Failure)?;
    if ctx.out.format == OutputFormat::Json {
        ctx.out
            .json(&serde_json::json!({"resealed": n, "key_id": current}))?;
    } else {
        ctx.out.line(format_args!(
            "{n} values sealed with key {current}; every stored secret now opens with it alone"
        ))?;
    }
    Ok(Exit::Ok)
}
