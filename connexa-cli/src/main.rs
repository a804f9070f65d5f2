//! `connexa`: the operator's command-line tool. Subcommands arrive with the
//! issues that implement their backends; all logic lives in connexa-core.

use clap::Parser;

/// Import, test, serve and export fleets of PPTP VPN servers.
#[derive(Debug, Parser)]
#[command(name = "connexa", version, about, long_about = None)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    println!(
        "connexa {}: no subcommands yet (see README.md)",
        env!("CARGO_PKG_VERSION")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        super::Cli::command().debug_assert();
    }
}
