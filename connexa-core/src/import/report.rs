//! The import report, and the batch driver that builds it.

use std::fmt;

use super::{Classified, Dedup, ImportError, ParsedNode};
use crate::domain::NodeId;
use crate::ports::InsertOutcome;

/// Where the node a row collides with lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// An earlier row of the same file.
    Line(usize),
    /// A node already in the store.
    Stored(NodeId),
}

impl fmt::Display for Existing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Existing::Line(l) => write!(f, "line {l}"),
            Existing::Stored(id) => write!(f, "stored node {id}"),
        }
    }
}

/// A row that duplicates a node (same ip, port, login and password).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateRow {
    /// The row's line.
    pub line: usize,
    /// What it duplicates.
    pub of: Existing,
}

/// A row with the ip, port and login of a node but another password. It is
/// kept out (the existing node stays as is) and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictRow {
    /// The row's line.
    pub line: usize,
    /// The node it conflicts with.
    pub with: Existing,
}

/// A row that replaced a stored node with the same ip, port and login but
/// another password (only with [`OnConflict::Replace`](super::OnConflict)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacedRow {
    /// The row's line.
    pub line: usize,
    /// The node that was deleted (its history keeps a `deleted` row).
    pub old: NodeId,
    /// The node that was added instead.
    pub new: NodeId,
}

/// What an import did, row by row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Rows inserted: (line, new node id). The "test after import" job takes
    /// exactly these ids.
    pub added: Vec<(usize, NodeId)>,
    /// Duplicates, within the file or already stored.
    pub duplicates: Vec<DuplicateRow>,
    /// Conflicts, within the file or with the store, kept as they were.
    pub conflicts: Vec<ConflictRow>,
    /// Stored nodes replaced by a row with a new password (on request only).
    pub replaced: Vec<ReplacedRow>,
    /// Rows that could not be read, with line numbers and masked text.
    pub errors: Vec<ImportError>,
    /// Lines that hold no node (headers, sellers' names), with line numbers
    /// and masked text: not errors, but no line is dropped without a word.
    /// Blank lines, `#` comments and separator lines (`-----`) are not listed.
    pub ignored: Vec<ImportError>,
    /// Parsed rows that were not inserted because the store failed (their batch
    /// was rolled back), by line.
    pub not_inserted: Vec<usize>,
    /// Why the import stopped early, if it did. Rows after `not_inserted` were
    /// not read.
    pub failure: Option<String>,
}

impl ImportReport {
    /// The ids of the added nodes.
    pub fn added_ids(&self) -> Vec<NodeId> {
        self.added.iter().map(|(_, id)| *id).collect()
    }

    /// Records what the store did with a batch of rows starting at `lines`:
    /// one outcome per row, and the new ids of the conflicting rows that
    /// replaced the stored nodes, in row order (see
    /// [`NodeStore::import_batch`](crate::ports::NodeStore::import_batch)).
    pub fn record_outcomes(
        &mut self,
        lines: &[usize],
        outcomes: &[InsertOutcome],
        replaced: &[NodeId],
    ) -> Result<(), OutcomeMismatch> {
        if lines.len() != outcomes.len() {
            return Err(OutcomeMismatch {
                expected: lines.len(),
                got: outcomes.len(),
            });
        }
        let mut new_ids = replaced.iter();
        for (&line, o) in lines.iter().zip(outcomes) {
            match *o {
                InsertOutcome::Inserted(id) => self.added.push((line, id)),
                InsertOutcome::Duplicate(id) => self.duplicates.push(DuplicateRow {
                    line,
                    of: Existing::Stored(id),
                }),
                InsertOutcome::Conflict(old) => match new_ids.next() {
                    Some(&new) => {
                        self.added.push((line, new));
                        self.replaced.push(ReplacedRow { line, old, new });
                    }
                    _ => self.conflicts.push(ConflictRow {
                        line,
                        with: Existing::Stored(old),
                    }),
                },
            }
        }
        Ok(())
    }

    /// Duplicates within the file.
    pub fn duplicates_in_file(&self) -> usize {
        self.duplicates
            .iter()
            .filter(|d| matches!(d.of, Existing::Line(_)))
            .count()
    }

    /// Duplicates of stored nodes.
    pub fn duplicates_stored(&self) -> usize {
        self.duplicates.len() - self.duplicates_in_file()
    }
}

