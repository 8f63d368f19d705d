//! The run record, its status lifecycle and the config digest.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::StorageError;

/// Where a run is in its lifecycle.
///
/// ```text
/// QUEUED    -> STARTING | CANCELING | CANCELED | FAILURE
/// STARTING  -> STARTED  | CANCELING | CANCELED | FAILURE
/// STARTED   -> SUCCESS  | FAILURE   | CANCELING | CANCELED
/// CANCELING -> CANCELED
/// FAILURE | CANCELED -> STARTING        (resume)
/// STARTING | STARTED -> STARTING        (takeover: resume of a run whose orchestrator died)
/// ```
///
/// A takeover is only applied as a compare-and-set on both the status and the orchestrator
/// the run was seen with ([`StatusChange::expecting`] and
/// [`StatusChange::expecting_orchestrator`]; see [`RunRecord::apply`]), so two resumes of
/// one stuck run cannot both win, and a resume never steals a run whose orchestrator moved on.
///
/// Displayed, parsed and stored as the upper-case names above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Created; its `execute_job` task waits in the queue.
    Queued,
    /// An orchestrator picked it up and is preparing it.
    Starting,
    /// Steps are executing.
    Started,
    /// Every selected step succeeded (terminal).
    Success,
    /// At least one step failed, or the run could not start (terminal; resumable).
    Failure,
    /// Cancellation was requested and is landing.
    Canceling,
    /// The run was canceled (terminal; resumable).
    Canceled,
}

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Queued,
        RunStatus::Starting,
        RunStatus::Started,
        RunStatus::Success,
        RunStatus::Failure,
        RunStatus::Canceling,
        RunStatus::Canceled,
    ];

    /// Whether the run is over (`SUCCESS`, `FAILURE`, `CANCELED`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Success | RunStatus::Failure | RunStatus::Canceled
        )
    }

    /// Whether the lifecycle allows moving from `self` to `next`.
    ///
    /// Allowed: `QUEUED -> STARTING | CANCELING | CANCELED | FAILURE` (failure: the launch
    /// could not be carried out), `STARTING -> STARTED | CANCELING | CANCELED | FAILURE`,
    /// `STARTED -> SUCCESS | FAILURE | CANCELING | CANCELED`, `CANCELING -> CANCELED`,
    /// resume: `FAILURE | CANCELED -> STARTING`, and takeover: `STARTING | STARTED ->
    /// STARTING` (see [`is_takeover`](RunStatus::is_takeover)). Nothing leaves `SUCCESS`; no
    /// other status moves to itself.
    pub fn can_transition_to(self, next: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, next),
            (Queued, Starting | Canceling | Canceled | Failure)
                | (Starting, Started | Canceling | Canceled | Failure)
                | (Started, Success | Failure | Canceling | Canceled)
                | (Canceling, Canceled)
                | (Failure | Canceled, Starting)
        ) || self.is_takeover(next)
    }

    /// Whether moving from `self` to `next` takes a running run over from its orchestrator
    /// (`STARTING | STARTED -> STARTING`): allowed only with the expected status and
    /// orchestrator given (see [`RunRecord::apply`]).
    pub fn is_takeover(self, next: RunStatus) -> bool {
        matches!(
            (self, next),
            (
                RunStatus::Starting | RunStatus::Started,
                RunStatus::Starting
            )
        )
    }

    /// The upper-case name, as displayed and stored (`QUEUED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "QUEUED",
            RunStatus::Starting => "STARTING",
            RunStatus::Started => "STARTED",
            RunStatus::Success => "SUCCESS",
            RunStatus::Failure => "FAILURE",
            RunStatus::Canceling => "CANCELING",
            RunStatus::Canceled => "CANCELED",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`RunStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run status `{input}` (expected one of QUEUED, STARTING, STARTED, SUCCESS, FAILURE, CANCELING, CANCELED)")]
pub struct ParseRunStatusError {
    /// The text that was given.
    pub input: String,
}

impl FromStr for RunStatus {
    type Err = ParseRunStatusError;

    /// Parses a status name, ignoring ASCII case (`queued`, `Started`, `CANCELED`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseRunStatusError {
                input: s.to_string(),
            })
    }
}

/// What is stored about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// Job name in the code location.
    pub job_name: String,
    /// Lifecycle status.
    pub status: RunStatus,
    /// Free-form tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// [`config_digest`] of `run_config`.
    pub config_digest: String,
    /// Steps selected; `None` runs every step.
    #[serde(default)]
    pub step_selection: Option<Vec<String>>,
    /// Free-form run config.
    pub run_config: serde_json::Value,
    /// Microseconds since the Unix epoch when the run was created.
    pub created_at: u64,
    /// Microseconds since the Unix epoch when the run last entered `STARTED`.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// Microseconds since the Unix epoch when the run last entered a terminal status; cleared
    /// when it is resumed.
    #[serde(default)]
    pub ended_at: Option<u64>,
    /// Who orchestrates it (a worker name or process), once one picked it up.
    #[serde(default)]
    pub orchestrator: Option<String>,
}

impl RunRecord {
    /// A `QUEUED` run created now, with its config digest computed, no tags, every step.
    pub fn new(
        run_id: impl Into<String>,
        job_name: impl Into<String>,
        run_config: serde_json::Value,
    ) -> Self {
        RunRecord {
            run_id: run_id.into(),
            job_name: job_name.into(),
            status: RunStatus::Queued,
            tags: BTreeMap::new(),
            config_digest: config_digest(&run_config),
            step_selection: None,
            run_config,
            created_at: stepq_plan::events::now_us(),
            started_at: None,
            ended_at: None,
            orchestrator: None,
        }
    }

    /// Adds a tag.
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Restricts the run to the given steps.
    pub fn with_step_selection(mut self, steps: Vec<String>) -> Self {
        self.step_selection = Some(steps);
        self
    }

    /// The record after `change`, made at `now_us`; the record itself is left unchanged.
    ///
    /// Fails with [`StorageError::UnexpectedStatus`] when `change.expected` does not match and
    /// with [`StorageError::InvalidTransition`] when the lifecycle forbids the move; a takeover
    /// ([`RunStatus::is_takeover`]) is an invalid transition unless the change expects both
    /// the current status and the current orchestrator, and fails with
    /// [`StorageError::UnexpectedOrchestrator`] when another orchestrator holds the run. Entering
    /// `STARTED` sets `started_at`; entering a terminal status sets `ended_at`; leaving one
    /// (resume) clears it.
    pub fn apply(&self, change: &StatusChange, now_us: u64) -> Result<RunRecord, StorageError> {
        if let Some(expected) = change.expected {
            if expected != self.status {
                return Err(StorageError::UnexpectedStatus {
                    run_id: self.run_id.clone(),
                    expected,
                    found: self.status,
                });
            }
        }
        if let Some(expected) = &change.expected_orchestrator {
            if self.orchestrator.as_ref() != Some(expected) {
                return Err(StorageError::UnexpectedOrchestrator {
                    run_id: self.run_id.clone(),
                    expected: expected.clone(),
                    found: self.orchestrator.clone(),
                });
            }
        }
        let guarded = change.expected.is_some() && change.expected_orchestrator.is_some();
        if !self.status.can_transition_to(change.to)
            || (self.status.is_takeover(change.to) && !guarded)
        {
            return Err(StorageError::InvalidTransition {
                run_id: self.run_id.clone(),
                from: self.status,
                to: change.to,
            });
        }
        let mut next = self.clone();
        next.status = change.to;
        if change.to == RunStatus::Started {
            next.started_at = Some(now_us);
        }
        if change.to.is_terminal() {
            next.ended_at = Some(now_us);
        } else if self.status.is_terminal() {
            next.ended_at = None;
        }
        if let Some(orchestrator) = &change.orchestrator {
            next.orchestrator = Some(orchestrator.clone());
        }
        Ok(next)
    }
}

/// A requested status change, applied atomically (compare-and-set) by a run store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// Status to move to.
    pub to: RunStatus,
    /// Apply only if the run is currently in this status.
    pub expected: Option<RunStatus>,
    /// Record this orchestrator on the run.
    pub orchestrator: Option<String>,
    /// Apply only if this orchestrator holds the run (required for a takeover).
    pub expected_orchestrator: Option<String>,
}

impl StatusChange {
    /// Move to `status` from whatever status allows it.
    pub fn to(status: RunStatus) -> Self {
        StatusChange {
            to: status,
            expected: None,
            orchestrator: None,
            expected_orchestrator: None,
        }
    }

    /// Only if the run is currently `status` (e.g. claim a run only while it is `QUEUED`, so a
    /// redelivered `execute_job` task cannot restart a run that already failed).
    pub fn expecting(mut self, status: RunStatus) -> Self {
        self.expected = Some(status);
        self
    }

    /// Record `orchestrator` as the one running the run.
    pub fn by(mut self, orchestrator: impl Into<String>) -> Self {
        self.orchestrator = Some(orchestrator.into());
        self
    }

    /// Only if `orchestrator` holds the run (e.g. take over a STARTED run from the
    /// orchestrator it was seen with, and only from that one).
    pub fn expecting_orchestrator(mut self, orchestrator: impl Into<String>) -> Self {
        self.expected_orchestrator = Some(orchestrator.into());
        self
    }
}

/// A 64-bit FNV-1a digest of the canonical JSON text of `config` (object keys sorted, no
/// whitespace), as 16 lower-case hex digits. Equal configs give equal digests whatever the
/// key order; it identifies a config, it is not a cryptographic hash.
pub fn config_digest(config: &serde_json::Value) -> String {
    let mut text = String::new();
    write_canonical(config, &mut text);
    format!("{:016x}", fnv1a64(text.as_bytes()))
}

/// The 64-bit FNV-1a hash of `bytes` (a checksum, not a cryptographic hash).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use RunStatus::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn config_digest_ignores_key_order_but_not_values() {
        let a = json!({"b": 1, "a": {"y": [1, "x"], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, "x"]}, "b": 1});
        assert_eq!(config_digest(&a), config_digest(&b));
        assert_eq!(config_digest(&a).len(), 16);
        assert_ne!(
            config_digest(&a),
            config_digest(&json!({"b": 2, "a": {"y": [1, "x"], "x": null}}))
        );
        assert_ne!(config_digest(&json!("1")), config_digest(&json!(1)));
        let mut text = String::new();
        write_canonical(&b, &mut text);
        assert_eq!(text, r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#);
    }

    #[test]
    fn status_names_round_trip_through_display_from_str_and_serde() {
        for status in RunStatus::ALL {
            assert_eq!(status.to_string().parse::<RunStatus>().unwrap(), status);
            let lower = status.to_string().to_lowercase();
            assert_eq!(lower.parse::<RunStatus>().unwrap(), status);
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
            assert_eq!(serde_json::from_str::<RunStatus>(&json).unwrap(), status);
        }
    }

    #[test]
    fn unknown_status_name_is_an_error_listing_the_valid_ones() {
        let err = "RUNNING".parse::<RunStatus>().unwrap_err();
        assert_eq!(err.input, "RUNNING");
        assert!(err.to_string().contains("CANCELING"), "{err}");
    }

    #[test]
    fn terminal_statuses_are_success_failure_canceled() {
        let terminal: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal, vec![Success, Failure, Canceled]);
    }

    #[test]
    fn transition_table_is_exactly_the_documented_one() {
        let allowed = [
            (Queued, Starting),
            (Queued, Canceling),
            (Queued, Canceled),
            (Queued, Failure),
            (Starting, Started),
            (Starting, Canceling),
            (Starting, Canceled),
            (Starting, Failure),
            (Started, Success),
            (Started, Failure),
            (Started, Canceling),
            (Started, Canceled),
            (Canceling, Canceled),
            (Failure, Starting),
            (Canceled, Starting),
            (Starting, Starting),
            (Started, Starting),
        ];
        for from in RunStatus::ALL {
            for to in RunStatus::ALL {
                assert_eq!(
                    from.can_transition_to(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn apply_sets_times_and_clears_ended_on_resume() {
        let run = RunRecord::new("r1", "job", json!({}));
        let starting = run
            .apply(&StatusChange::to(Starting).by("worker-a"), 10)
            .unwrap();
        assert_eq!(starting.orchestrator.as_deref(), Some("worker-a"));
        assert_eq!(starting.started_at, None);
        let started = starting.apply(&StatusChange::to(Started), 20).unwrap();
        assert_eq!(started.started_at, Some(20));
        let failed = started.apply(&StatusChange::to(Failure), 30).unwrap();
        assert_eq!(failed.ended_at, Some(30));
        let resumed = failed
            .apply(&StatusChange::to(Starting).by("worker-b"), 40)
            .unwrap();
        assert_eq!(resumed.ended_at, None);
        assert_eq!(resumed.started_at, Some(20));
        assert_eq!(resumed.orchestrator.as_deref(), Some("worker-b"));
        let restarted = resumed.apply(&StatusChange::to(Started), 50).unwrap();
        assert_eq!(restarted.started_at, Some(50));
        assert_eq!(run.status, Queued, "apply leaves the original alone");
    }

    #[test]
    fn takeover_needs_the_expected_status_and_orchestrator() {
        let run = RunRecord::new("r1", "job", json!({}))
            .apply(&StatusChange::to(Starting).by("dead"), 1)
            .unwrap()
            .apply(&StatusChange::to(Started), 2)
            .unwrap();
        for unguarded in [
            StatusChange::to(Starting).by("b"),
            StatusChange::to(Starting).by("b").expecting(Started),
        ] {
            assert!(matches!(
                run.apply(&unguarded, 3),
                Err(StorageError::InvalidTransition {
                    from: Started,
                    to: Starting,
                    ..
                })
            ));
        }
        let wrong = StatusChange::to(Starting)
            .by("b")
            .expecting(Started)
            .expecting_orchestrator("other");
        match run.apply(&wrong, 3) {
            Err(StorageError::UnexpectedOrchestrator {
                expected, found, ..
            }) => assert_eq!(
                (expected.as_str(), found.as_deref()),
                ("other", Some("dead"))
            ),
            other => panic!("{other:?}"),
        }
        let takeover = StatusChange::to(Starting)
            .by("b")
            .expecting(Started)
            .expecting_orchestrator("dead");
        let taken = run.apply(&takeover, 3).unwrap();
        assert_eq!(taken.status, Starting);
        assert_eq!(taken.orchestrator.as_deref(), Some("b"));
        // The same change again loses: the orchestrator is no longer `dead`.
        assert!(matches!(
            taken.apply(&takeover, 4),
            Err(StorageError::UnexpectedStatus { .. })
        ));
        let stuck_starting = taken
            .apply(
                &StatusChange::to(Starting)
                    .by("c")
                    .expecting(Starting)
                    .expecting_orchestrator("b"),
                5,
            )
            .unwrap();
        assert_eq!(stuck_starting.orchestrator.as_deref(), Some("c"));
    }

    #[test]
    fn apply_rejects_invalid_transition_naming_both_states() {
        let run = RunRecord::new("r1", "job", json!({}));
        match run.apply(&StatusChange::to(Success), 1) {
            Err(StorageError::InvalidTransition { run_id, from, to }) => {
                assert_eq!((run_id.as_str(), from, to), ("r1", Queued, Success));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn apply_checks_expected_status_first() {
        let mut run = RunRecord::new("r1", "job", json!({}));
        run.status = Failure;
        let claim = StatusChange::to(Starting).expecting(Queued);
        match run.apply(&claim, 1) {
            Err(StorageError::UnexpectedStatus {
                expected, found, ..
            }) => assert_eq!((expected, found), (Queued, Failure)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn record_json_round_trips_and_tolerates_missing_optional_fields() {
        let run = RunRecord::new("r1", "job", json!({"k": 1}))
            .with_tag("owner", "me")
            .with_step_selection(vec!["a".into()]);
        let text = serde_json::to_string(&run).unwrap();
        assert_eq!(serde_json::from_str::<RunRecord>(&text).unwrap(), run);
        let minimal: RunRecord = serde_json::from_str(
            r#"{"run_id":"r","job_name":"j","status":"QUEUED","config_digest":"0","run_config":null,"created_at":1}"#,
        )
        .unwrap();
        assert_eq!(minimal.status, Queued);
        assert!(minimal.tags.is_empty() && minimal.orchestrator.is_none());
    }
}
