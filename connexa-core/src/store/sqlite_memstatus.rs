//! Turns off SQLite's memory statistics, process-wide.
//!
//! With statistics on (SQLite's default), every allocation SQLite makes takes
//! one global mutex. sqlx copies each column value of each row with
//! `sqlite3_value_dup` on its worker thread and frees it on the async side, so
//! a listing of 100 nodes under concurrent requests spent a third of its time
//! in that mutex (the HTTP API benchmark, docs/benchmarks.md). Connexa never
//! reads the statistics; the only visible effect is that
//! `sqlite3_memory_used()` reports 0 in this process.
#![allow(unsafe_code)]

/// Turns off SQLite's memory statistics for the whole process, which removes
/// a process-wide mutex from every SQLite allocation (worth about a quarter
/// more listings per second under concurrent load; docs/benchmarks.md). The
/// `connexa` and `connexa-http` binaries call it first thing in `main`.
/// Returns `false` when SQLite was initialised already (a database was
/// opened before): then nothing changed.
///
/// # Safety
/// SQLite's `sqlite3_config` is not thread-safe: call this before any thread
/// of the process uses SQLite (through Connexa, sqlx, rusqlite or anything
/// else), typically at the start of `main`.
pub unsafe fn disable_sqlite_memory_statistics() -> bool {
    // SAFETY: the caller guarantees no other thread uses SQLite now; the
    // arguments are the documented (SQLITE_CONFIG_MEMSTATUS, int) pair. If
    // SQLite is initialised already, it returns SQLITE_MISUSE and changes
    // nothing.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_config(
            libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS,
            0 as std::ffi::c_int,
        )
    };
    rc == libsqlite3_sys::SQLITE_OK
}
