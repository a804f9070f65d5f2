//! `connexa completions SHELL`.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::cli::Cli;
use crate::exit::Exit;

/// Print a shell completion script.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  connexa completions bash > ~/.local/share/bash-completion/completions/connexa
  connexa completions zsh > \"${fpath[1]}/_connexa\"
  connexa completions fish > ~/.config/fish/completions/connexa.fish")]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the script to stdout.
pub fn exec(args: CompletionsArgs) -> anyhow::Result<Exit> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "connexa", &mut std::io::stdout());
    Ok(Exit::Ok)
}