impl fmt::Display for ImportReport {
    /// A summary line, then one line per conflict and error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "added {}, replaced {}, duplicates {} ({} within the file, {} already stored), conflicts {}, errors {}, ignored {}",
            self.added.len(),
            self.replaced.len(),
            self.duplicates.len(),
            self.duplicates_in_file(),
            self.duplicates_stored(),
            self.conflicts.len(),
            self.errors.len(),
            self.ignored.len()
        )?;
        if let Some(why) = &self.failure {
            write!(
                f,
                "\nSTOPPED: {why}; {} parsed rows were not inserted",
                self.not_inserted.len()
            )?;
        }
        for c in &self.conflicts {
            write!(
                f,
                "\nline {}: conflict: same ip, port and login as {} with another password (kept the existing one)",
                c.line, c.with
            )?;
        }
        for r in &self.replaced {
            write!(
                f,
                "\nline {}: replaced node {} (new password) with node {}",
                r.line, r.old, r.new
            )?;
        }
        for e in &self.errors {
            write!(f, "\n{e}")?;
        }
        for e in &self.ignored {
            write!(f, "\n{e}")?;
        }
        Ok(())
    }
}

/// The outcomes given do not match the batch (a store bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the store returned {got} outcomes for a batch of {expected} rows")]
#[non_exhaustive]
pub struct OutcomeMismatch {
    /// Rows in the batch.
    pub expected: usize,
    /// Outcomes returned.
    pub got: usize,
}

/// Drives an import in batches and builds its [`ImportReport`]; pure (the caller
/// does the inserting):
///
/// ```
/// use connexa_core::domain::NodeId;
/// use connexa_core::import::{parse, Importer};
/// use connexa_core::ports::InsertOutcome;
///
/// let list = "1.2.3.4:a:x\n1.2.3.4:a:x\n5.6.7.8:b:y\n9.9.9.9:c:z\nnonsense 42\n";
/// let mut imp = Importer::new(parse(list.as_bytes()));
/// loop {
///     let batch = imp.next_batch(1000);
///     if batch.is_empty() { break }
///     // store.insert(batch.iter().map(|p| p.node.clone()).collect()).await? in real life:
///     let outcomes = vec![InsertOutcome::Inserted(NodeId(1)), InsertOutcome::Duplicate(NodeId(7)),
///                         InsertOutcome::Conflict(NodeId(8))];
///     imp.record(&batch, &outcomes).unwrap();
/// }
/// let report = imp.finish();
/// assert_eq!(report.added, vec![(1, NodeId(1))]);
/// assert_eq!((report.duplicates.len(), report.duplicates_in_file()), (2, 1));
/// assert_eq!((report.conflicts.len(), report.errors.len()), (1, 1));
/// assert_eq!(report.errors[0].line, 5);
/// ```
#[derive(Debug)]
pub struct Importer<I> {
    rows: I,
    dedup: Dedup,
    report: ImportReport,
    stopped: bool,
    /// Rows taken from `rows` so far.
    read: u64,
}

impl<I: Iterator<Item = Result<ParsedNode, ImportError>>> Importer<I> {
    /// Wraps the parser's output.
    pub fn new(rows: I) -> Self {
        Importer {
            rows,
            dedup: Dedup::new(),
            report: ImportReport::default(),
            stopped: false,
            read: 0,
        }
    }

    fn next_row(&mut self) -> Option<Result<ParsedNode, ImportError>> {
        let row = self.rows.next()?;
        self.read += 1;
        Some(row)
    }

    /// Resuming an import whose first `rows` rows (of the parser's output,
    /// nodes and errors alike) are committed: reads those rows again without
    /// recording them, only so that the rows after them are told apart from
    /// the earlier ones of the same input (duplicates within the file)
    /// exactly as in one uninterrupted run. Line numbers play no part: a
    /// one-line JSON array holds many rows on line 1.
    pub fn skip_rows(&mut self, rows: u64) {
        while self.read < rows {
            let Some(row) = self.next_row() else { return };
            if let Ok(parsed) = row {
                let _ = self.dedup.classify(parsed);
            }
        }
    }

    /// Rows of the parser's output read so far: every one of them has been
    /// handed out in a batch or recorded in the report.
    pub fn rows_read(&self) -> u64 {
        self.read
    }

    /// Takes what was recorded so far out of the report (an import job
    /// commits the rows of each batch with it); the rest of the import
    /// records into an empty report.
    pub fn take_report(&mut self) -> ImportReport {
        std::mem::take(&mut self.report)
    }

    /// The next rows to insert (at most `max`, at least 1 unless the input is
    /// exhausted): errors and in-file duplicates/conflicts are recorded on the
    /// way. An empty batch means done.
    pub fn next_batch(&mut self, max: usize) -> Vec<ParsedNode> {
        let mut batch = Vec::new();
        if self.stopped {
            return batch;
        }
        while batch.len() < max.max(1) {
            let Some(row) = self.next_row() else { break };
            match row {
                Err(e) if e.reason == super::ErrorReason::NotANode => self.report.ignored.push(e),
                Err(e) => self.report.errors.push(e),
                Ok(parsed) => match self.dedup.classify(parsed) {
                    Classified::New(p) => batch.push(p),
                    Classified::Duplicate { line, first_line } => {
                        self.report.duplicates.push(DuplicateRow {
                            line,
                            of: Existing::Line(first_line),
                        })
                    }
                    Classified::Conflict { parsed, first_line } => {
                        self.report.conflicts.push(ConflictRow {
                            line: parsed.line,
                            with: Existing::Line(first_line),
                        })
                    }
                },
            }
        }
        batch
    }

