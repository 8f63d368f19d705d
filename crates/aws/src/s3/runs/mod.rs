//! S3 run and heartbeat stores, for runs spread over many machines.
//!
//! Layout under `<base_path>/` in the bucket:
//!
//! ```text
//! runs/<run_id>/run.json          the run record
//! runs/<run_id>/events/<seq>      one event batch each: stepq_plan::pack of Vec<Event>
//! workers/<worker_id>.json        last heartbeat of each worker
//! leases/<name>/<slot>.json       fleet-wide slot leases (`leases.rs`)
//! ```
//!
//! `<seq>` is a 20-digit zero-padded number, so `ListObjectsV2` returns batches in order.
//! Writes are conditional, so concurrent writers never overwrite each other:
//!
//! - creating a run is a `PutObject` with `If-None-Match: *` (412 means the id is taken);
//! - a status change reads `run.json` with its ETag, validates the move and writes it back with
//!   `If-Match: <etag>`; a 412 means another writer got there first, so it re-reads and
//!   re-validates (409 `ConditionalRequestConflict`, a concurrent conditional write in flight,
//!   is retried the same way);
//! - an event batch is a `PutObject` of `events/<seq>` with `If-None-Match: *`; on 412 the
//!   writer takes the next number, on 409 it retries the same one. A batch is only written
//!   after its predecessor exists, so the log has no gaps and every reader sees one order.
//! - deleting a finished run (`delete_run`) overwrites `run.json` with a tombstone under
//!   `If-Match: <etag>` of the record it checked (the commit point, racing status changes
//!   like one), then deletes the event batches, then `run.json`.
//!
//! Both conditions need a store that honours them (AWS S3 since 2024, LocalStack 4, MinIO);
//! one that ignores them silently degrades to last-writer-wins, which the conformance suite
//! detects. Readers of another process's writes poll (see [`poll_for_events`]).
//!
//! [`poll_for_events`]: super::poll_for_events
//!
//! Files: `run_store.rs` is [`S3RunStore`] (records and event logs), `heartbeats.rs`
//! [`S3HeartbeatStore`], `location.rs` what both share (bucket, base path and client, the
//! conditional `PutObject`, listing, JSON and error helpers).

mod heartbeats;
mod leases;
mod location;
mod run_store;

pub use crate::s3::s3_client;
pub use heartbeats::S3HeartbeatStore;
pub use leases::S3LeaseStore;
pub use run_store::S3RunStore;

#[cfg(test)]
mod tests {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_s3::Client;

    /// A client whose every call fails to dispatch.
    pub(super) fn offline_client() -> Client {
        // Nothing listens on port 9 of the loopback: every call fails to dispatch.
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url("http://127.0.0.1:9")
            .force_path_style(true)
            .build();
        Client::from_conf(config)
    }
}
