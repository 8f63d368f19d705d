//! Packing: round trips of every packable type, typed errors for bad envelopes, golden bytes.

use std::path::PathBuf;
use std::time::Duration;

use stepq_plan::{
    pack, unpack, ErrorInfo, Event, EventKind, ExecuteRunArgs, ExecuteStepArgs, InlineValue,
    KnownState, PackError, Packable, ResumeRunArgs, RetryMode, SkipReason, StepReport, StepStatus,
    TaskProgress, PACK_VERSION,
};

const RUN: &str = "run-0001";
const T0: u64 = 1_700_000_000_000_000;

fn known_state() -> KnownState {
    let mut known = KnownState::default();
    known.record_success("extract", ["rows".to_string(), "schema".to_string()]);
    known.record_success("validate", Vec::<String>::new());
    known.record_attempt("extract");
    known.record_attempt("validate");
    known.record_attempt("validate");
    known.record_attempt("load");
    known
}

fn error_info() -> ErrorInfo {
    ErrorInfo {
        kind: "op_error".into(),
        message: "division by zero".into(),
        causes: vec!["in step `divide`".into(), "arithmetic".into()],
    }
}

/// One event of every kind, with fixed timestamps.
fn every_event() -> Vec<Event> {
    let kinds = vec![
        (None, EventKind::RunStarting),
        (None, EventKind::RunStarted),
        (None, EventKind::RunSuccess),
        (
            None,
            EventKind::RunFailure {
                errors: vec![error_info(), ErrorInfo::new("timeout", "took too long")],
            },
        ),
        (None, EventKind::RunCanceled),
        (
            Some("extract"),
            EventKind::StepQueued {
                attempt: 1,
                task_id: "task-0001".into(),
            },
        ),
        (
            Some("extract"),
            EventKind::StepStart {
                attempt: 1,
                worker: "worker-a".into(),
            },
        ),
        (
            Some("extract"),
            EventKind::StepInputLoaded {
                input: "source".into(),
                bytes: 4096,
            },
        ),
        (
            Some("extract"),
            EventKind::StepOutputHandled {
                output: "rows".into(),
                bytes: u64::MAX,
            },
        ),
        (
            Some("extract"),
            EventKind::StepSuccess {
                duration: Duration::new(3, 250_000_000),
            },
        ),
        (
            Some("divide"),
            EventKind::StepFailure {
                error: error_info(),
                will_retry: true,
            },
        ),
        (
            Some("load"),
            EventKind::StepSkipped {
                reason: SkipReason::UpstreamNotSucceeded {
                    upstream: "divide".into(),
                },
            },
        ),
        (
            Some("report"),
            EventKind::StepSkipped {
                reason: SkipReason::OutputNotEmitted {
                    upstream: "extract".into(),
                    output: "errors".into(),
                },
            },
        ),
        (
            Some("divide"),
            EventKind::StepRetry {
                attempt: 2,
                delay: Duration::from_millis(1500),
            },
        ),
        (Some("slow"), EventKind::StepCanceled),
        (
            None,
            EventKind::EngineEvent {
                message: "héllo, wörld ✓".into(),
            },
        ),
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, (step, kind))| Event {
            timestamp_us: T0 + i as u64,
            run_id: RUN.into(),
            step_key: step.map(String::from),
            kind,
        })
        .collect()
}

fn execute_step_args() -> ExecuteStepArgs {
    ExecuteStepArgs {
        run_id: RUN.into(),
        job_name: "etl".into(),
        step_keys: vec!["transform".into(), "load".into()],
        known_state: known_state(),
        retry_mode: RetryMode::Deferred,
        attempt: 3,
        // Keys in sorted order, so the bytes are the same whether or not serde_json's
        // `preserve_order` feature is enabled somewhere in the build.
        run_config: serde_json::json!({
            "flag": true,
            "none": null,
            "ops": {"transform": {"config": {"factor": 2, "neg": -7, "ratio": 0.5}}},
            "tags": ["a", "b"]
        }),
        inline_inputs: Vec::new(),
    }
}

