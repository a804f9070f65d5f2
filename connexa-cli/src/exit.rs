//! Exit codes, and how an error chain maps to one.

use std::fmt;

use connexa_core::config::ConfigError;
use connexa_core::ports::StoreError;

/// The process exit codes (documented in docs/cli.md; stable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The operation failed at run time (an I/O error writing output, ...).
    Failure = 1,
    /// Bad command line: unknown option or value, missing input file, refusing
    /// to overwrite a file or to delete without confirmation, a capability this
    /// build does not have yet.
    Usage = 2,
    /// The configuration file or the database cannot be read, opened or used.
    Config = 3,
    /// The work finished, but some of it failed (rows that could not be
    /// imported; later: job items that failed).
    Partial = 4,
    /// Interrupted (Ctrl-C) before the work finished.
    Interrupted = 5,
    /// A node (or job) id given does not exist.
    NotFound = 6,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Coded {
    code: Exit,
    error: anyhow::Error,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Coded {}

/// An error with an exit code.
pub fn fail(code: Exit, message: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Coded {
        code,
        error: anyhow::anyhow!("{message}"),
    })
}

/// Attaches an exit code to an error.
pub trait WithCode<T> {
    /// Wraps the error so that it exits with `code`.
    fn code(self, code: Exit) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> WithCode<T> for Result<T, E> {
    fn code(self, code: Exit) -> anyhow::Result<T> {
        self.map_err(|e| {
            anyhow::Error::new(Coded {
                code,
                error: e.into(),
            })
        })
    }
}

/// The exit code of an error: the outermost explicit code, else by type.
pub fn classify(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.code;
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return match e {
                StoreError::NotFound(_) | StoreError::JobNotFound(_) => Exit::NotFound,
                StoreError::Page(_)
                | StoreError::Invalid(_)
                | StoreError::Selection(_)
                | StoreError::NothingSelected => Exit::Usage,
                _ => Exit::Config,
            };
        }
        if cause.downcast_ref::<ConfigError>().is_some()
            || cause
                .downcast_ref::<connexa_core::runtime::EnrichmentConfigError>()
                .is_some()
        {
            return Exit::Config;
        }
    }
    Exit::Failure
}

/// The error as ONE line: the chain joined with ": ", white space collapsed.
pub fn one_line(err: &anyhow::Error) -> String {
    collapse(&format!("{err:#}"))
}

/// Collapses runs of white space (newlines included) into single spaces and
/// shows other control characters escaped (an error may quote the input).
pub fn collapse(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::output::escape(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use connexa_core::domain::NodeId;

    #[test]
    fn codes_survive_context_and_types_map() {
        let e = Err::<(), _>(std::io::Error::other("x"))
            .code(Exit::Usage)
            .context("outer")
            .unwrap_err();
        assert_eq!(classify(&e), Exit::Usage);
        assert_eq!(one_line(&e), "outer: x");
        let e = anyhow::Error::new(StoreError::NotFound(NodeId(3)));
        assert_eq!(classify(&e), Exit::NotFound);
        let e = anyhow::Error::new(StoreError::Backend("gone".into())).context("listing");
        assert_eq!(classify(&e), Exit::Config);
        assert_eq!(classify(&anyhow::anyhow!("plain")), Exit::Failure);
    }

    #[test]
    fn one_line_has_no_newlines() {
        let e = anyhow::anyhow!("a\n  b\n\nc");
        assert_eq!(one_line(&e), "a b c");
    }
}
