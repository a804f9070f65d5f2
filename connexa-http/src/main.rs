//! `connexa-http`: the REST API and web console (arrives with its issue).

use clap::Parser;

/// Serve Connexa's REST API and web console.
#[derive(Debug, Parser)]
#[command(name = "connexa-http", version, about, long_about = None)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    println!(
        "connexa-http {}: the API is not built yet (see README.md)",
        env!("CARGO_PKG_VERSION")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn args_definition_is_valid() {
        super::Args::command().debug_assert();
    }
}
