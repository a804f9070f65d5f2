//! Which nodes an action applies to, validated once for every frontend.
//!
//! A selection is exactly one of: explicit node ids, a [`NodeFilter`], or every
//! node. The rules live here so that the CLI, the HTTP API and embedders refuse
//! the same things with the same words:
//!
//! * text filters are non-empty, at most [`NodeFilter::MAX_TEXT`] characters and
//!   free of control characters (a NUL byte once made a filter match every node);
//! * speeds are finite, non-negative and at most [`NodeFilter::MAX_MBPS`];
//! * an id list is non-empty and at most [`Selection::MAX_IDS`] long;
//! * a filter that would match every node is refused: selecting everything
//!   takes the explicit [`Selection::All`].

use super::{NodeFilter, NodeId};

/// Why a [`NodeFilter`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// A text filter holds a control character (NUL, escape, newline, ...).
    #[error("{}", self.message(&Words::API))]
    ControlCharacter {
        /// The filter field.
        field: &'static str,
    },
    /// A text filter is empty (it would match every node).
    #[error("{}", self.message(&Words::API))]
    EmptyText {
        /// The filter field.
        field: &'static str,
    },
    /// A text filter is longer than [`NodeFilter::MAX_TEXT`] characters.
    #[error("{}", self.message(&Words::API))]
    TooLong {
        /// The filter field.
        field: &'static str,
    },
    /// A speed bound is negative, not finite or larger than [`NodeFilter::MAX_MBPS`].
    #[error("{}", self.message(&Words::API))]
    BadSpeed {
        /// The filter field.
        field: &'static str,
    },
    /// A fraud score bound outside 0..=100.
    #[error("{}", self.message(&Words::API))]
    BadFraudScore,
    /// The id list is empty (it would select nothing).
    #[error("{}", self.message(&Words::API))]
    NoIds,
    /// The id list is longer than [`Selection::MAX_IDS`].
    #[error("{}", self.message(&Words::API))]
    TooManyIds,
    /// A node id is not positive.
    #[error("{}", self.message(&Words::API))]
    BadId(i64),
}

impl NodeFilter {
    /// The longest text filter, in characters.
    pub const MAX_TEXT: usize = 256;
    /// The largest speed bound, in Mbit/s.
    pub const MAX_MBPS: f64 = 1_000_000.0;

    /// The text fields with their names (as the HTTP API and the JSON form spell them).
    fn texts(&self) -> [(&'static str, Option<&str>); 8] {
        [
            ("ip", self.ip.as_deref()),
            ("login", self.login.as_deref()),
            ("provider", self.provider.as_deref()),
            ("country", self.country.as_deref()),
            ("state", self.state.as_deref()),
            ("city", self.city.as_deref()),
            ("zipcode", self.zipcode.as_deref()),
            ("comment", self.comment.as_deref()),
        ]
    }

    /// Checks every field: the first problem found.
    ///
    /// ```
    /// use connexa_core::domain::{FilterError, NodeFilter};
    /// let f = NodeFilter { ip: Some("\0".into()), ..NodeFilter::all() };
    /// assert_eq!(f.validate(), Err(FilterError::ControlCharacter { field: "ip" }));
    /// let f = NodeFilter { country: Some("DE".into()), ..NodeFilter::all() };
    /// assert_eq!(f.validate(), Ok(()));
    /// ```
    pub fn validate(&self) -> Result<(), FilterError> {
        for (field, text) in self.texts() {
            let Some(text) = text else { continue };
            if text.is_empty() {
                return Err(FilterError::EmptyText { field });
            }
            if text.chars().any(char::is_control) {
                return Err(FilterError::ControlCharacter { field });
            }
            if text.chars().count() > Self::MAX_TEXT {
                return Err(FilterError::TooLong { field });
            }
        }
        for (field, v) in [
            ("min_down_mbps", self.min_down_mbps),
            ("max_down_mbps", self.max_down_mbps),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && (0.0..=Self::MAX_MBPS).contains(&v))) {
                return Err(FilterError::BadSpeed { field });
            }
        }
        if self.fraud_max.is_some_and(|m| m > 100) {
            return Err(FilterError::BadFraudScore);
        }
        if let Some(ids) = &self.ids {
            if ids.is_empty() {
                return Err(FilterError::NoIds);
            }
            if ids.len() > Selection::MAX_IDS {
                return Err(FilterError::TooManyIds);
            }
            if let Some(bad) = ids.iter().find(|i| i.0 < 1) {
                return Err(FilterError::BadId(bad.0));
            }
        }
        Ok(())
    }

    /// Whether this filter has no condition at all (it matches every node).
    pub fn is_everything(&self) -> bool {
        *self == NodeFilter::all()
    }
}

