//! `stepq run` SIGKILLed mid-run on the embedded store, 20 times in a row on one state
//! directory: every time `stepq resume` finishes the run, and no step whose success was
//! committed before the kill runs again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::app::app_in;
use crate::common::cli::{run, stepq, text};
use stepq_executor::launcher::read_all_events;
use stepq_executor::storage::RunStatus;
use stepq_plan::EventKind;

/// Branches of the fan-out; with the root and the join, the job has this many + 2 steps.
const BRANCHES: usize = 10;

/// A fan-out of shell steps, each appending its key to `calls` when it runs.
fn jobs_toml() -> String {
    let step = |key: &str, inputs: &str| {
        format!(
            "[[jobs.crashy.steps]]\nkey = \"{key}\"\n\
             argv = [\"sh\", \"-c\", \"echo {key} >> calls; sleep 0.05\"]\n{inputs}\n"
        )
    };
    let mut text = String::from("[jobs.crashy]\n");
    text.push_str(&step("root", ""));
    let mut join_inputs = Vec::new();
    for i in 0..BRANCHES {
        text.push_str(&step(&format!("b{i}"), "inputs = { up = \"root.stdout\" }"));
        join_inputs.push(format!("b{i} = \"b{i}.stdout\""));
    }
    text.push_str(&step(
        "join",
        &format!("inputs = {{ {} }}", join_inputs.join(", ")),
    ));
    text
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepq_run_killed_20_times_resumes_without_rerunning_committed_steps() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobs.toml"), jobs_toml()).unwrap();
    let steps = BRANCHES + 2;
    let (mut committed_total, mut cut_short) = (0, 0);
    for round in 0..20 {
        std::fs::remove_file(dir.path().join("calls")).ok();
        let run_id = format!("crash-{round}");
        let mut child = stepq(dir.path())
            .args([
                "--jobs-file",
                "jobs.toml",
                "run",
                "crashy",
                "--run-id",
                &run_id,
            ])
            .args(["--workers", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill after a different number of started steps each round (1 to 10).
        let kill_after = round % BRANCHES + 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        while calls(dir.path()).len() < kill_after {
            assert!(Instant::now() < deadline, "round {round}: steps never ran");
            if let Some(status) = child.try_wait().unwrap() {
                panic!("round {round}: stepq run ended ({status}) before the kill");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        // What the database committed before the kill.
        let app = app_in(dir.path()).await;
        let events = read_all_events(app.runs().as_ref(), &run_id).await.unwrap();
        let committed: BTreeSet<String> = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::StepSuccess { .. }))
            .filter_map(|e| e.step_key.clone())
            .collect();
        drop(app);
        committed_total += committed.len();
        if committed.len() < steps {
            cut_short += 1;
        }
        let before = calls(dir.path()).len();

        let out = run(
            dir.path(),
            &[
                "--jobs-file",
                "jobs.toml",
                "resume",
                &run_id,
                "--workers",
                "2",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", text(&out));
        let app = app_in(dir.path()).await;
        assert_eq!(
            app.runs().get_run(&run_id).await.unwrap().status,
            RunStatus::Success,
            "round {round}"
        );
        let mut runs: BTreeMap<String, usize> = BTreeMap::new();
        for key in calls(dir.path()) {
            *runs.entry(key).or_default() += 1;
        }
        assert_eq!(runs.len(), steps, "round {round}: every step ran: {runs:?}");
        for key in &committed {
            assert_eq!(
                runs[key], 1,
                "round {round}: `{key}` succeeded before the kill and ran again \
                 ({before} calls before the resume): {runs:?}"
            );
        }
    }
    // The scenario is real only if kills landed mid-run with successes committed.
    assert!(committed_total > 0, "no step had committed before any kill");
    assert!(
        cut_short >= 10,
        "only {cut_short} of 20 kills landed mid-run"
    );
}
