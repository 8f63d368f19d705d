//! Every conformance suite of the traits the SQLite store implements (one test per check).
//! `reopen` opens a second, independent store on the same file — its own writer thread and
//! read connections, as another process has — so the concurrent compare-and-set and
//! survives-a-new-instance checks run across two handles that only share the file.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use stepq_cancel::conformance::CancelStoreFactory;
use stepq_results::conformance::{OutputStoreFactory, ResultBackendFactory};
use stepq_results::{OutputStore, ResultBackend};
use stepq_runs::conformance::{HeartbeatStoreFactory, LeaseStoreFactory, RunStoreFactory};
use stepq_sqlite::{
    SqliteCancelStore, SqliteHeartbeatStore, SqliteOptions, SqliteRunStore, SqliteStore,
};
use tempfile::TempDir;

/// Each fresh store gets its own temporary directory, kept until the factory is dropped.
#[derive(Default)]
struct Sqlite {
    dirs: Mutex<Vec<TempDir>>,
    /// Outputs above this go to files (a small limit puts the suite's outputs on both paths).
    inline_limit: Option<usize>,
}

impl Sqlite {
    fn with_inline_limit(limit: usize) -> Self {
        Sqlite {
            inline_limit: Some(limit),
            ..Sqlite::default()
        }
    }

    fn open(&self, dir: &std::path::Path) -> SqliteStore {
        let mut options = SqliteOptions::default();
        if let Some(limit) = self.inline_limit {
            options.inline_output_limit = limit;
        }
        SqliteStore::open_with(dir, options).expect("open the database")
    }

    fn fresh_store(&self) -> SqliteStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = self.open(&dir.path().join(".stepq"));
        self.dirs.lock().unwrap().push(dir);
        store
    }

    fn reopen_store(&self, store: &SqliteStore) -> SqliteStore {
        let dir: PathBuf = store.path().parent().expect("state dir").to_path_buf();
        self.open(&dir)
    }
}

impl RunStoreFactory for Sqlite {
    type Store = SqliteRunStore;
    async fn fresh(&self) -> SqliteRunStore {
        self.fresh_store().runs()
    }
    async fn reopen(&self, store: &SqliteRunStore) -> SqliteRunStore {
        self.reopen_store(store.store()).runs()
    }
}

impl HeartbeatStoreFactory for Sqlite {
    type Store = SqliteHeartbeatStore;
    async fn fresh(&self) -> SqliteHeartbeatStore {
        self.fresh_store().heartbeats()
    }
    async fn reopen(&self, store: &SqliteHeartbeatStore) -> SqliteHeartbeatStore {
        self.reopen_store(store.store()).heartbeats()
    }
}

impl LeaseStoreFactory for Sqlite {
    type Store = stepq_sqlite::SqliteLeaseStore;
    async fn fresh(&self) -> stepq_sqlite::SqliteLeaseStore {
        self.fresh_store().leases()
    }
    async fn reopen(
        &self,
        store: &stepq_sqlite::SqliteLeaseStore,
    ) -> stepq_sqlite::SqliteLeaseStore {
        self.reopen_store(store.store()).leases()
    }
}

impl CancelStoreFactory for Sqlite {
    type Store = SqliteCancelStore;
    async fn fresh(&self) -> SqliteCancelStore {
        self.fresh_store().cancels()
    }
    async fn reopen(&self, store: &SqliteCancelStore) -> SqliteCancelStore {
        self.reopen_store(store.store()).cancels()
    }
    async fn corrupt(&self, store: &SqliteCancelStore, task_id: &str) {
        let conn = rusqlite::Connection::open(store.store().path()).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn.execute(
            "INSERT OR REPLACE INTO cancels (task_id, marker) VALUES (?1, ?2)",
            rusqlite::params![task_id, b"{ not a marker".to_vec()],
        )
        .unwrap();
    }
}

#[async_trait]
impl ResultBackendFactory for Sqlite {
    async fn fresh(&self) -> Arc<dyn ResultBackend> {
        Arc::new(self.fresh_store().results())
    }
}

#[async_trait]
impl OutputStoreFactory for Sqlite {
    async fn fresh(&self) -> Arc<dyn OutputStore> {
        Arc::new(self.fresh_store().outputs())
    }
}

stepq_runs::run_store_conformance_tests!(sqlite_runs, Sqlite::default());
stepq_runs::heartbeat_store_conformance_tests!(sqlite_heartbeats, Sqlite::default());
stepq_runs::lease_store_conformance_tests!(sqlite_leases, Sqlite::default());
stepq_cancel::cancel_store_conformance_tests!(sqlite_cancels, Sqlite::default());
stepq_results::result_backend_conformance_tests!(sqlite_results, Sqlite::default());
stepq_results::output_store_conformance_tests!(sqlite_outputs, Sqlite::default());
// Every output of the suite larger than 16 bytes goes through a file beside the database.
stepq_results::output_store_conformance_tests!(
    sqlite_outputs_as_files,
    Sqlite::with_inline_limit(16)
);