/// Step args carrying upstream outputs inline (one empty, one with every byte value).
fn execute_step_args_inline() -> ExecuteStepArgs {
    ExecuteStepArgs {
        inline_inputs: vec![
            InlineValue::new("extract", "rows", (0..=255u8).collect::<Vec<u8>>()),
            InlineValue::new("extract", "schema", Vec::new()),
        ],
        ..execute_step_args()
    }
}

fn execute_run_args() -> ExecuteRunArgs {
    ExecuteRunArgs {
        run_id: RUN.into(),
        job_name: "etl".into(),
        step_selection: Some(vec!["extract".into(), "transform".into()]),
        run_config: serde_json::json!({"limit": 10}),
    }
}

fn resume_run_args() -> ResumeRunArgs {
    ResumeRunArgs {
        run_id: RUN.into(),
        job_name: "etl".into(),
        run_config: serde_json::Value::Null,
    }
}

fn step_reports() -> Vec<StepReport> {
    let events = every_event();
    vec![
        StepReport {
            step_key: "extract".into(),
            attempt: 1,
            worker: "worker-a".into(),
            status: StepStatus::Success {
                emitted: vec!["rows".into(), "schema".into()],
            },
            events: events[5..10].to_vec(),
            inline_outputs: Vec::new(),
        },
        StepReport {
            step_key: "divide".into(),
            attempt: 2,
            worker: "worker-b".into(),
            status: StepStatus::Failure {
                error: error_info(),
                retry_requested: Some(Some(250)),
            },
            events: vec![events[10].clone()],
            inline_outputs: Vec::new(),
        },
        StepReport {
            step_key: "divide".into(),
            attempt: 3,
            worker: "worker-b".into(),
            status: StepStatus::Failure {
                error: error_info(),
                retry_requested: Some(None),
            },
            events: Vec::new(),
            inline_outputs: Vec::new(),
        },
        StepReport {
            step_key: "divide".into(),
            attempt: 4,
            worker: "worker-b".into(),
            status: StepStatus::Failure {
                error: ErrorInfo::new("op_error", "final"),
                retry_requested: None,
            },
            events: Vec::new(),
            inline_outputs: Vec::new(),
        },
        StepReport {
            step_key: "slow".into(),
            attempt: 1,
            worker: "worker-c".into(),
            status: StepStatus::Canceled,
            events: vec![events[14].clone()],
            inline_outputs: Vec::new(),
        },
        StepReport {
            step_key: "extract".into(),
            attempt: 2,
            worker: "worker-a".into(),
            status: StepStatus::Success {
                emitted: vec!["rows".into(), "schema".into()],
            },
            events: events[5..10].to_vec(),
            inline_outputs: vec![
                InlineValue::new("extract", "rows", vec![0x93, 0x01, 0x02, 0x03]),
                InlineValue::new("extract", "schema", vec![0xa2, b'o', b'k']),
            ],
        },
    ]
}

fn round_trip<T: Packable + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = pack(value).expect("packs");
    assert_eq!(&bytes[..2], b"SQ");
    assert_eq!(bytes[2], PACK_VERSION);
    assert_eq!(bytes[3] as usize, T::TYPE_NAME.len());
    assert_eq!(&bytes[4..4 + T::TYPE_NAME.len()], T::TYPE_NAME.as_bytes());
    let back: T = unpack(&bytes).expect("unpacks");
    assert_eq!(&back, value, "round trip of {}", T::TYPE_NAME);
}

#[test]
fn execute_step_args_round_trip() {
    round_trip(&execute_step_args());
    for mode in [RetryMode::Enabled, RetryMode::Disabled, RetryMode::Deferred] {
        round_trip(&ExecuteStepArgs {
            retry_mode: mode,
            known_state: KnownState::default(),
            run_config: serde_json::json!(1.25),
            ..execute_step_args()
        });
    }
}

