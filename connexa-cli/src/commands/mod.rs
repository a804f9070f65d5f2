//! One module per subcommand: an `Args` struct (clap derive) and an `exec`
//! function that calls connexa-core and formats the result. `test` and `jobs`
//! drive connexa-core's engine; `service`, `run` and `demo` are still to come.

pub mod completions;
pub mod export;
pub mod import;
pub mod jobs;
pub mod nodes;
pub mod sim;
pub mod stats;
pub mod test;
