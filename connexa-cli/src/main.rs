//! `connexa`: the operator's command-line tool. Each subcommand (one file under
//! `commands/`) parses its input, calls one connexa-core function and formats
//! the result; all logic lives in connexa-core. See docs/cli.md.

mod cli;
mod commands;
mod exit;
mod filter;
mod output;
mod progress;
mod wiring;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _};

use crate::cli::Cli;
use crate::exit::{Exit, classify, collapse, one_line};

/// mimalloc instead of glibc malloc: under concurrent load glibc's arenas and
/// `malloc_consolidate` cost a fifth of the CPU time (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any thread exists, so before any use of SQLite (see its docs).
    #[allow(unsafe_code)]
    // SAFETY: nothing has used SQLite yet; the process is single-threaded here.
    let _ = unsafe { connexa_core::store::disable_sqlite_memory_statistics() };
    // Errors and panics are ONE line on stderr, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error{at}: {} (this is a bug)",
            collapse(&msg)
        );
    }));

    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    cli.global.db_on_command_line = db_on_command_line(&matches);
    // The long-running worker logs what it does (jobs picked up and finished)
    // at the info level by default: that is what its journal is for.
    let daemon = matches!(&cli.command, cli::Command::Run(a) if !a.once);
    init_tracing(
        cli.global.quiet,
        cli.global.verbose.saturating_add(u8::from(daemon)),
    );

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "error: cannot start the async runtime: {}",
                collapse(&e.to_string())
            );
            return Exit::Failure.into();
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code.into(),
        Err(err) if is_broken_pipe(&err) => Exit::Ok.into(), // `connexa ... | head`
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            classify(&err).into()
        }
    }
}

/// The reader of stdout went away: not an error worth a message.
/// `--db` on the command line, at the top level or after the subcommand
/// (a global option), rather than from `$CONNEXA_DB`.
fn db_on_command_line(m: &ArgMatches) -> bool {
    let mut m = Some(m);
    while let Some(cur) = m {
        if cur.value_source("db") == Some(ValueSource::CommandLine) {
            return true;
        }
        m = cur.subcommand().map(|(_, sub)| sub);
    }
    false
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Help and version go to stdout (exit 0); a usage error is one line on
/// stderr with exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            Exit::Ok.into()
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            Exit::Usage.into()
        }
        _ => {
            let text = e.render().to_string();
            let body: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("Usage:")
                        && !l.starts_with("For more information")
                })
                .collect();
            let line = collapse(&body.join(" "));
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("error: {line} (see --help)");
            Exit::Usage.into()
        }
    }
}

fn init_tracing(quiet: u8, verbose: u8) {
    use tracing_subscriber::filter::LevelFilter;
    let level = match (quiet, verbose) {
        (q, _) if q > 0 => LevelFilter::ERROR,
        (_, 0) => LevelFilter::WARN,
        (_, 1) => LevelFilter::INFO,
        (_, 2) => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    // RUST_LOG, when set, replaces the level of -q/-v (e.g. RUST_LOG=connexa_core=debug).
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        super::Cli::command().debug_assert();
    }
}
