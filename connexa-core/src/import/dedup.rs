//! Duplicates and conflicts within one file.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use super::ParsedNode;

/// What [`Dedup::classify`] decided about a parsed node.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Classified {
    /// The first row with this ip, port and login: to be inserted.
    New(ParsedNode),
    /// The same ip, port, login and password as an earlier row.
    Duplicate {
        /// This row's line.
        line: usize,
        /// The line of the earlier row.
        first_line: usize,
    },
    /// The same ip, port and login as an earlier row, with a different password.
    /// The earlier row wins; this one is reported, not inserted.
    Conflict {
        /// This row.
        parsed: ParsedNode,
        /// The line of the earlier row.
        first_line: usize,
    },
}

/// Remembers the rows seen so far (a 128-bit hash of ip+port+login and a 64-bit
/// hash of the password, about 50 bytes per distinct node — never the input).
/// The hashes are keyed randomly per instance, so a crafted list cannot make
/// two different nodes collide on purpose.
///
/// ```
/// use connexa_core::import::{parse, Classified, Dedup};
/// let rows = parse("1.2.3.4:a:x\n1.2.3.4:a:x\n1.2.3.4:a:y\n".as_bytes());
/// let mut d = Dedup::new();
/// let c: Vec<_> = rows.map(|r| d.classify(r.unwrap())).collect();
/// assert!(matches!(c[0], Classified::New(_)));
/// assert_eq!(c[1], Classified::Duplicate { line: 2, first_line: 1 });
/// assert!(matches!(c[2], Classified::Conflict { first_line: 1, .. }));
/// ```
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashMap<u128, (u64, usize)>,
    keys: [RandomState; 3],
}

impl Dedup {
    /// An empty memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Classifies a row against the earlier ones and remembers it.
    pub fn classify(&mut self, parsed: ParsedNode) -> Classified {
        let n = &parsed.node;
        let id = (n.ip(), n.port(), n.login());
        let key =
            (u128::from(self.keys[0].hash_one(id)) << 64) | u128::from(self.keys[1].hash_one(id));
        let pw = self.keys[2].hash_one(n.password().expose());
        match self.seen.get(&key) {
            None => {
                self.seen.insert(key, (pw, parsed.line));
                Classified::New(parsed)
            }
            Some(&(seen_pw, first_line)) if seen_pw == pw => Classified::Duplicate {
                line: parsed.line,
                first_line,
            },
            Some(&(_, first_line)) => Classified::Conflict { parsed, first_line },
        }
    }

    /// How many distinct nodes (by ip, port, login) were seen.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Nothing seen yet?
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}
