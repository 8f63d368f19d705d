//! Local-directory run and heartbeat stores (the embedded default, under `.stepq/`).
//!
//! Layout under the root:
//!
//! ```text
//! runs/<run_id>/record/<rev>.json   run record revisions (0 = as created; highest = current)
//! runs/<run_id>/events/<seq>.bin    one event batch each: stepq_plan::pack of Vec<Event>
//! runs/<run_id>/tmp/                files being written
//! workers/<worker_id>.json          last heartbeat of each worker
//! ```
//!
//! `<rev>` and `<seq>` are 20-digit zero-padded numbers. Every record revision and event batch
//! is written whole to `tmp/` and then published with a hard link, which fails if the name is
//! taken: a file under its final name is always complete, and of two writers claiming the same
//! name exactly one wins. A status change is a compare-and-set on the revision number (read
//! revision `n`, validate, publish `n + 1`; on conflict re-read and re-validate), so no lock
//! can be left behind by a killed process. An event writer that loses a sequence number takes
//! the next one; a batch is only published after its predecessor exists, so the log has no
//! gaps and every reader sees the same order. Old revisions are kept: they are the run's status
//! history. Deleting a finished run publishes an empty revision after the one it checked (a
//! tombstone: the run reads as not found from then on, and no status change can follow it),
//! then removes `runs/<run_id>/`. Files are not fsync'ed: a killed process loses nothing, a power cut may.

mod files;
mod heartbeat_store;
mod run_store;

pub use heartbeat_store::LocalDirHeartbeatStore;
pub use run_store::LocalDirRunStore;
