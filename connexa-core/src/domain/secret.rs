//! A string that never shows itself in logs.

use std::fmt;

/// A secret string (a node password, a SOCKS password, an API token).
///
/// `Debug` and `Display` print `***`, so a secret cannot leak through `{:?}`,
/// `tracing` fields or error messages. Call [`Secret::expose`] where the real
/// value is needed (the wire, an explicit "reveal" export).
///
/// ```
/// use connexa_core::domain::Secret;
/// let s = Secret::new("hunter2");
/// assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value. Every call site is a place where the secret leaves the process
    /// or is compared; keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A masked rendering that keeps the length hint small: `***`.
    pub fn masked(&self) -> &'static str {
        "***"
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("p@ssw0rd-very-secret");
        let shown = format!("{s:?} {s} {s:#?} {:?}", Some(&s));
        assert!(!shown.contains("p@ssw0rd"), "{shown}");
        assert_eq!(s.expose(), "p@ssw0rd-very-secret");
    }
}