    /// Records what the store did with a batch (one outcome per row, in order).
    pub fn record(
        &mut self,
        batch: &[ParsedNode],
        outcomes: &[InsertOutcome],
    ) -> Result<(), OutcomeMismatch> {
        if batch.len() != outcomes.len() {
            return Err(OutcomeMismatch {
                expected: batch.len(),
                got: outcomes.len(),
            });
        }
        for (p, o) in batch.iter().zip(outcomes) {
            match *o {
                InsertOutcome::Inserted(id) => self.report.added.push((p.line, id)),
                InsertOutcome::Duplicate(id) => self.report.duplicates.push(DuplicateRow {
                    line: p.line,
                    of: Existing::Stored(id),
                }),
                InsertOutcome::Conflict(id) => self.report.conflicts.push(ConflictRow {
                    line: p.line,
                    with: Existing::Stored(id),
                }),
            }
        }
        Ok(())
    }

    /// Records that stored conflicting nodes were replaced: each row moves from
    /// `conflicts` to `replaced`, and counts as added.
    pub fn record_replaced(&mut self, replaced: &[ReplacedRow]) {
        for r in replaced {
            self.report
                .conflicts
                .retain(|c| !(c.line == r.line && c.with == Existing::Stored(r.old)));
            self.report.added.push((r.line, r.new));
            self.report.replaced.push(*r);
        }
    }

    /// Records that the store failed on a batch (rolled back: none of its rows
    /// made it) and stops the import; [`next_batch`](Self::next_batch) returns
    /// nothing more.
    pub fn record_failure(&mut self, batch: &[ParsedNode], reason: impl fmt::Display) {
        self.report
            .not_inserted
            .extend(batch.iter().map(|p| p.line));
        self.report.failure = Some(reason.to_string());
        self.stopped = true;
    }

    /// The report so far (while importing, e.g. for progress).
    pub fn report(&self) -> &ImportReport {
        &self.report
    }

    /// The final report; every list is in line order.
    pub fn finish(mut self) -> ImportReport {
        self.report.duplicates.sort_by_key(|d| d.line);
        self.report.conflicts.sort_by_key(|c| c.line);
        self.report.errors.sort_by_key(|e| e.line);
        self.report.ignored.sort_by_key(|e| e.line);
        self.report.added.sort_by_key(|a| a.0);
        self.report.replaced.sort_by_key(|r| r.line);
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::parse;

    #[test]
    fn a_store_failure_reports_which_rows_made_it() {
        let list = "1.1.1.1:a:x\n2.2.2.2:b:y\n3.3.3.3:c:z\n4.4.4.4:d:w\n";
        let mut imp = Importer::new(parse(list.as_bytes()));
        let b1 = imp.next_batch(2);
        assert_eq!(b1.len(), 2);
        imp.record(
            &b1,
            &[
                InsertOutcome::Inserted(NodeId(1)),
                InsertOutcome::Inserted(NodeId(2)),
            ],
        )
        .unwrap();
        let b2 = imp.next_batch(2);
        assert_eq!(
            imp.record(&b2, &[InsertOutcome::Inserted(NodeId(3))]),
            Err(OutcomeMismatch {
                expected: 2,
                got: 1
            })
        );
        imp.record_failure(&b2, "database is locked");
        assert!(imp.next_batch(2).is_empty());
        let r = imp.finish();
        assert_eq!(r.added, vec![(1, NodeId(1)), (2, NodeId(2))]);
        assert_eq!(r.not_inserted, vec![3, 4]);
        let shown = r.to_string();
        assert!(shown.contains("STOPPED: database is locked"), "{shown}");
    }

    #[test]
    fn the_summary_names_every_problem() {
        let list = "Ip: 1.2.3.4\nLogin: a\nPass: x\n\n1.2.3.4:a:y\n1.2.3.999:a:topsecret\n";
        let mut imp = Importer::new(parse(list.as_bytes()));
        let b = imp.next_batch(10);
        imp.record(&b, &[InsertOutcome::Inserted(NodeId(9))])
            .unwrap();
        let r = imp.finish();
        let shown = r.to_string();
        assert!(
            shown.starts_with(
                "added 1, replaced 0, duplicates 0 (0 within the file, 0 already stored), conflicts 1, errors 1"
            ),
            "{shown}"
        );
        assert!(
            shown.contains("line 5: conflict: same ip, port and login as line 1"),
            "{shown}"
        );
        assert!(shown.contains("line 6: invalid IP address"), "{shown}");
        assert!(!shown.contains("topsecret"));
    }
}
