//! One module per subcommand: an `Args` struct (clap derive) and an `exec`
//! function that calls connexa-core and formats the result. `test`, `jobs`,
//! `run`, `service`, `demo` and `import --test` drive connexa-core's engine,
//! built in one place (`crate::wiring`).

pub mod audit;
pub mod completions;
pub mod demo;
pub mod doctor;
pub mod export;
pub mod import;
pub mod jobs;
pub mod nodes;
pub mod run;
pub mod secrets;
pub mod service;
pub mod sim;
pub mod stats;
pub mod test;
pub mod workers;