/// Which nodes an action applies to: exactly one of ids, a filter, or all.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Selection {
    /// These nodes (validated: 1 to [`Selection::MAX_IDS`] ids).
    Ids(Vec<NodeId>),
    /// The nodes matching this filter (validated, never the empty filter).
    Filter(Box<NodeFilter>),
    /// Every node, said explicitly.
    All,
}

/// Why a selection is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectionError {
    /// More than one of ids, filter and all were given.
    #[error("{}", self.message(&Words::API))]
    Ambiguous,
    /// None of ids, filter and all were given.
    #[error("{}", self.message(&Words::API))]
    Nothing,
    /// The filter has no condition: it would select every node without saying so.
    #[error("{}", self.message(&Words::API))]
    FilterSelectsAll,
    /// A field of the filter or the id list is invalid.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// How a frontend spells the words of a refusal: its names of the fields and
/// its way of saying "a filter" and "every node". The refusals themselves
/// (which input is refused, and the rest of each message) are the same
/// everywhere: [`SelectionError::message`], [`FilterError::message`],
/// [`JobOptionsError::message`](crate::engine::JobOptionsError::message).
#[derive(Debug, Clone, Copy)]
pub struct Words {
    /// A field's name as the frontend spells it, from its name in the JSON
    /// form (`ip`, `zipcode`, `min_down_mbps`, `node_timeout_secs`, ...).
    pub field: fn(&str) -> String,
    /// How the frontend says "a filter" (`a filter`, `filters`).
    pub filter: &'static str,
    /// How the frontend says "every node" (`all`, `--all`).
    pub all: &'static str,
}

fn json_name(field: &str) -> String {
    field.to_owned()
}

impl Words {
    /// The HTTP API's (and the `Display` of the errors): the JSON names.
    pub const API: Words = Words {
        field: json_name,
        filter: "a filter",
        all: "all",
    };

    fn name(&self, field: &str) -> String {
        (self.field)(field)
    }
}

impl FilterError {
    /// The refusal, in `words`.
    ///
    /// ```
    /// use connexa_core::domain::{FilterError, Words};
    /// let e = FilterError::ControlCharacter { field: "zipcode" };
    /// assert_eq!(e.to_string(), "zipcode: control characters are not allowed");
    /// let cli = Words { field: |f| format!("--{}", f.replace('_', "-")), filter: "filters", all: "--all" };
    /// assert_eq!(e.message(&cli), "--zipcode: control characters are not allowed");
    /// ```
    pub fn message(&self, words: &Words) -> String {
        match self {
            FilterError::ControlCharacter { field } => {
                format!("{}: control characters are not allowed", words.name(field))
            }
            FilterError::EmptyText { field } => format!(
                "{}: empty; leave the filter out to match any value",
                words.name(field)
            ),
            FilterError::TooLong { field } => format!(
                "{}: at most {} characters",
                words.name(field),
                NodeFilter::MAX_TEXT
            ),
            FilterError::BadSpeed { field } => format!(
                "{}: must be a number of Mbit/s from 0 to {}",
                words.name(field),
                NodeFilter::MAX_MBPS
            ),
            FilterError::BadFraudScore => {
                format!("{}: must be a score from 0 to 100", words.name("fraud_max"))
            }
            FilterError::NoIds => "ids: empty; give at least one node id".into(),
            FilterError::TooManyIds => {
                format!("ids: at most {} ids in one selection", Selection::MAX_IDS)
            }
            FilterError::BadId(id) => format!("ids: {id} is not a node id"),
        }
    }
}

