//! The `stepq` binary, run as a user would: each test in its own working directory, so its
//! `.stepq/` state is its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::cli::{run, stderr, stdout, stepq};

fn jobs_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jobs.toml")
}

#[test]
fn run_diamond_succeeds_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["run", "diamond", "--workers", "2"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("STEP"), "{text}");
    assert!(text.contains("QUEUE WAIT"), "{text}");
    for step in ["emit_values", "add_one", "renamed", "subtract"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(step) && l.contains("SUCCEEDED")),
            "{step}: {text}"
        );
    }
    assert!(text.contains("subtract.result = -1"), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
    assert!(dir.path().join(".stepq/stepq.db").is_file());
    assert!(
        !dir.path().join(".stepq/runs").exists(),
        "no file-per-record layout"
    );
}

#[test]
fn a_failing_job_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["run", "failure", "--workers", "2"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        text.lines()
            .any(|l| l.starts_with("fails ") && l.contains("FAILED")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("should_never_execute") && l.contains("SKIPPED")),
        "{text}"
    );
    assert!(text.contains("this op always fails"), "{text}");
    assert!(text.contains("FAILURE"), "{text}");
}

#[test]
fn status_in_a_second_process_shows_the_finished_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[
            "run",
            "retry",
            "--run-id",
            "cli-status-run",
            "--workers",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(dir.path(), &["status", "cli-status-run"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("run:          cli-status-run"), "{text}");
    assert!(text.contains("job:          retry"), "{text}");
    assert!(text.contains("status:       SUCCESS"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("flaky"))
        .unwrap_or_else(|| panic!("no flaky row: {text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "SUCCEEDED", "{row}");
    assert_eq!(cols[2], "3", "attempts: {row}");
    assert_eq!(cols[5], "local-0", "worker: {row}");

    let out = run(dir.path(), &["runs"]);
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l.starts_with("cli-status-run")
            && l.contains("retry")
            && l.contains("SUCCESS")),
        "{text}"
    );
}

#[test]
fn status_of_an_unknown_run_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["status", "no-such-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no run `no-such-run`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn jobs_lists_the_location_and_the_jobs_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = jobs_file();
    let out = run(dir.path(), &["--jobs-file", file.to_str().unwrap(), "jobs"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for job in ["diamond", "single", "nested", "fanout_1000", "chain_100"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{job} "))),
            "{job}: {text}"
        );
    }
    let word_count = text
        .lines()
        .find(|l| l.starts_with("word_count"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(word_count.contains("jobs.toml"), "{word_count}");
    assert!(word_count.contains("distinct words"), "{word_count}");
}

#[test]
fn a_shell_job_from_the_jobs_file_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = jobs_file();
    let out = run(
        dir.path(),
        &["--jobs-file", file.to_str().unwrap(), "run", "word_count"],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("count.stdout = "), "{text}");
    let out = run(
        dir.path(),
        &["--jobs-file", file.to_str().unwrap(), "run", "broken"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("something went wrong"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn bad_input_exits_2_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["run", "no_such_job"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown job `no_such_job`"),
        "{}",
        stderr(&out)
    );

    let out = run(dir.path(), &["run", "diamond", "--steps", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));

    let out = run(dir.path(), &["run", "diamond", "--run-config", "{oops"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--run-config"), "{}", stderr(&out));

    std::fs::write(
        dir.path().join("stepq.toml"),
        "[executor]\nmax_in_flght = 3\n",
    )
    .unwrap();
    let out = run(dir.path(), &["--config", "stepq.toml", "run", "diamond"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("stepq.toml") && err.contains("max_in_flght"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("jobs.toml"),
        "[jobs.x]\n[[jobs.x.steps]]\nkey = \"a\"\n",
    )
    .unwrap();
    let out = run(dir.path(), &["--jobs-file", "jobs.toml", "jobs"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("jobs.toml") && err.contains("argv"), "{err}");

    let out = run(dir.path(), &["worker", "start"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("distributed config"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join(".stepq/runs").exists(), "nothing ran");
}

#[cfg(unix)]
#[test]
fn ctrl_c_interrupts_the_run_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = stepq(dir.path())
        .args([
            "run",
            "slow",
            "--workers",
            "4",
            "--run-config",
            "{\"sleep_ms\": 600000}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("run "), "{first}");
    // The run is under way (its record exists); interrupt it as Ctrl-C would.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let code = child.wait().unwrap().code();
    let text = rest.join("\n");
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("CANCELED"), "{text}");
}

/// Waits (polling: another process's exit cannot be awaited from a test without a runtime)
/// up to `limit` for `child` to exit.
fn wait_with_limit(child: &mut std::process::Child, limit: std::time::Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stepq did not exit within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn cancel_from_a_second_process_ends_the_run_canceled() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = stepq(dir.path())
        .args([
            "run",
            "slow",
            "--workers",
            "2",
            "--run-id",
            "to-cancel",
            "--run-config",
            "{\"sleep_ms\": 600000}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("run to-cancel"), "{first}");
    // The first line is printed once the run is STARTED in the run store.
    let runs = run(dir.path(), &["runs"]);
    assert!(
        stdout(&runs)
            .lines()
            .any(|l| l.starts_with("to-cancel") && l.contains("STARTED")),
        "{}",
        stdout(&runs)
    );

    let asked = std::time::Instant::now();
    let cancel = run(dir.path(), &["cancel", "to-cancel"]);
    let text = stdout(&cancel);
    assert_eq!(cancel.status.code(), Some(0), "{text}\n{}", stderr(&cancel));
    assert!(text.contains("run to-cancel CANCELING"), "{text}");
    assert!(text.contains("run to-cancel CANCELED"), "{text}");
    let code = wait_with_limit(&mut child, std::time::Duration::from_secs(5));
    assert!(asked.elapsed() < std::time::Duration::from_secs(5));
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let rest = rest.join("\n");
    assert_eq!(code, Some(130), "{rest}");
    assert!(rest.contains("run to-cancel CANCELED"), "{rest}");

    let status = run(dir.path(), &["status", "to-cancel"]);
    let text = stdout(&status);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(text.contains("status:       CANCELED"), "{text}");
    // Running or still queued, every step was canceled (none failed).
    for i in 0..4 {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("slow_{i}")) && l.contains("CANCELED")),
            "slow_{i}: {text}"
        );
    }
}

#[test]
fn cancel_of_an_unknown_or_finished_run_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["cancel", "no-such-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no-such-run"), "{}", stderr(&out));

    let out = run(
        dir.path(),
        &["run", "diamond", "--workers", "1", "--run-id", "done"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(dir.path(), &["cancel", "done"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("run `done` already ended SUCCESS"), "{err}");

    let out = run(dir.path(), &["cancel", "done", "--wait", "-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["run", "diamond", "--workers", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The reader goes away before `stepq` writes a line (as `stepq runs | head -0` would).
    let mut child = stepq(dir.path())
        .args(["runs"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stepq starts");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("stepq ends");
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        const SIGPIPE: i32 = 13;
        assert_eq!(out.status.signal(), Some(SIGPIPE), "{:?} {err}", out.status);
    }
}

#[test]
fn an_old_file_layout_state_dir_gets_a_notice_and_state_store_files_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    // A state dir as the file-per-record stores left it.
    std::fs::create_dir_all(dir.path().join(".stepq/runs/old-run")).unwrap();
    let out = run(dir.path(), &["run", "diamond"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("old file layout") && err.contains("state_store"),
        "the old layout is named, with what to do: {err}"
    );
    assert!(dir.path().join(".stepq/stepq.db").is_file());
    assert!(
        dir.path().join(".stepq/runs/old-run").is_dir(),
        "left in place"
    );

    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("stepq.toml"), "state_store = \"files\"\n").unwrap();
    let out = run(files.path(), &["--config", "stepq.toml", "run", "diamond"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(files.path().join(".stepq/runs").is_dir());
    assert!(!files.path().join(".stepq/stepq.db").exists());
    let out = run(files.path(), &["--config", "stepq.toml", "runs"]);
    assert!(stdout(&out).contains("diamond"), "{}", stdout(&out));

    std::fs::write(
        files.path().join("bad.toml"),
        "state_store = \"postgres\"\n",
    )
    .unwrap();
    let out = run(files.path(), &["--config", "bad.toml", "runs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("state_store"), "{}", stderr(&out));
}

#[test]
fn a_state_dir_database_that_is_not_a_database_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".stepq")).unwrap();
    std::fs::write(dir.path().join(".stepq/stepq.db"), vec![b'x'; 4096]).unwrap();
    let out = run(dir.path(), &["run", "diamond"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(".stepq/stepq.db") && err.contains("move it away"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join(".stepq/stepq.db")).unwrap(),
        vec![b'x'; 4096],
        "nothing overwritten"
    );
}
