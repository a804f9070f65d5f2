//! Turns off SQLite's memory statistics, process-wide, before the first
//! database is opened.
//!
//! With statistics on (SQLite's default), every allocation SQLite makes takes
//! one global mutex. sqlx copies each column value of each row with
//! `sqlite3_value_dup` on its worker thread and frees it on the async side, so
//! a listing of 100 nodes under concurrent requests spent a third of its time
//! in that mutex (the HTTP API benchmark, docs/benchmarks.md). Connexa never
//! reads the statistics; the only visible effect is that
//! `sqlite3_memory_used()` reports 0 in this process.
#![allow(unsafe_code)]

use std::sync::Once;

static ONCE: Once = Once::new();

/// Called by [`super::SqlStore::connect`] before it opens a SQLite database.
pub(crate) fn disable() {
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_config` takes (SQLITE_CONFIG_MEMSTATUS, int) and
        // must not run while SQLite is used by another thread. It runs once,
        // before this crate opens its first database; if SQLite is already
        // initialised (something else in the process opened a database
        // first), it changes nothing and returns SQLITE_MISUSE.
        let rc = unsafe {
            libsqlite3_sys::sqlite3_config(
                libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            )
        };
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(
                rc,
                "SQLite was initialised already; memory statistics stay on"
            );
        }
    });
}
