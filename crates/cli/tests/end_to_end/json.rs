//! `--json` and the filters of `stepq runs`, run as a user would: the `stepq` binary on the
//! embedded default in a directory of its own, its stdout parsed as JSON.

use std::path::Path;

use serde_json::Value;
use stepq_executor::storage::{RunRecord, RunStatus, RunningTask, WorkerHeartbeat};

use crate::common::app::app_in;
use crate::common::cli::{run, stderr, stdout, text};

const HOUR_US: u64 = 3_600 * 1_000_000;

/// Runs `stepq ARGS` in `dir`, expects exit 0, and parses stdout as one JSON document.
fn json_of(dir: &Path, args: &[&str]) -> Value {
    let out = run(dir, args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {}", text(&out)))
}

/// The run ids of `stepq runs --json ARGS`, in the order listed.
fn run_ids(dir: &Path, args: &[&str]) -> Vec<String> {
    let mut all = vec!["runs", "--json"];
    all.extend_from_slice(args);
    json_of(dir, &all)["runs"]
        .as_array()
        .expect("runs is an array")
        .iter()
        .map(|r| r["run_id"].as_str().expect("run_id").to_string())
        .collect()
}

/// The JSON lines of `stepq logs ARGS`, each parsed.
fn json_lines(dir: &Path, args: &[&str]) -> Vec<Value> {
    let out = run(dir, args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    stdout(&out)
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?}: line is not JSON ({e}): {line}"))
        })
        .collect()
}

/// Runs `job` as `run_id` with two in-process workers; expects exit `code`.
fn run_job(dir: &Path, job: &str, run_id: &str, code: i32) {
    let out = run(dir, &["run", job, "--run-id", run_id, "--workers", "2"]);
    assert_eq!(out.status.code(), Some(code), "{job}: {}", text(&out));
}

/// Does `f` with an app on `dir`'s state, as another process would.
fn with_app<F, Fut>(dir: &Path, f: F)
where
    F: FnOnce(stepq::app::App) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { f(app_in(dir).await).await });
}

