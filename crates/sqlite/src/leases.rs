//! [`SqliteLeaseStore`]: fleet-wide slot leases, one row per (limit, slot), taken and renewed
//! in write transactions (SQLite serializes writers, across processes too), so two holders
//! never hold one slot.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use stepq_runs::lease::{check_limit, expiry, now_us};
use stepq_runs::{Lease, LeaseStore, StorageError};

use crate::error::SqliteError;
use crate::SqliteStore;

/// The lease store of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteLeaseStore {
    store: SqliteStore,
}

impl SqliteLeaseStore {
    pub(crate) fn new(store: SqliteStore) -> Self {
        SqliteLeaseStore { store }
    }

    /// The database this view reads and writes.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }
}

#[async_trait]
impl LeaseStore for SqliteLeaseStore {
    async fn acquire(
        &self,
        name: &str,
        limit: usize,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StorageError> {
        check_limit(name, limit)?;
        let (name, holder, path) = (
            name.to_string(),
            holder.to_string(),
            self.store.inner.path.clone(),
        );
        self.store
            .inner
            .writer
            .write(move |conn| {
                let sql = |e| StorageError::from(SqliteError::sql(&path, "taking a lease", e));
                let now = now_us();
                for slot in 0..limit {
                    let row: Option<(i64, i64)> = conn
                        .prepare_cached(
                            "SELECT expires_at, version FROM leases WHERE name = ?1 AND slot = ?2",
                        )
                        .and_then(|mut s| {
                            s.query_row(params![name, slot as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                                .optional()
                        })
                        .map_err(sql)?;
                    let version = match row {
                        Some((expires_at, _)) if expires_at as u64 > now => continue,
                        Some((_, version)) => version + 1,
                        None => 1,
                    };
                    let expires_at = expiry(now, ttl);
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO leases (name, slot, holder, expires_at, version) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            name,
                            slot as i64,
                            holder,
                            expires_at as i64,
                            version
                        ])
                    })
                    .map_err(sql)?;
                    return Ok(Some(Lease {
                        name: name.clone(),
                        slot,
                        holder: holder.clone(),
                        token: version.to_string(),
                        expires_at_us: expires_at,
                    }));
                }
                Ok(None)
            })
            .await
    }

    async fn renew(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, StorageError> {
        let (name, slot, token, path) = (
            lease.name.clone(),
            lease.slot as i64,
            lease.token.parse::<i64>().unwrap_or(-1),
            self.store.inner.path.clone(),
        );
        let renewed = self
            .store
            .inner
            .writer
            .write(move |conn| {
                let expires_at = expiry(now_us(), ttl);
                let changed = conn
                    .prepare_cached(
                        "UPDATE leases SET expires_at = ?1, version = version + 1 \
                         WHERE name = ?2 AND slot = ?3 AND version = ?4",
                    )
                    .and_then(|mut s| s.execute(params![expires_at as i64, name, slot, token]))
                    .map_err(|e| {
                        StorageError::from(SqliteError::sql(&path, "renewing a lease", e))
                    })?;
                Ok::<_, StorageError>((changed == 1).then_some(expires_at))
            })
            .await?;
        match renewed {
            Some(expires_at) => {
                lease.token = (token + 1).to_string();
                lease.expires_at_us = expires_at;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), StorageError> {
        let (name, slot, token, path) = (
            lease.name.clone(),
            lease.slot as i64,
            lease.token.parse::<i64>().unwrap_or(-1),
            self.store.inner.path.clone(),
        );
        self.store
            .inner
            .writer
            .write(move |conn| {
                conn.prepare_cached(
                    "UPDATE leases SET holder = '', expires_at = 0, version = version + 1 \
                     WHERE name = ?1 AND slot = ?2 AND version = ?3",
                )
                .and_then(|mut s| s.execute(params![name, slot, token]))
                .map_err(|e| StorageError::from(SqliteError::sql(&path, "releasing a lease", e)))?;
                Ok(())
            })
            .await
    }

    async fn held(&self, name: &str, limit: usize) -> Result<usize, StorageError> {
        let path = &self.store.inner.path;
        let sql = |e| StorageError::from(SqliteError::sql(path, "counting leases", e));
        let now = now_us() as i64;
        let held: i64 = self.store.inner.reads.read(|conn| {
            conn.prepare_cached(
                "SELECT COUNT(*) FROM leases WHERE name = ?1 AND slot < ?2 AND expires_at > ?3",
            )
            .and_then(|mut s| s.query_row(params![name, limit as i64, now], |r| r.get(0)))
            .map_err(sql)
        })?;
        Ok(held as usize)
    }
}
