//! [`FailureKind`]: what kind of failure a failed task or step reports.

use std::hash::{Hash, Hasher};

/// Declares [`FailureKind`] from one table: each known kind with its spelling on the wire and
/// the older spellings that still decode to it.
macro_rules! failure_kinds {
    ($($(#[doc = $doc:literal])* $variant:ident = $spelling:literal $(| $alias:literal)*,)*) => {
        /// What kind of failure a failed task result (`TaskError.kind`) or a step error
        /// (`ErrorInfo.kind`) reports.
        ///
        /// On the wire a kind is a plain string. Each known kind has one spelling
        /// ([`FailureKind::as_str`]): task-level kinds in `PascalCase`, like the exception
        /// names TaskIQ peers send; step-level kinds in `snake_case`. Decoding also accepts the
        /// older spellings stepq wrote (`panic` for [`Panic`](FailureKind::Panic),
        /// `run_not_started` for [`RunNotStarted`](FailureKind::RunNotStarted)). Any other
        /// string — a Python exception name, an op's own kind — is
        /// [`Other`](FailureKind::Other) and is written back unchanged.
        ///
        /// Equality follows the kind, not the spelling: `FailureKind::Panic == "panic"`.
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub enum FailureKind {
            $($(#[doc = $doc])* $variant,)*
            /// A kind stepq does not know (a Python exception name, an op's own kind such as
            /// `bad_record`); kept verbatim. [`From`] and [`FromStr`](std::str::FromStr) never
            /// make one for a known spelling.
            Other(String),
        }

        impl FailureKind {
            /// Every known kind (all but [`Other`](FailureKind::Other)).
            pub const KNOWN: &'static [FailureKind] = &[$(FailureKind::$variant,)*];

            /// A known kind's spelling on the wire; `None` for [`Other`](FailureKind::Other).
            fn spelling(&self) -> Option<&'static str> {
                match self {
                    $(FailureKind::$variant => Some($spelling),)*
                    FailureKind::Other(_) => None,
                }
            }

            /// Older spellings that still decode to this kind (none for most).
            pub fn old_spellings(&self) -> &'static [&'static str] {
                match self {
                    $(FailureKind::$variant => &[$($alias,)*],)*
                    FailureKind::Other(_) => &[],
                }
            }

            /// The known kind spelled `s` (in its spelling or an older one).
            fn known(s: &str) -> Option<FailureKind> {
                match s {
                    $($spelling $(| $alias)* => Some(FailureKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

failure_kinds! {
    // ---- task level: the receiver, the worker and the launcher write these into TaskError.kind
    /// The message body is not a task message (its result is stored when a task id could be
    /// salvaged).
    MalformedMessage = "MalformedMessage",
    /// No handler is registered under the message's task name.
    UnknownTask = "UnknownTask",
    /// The message was delivered more than the receiver's `max_receive_count` times without
    /// its task finishing (its worker died or was stopped each time) and was moved to the
    /// broker's dead-letter place instead of being run again.
    DeadLettered = "DeadLettered",
    /// A task handler or an op panicked.
    Panic = "Panic" | "panic",
    /// A `pre_execute` middleware failed, so the handler did not run.
    MiddlewareError = "MiddlewareError",
    /// The arguments do not decode as the typed handler's argument.
    InvalidArguments = "InvalidArguments",
    /// The typed handler's return value does not encode as JSON.
    InvalidReturnValue = "InvalidReturnValue",
    /// The task was cancelled and dropped, or stopped on request.
    Canceled = "Canceled",
    /// A step task's arguments do not decode (or name no step).
    InvalidStepArgs = "InvalidStepArgs",
    /// A step task's reports could not be encoded.
    ReportEncodeError = "ReportEncodeError",
    /// Another orchestrator holds the run, or it no longer waits to start.
    RunAlreadyClaimed = "RunAlreadyClaimed",
    /// An orchestration task's arguments do not decode.
    InvalidRunArgs = "InvalidRunArgs",
    /// An orchestration task could not be carried out (unknown job, run store failure,
    /// unplannable request).
    RunNotStarted = "RunNotStarted" | "run_not_started",
    // ---- step level: the worker writes these into a step's ErrorInfo.kind
    /// An op failed (the kind of an `OpError` that names none).
    OpError = "op_error",
    /// The job is not in the worker's code location.
    UnknownJob = "unknown_job",
    /// The job has no such step.
    UnknownStep = "unknown_step",
    /// The step's op is not registered.
    UnknownOp = "unknown_op",
    /// An op asked for an input its step does not have.
    UnknownInput = "unknown_input",
    /// An input's upstream output is not in the output store.
    MissingInput = "missing_input",
    /// The output store failed while loading an input.
    InputLoadError = "input_load_error",
    /// The op did not emit a required output.
    MissingOutput = "missing_output",
    /// The op emitted an output its step does not declare.
    UnknownOutput = "unknown_output",
    /// The op emitted an output twice.
    DuplicateOutput = "duplicate_output",
    /// The output store failed while storing an output.
    OutputStoreError = "output_store_error",
    // ---- step level: the orchestrator writes these into a step's ErrorInfo.kind
    /// The step's task could not be sent.
    Submit = "submit",
    /// No result arrived within the step timeout.
    Timeout = "timeout",
    /// The result backend failed while the step's result was awaited.
    ResultBackend = "result_backend",
    /// A task's result is marked failed but carries no error.
    MissingError = "task_error",
    /// A task's result carries no readable report of the step.
    BadReport = "bad_report",
    /// The orchestrator found itself in a state it should never be in.
    Internal = "internal",
}

impl FailureKind {
    /// The kind's spelling on the wire (an [`Other`](FailureKind::Other) kind's own string).
    pub fn as_str(&self) -> &str {
        match self {
            FailureKind::Other(s) => s,
            known => known.spelling().unwrap_or_default(),
        }
    }

    /// Whether this is a kind stepq knows (not [`Other`](FailureKind::Other)).
    pub fn is_known(&self) -> bool {
        self.spelling().is_some()
    }

    /// The spelling equality and hashing go by: a known kind's own, also for an
    /// [`Other`](FailureKind::Other) built by hand from one of its spellings.
    fn key(&self) -> &str {
        match self {
            FailureKind::Other(s) => FailureKind::known(s)
                .and_then(|k| k.spelling())
                .unwrap_or(s),
            known => known.as_str(),
        }
    }
}

impl PartialEq for FailureKind {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for FailureKind {}

impl Hash for FailureKind {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// `kind == "panic"`: whether `kind` is the kind the string spells (in any of its spellings).
impl PartialEq<str> for FailureKind {
    fn eq(&self, other: &str) -> bool {
        let other = FailureKind::known(other)
            .and_then(|k| k.spelling())
            .unwrap_or(other);
        self.key() == other
    }
}

impl PartialEq<&str> for FailureKind {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl PartialEq<String> for FailureKind {
    fn eq(&self, other: &String) -> bool {
        *self == **other
    }
}

impl PartialEq<FailureKind> for str {
    fn eq(&self, other: &FailureKind) -> bool {
        *other == *self
    }
}

impl PartialEq<FailureKind> for &str {
    fn eq(&self, other: &FailureKind) -> bool {
        *other == **self
    }
}

impl PartialEq<FailureKind> for String {
    fn eq(&self, other: &FailureKind) -> bool {
        *other == **self
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for FailureKind {
    fn from(s: &str) -> Self {
        FailureKind::known(s).unwrap_or_else(|| FailureKind::Other(s.to_string()))
    }
}

impl From<String> for FailureKind {
    fn from(s: String) -> Self {
        FailureKind::known(&s).unwrap_or(FailureKind::Other(s))
    }
}

impl From<&String> for FailureKind {
    fn from(s: &String) -> Self {
        FailureKind::from(s.as_str())
    }
}

impl From<FailureKind> for String {
    fn from(kind: FailureKind) -> Self {
        match kind {
            FailureKind::Other(s) => s,
            known => known.as_str().to_string(),
        }
    }
}

impl std::str::FromStr for FailureKind {
    type Err = std::convert::Infallible;

    /// Never fails: an unknown string is [`FailureKind::Other`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(FailureKind::from(s))
    }
}

impl serde::Serialize for FailureKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for FailureKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(FailureKind::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The wire spelling of every known kind. Changing one breaks stored results and peers
    /// running another version: add an old spelling instead.
    const SPELLINGS: &[(FailureKind, &str)] = &[
        (FailureKind::MalformedMessage, "MalformedMessage"),
        (FailureKind::UnknownTask, "UnknownTask"),
        (FailureKind::DeadLettered, "DeadLettered"),
        (FailureKind::Panic, "Panic"),
        (FailureKind::MiddlewareError, "MiddlewareError"),
        (FailureKind::InvalidArguments, "InvalidArguments"),
        (FailureKind::InvalidReturnValue, "InvalidReturnValue"),
        (FailureKind::Canceled, "Canceled"),
        (FailureKind::InvalidStepArgs, "InvalidStepArgs"),
        (FailureKind::ReportEncodeError, "ReportEncodeError"),
        (FailureKind::RunAlreadyClaimed, "RunAlreadyClaimed"),
        (FailureKind::InvalidRunArgs, "InvalidRunArgs"),
        (FailureKind::RunNotStarted, "RunNotStarted"),
        (FailureKind::OpError, "op_error"),
        (FailureKind::UnknownJob, "unknown_job"),
        (FailureKind::UnknownStep, "unknown_step"),
        (FailureKind::UnknownOp, "unknown_op"),
        (FailureKind::UnknownInput, "unknown_input"),
        (FailureKind::MissingInput, "missing_input"),
        (FailureKind::InputLoadError, "input_load_error"),
        (FailureKind::MissingOutput, "missing_output"),
        (FailureKind::UnknownOutput, "unknown_output"),
        (FailureKind::DuplicateOutput, "duplicate_output"),
        (FailureKind::OutputStoreError, "output_store_error"),
        (FailureKind::Submit, "submit"),
        (FailureKind::Timeout, "timeout"),
        (FailureKind::ResultBackend, "result_backend"),
        (FailureKind::MissingError, "task_error"),
        (FailureKind::BadReport, "bad_report"),
        (FailureKind::Internal, "internal"),
    ];

    fn json(kind: &FailureKind) -> String {
        serde_json::to_string(kind).unwrap()
    }

    fn from_json(text: &str) -> FailureKind {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn every_known_kind_has_its_pinned_spelling() {
        assert_eq!(SPELLINGS.len(), FailureKind::KNOWN.len());
        for (kind, spelling) in SPELLINGS {
            assert!(FailureKind::KNOWN.contains(kind), "{kind:?}");
            assert_eq!(kind.as_str(), *spelling);
            assert_eq!(kind.to_string(), *spelling);
            assert_eq!(String::from(kind.clone()), *spelling);
            assert!(kind.is_known());
        }
    }

    #[test]
    fn every_known_kind_round_trips_as_a_plain_string() {
        for kind in FailureKind::KNOWN {
            let text = json(kind);
            assert_eq!(text, format!("\"{}\"", kind.as_str()));
            let back = from_json(&text);
            assert_eq!(back, *kind);
            // The same variant, not an `Other` that merely compares equal.
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(kind),
                "{kind:?}"
            );
            assert_eq!(kind.as_str().parse::<FailureKind>().unwrap(), *kind);
            assert_eq!(FailureKind::from(kind.as_str().to_string()), *kind);
        }
    }

    #[test]
    fn unknown_kinds_round_trip_unchanged() {
        for name in [
            "ValueError",
            "builtins.KeyError",
            "bad_record",
            "",
            "PANIC",
            "Panic!",
        ] {
            let kind = FailureKind::from(name);
            assert_eq!(kind, FailureKind::Other(name.to_string()));
            assert!(!kind.is_known());
            assert_eq!(kind.as_str(), name);
            let text = json(&kind);
            assert_eq!(text, serde_json::to_string(name).unwrap());
            let back = from_json(&text);
            assert_eq!(back.as_str(), name);
            assert!(matches!(back, FailureKind::Other(ref s) if s == name));
        }
    }

    #[test]
    fn old_spellings_decode_to_their_kind_and_encode_in_the_new_one() {
        assert_eq!(FailureKind::Panic.old_spellings(), ["panic"]);
        assert_eq!(
            FailureKind::RunNotStarted.old_spellings(),
            ["run_not_started"]
        );
        for (old, kind) in [
            ("panic", FailureKind::Panic),
            ("Panic", FailureKind::Panic),
            ("run_not_started", FailureKind::RunNotStarted),
            ("RunNotStarted", FailureKind::RunNotStarted),
        ] {
            let decoded = from_json(&serde_json::to_string(old).unwrap());
            assert!(
                matches!(
                    (&decoded, &kind),
                    (FailureKind::Panic, FailureKind::Panic)
                        | (FailureKind::RunNotStarted, FailureKind::RunNotStarted)
                ),
                "{old} decoded as {decoded:?}"
            );
            assert_eq!(json(&decoded), json(&kind));
        }
    }

    #[test]
    fn no_two_kinds_share_a_spelling() {
        let mut seen = HashSet::new();
        for kind in FailureKind::KNOWN {
            for s in std::iter::once(kind.as_str()).chain(kind.old_spellings().iter().copied()) {
                assert!(seen.insert(s), "`{s}` spells two kinds");
                assert_eq!(FailureKind::from(s), *kind);
            }
        }
    }

    #[test]
    fn equality_and_hashing_follow_the_kind_not_the_spelling() {
        assert_eq!(FailureKind::Panic, "panic");
        assert_eq!(FailureKind::Panic, "Panic");
        assert_eq!(FailureKind::Panic, "Panic".to_string());
        assert_eq!("panic", FailureKind::Panic);
        assert_eq!(String::from("Panic"), FailureKind::Panic);
        assert_ne!(FailureKind::Panic, "op_error");
        assert_eq!(FailureKind::from("ValueError"), "ValueError");
        assert_ne!(FailureKind::from("ValueError"), "KeyError");
        // An `Other` built by hand from a known spelling is that kind.
        let by_hand = FailureKind::Other("panic".into());
        assert_eq!(by_hand, FailureKind::Panic);
        let set: HashSet<FailureKind> = [by_hand, FailureKind::Panic].into_iter().collect();
        assert_eq!(set.len(), 1);
    }
}
