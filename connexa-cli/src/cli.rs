//! The command line: global options and the subcommands.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand};
use connexa_core::config::Config;
use connexa_core::store::{SqlStore, redact_url};

use crate::commands;
use crate::exit::{Exit, WithCode};
use crate::output::{Out, OutputFormat};

/// The database used when neither `--db`, `$CONNEXA_DB` nor the config file names one.
pub const DEFAULT_DB: &str = "sqlite://connexa.db?mode=rwc";

const EXAMPLES: &str = "\
Examples:
  connexa demo                                             # try it: a simulated fleet, tested
  connexa sim --nodes 50 --port 21723 --list fleet.txt &   # a fleet to play with
  connexa import fleet.txt                                 # import a node list
  connexa nodes add 203.0.113.7 admin s3cret --country US  # or one node by hand
  connexa test light --all                                 # light-test every node
  connexa nodes list --status not_tested --limit 20
  connexa nodes show 7 --reveal
  connexa export --format csv --country US -o us.csv
  connexa stats --output json
  connexa doctor                                           # what this host can do, and fixes

Exit codes: 0 ok, 1 failure, 2 usage, 3 config, 4 partial, 5 interrupted,
6 not found (docs/cli.md).";

/// Import, test, serve and export fleets of PPTP VPN servers.
#[derive(Debug, Parser)]
#[command(name = "connexa", version, about, long_about = None, after_help = EXAMPLES, arg_required_else_help = true)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Database URL: sqlite://PATH?mode=rwc or postgres://USER@HOST/DB
    /// [default: $CONNEXA_DB, else `database` in the config file, else sqlite://connexa.db?mode=rwc]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "CONNEXA_DB",
        hide_env_values = true
    )]
    pub db: Option<String>,
    /// Whether `--db` was given on the command line (not from `$CONNEXA_DB`):
    /// `connexa demo` uses its own database unless it was.
    #[arg(skip)]
    pub db_on_command_line: bool,
    /// TOML configuration file (test defaults, timeouts, ports; see docs/cli.md).
    #[arg(long, global = true, value_name = "FILE", env = "CONNEXA_CONFIG", value_parser = any_path)]
    pub config: Option<PathBuf>,
    /// Output format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// Less output: only errors (logs and notes on stderr are silenced).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Try it: a simulated fleet on loopback, imported and tested with live progress.
    Demo(commands::demo::DemoArgs),
    /// Import node lists (every known format, mixable) into the database.
    Import(commands::import::ImportArgs),
    /// List, show, edit and delete nodes; show their status history.
    #[command(subcommand)]
    Nodes(commands::nodes::NodesCommand),
    /// Write matching nodes as txt, csv, json, pptp, socks or socks-colon.
    Export(commands::export::ExportArgs),
    /// Counts per status, services running, the last job.
    Stats(commands::stats::StatsArgs),
    /// Test nodes (light, auth, speed or pipeline) with live progress; Ctrl-C cancels.
    Test(commands::test::TestArgs),
    /// List, show, follow or cancel jobs started anywhere.
    #[command(subcommand)]
    Jobs(commands::jobs::JobsCommand),
    /// Want SOCKS5 services on nodes (start/stop), or list the running ones.
    #[command(subcommand)]
    Service(commands::service::ServiceCommand),
    /// The worker: queued jobs, service reconciler, health monitor (--once: one pass).
    Run(commands::run::RunArgs),
    /// The worker processes on this database: heartbeats, roles, items in flight.
    Workers(commands::workers::WorkersArgs),
    /// Run a simulated PPTP fleet on loopback and write its node list.
    Sim(commands::sim::SimArgs),
    /// Check the database, capabilities, speed target, ports, file modes and clock.
    Doctor(commands::doctor::DoctorArgs),
    /// Who changed what: the audit trail (imports, edits, deletes, services, jobs).
    Audit(commands::audit::AuditArgs),
    /// Seal node passwords and SOCKS5 credentials in the database: keygen, status, rotate.
    #[command(subcommand)]
    Secrets(commands::secrets::SecretsCommand),
    /// Print a shell completion script.
    Completions(commands::completions::CompletionsArgs),
}

/// A path, possibly empty (an empty `$CONNEXA_CONFIG` means "no file").
fn any_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// What every command gets: options, configuration, output.
#[derive(Debug)]
pub struct Ctx {
    /// The global options.
    pub global: GlobalArgs,
    /// The configuration (defaults when no file is given).
    pub config: Config,
    /// Output settings.
    pub out: Out,
}

impl Ctx {
    /// Reads the configuration file, if any.
    pub fn new(global: GlobalArgs) -> anyhow::Result<Ctx> {
        let config = match global.config.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            Some(path) => Config::load(path).code(Exit::Config)?,
            None => Config::default(),
        };
        let out = Out::new(global.output, global.quiet > 0);
        Ok(Ctx {
            global,
            config,
            out,
        })
    }

    /// The database URL to use.
    pub fn db_url(&self) -> String {
        self.global
            .db
            .clone()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| self.config.database.clone())
            .unwrap_or_else(|| DEFAULT_DB.to_owned())
    }

    /// The configuration with `database` set to the effective database URL
    /// ([`Ctx::db_url`]), so that what defaults to "next to the database"
    /// (the speed key file) follows `--db`.
    pub fn effective_config(&self) -> Config {
        let mut c = self.config.clone();
        c.database = Some(self.db_url());
        c
    }

    /// Opens (and migrates) the database.
    pub async fn store(&self) -> anyhow::Result<Arc<SqlStore>> {
        let url = self.db_url();
        tracing::debug!(db = %redact_url(&url), "opening database");
        let keys = connexa_core::runtime::secret_keys(&self.config).code(Exit::Config)?;
        let store = SqlStore::connect_with_keys(&url, keys)
            .await
            .context("cannot open the database")
            .code(Exit::Config)?
            // What this command changes is audited under the OS user.
            .acting_as(connexa_core::store::audit::Actor::os_user());
        Ok(Arc::new(store))
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let ctx = Ctx::new(cli.global)?;
    match cli.command {
        Command::Import(a) => commands::import::exec(&ctx, a).await,
        Command::Nodes(c) => commands::nodes::exec(&ctx, c).await,
        Command::Export(a) => commands::export::exec(&ctx, a).await,
        Command::Stats(a) => commands::stats::exec(&ctx, a).await,
        Command::Test(a) => commands::test::exec(&ctx, a).await,
        Command::Jobs(c) => commands::jobs::exec(&ctx, c).await,
        Command::Service(c) => commands::service::exec(&ctx, c).await,
        Command::Run(a) => {
            let mut ctx = ctx;
            if let Some(h) = &a.public_host {
                ctx.config.workers.public_host = Some(h.clone());
            }
            if !a.label.is_empty() {
                ctx.config.workers.labels = a.label.clone();
            }
            commands::run::exec(&ctx, a).await
        }
        Command::Workers(a) => commands::workers::exec(&ctx, a).await,
        Command::Demo(a) => commands::demo::exec(&ctx, a).await,
        Command::Sim(a) => commands::sim::exec(&ctx, a).await,
        Command::Doctor(a) => commands::doctor::exec(&ctx, a).await,
        Command::Secrets(c) => commands::secrets::exec(&ctx, c).await,
        Command::Audit(a) => commands::audit::exec(&ctx, a).await,
        Command::Completions(a) => commands::completions::exec(a),
    }
}