#[test]
fn inline_values_round_trip_in_msgpack_and_json() {
    let args = execute_step_args_inline();
    round_trip(&args);
    let json = serde_json::to_string(&args).unwrap();
    let back: ExecuteStepArgs = serde_json::from_str(&json).unwrap();
    assert_eq!(back, args);
    let report = step_reports().pop().unwrap();
    assert!(!report.inline_outputs.is_empty());
    round_trip(&report);
}

/// Values without inline data pack exactly as before the inline fields existed, and bytes
/// written before them (the committed golden files) read with no inline data.
#[test]
fn values_without_inline_data_keep_their_old_bytes() {
    let old = std::fs::read(golden_dir().join("execute_step_args.bin")).unwrap();
    let back: ExecuteStepArgs = unpack(&old).unwrap();
    assert!(back.inline_inputs.is_empty());
    assert_eq!(pack(&back).unwrap(), old);
    assert!(!old.windows(6).any(|w| w == b"inline"));
    let inline = pack(&execute_step_args_inline()).unwrap();
    assert!(inline.windows(13).any(|w| w == b"inline_inputs"));
    let old = std::fs::read(golden_dir().join("step_report_0.bin")).unwrap();
    let back: StepReport = unpack(&old).unwrap();
    assert!(back.inline_outputs.is_empty());
    assert_eq!(pack(&back).unwrap(), old);
}

#[test]
fn inline_value_bytes_are_one_bin_value() {
    // 4 bytes of value: a `bin 8` header (0xc4, len) then the bytes, not an array of integers.
    let bytes = rmp_serde::to_vec_named(&InlineValue::new("s", "o", vec![1, 2, 3, 250])).unwrap();
    assert!(
        bytes.windows(6).any(|w| w == [0xc4, 4, 1, 2, 3, 250]),
        "{bytes:?}"
    );
}

#[test]
fn execute_run_args_round_trip() {
    round_trip(&execute_run_args());
    round_trip(&ExecuteRunArgs {
        step_selection: None,
        ..execute_run_args()
    });
    round_trip(&ExecuteRunArgs {
        step_selection: Some(Vec::new()),
        ..execute_run_args()
    });
}

#[test]
fn resume_run_args_round_trip() {
    round_trip(&resume_run_args());
}

#[test]
fn step_report_round_trip_every_status() {
    for report in step_reports() {
        round_trip(&report);
    }
}

#[test]
fn retry_requested_without_delay_survives_packing() {
    // `Some(None)` ("retry, no delay given") must not collapse into `None` ("no retry asked").
    let report = &step_reports()[2];
    let back: StepReport = unpack(&pack(report).unwrap()).unwrap();
    match back.status {
        StepStatus::Failure {
            retry_requested, ..
        } => assert_eq!(retry_requested, Some(None)),
        other => panic!("unexpected status {other:?}"),
    }
}

#[test]
fn every_event_kind_round_trips() {
    for event in every_event() {
        round_trip(&event);
    }
}

#[test]
fn event_batch_round_trip() {
    round_trip(&every_event());
    round_trip(&Vec::<Event>::new());
}

#[test]
fn known_state_round_trip() {
    round_trip(&known_state());
    round_trip(&KnownState::default());
}

#[test]
fn events_stamped_now_round_trip() {
    round_trip(&Event::run(RUN, EventKind::RunStarted));
    round_trip(&Event::step(RUN, "s", EventKind::StepCanceled));
}

#[test]
fn unknown_version_is_reported() {
    let mut bytes = pack(&known_state()).unwrap();
    bytes[2] = PACK_VERSION + 1;
    match unpack::<KnownState>(&bytes) {
        Err(PackError::UnknownVersion { found }) => assert_eq!(found, PACK_VERSION + 1),
        other => panic!("expected UnknownVersion, got {other:?}"),
    }
    bytes[2] = 0;
    assert!(matches!(
        unpack::<KnownState>(&bytes),
        Err(PackError::UnknownVersion { found: 0 })
    ));
}

