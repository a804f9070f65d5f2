//! The spreadsheet formula guard of CSV cells (CSV injection), shared by the
//! CSV writer ([`export`](crate::export)) and reader ([`import`](crate::import)):
//! the writer prefixes a dangerous cell with `'`, the reader takes it off again.

/// The characters that make a spreadsheet read a cell as a formula (CSV
/// injection): `=`, `+`, `-`, `@`, tab and carriage return.
pub const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A CSV cell made inert for spreadsheets: a cell starting with one of
/// [`FORMULA_TRIGGERS`] gets a leading `'` (which spreadsheets show as text
/// and the import removes again), unless it is a plain number such as a
/// negative longitude.
///
/// ```
/// use connexa_core::export::neutralize_formula;
/// assert_eq!(neutralize_formula("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
/// assert_eq!(neutralize_formula("@SUM(A1)"), "'@SUM(A1)");
/// assert_eq!(neutralize_formula("-73.98"), "-73.98");
/// assert_eq!(neutralize_formula("Berlin"), "Berlin");
/// ```
pub fn neutralize_formula(cell: &str) -> std::borrow::Cow<'_, str> {
    if guarded(cell) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// Whether [`neutralize_formula`] prefixes `cell`: it starts with a trigger,
/// possibly after `'`s (so that a value starting with `'=` reads back
/// exactly), and is not a plain number.
fn guarded(cell: &str) -> bool {
    cell.trim_start_matches('\'').starts_with(FORMULA_TRIGGERS) && cell.parse::<f64>().is_err()
}

/// Undoes [`neutralize_formula`]: a cell of our CSV that it prefixed loses
/// its first `'`.
pub(crate) fn unneutralize_formula(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if guarded(rest) => rest,
        _ => cell,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_cells_read_back_exactly() {
        for cell in [
            "=1+1", "@x", "+x", "-x", "\tx", "\rx", "'=x", "''@y", "plain", "-73.98", "+1", "'", "",
        ] {
            let written = neutralize_formula(cell);
            assert_eq!(
                unneutralize_formula(&written),
                cell,
                "{cell:?} → {written:?}"
            );
        }
        assert_eq!(neutralize_formula("'=x"), "''=x");
        // A `'` the writer did not add stays.
        assert_eq!(unneutralize_formula("'plain"), "'plain");
        assert_eq!(unneutralize_formula("'-1.5"), "'-1.5");
    }
}