impl SelectionError {
    /// The refusal, in `words`.
    pub fn message(&self, words: &Words) -> String {
        match self {
            SelectionError::Ambiguous => format!(
                "give exactly one of: node ids, {}, or {}",
                words.filter, words.all
            ),
            SelectionError::Nothing => format!(
                "nothing selected: give node ids, {}, or {}",
                words.filter, words.all
            ),
            SelectionError::FilterSelectsAll => format!(
                "no filter narrows the selection: to select every node say {}",
                words.all
            ),
            SelectionError::Filter(e) => e.message(words),
        }
    }
}

impl Selection {
    /// The most ids in one selection. The store binds an id list as a single
    /// parameter, so this bound is about memory and request size, not about any
    /// backend's bind-parameter limit.
    pub const MAX_IDS: usize = 1_000_000;

    /// A selection from the three ways a frontend can say it: exactly one must
    /// be given (`ids` present, `filter` present, or `all`).
    ///
    /// ```
    /// use connexa_core::domain::{NodeFilter, Selection, SelectionError};
    /// let empty = NodeFilter { ip: Some(String::new()), ..NodeFilter::all() };
    /// assert!(Selection::new(None, Some(empty), false).is_err());
    /// assert_eq!(
    ///     Selection::new(None, Some(NodeFilter::all()), false),
    ///     Err(SelectionError::FilterSelectsAll)
    /// );
    /// assert_eq!(Selection::new(None, None, true), Ok(Selection::All));
    /// ```
    pub fn new(
        ids: Option<Vec<NodeId>>,
        filter: Option<NodeFilter>,
        all: bool,
    ) -> Result<Self, SelectionError> {
        match (ids, filter, all) {
            (Some(ids), None, false) => {
                NodeFilter {
                    ids: Some(ids.clone()),
                    ..NodeFilter::all()
                }
                .validate()?;
                Ok(Selection::Ids(ids))
            }
            (None, Some(filter), false) => Self::filter(filter),
            (None, None, true) => Ok(Selection::All),
            (None, None, false) => Err(SelectionError::Nothing),
            _ => Err(SelectionError::Ambiguous),
        }
    }

    /// A filter selection: validated, and refused when it has no condition.
    pub fn filter(filter: NodeFilter) -> Result<Self, SelectionError> {
        filter.validate()?;
        if filter.is_everything() {
            return Err(SelectionError::FilterSelectsAll);
        }
        Ok(Selection::Filter(Box::new(filter)))
    }

    /// The store filter of this selection.
    pub fn to_filter(&self) -> NodeFilter {
        match self {
            Selection::Ids(ids) => NodeFilter::ids(ids.iter().copied()),
            Selection::Filter(f) => (**f).clone(),
            Selection::All => NodeFilter::all(),
        }
    }

    /// The store filter of this selection, by value.
    pub fn into_filter(self) -> NodeFilter {
        match self {
            Selection::Ids(ids) => NodeFilter::ids(ids),
            Selection::Filter(f) => *f,
            Selection::All => NodeFilter::all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut NodeFilter)) -> NodeFilter {
        let mut n = NodeFilter::all();
        f(&mut n);
        n
    }