#[test]
fn wrong_type_is_reported_with_both_names() {
    let bytes = pack(&resume_run_args()).unwrap();
    let err = unpack::<ExecuteRunArgs>(&bytes).unwrap_err();
    match &err {
        PackError::WrongType { expected, found } => {
            assert_eq!(*expected, "ExecuteRunArgs");
            assert_eq!(found, "ResumeRunArgs");
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("ResumeRunArgs") && msg.contains("ExecuteRunArgs"),
        "{msg}"
    );

    // A single event is not an event batch, and vice versa.
    let one = pack(&every_event()[0]).unwrap();
    assert!(matches!(
        unpack::<Vec<Event>>(&one),
        Err(PackError::WrongType {
            expected: "EventBatch",
            ..
        })
    ));
    let many = pack(&every_event()).unwrap();
    assert!(matches!(
        unpack::<Event>(&many),
        Err(PackError::WrongType {
            expected: "Event",
            ..
        })
    ));
}

#[test]
fn bad_magic_is_reported() {
    let mut bytes = pack(&known_state()).unwrap();
    bytes[0] = b'X';
    assert!(matches!(
        unpack::<KnownState>(&bytes),
        Err(PackError::BadMagic)
    ));
    // Plain MessagePack or JSON is not an envelope.
    let raw = rmp_serde::to_vec_named(&known_state()).unwrap();
    assert!(matches!(
        unpack::<KnownState>(&raw),
        Err(PackError::BadMagic)
    ));
    let json = serde_json::to_vec(&known_state()).unwrap();
    assert!(matches!(
        unpack::<KnownState>(&json),
        Err(PackError::BadMagic)
    ));
}

#[test]
fn truncated_header_is_reported() {
    let bytes = pack(&execute_run_args()).unwrap();
    for len in 0..4 {
        match unpack::<ExecuteRunArgs>(&bytes[..len]) {
            Err(PackError::Truncated { len: l }) => assert_eq!(l, len),
            other => panic!("prefix of {len} bytes: expected Truncated, got {other:?}"),
        }
    }
    // The header is complete but the type name is cut short.
    let name_end = 4 + "ExecuteRunArgs".len();
    for len in 4..name_end {
        match unpack::<ExecuteRunArgs>(&bytes[..len]) {
            Err(PackError::Truncated { len: l }) => assert_eq!(l, len),
            other => panic!("prefix of {len} bytes: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn truncated_body_is_a_decode_error() {
    let bytes = pack(&execute_step_args()).unwrap();
    let body_start = 4 + "ExecuteStepArgs".len();
    for len in body_start..bytes.len() {
        match unpack::<ExecuteStepArgs>(&bytes[..len]) {
            Err(PackError::Decode { type_name, .. }) => assert_eq!(type_name, "ExecuteStepArgs"),
            other => panic!("prefix of {len} bytes: expected Decode, got {other:?}"),
        }
    }
}

#[test]
fn garbage_body_is_a_decode_error() {
    let mut bytes = pack(&known_state()).unwrap();
    let body_start = 4 + "KnownState".len();
    bytes.truncate(body_start);
    bytes.extend_from_slice(&[0xc1, 0xff, 0x00]);
    let err = unpack::<KnownState>(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            PackError::Decode {
                type_name: "KnownState",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("KnownState"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

/// Every prefix and a set of single-byte corruptions of valid envelopes unpack to an error or a
/// value, never a panic.
#[test]
fn damaged_envelopes_never_panic() {
    fn exercise<T: Packable + std::fmt::Debug>(bytes: &[u8]) {
        for len in 0..bytes.len() {
            assert!(unpack::<T>(&bytes[..len]).is_err(), "prefix {len} unpacked");
        }
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = bytes.to_vec();
                damaged[i] ^= flip;
                let _ = unpack::<T>(&damaged);
            }
        }
    }
    exercise::<ExecuteStepArgs>(&pack(&execute_step_args()).unwrap());
    exercise::<ExecuteStepArgs>(&pack(&execute_step_args_inline()).unwrap());
    exercise::<ExecuteRunArgs>(&pack(&execute_run_args()).unwrap());
    exercise::<ResumeRunArgs>(&pack(&resume_run_args()).unwrap());
    for report in step_reports() {
        exercise::<StepReport>(&pack(&report).unwrap());
    }
    exercise::<Vec<Event>>(&pack(&every_event()).unwrap());
    exercise::<KnownState>(&pack(&known_state()).unwrap());
}

// ---- golden bytes -------------------------------------------------------------------------

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn updating_golden() -> bool {
    std::env::var_os("STEPQ_UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// Packs `value` and compares with `tests/golden/<file>`; writes the file when
/// `STEPQ_UPDATE_GOLDEN=1`. Also checks the committed bytes unpack to `value`.
fn check_golden<T: Packable + PartialEq + std::fmt::Debug>(file: &str, value: &T) {
    let path = golden_dir().join(file);
    let packed = pack(value).expect("packs");
    if updating_golden() {
        std::fs::create_dir_all(golden_dir()).expect("create golden dir");
        std::fs::write(&path, &packed).expect("write golden file");
    }
    let committed = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden file {}: {e} (run with STEPQ_UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        packed == committed,
        "packed {} differs from golden file {}: the wire format changed. If that is intended, \
         bump PACK_VERSION or regenerate with STEPQ_UPDATE_GOLDEN=1",
        T::TYPE_NAME,
        path.display()
    );
    let back: T = unpack(&committed).expect("golden file unpacks");
    assert_eq!(
        &back,
        value,
        "golden file {} unpacks to the sample",
        path.display()
    );
}

#[test]
fn golden_execute_step_args() {
    check_golden("execute_step_args.bin", &execute_step_args());
}

#[test]
fn golden_execute_step_args_inline() {
    check_golden("execute_step_args_inline.bin", &execute_step_args_inline());
}

#[test]
fn golden_execute_run_args() {
    check_golden("execute_run_args.bin", &execute_run_args());
}

#[test]
fn golden_resume_run_args() {
    check_golden("resume_run_args.bin", &resume_run_args());
}

#[test]
fn golden_step_reports() {
    for (i, report) in step_reports().iter().enumerate() {
        check_golden(&format!("step_report_{i}.bin"), report);
    }
}

#[test]
fn golden_events() {
    for (i, event) in every_event().iter().enumerate() {
        check_golden(&format!("event_{i:02}.bin"), event);
    }
}

#[test]
fn golden_event_batch() {
    check_golden("event_batch.bin", &every_event());
}

#[test]
fn golden_known_state() {
    check_golden("known_state.bin", &known_state());
}

fn task_progress() -> Vec<TaskProgress> {
    let events = every_event();
    let start = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::StepStart { .. }))
        .cloned()
        .expect("a StepStart sample");
    vec![
        TaskProgress {
            finished: Vec::new(),
            started: Some(start.clone()),
        },
        TaskProgress {
            finished: vec![step_reports()[0].clone()],
            started: Some(start),
        },
    ]
}

#[test]
fn task_progress_round_trips_and_reads_without_its_fields() {
    for progress in task_progress() {
        round_trip(&progress);
    }
    // Both fields default: an entry of a later version without them still reads.
    let empty: TaskProgress =
        rmp_serde::from_slice(&rmp_serde::to_vec_named(&serde_json::json!({})).unwrap()).unwrap();
    assert_eq!(
        empty,
        TaskProgress {
            finished: Vec::new(),
            started: None
        }
    );
}

#[test]
fn golden_task_progress() {
    for (i, progress) in task_progress().iter().enumerate() {
        check_golden(&format!("task_progress_{i}.bin"), progress);
    }
}
