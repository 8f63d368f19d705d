//! [`S3LeaseStore`]: fleet-wide slot leases in S3, one small JSON object per (limit, slot),
//! `<base_path>/leases/<name>/<slot>.json`. Taking a slot is a conditional `PutObject`: a slot
//! never taken is created with `If-None-Match: *`, a released or expired one overwritten with
//! `If-Match: <etag>` of the copy read; a renewal and a release are `If-Match` on the lease's
//! own ETag, so a holder whose lease ran out and was taken can neither renew nor release it.
//! (A release overwrites the slot as free rather than deleting it: S3 has conditional deletes,
//! LocalStack does not yet.) An acquire reads at most `limit` objects.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use stepq_runs::error::StorageError;
use stepq_runs::lease::{check_limit, expiry, now_us, Lease, LeaseStore, SlotRecord};

use super::location::{decode_json, encode_json, Condition, Location};
use super::s3_client;

/// Fleet-wide slot leases under `<base_path>/leases/` in an S3 bucket.
#[derive(Clone)]
pub struct S3LeaseStore {
    location: Location,
}

impl S3LeaseStore {
    /// A store on `bucket` under `base_path`, with a client built from `sdk`.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        bucket: impl Into<String>,
        base_path: impl AsRef<str>,
    ) -> Self {
        Self::from_client(s3_client(sdk), bucket, base_path)
    }

    /// A store using an existing client.
    pub fn from_client(
        client: Client,
        bucket: impl Into<String>,
        base_path: impl AsRef<str>,
    ) -> Self {
        S3LeaseStore {
            location: Location::new(client, bucket, base_path.as_ref()),
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.location.bucket
    }

    /// The normalized base path (no leading or trailing `/`).
    pub fn base_path(&self) -> &str {
        &self.location.base
    }

    fn key(&self, name: &str, slot: usize) -> String {
        self.location.key(&format!("leases/{name}/{slot}.json"))
    }

    /// Writes `record` to `key` under `condition`; the new ETag, or `None` if the condition
    /// failed (someone else wrote the slot first, or is writing it now).
    async fn put(
        &self,
        key: &str,
        record: &SlotRecord,
        condition: Condition<'_>,
    ) -> Result<Option<String>, StorageError> {
        let body = encode_json("a lease", record)?;
        let written = self
            .location
            .put_tagged(key, body, "application/json", condition)
            .await?;
        Ok(written.ok())
    }

    /// The slot's record and ETag, if it exists.
    async fn read(&self, key: &str) -> Result<Option<(SlotRecord, String)>, StorageError> {
        let Some(object) = self.location.get(key).await? else {
            return Ok(None);
        };
        let record: SlotRecord = decode_json(key, &object.bytes)?;
        Ok(Some((record, object.e_tag.unwrap_or_default())))
    }
}

#[async_trait]
impl LeaseStore for S3LeaseStore {
    async fn acquire(
        &self,
        name: &str,
        limit: usize,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StorageError> {
        check_limit(name, limit)?;
        for slot in 0..limit {
            let key = self.key(name, slot);
            let existing = self.read(&key).await?;
            let now = now_us();
            let record = SlotRecord {
                holder: holder.to_string(),
                expires_at_us: expiry(now, ttl),
            };
            let written = match &existing {
                None => self.put(&key, &record, Condition::Absent).await?,
                Some((held, etag)) if held.is_free(now) => {
                    self.put(&key, &record, Condition::Matches(etag)).await?
                }
                Some(_) => continue,
            };
            if let Some(token) = written {
                return Ok(Some(Lease {
                    name: name.to_string(),
                    slot,
                    holder: holder.to_string(),
                    token,
                    expires_at_us: record.expires_at_us,
                }));
            }
        }
        Ok(None)
    }

    async fn renew(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, StorageError> {
        let record = SlotRecord {
            holder: lease.holder.clone(),
            expires_at_us: expiry(now_us(), ttl),
        };
        let key = self.key(&lease.name, lease.slot);
        match self
            .put(&key, &record, Condition::Matches(&lease.token))
            .await?
        {
            Some(token) => {
                lease.token = token;
                lease.expires_at_us = record.expires_at_us;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), StorageError> {
        let free = SlotRecord {
            holder: String::new(),
            expires_at_us: 0,
        };
        let key = self.key(&lease.name, lease.slot);
        self.put(&key, &free, Condition::Matches(&lease.token))
            .await
            .map(|_| ())
    }

    async fn held(&self, name: &str, limit: usize) -> Result<usize, StorageError> {
        check_limit(name, limit)?;
        let now = now_us();
        let mut held = 0;
        for slot in 0..limit {
            if let Some((record, _)) = self.read(&self.key(name, slot)).await? {
                held += usize::from(!record.is_free(now));
            }
        }
        Ok(held)
    }
}