    #[test]
    fn every_text_field_refuses_control_characters_and_empty_text() {
        type Set = fn(&mut NodeFilter, String);
        let fields: [(&str, Set); 8] = [
            ("ip", |f, v| f.ip = Some(v)),
            ("login", |f, v| f.login = Some(v)),
            ("provider", |f, v| f.provider = Some(v)),
            ("country", |f, v| f.country = Some(v)),
            ("state", |f, v| f.state = Some(v)),
            ("city", |f, v| f.city = Some(v)),
            ("zipcode", |f, v| f.zipcode = Some(v)),
            ("comment", |f, v| f.comment = Some(v)),
        ];
        for (name, set) in fields {
            for bad in ["\0", "a\u{1b}[2J", "x\ny", "\u{7f}", "\u{9b}"] {
                let f = with(|f| set(f, bad.into()));
                assert_eq!(
                    f.validate(),
                    Err(FilterError::ControlCharacter { field: name }),
                    "{name} {bad:?}"
                );
            }
            let f = with(|f| set(f, String::new()));
            assert_eq!(f.validate(), Err(FilterError::EmptyText { field: name }));
            let f = with(|f| set(f, "é".repeat(NodeFilter::MAX_TEXT + 1)));
            assert_eq!(f.validate(), Err(FilterError::TooLong { field: name }));
            let f = with(|f| set(f, "é".repeat(NodeFilter::MAX_TEXT)));
            assert_eq!(f.validate(), Ok(()), "{name}: 256 characters are fine");
        }
    }

    #[test]
    fn speeds_are_range_checked() {
        for bad in [-5.0, f64::NAN, f64::INFINITY, NodeFilter::MAX_MBPS * 2.0] {
            let f = with(|f| f.min_down_mbps = Some(bad));
            assert_eq!(
                f.validate(),
                Err(FilterError::BadSpeed {
                    field: "min_down_mbps"
                })
            );
            let f = with(|f| f.max_down_mbps = Some(bad));
            assert!(f.validate().is_err());
        }
        assert_eq!(with(|f| f.min_down_mbps = Some(0.0)).validate(), Ok(()));
    }

    #[test]
    fn id_lists_are_bounded_and_non_empty() {
        assert_eq!(
            Selection::new(Some(vec![]), None, false),
            Err(SelectionError::Filter(FilterError::NoIds))
        );
        let many = vec![NodeId(1); Selection::MAX_IDS + 1];
        assert_eq!(
            Selection::new(Some(many), None, false),
            Err(SelectionError::Filter(FilterError::TooManyIds))
        );
        assert_eq!(
            Selection::new(Some(vec![NodeId(0)]), None, false),
            Err(SelectionError::Filter(FilterError::BadId(0)))
        );
        let ok = Selection::new(Some(vec![NodeId(3)]), None, false).unwrap();
        assert_eq!(ok.to_filter(), NodeFilter::ids([NodeId(3)]));
        // An id list inside a filter obeys the same rule.
        let f = with(|f| f.ids = Some(vec![]));
        assert_eq!(
            Selection::filter(f),
            Err(SelectionError::Filter(FilterError::NoIds))
        );
    }

    #[test]
    fn exactly_one_way_and_everything_only_when_said() {
        let f = with(|f| f.country = Some("DE".into()));
        assert_eq!(
            Selection::new(Some(vec![NodeId(1)]), Some(f.clone()), false),
            Err(SelectionError::Ambiguous)
        );
        assert_eq!(
            Selection::new(None, Some(f.clone()), true),
            Err(SelectionError::Ambiguous)
        );
        assert_eq!(
            Selection::new(None, None, false),
            Err(SelectionError::Nothing)
        );
        assert_eq!(
            Selection::new(None, Some(NodeFilter::all()), false),
            Err(SelectionError::FilterSelectsAll)
        );
        assert_eq!(
            Selection::new(None, Some(f.clone()), false),
            Ok(Selection::Filter(Box::new(f.clone())))
        );
        assert!(Selection::All.to_filter().is_everything());
        assert_eq!(Selection::Filter(Box::new(f.clone())).into_filter(), f);
    }
}
