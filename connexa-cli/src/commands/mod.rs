//! One module per subcommand: an `Args` struct (clap derive) and an `exec`
//! function that calls connexa-core and formats the result. The engine-backed
//! subcommands (`test`, `jobs`, `service`, `run`, `demo`) will be added here as
//! files of their own and registered in `cli::Command`.

pub mod completions;
pub mod export;
pub mod import;
pub mod nodes;
pub mod sim;
pub mod stats;
