//! The stores every test of the state runs on: a SQLite file, and a fresh
//! database of a private PostgreSQL cluster (started once per test binary
//! by the harness from Debian's packages; see `harness/src/postgres.rs`).

use std::panic::AssertUnwindSafe;

use super::StoreLocation;

/// A store for one test; a SQLite file lives as long as this.
pub(crate) struct TestStore {
    pub(crate) location: StoreLocation,
    _dir: Option<tempfile::TempDir>,
}

/// A new SQLite file.
pub(crate) fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    TestStore {
        location: StoreLocation::Sqlite(dir.path().join("state.db")),
        _dir: Some(dir),
    }
}

/// A new, empty PostgreSQL database. PostgreSQL missing is a failure, not
/// a skip: `.ci/setup` installs it.
pub(crate) fn postgres() -> TestStore {
    let url = cutover_harness::postgres::shared()
        .create_database()
        .unwrap_or_else(|e| panic!("cannot create a PostgreSQL database for the test: {e}"));
    TestStore {
        location: StoreLocation::parse(&url),
        _dir: None,
    }
}

/// Runs `test` on a new store of each kind; a failure names the store.
pub(crate) fn each_store(test: impl Fn(&StoreLocation)) {
    for store in [sqlite(), postgres()] {
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| test(&store.location))) {
            eprintln!("the test failed on {}", store.location);
            std::panic::resume_unwind(panic);
        }
    }
}