#[test]
fn runs_json_lists_runs_newest_first_and_each_filter_narrows_them() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    run_job(dir, "diamond", "d1", 0);
    run_job(dir, "failure", "f1", 1);
    run_job(dir, "diamond", "d2", 0);
    // Tagged runs, as `stepq launch --tag` stores them: one three days old, one canceled.
    with_app(dir, |app| async move {
        let mut old = RunRecord::new("tagged-old", "serial", serde_json::json!({"k": 1}))
            .with_tag("owner", "etl")
            .with_tag("team", "data");
        old.created_at = stepq_plan::events::now_us() - 72 * HOUR_US;
        app.runs().create_run(&old).await.unwrap();
        let new = RunRecord::new("tagged-new", "single", Value::Null).with_tag("owner", "etl");
        app.runs().create_run(&new).await.unwrap();
        app.runs()
            .update_status("tagged-new", RunStatus::Canceled)
            .await
            .unwrap();
    });

    let doc = json_of(dir, &["runs", "--json"]);
    let runs = doc["runs"].as_array().expect("runs is an array");
    let ids: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tagged-new", "d2", "f1", "d1", "tagged-old"]);
    let created: Vec<u64> = runs
        .iter()
        .map(|r| r["created_at_us"].as_u64().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
    let d1 = &runs[3];
    assert_eq!(d1["job_name"], "diamond");
    assert_eq!(d1["status"], "SUCCESS");
    assert_eq!(d1["tags"], serde_json::json!({}));
    assert_eq!(d1["step_selection"], Value::Null);
    for key in ["created_at", "started_at", "ended_at"] {
        let text = d1[key].as_str().unwrap_or_else(|| panic!("{key}: {d1}"));
        assert!(
            text.len() == 27 && text.as_bytes()[10] == b'T' && text.ends_with('Z'),
            "{key} is RFC 3339 with microseconds: {text}"
        );
        assert!(d1[format!("{key}_us")].as_u64().is_some(), "{key}_us: {d1}");
    }
    assert!(d1["duration_us"].as_u64().is_some(), "{d1}");
    assert!(d1["orchestrator"].as_str().unwrap().starts_with("stepq@"));
    assert_eq!(runs[2]["status"], "FAILURE");
    let old = &runs[4];
    assert_eq!(old["status"], "QUEUED");
    assert_eq!(
        old["tags"],
        serde_json::json!({"owner": "etl", "team": "data"})
    );
    assert_eq!(old["run_config"], serde_json::json!({"k": 1}));
    assert_eq!(old["started_at"], Value::Null);
    assert_eq!(old["duration_us"], Value::Null);

    // --status: one, several (comma list or repeated), any case.
    assert_eq!(run_ids(dir, &["--status", "failure"]), ["f1"]);
    assert_eq!(
        run_ids(dir, &["--status", "FAILURE,canceled"]),
        ["tagged-new", "f1"]
    );
    assert_eq!(
        run_ids(dir, &["--status", "Success", "--status", "queued"]),
        ["d2", "d1", "tagged-old"]
    );
    assert!(run_ids(dir, &["--status", "started"]).is_empty());
    // --job.
    assert_eq!(run_ids(dir, &["--job", "diamond"]), ["d2", "d1"]);
    assert!(run_ids(dir, &["--job", "nope"]).is_empty());
    // --tag: every one must match.
    assert_eq!(
        run_ids(dir, &["--tag", "owner=etl"]),
        ["tagged-new", "tagged-old"]
    );
    assert_eq!(
        run_ids(dir, &["--tag", "owner=etl", "--tag", "team=data"]),
        ["tagged-old"]
    );
    assert!(run_ids(dir, &["--tag", "owner=etl", "--tag", "team=web"]).is_empty());
    // --since: a duration, or an RFC 3339 time.
    assert_eq!(
        run_ids(dir, &["--since", "1d"]),
        ["tagged-new", "d2", "f1", "d1"]
    );
    assert_eq!(run_ids(dir, &["--since", "4d"]).len(), 5);
    assert_eq!(run_ids(dir, &["--since", "2000-01-01T00:00:00Z"]).len(), 5);
    assert_eq!(run_ids(dir, &["--since", "2000-01-01"]).len(), 5);
    assert!(run_ids(dir, &["--since", "2999-01-01T00:00:00+01:00"]).is_empty());
    let cutoff = runs[3]["created_at"].as_str().unwrap().to_string();
    assert_eq!(
        run_ids(dir, &["--since", &cutoff]),
        ["tagged-new", "d2", "f1", "d1"],
        "--since is inclusive"
    );
    // --limit, after the filter; combined filters.
    assert_eq!(run_ids(dir, &["--limit", "2"]), ["tagged-new", "d2"]);
    assert_eq!(run_ids(dir, &["--job", "diamond", "--limit", "1"]), ["d2"]);
    assert_eq!(
        run_ids(
            dir,
            &[
                "--status",
                "success,failure",
                "--since",
                "1d",
                "--job",
                "failure"
            ]
        ),
        ["f1"]
    );

    // The table takes the same filters.
    let out = run(dir, &["runs", "--status", "failure"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = stdout(&out);
    assert!(table.lines().any(|l| l.starts_with("f1 ")), "{table}");
    assert!(!table.contains("d1"), "{table}");
    assert!(table.starts_with("RUN ID"), "{table}");

    // Bad filter values are usage errors, on stderr.
    for args in [
        &["runs", "--json", "--status", "running"][..],
        &["runs", "--json", "--since", "2 days"],
        &["runs", "--json", "--tag", "owner"],
    ] {
        let out = run(dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(stdout(&out).is_empty(), "{args:?}: {}", text(&out));
        assert!(
            stderr(&out).contains("invalid value"),
            "{args:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn status_and_logs_json_describe_runs_step_by_step_and_event_by_event() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    run_job(dir, "diamond", "d1", 0);
    run_job(dir, "failure", "f1", 1);

    let status = json_of(dir, &["status", "d1", "--json"]);
    assert_eq!(status["run"]["run_id"], "d1");
    assert_eq!(status["run"]["status"], "SUCCESS");
    assert_eq!(status["run"]["job_name"], "diamond");
    let steps = status["steps"].as_array().unwrap();
    let mut keys: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["add_one", "emit_values", "renamed", "subtract"]);
    for step in steps {
        assert_eq!(step["status"], "SUCCEEDED", "{step}");
        assert_eq!(step["attempts"], 1, "{step}");
        assert!(step["worker"].as_str().is_some(), "{step}");
        assert!(step["duration_us"].as_u64().is_some(), "{step}");
        assert!(step["queue_wait_us"].as_u64().is_some(), "{step}");
        assert_eq!(step["detail"], Value::Null, "{step}");
    }
    assert_eq!(status["notes"], serde_json::json!([]));

    let failed = json_of(dir, &["status", "f1", "--json"]);
    assert_eq!(failed["run"]["status"], "FAILURE");
    let step = |key: &str| {
        failed["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == key)
            .unwrap_or_else(|| panic!("no step {key}: {failed}"))
            .clone()
    };
    assert_eq!(step("fails")["status"], "FAILED");
    assert!(step("fails")["detail"]
        .as_str()
        .unwrap()
        .contains("this op always fails"));
    assert_eq!(step("should_never_execute")["status"], "SKIPPED");

    // logs --json: one event per line, in the log's order, saying what the text lines say.
    let lines = json_lines(dir, &["logs", "d1", "--json"]);
    let out = run(dir, &["logs", "d1"]);
    let text_lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), text_lines.len(), "{text_lines:?}");
    for (line, text_line) in lines.iter().zip(&text_lines) {
        assert_eq!(line["run_id"], "d1", "{line}");
        let message = line["message"].as_str().unwrap();
        assert!(text_line.ends_with(message), "{text_line} / {line}");
        assert!(line["timestamp_us"].as_u64().is_some(), "{line}");
        let stamp = line["timestamp"].as_str().unwrap();
        assert_eq!(
            stamp[..19].replace('T', " "),
            text_line[..19],
            "same time as the text line"
        );
    }
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"run_starting"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run_success"), "{kinds:?}");
    for key in ["emit_values", "add_one", "renamed", "subtract"] {
        let at = |kind: &str| {
            lines
                .iter()
                .position(|l| l["step_key"] == key && l["kind"] == kind)
                .unwrap_or_else(|| panic!("no {kind} of {key}: {kinds:?}"))
        };
        assert!(at("step_queued") < at("step_start"), "{key}");
        assert!(at("step_start") < at("step_success"), "{key}");
        let success = &lines[at("step_success")];
        assert!(success["duration_us"].as_u64().is_some(), "{success}");
        let queued = &lines[at("step_queued")];
        assert_eq!(queued["attempt"], 1, "{queued}");
        assert!(queued["task_id"].as_str().is_some(), "{queued}");
    }
    let emit = lines
        .iter()
        .position(|l| l["step_key"] == "emit_values" && l["kind"] == "step_success")
        .unwrap();
    let subtract = lines
        .iter()
        .position(|l| l["step_key"] == "subtract" && l["kind"] == "step_queued")
        .unwrap();
    assert!(
        emit < subtract,
        "subtract is queued after its upstream ends"
    );
    assert_eq!(
        json_lines(dir, &["logs", "d1", "--json", "--follow"]),
        lines,
        "--follow on an ended run prints the same lines, and no status line"
    );

    let lines = json_lines(dir, &["logs", "f1", "--json"]);
    let failure = lines
        .iter()
        .find(|l| l["kind"] == "step_failure")
        .expect("a step_failure line");
    assert_eq!(failure["step_key"], "fails");
    assert_eq!(failure["will_retry"], false);
    assert!(failure["error"]["message"]
        .as_str()
        .unwrap()
        .contains("this op always fails"));
    assert!(failure["error"]["kind"].as_str().is_some(), "{failure}");
    let skipped = lines
        .iter()
        .find(|l| l["kind"] == "step_skipped")
        .expect("a step_skipped line");
    assert_eq!(skipped["reason"], "upstream_not_succeeded");
    assert_eq!(skipped["upstream"], "fails");
    let last = lines.last().unwrap();
    assert_eq!(last["kind"], "run_failure");
    assert!(!last["errors"].as_array().unwrap().is_empty(), "{last}");

    // Unknown runs: exit 2, the error on stderr, nothing on stdout.
    for args in [
        &["status", "nope", "--json"][..],
        &["logs", "nope", "--json"],
        &["logs", "nope", "--json", "--follow"],
    ] {
        let out = run(dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(stdout(&out).is_empty(), "{args:?}: {}", text(&out));
        assert!(stderr(&out).contains("nope"), "{args:?}: {}", text(&out));
    }
}

#[test]
fn jobs_json_lists_the_code_location_and_jobs_file_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let doc = json_of(dir.path(), &["jobs", "--json"]);
    let jobs = doc["jobs"].as_array().unwrap();
    let diamond = jobs
        .iter()
        .find(|j| j["name"] == "diamond")
        .unwrap_or_else(|| panic!("no diamond: {doc}"));
    let steps: Vec<&str> = diamond["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(steps.len(), 4, "{steps:?}");
    assert_eq!(steps[0], "emit_values", "topological order");
    assert_eq!(steps[3], "subtract", "topological order");
    assert_eq!(diamond["source"], "code_location");
    assert_eq!(diamond["path"], Value::Null);
    assert_eq!(diamond["description"], Value::Null);
    assert!(jobs.iter().any(|j| j["name"] == "failure"));

    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jobs.toml");
    let file = file.to_str().unwrap();
    let doc = json_of(dir.path(), &["jobs", "--json", "--jobs-file", file]);
    let word_count = doc["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "word_count")
        .unwrap_or_else(|| panic!("no word_count: {doc}"))
        .clone();
    assert_eq!(word_count["source"], "jobs_file");
    assert_eq!(word_count["path"], file);
    assert!(word_count["description"]
        .as_str()
        .unwrap()
        .contains("distinct words"));
    assert_eq!(word_count["steps"].as_array().unwrap().len(), 4);
}

#[test]
fn worker_list_json_shows_live_and_lost_workers_with_their_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let doc = json_of(dir.path(), &["worker", "list", "--json"]);
    assert_eq!(doc["mode"], "embedded");
    assert_eq!(doc["queue"], Value::Null);
    assert_eq!(doc["workers"], serde_json::json!([]));
    assert_eq!(
        doc["health_interval_us"], 10_000_000,
        "the default interval"
    );

    with_app(dir.path(), |app| async move {
        let mut live = WorkerHeartbeat::new("w-live", "host-a", 11);
        live.tasks_running = 1;
        live.tasks_done = 4;
        live.running_tasks.push(RunningTask {
            task_id: "t1".into(),
            task_name: "execute_plan".into(),
            run_id: Some("r1".into()),
            step_key: Some("a".into()),
            step_keys: vec!["a".into(), "b".into()],
            since: live.last_seen,
        });
        let mut lost = WorkerHeartbeat::new("w-lost", "host-b", 22);
        lost.last_seen -= HOUR_US;
        for heartbeat in [&live, &lost] {
            app.heartbeats().put_heartbeat(heartbeat).await.unwrap();
        }
    });
    let doc = json_of(dir.path(), &["worker", "list", "--json"]);
    let workers = doc["workers"].as_array().unwrap();
    let ids: Vec<&str> = workers
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w-live", "w-lost"], "by worker id");
    let (live, lost) = (&workers[0], &workers[1]);
    assert_eq!(live["health"], "LIVE");
    assert_eq!(live["host"], "host-a");
    assert_eq!(live["pid"], 11);
    assert_eq!(live["tasks_running"], 1);
    assert_eq!(live["tasks_done"], 4);
    let task = &live["running_tasks"][0];
    assert_eq!(task["run_id"], "r1");
    assert_eq!(task["steps"], serde_json::json!(["a", "b"]));
    assert_eq!(task["task_name"], "execute_plan");
    assert!(task["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lost["health"], "LOST");
    assert_eq!(lost["running_tasks"], serde_json::json!([]));
    assert_eq!(
        lost["lost_at_us"].as_u64().unwrap(),
        lost["last_seen_us"].as_u64().unwrap() + 30_000_000,
        "three intervals after the last heartbeat"
    );
}
