//! The JSON view of an import report ([`ImportSummary`]): what frontends
//! show and what an import job stores, one part per committed batch.

use serde::{Deserialize, Serialize};

use super::{Existing, ImportError, ImportReport};
use crate::domain::NodeId;

/// One row of an import that collided with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Collision {
    /// The row's line.
    pub line: usize,
    /// The earlier line of the same input it collides with, if so.
    pub with_line: Option<usize>,
    /// The stored node it collides with, if so.
    pub with_node: Option<NodeId>,
}

impl Collision {
    fn new(line: usize, with: Existing) -> Self {
        let (with_line, with_node) = match with {
            Existing::Line(l) => (Some(l), None),
            Existing::Stored(id) => (None, Some(id)),
        };
        Collision {
            line,
            with_line,
            with_node,
        }
    }
}

/// An added row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddedRow {
    /// The row's line.
    pub line: usize,
    /// The new node.
    pub id: NodeId,
}

/// A replaced node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplacedView {
    /// The row's line.
    pub line: usize,
    /// The deleted node.
    pub old: NodeId,
    /// The node added instead.
    pub new: NodeId,
}

/// A row that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorRow {
    /// The row's line.
    pub line: usize,
    /// Why.
    pub reason: String,
    /// The row, password masked.
    pub text: String,
}

impl ErrorRow {
    fn new(e: &ImportError) -> Self {
        ErrorRow {
            line: e.line,
            reason: e.reason.to_string(),
            text: e.text.clone(),
        }
    }
}

/// An [`ImportReport`] as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportSummary {
    /// Where the rows came from (a file name or `-`).
    pub source: String,
    /// Added rows.
    pub added: Vec<AddedRow>,
    /// Replaced nodes.
    pub replaced: Vec<ReplacedView>,
    /// Duplicates (in the input or stored).
    pub duplicates: Vec<Collision>,
    /// Conflicts (same ip, port and login, another password), kept out.
    pub conflicts: Vec<Collision>,
    /// Unreadable rows.
    pub errors: Vec<ErrorRow>,
    /// Lines that hold no node (headers, sellers' names): not errors.
    pub ignored: Vec<ErrorRow>,
    /// Lines parsed but not inserted because the store failed.
    pub not_inserted: Vec<usize>,
    /// Why the import stopped early, if it did.
    pub failure: Option<String>,
}

impl ImportSummary {
    /// The summary of `report`, read from `source`.
    pub fn new(source: impl Into<String>, report: &ImportReport) -> Self {
        ImportSummary {
            source: source.into(),
            added: report
                .added
                .iter()
                .map(|(line, id)| AddedRow {
                    line: *line,
                    id: *id,
                })
                .collect(),
            replaced: report
                .replaced
                .iter()
                .map(|r| ReplacedView {
                    line: r.line,
                    old: r.old,
                    new: r.new,
                })
                .collect(),
            duplicates: report
                .duplicates
                .iter()
                .map(|d| Collision::new(d.line, d.of))
                .collect(),
            conflicts: report
                .conflicts
                .iter()
                .map(|c| Collision::new(c.line, c.with))
                .collect(),
            errors: report.errors.iter().map(ErrorRow::new).collect(),
            ignored: report.ignored.iter().map(ErrorRow::new).collect(),
            not_inserted: report.not_inserted.clone(),
            failure: report.failure.clone(),
        }
    }
}

impl ImportSummary {
    /// Appends the rows of `part`, a later batch of the same import (an
    /// import job stores one part per committed batch). A failure in `part`
    /// replaces none recorded before.
    pub fn absorb(&mut self, part: ImportSummary) {
        self.added.extend(part.added);
        self.replaced.extend(part.replaced);
        self.duplicates.extend(part.duplicates);
        self.conflicts.extend(part.conflicts);
        self.errors.extend(part.errors);
        self.ignored.extend(part.ignored);
        self.not_inserted.extend(part.not_inserted);
        if self.failure.is_none() {
            self.failure = part.failure;
        }
    }

    /// Puts every list in line order (as [`ImportReport`]s are).
    pub fn sort_by_line(&mut self) {
        self.added.sort_by_key(|r| r.line);
        self.replaced.sort_by_key(|r| r.line);
        self.duplicates.sort_by_key(|r| r.line);
        self.conflicts.sort_by_key(|r| r.line);
        self.errors.sort_by_key(|r| r.line);
        self.ignored.sort_by_key(|r| r.line);
        self.not_inserted.sort_unstable();
    }

    /// The ids of the added nodes (replacements included), in line order of
    /// a sorted summary.
    pub fn added_ids(&self) -> Vec<NodeId> {
        self.added.iter().map(|r| r.id).collect()
    }
}
