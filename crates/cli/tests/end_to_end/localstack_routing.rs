//! Queue routing, priority and fleet-wide limits for real, on LocalStack (issue #11):
//!
//! - Two `stepq worker start` processes on different queues (`--queues default`, `--queues
//!   gpu`): every step runs only on the worker of its queue, as the run's event log says;
//!   while no gpu worker runs, `stepq status` says the gpu steps wait on a queue no live
//!   worker consumes.
//! - Priority: a one-step high-priority run started while a 500-step low-priority backfill
//!   occupies every worker slot starts its step within two receives; the same run without
//!   `[priority]` waits behind the backfill. Five of each, medians printed (the figures in
//!   docs/benchmarks.md).
//! - Fleet-wide limit: a 200-step run tagged `db = "warehouse"` on 3 workers of 3 slots never
//!   runs more than the limit at once (from its event log); a worker SIGKILLed while it holds
//!   slots gives them back within the lease time (from the step commands' marks).
//!
//! Ignored by plain `cargo test`; `cargo xtask localstack-test` runs them.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;

use crate::common::cli::{run_configured, stdout, stepq_configured, text, KilledOnDrop};
use crate::common::localstack::{config_dir_with, localstack, TestQueue, WorkerProcess};
use crate::common::marks::{mark_command, read_marks, MARKS_ENV, WORKER_ENV};

/// Generous bound on anything that should take seconds.
const PATIENCE: Duration = Duration::from_secs(120);

/// A queue beside `main` named `<main>-<suffix>` (a priority level's queue).
async fn sibling(main: &TestQueue, suffix: &str) -> TestQueue {
    let name = main.url.rsplit('/').next().unwrap();
    let out = main
        .client
        .create_queue()
        .queue_name(format!("{name}-{suffix}"))
        .attributes(QueueAttributeName::VisibilityTimeout, "6")
        .send()
        .await
        .expect("create a level queue");
    TestQueue {
        url: out.queue_url().unwrap().to_string(),
        client: main.client.clone(),
    }
}

/// `stepq status RUN --json`.
pub(crate) fn status_json(dir: &Path, run_id: &str) -> serde_json::Value {
    let out = run_configured(
        dir,
        &["--jobs-file", "jobs.toml", "status", run_id, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serde_json::from_str(&stdout(&out)).expect("status JSON")
}

/// A worker with `WORKER_ENV` set to its name (for the marks), consuming `queues`.
pub(crate) fn worker(dir: &Path, name: &str, queues: &str, concurrency: &str) -> WorkerProcess {
    let marks = dir.join("marks");
    let worker = WorkerProcess::start_with_env(
        dir,
        name,
        &[
            "--jobs-file",
            "jobs.toml",
            "--queues",
            queues,
            "--concurrency",
            concurrency,
        ],
        &[(WORKER_ENV, name.as_ref()), (MARKS_ENV, marks.as_os_str())],
    );
    worker.wait_for("receiver started", PATIENCE);
    worker
}

/// `stepq run JOB --workers 0 --run-id RUN_ID` in the background (the fleet's workers run
/// its steps); killed on drop.
pub(crate) fn spawn_run(dir: &Path, job: &str, run_id: &str) -> KilledOnDrop {
    KilledOnDrop(Some(
        stepq_configured(dir)
            .args(["--jobs-file", "jobs.toml", "run", job, "--workers", "0"])
            .args(["--run-id", run_id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stepq run starts"),
    ))
}

/// Waits until `check` holds, polling every 200 ms; panics with `what` after [`PATIENCE`].
pub(crate) fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let began = Instant::now();
    while !check() {
        assert!(began.elapsed() < PATIENCE, "{what} within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn localstack_routing_each_step_runs_only_on_a_worker_of_its_queue() {
    let ls = localstack();
    let main = TestQueue::named(&ls, "stepq-route", false).await;
    let gpu = TestQueue::named(&ls, "stepq-route-gpu", false).await;
    let dir = config_dir_with(
        &ls,
        &main,
        "cli-tests",
        &format!("\n[queues.gpu]\nurl = \"{}\"\n", gpu.url),
    );
    let dir = dir.path();
    let mut jobs = String::from("[jobs.routed]\n\n");
    for i in 0..4 {
        jobs.push_str(&format!(
            "[[jobs.routed.steps]]\nkey = \"cpu{i}\"\nargv = [\"echo\", \"{i}\"]\n\n\
             [[jobs.routed.steps]]\nkey = \"gpu{i}\"\nargv = [\"echo\", \"{i}\"]\nqueue = \"gpu\"\n\n"
        ));
    }
    // A gpu step reading a cpu step's output, and a cpu step reading a gpu step's.
    jobs.push_str(
        "[[jobs.routed.steps]]\nkey = \"gpu_join\"\nargv = [\"cat\"]\nqueue = \"gpu\"\n\
         inputs = { a = \"cpu0.stdout\" }\nstdin = \"a\"\n\n\
         [[jobs.routed.steps]]\nkey = \"cpu_join\"\nargv = [\"cat\"]\n\
         inputs = { a = \"gpu0.stdout\" }\nstdin = \"a\"\n",
    );
    std::fs::write(dir.join("jobs.toml"), jobs).unwrap();

    // A step routed to an undeclared queue is refused at launch, naming the step and tag.
    std::fs::write(
        dir.join("bad.toml"),
        "[jobs.bad]\n[[jobs.bad.steps]]\nkey = \"train\"\nargv = [\"true\"]\nqueue = \"tpu\"\n",
    )
    .unwrap();
    let refused = run_configured(dir, &["--jobs-file", "bad.toml", "launch", "bad"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains(
            "job `bad`, step `train`: tag `stepq/queue = \"tpu\"` names no declared queue"
        ),
        "{}",
        text(&refused)
    );

    let cpu_worker = worker(dir, "route-cpu", "default", "2");
    let run_id = format!("route-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let launched = run_configured(
        dir,
        &[
            "--jobs-file",
            "jobs.toml",
            "launch",
            "routed",
            "--run-id",
            &run_id,
        ],
    );
    assert_eq!(launched.status.code(), Some(0), "{}", text(&launched));

    // No gpu worker yet: status says so.
    let mut said = String::new();
    wait_until("stepq status naming the unserved gpu queue", || {
        let out = run_configured(dir, &["--jobs-file", "jobs.toml", "status", &run_id]);
        said = stdout(&out);
        said.contains("on queue `gpu`: 0 live workers consume it")
    });
    println!("{said}");

    let gpu_worker = worker(dir, "route-gpu", "gpu", "2");
    wait_until("the routed run to end", || {
        status_json(dir, &run_id)["run"]["status"]
            .as_str()
            .is_some_and(|s| s == "SUCCESS" || s == "FAILURE")
    });
    let status = status_json(dir, &run_id);
    assert_eq!(status["run"]["status"], "SUCCESS", "{status:#}");
    let steps = status["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 10, "{status:#}");
    for step in steps {
        let key = step["step"].as_str().unwrap();
        let expected = if key.starts_with("gpu") {
            "route-gpu"
        } else {
            "route-cpu"
        };
        assert_eq!(step["worker"], expected, "step {key}: {status:#}");
    }
    assert!(!status["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap_or("").contains("0 live workers")));
    assert_eq!(cpu_worker.stop(), Some(0));
    assert_eq!(gpu_worker.stop(), Some(0));
    main.delete().await;
    gpu.delete().await;
}

/// Backfill steps; each sleeps this long (seconds) after writing its start mark.
const BACKFILL_STEPS: usize = 500;
const BACKFILL_SLEEP: &str = "0.05";
/// Workers and slots of the priority scenario.
const WORKERS: usize = 2;
const SLOTS: usize = 4;
/// Measurements per mode.
const ROUNDS: usize = 5;

/// `jobs.toml` of the priority scenario: `backfill` (low priority, every step writes a start
/// mark and sleeps) and `urgent` (one step writing a start mark).
fn write_priority_jobs(dir: &Path) {
    let mark = mark_command("start");
    let mut jobs = String::from("[jobs.backfill]\npriority = \"low\"\n\n");
    for i in 0..BACKFILL_STEPS {
        jobs.push_str(&format!(
            "[[jobs.backfill.steps]]\nkey = \"b{i:03}\"\nargv = [\"sh\", \"-c\", \"{mark}; sleep {BACKFILL_SLEEP}\"]\n\n"
        ));
    }
    jobs.push_str(&format!(
        "[jobs.urgent]\n[[jobs.urgent.steps]]\nkey = \"urgent\"\nargv = [\"sh\", \"-c\", \"{mark}\"]\n"
    ));
    std::fs::write(dir.join("jobs.toml"), jobs).unwrap();
}

/// One measurement: a backfill run occupying every slot, then an urgent run (`--priority
/// high` when `priority`); returns (the urgent step's queue wait, backfill steps started
/// between the urgent step's send and its start).
async fn one_round(dir: &Path, priority: bool, round: usize) -> (Duration, usize) {
    let marks = dir.join("marks");
    let _ = std::fs::remove_file(&marks);
    let tag = if priority { "on" } else { "off" };
    let backfill_id = format!(
        "backfill-{tag}-{round}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let mut backfill = spawn_run(dir, "backfill", &backfill_id);
    // Every slot busy, twice over.
    wait_until("the backfill to occupy every worker", || {
        read_marks(&marks).len() >= 2 * WORKERS * SLOTS
    });
    let urgent_id = format!(
        "urgent-{tag}-{round}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let mut args = vec![
        "--jobs-file",
        "jobs.toml",
        "run",
        "urgent",
        "--workers",
        "0",
    ];
    args.extend(["--run-id", urgent_id.as_str()]);
    if priority {
        args.extend(["--priority", "high"]);
    }
    let urgent = run_configured(dir, &args);
    assert_eq!(urgent.status.code(), Some(0), "{}", text(&urgent));
    let status = backfill.child().wait().unwrap();
    assert!(status.success(), "the backfill run failed");

    let urgent_status = status_json(dir, &urgent_id);
    let step = &urgent_status["steps"][0];
    let wait = Duration::from_micros(step["queue_wait_us"].as_u64().expect("a queue wait"));
    let all = read_marks(&marks);
    let started = all
        .iter()
        .find(|m| m.step == "urgent")
        .expect("the urgent mark")
        .at;
    let sent = started - wait.as_secs_f64();
    let overtaking = all
        .iter()
        .filter(|m| m.step != "urgent" && m.at > sent && m.at < started)
        .count();
    (wait, overtaking)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs [`ROUNDS`] measurements on fresh workers; the priority config when `priority`.
async fn measure(priority: bool) -> Vec<(Duration, usize)> {
    let ls = localstack();
    let main = TestQueue::named(&ls, "stepq-prio", false).await;
    let mut levels = Vec::new();
    let more = if priority {
        levels.push(sibling(&main, "high").await);
        levels.push(sibling(&main, "low").await);
        "\n[priority]\nlevels = [\"high\", \"normal\", \"low\"]\ndefault = \"normal\"\n"
    } else {
        ""
    };
    let more = format!("{more}\n[executor]\nmax_in_flight = {BACKFILL_STEPS}\n");
    let dir = config_dir_with(&ls, &main, "cli-tests", &more);
    let dir = dir.path();
    write_priority_jobs(dir);
    if !priority {
        // Without [priority] a level is refused: the run tag names no level.
        let out = run_configured(
            dir,
            &[
                "--jobs-file",
                "jobs.toml",
                "run",
                "urgent",
                "--priority",
                "high",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains("names no priority level"),
            "{}",
            text(&out)
        );
        // The backfill's own `priority = "low"` names no level either: run it without.
        let jobs = std::fs::read_to_string(dir.join("jobs.toml")).unwrap();
        std::fs::write(
            dir.join("jobs.toml"),
            jobs.replace("priority = \"low\"\n", ""),
        )
        .unwrap();
    }
    let workers: Vec<WorkerProcess> = (0..WORKERS)
        .map(|i| worker(dir, &format!("prio-{i}"), "default", &SLOTS.to_string()))
        .collect();
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        rounds.push(one_round(dir, priority, round).await);
    }
    for w in workers {
        assert_eq!(w.stop(), Some(0));
    }
    main.delete().await;
    for level in levels {
        level.delete().await;
    }
    rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn localstack_priority_a_high_run_overtakes_a_backfill() {
    let on = measure(true).await;
    let off = measure(false).await;
    let ms =
        |r: &[(Duration, usize)]| median(r.iter().map(|(w, _)| w.as_secs_f64() * 1e3).collect());
    let overtaken = |r: &[(Duration, usize)]| median(r.iter().map(|(_, n)| *n as f64).collect());
    println!(
        "priority ({BACKFILL_STEPS}-step low backfill on {WORKERS} workers x {SLOTS} slots, \
         median of {ROUNDS}): high run's first step waited {:.0} ms with {} backfill steps \
         started meanwhile; priority off: {:.0} ms with {} steps; all: on {on:?}, off {off:?}",
        ms(&on),
        overtaken(&on),
        ms(&off),
        overtaken(&off)
    );
    // Within two receives of the fleet: no more backfill steps start meanwhile than the
    // slots of two rounds of receives.
    for (wait, started) in &on {
        assert!(
            *started <= 2 * WORKERS * SLOTS,
            "the high run waited {wait:?} while {started} backfill steps started: {on:?}"
        );
    }
    assert!(
        ms(&on) < ms(&off),
        "priority did not shorten the wait: on {on:?}, off {off:?}"
    );
}

/// The fleet-wide limit of the limit scenarios.
const FLEET_LIMIT: usize = 4;
/// Their lease time, seconds.
const FLEET_LEASE: f64 = 3.0;

/// Intervals (start, end) of each step command from start and end marks; a command with no
/// end mark on a worker killed at `killed` (worker, time) ends then.
pub(crate) fn intervals(
    marks: &[crate::common::marks::Mark],
    killed: Option<(&str, f64)>,
) -> Vec<(f64, f64, String)> {
    let mut open: std::collections::HashMap<(String, String), f64> = Default::default();
    let mut done = Vec::new();
    for m in marks {
        let key = (m.step.clone(), m.worker.clone());
        if m.start {
            open.insert(key, m.at);
        } else if let Some(start) = open.remove(&key) {
            done.push((start, m.at, m.worker.clone()));
        }
    }
    for ((_, worker), start) in open {
        if let Some((dead, at)) = killed {
            if worker == dead {
                done.push((start, at, worker));
            }
        }
    }
    done
}

/// Most intervals open at once, and the first time (after `after`) more than `above` of
/// those not on `skip` are open.
pub(crate) fn concurrency(
    spans: &[(f64, f64, String)],
    after: f64,
    above: usize,
    skip: &str,
) -> (usize, Option<f64>) {
    let mut edges: Vec<(f64, i32, bool)> = Vec::new();
    for (s, e, w) in spans {
        edges.push((*s, 1, w != skip));
        edges.push((*e, -1, w != skip));
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut all, mut live, mut most, mut first) = (0i32, 0i32, 0i32, None);
    for (at, d, counted) in edges {
        all += d;
        if counted {
            live += d;
        }
        most = most.max(all);
        if first.is_none() && at > after && live > above as i32 {
            first = Some(at);
        }
    }
    (most as usize, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn localstack_fleet_limit_holds_over_200_steps_and_a_killed_workers_slots_return() {
    let ls = localstack();
    let main = TestQueue::named(&ls, "stepq-fleet", false).await;
    let more = format!(
        "\n[executor]\nmax_in_flight = 200\n\n[worker]\nfleet_limits = [{{ key = \"db\", value = \"warehouse\", limit = {FLEET_LIMIT} }}]\nfleet_lease_seconds = {FLEET_LEASE}\n"
    );
    let dir = config_dir_with(&ls, &main, "cli-tests", &more);
    let dir = dir.path();
    let (start, end) = (mark_command("start"), mark_command("end"));
    let mut jobs = String::from("[jobs.limited]\n\n");
    for i in 0..200 {
        jobs.push_str(&format!(
            "[[jobs.limited.steps]]\nkey = \"l{i:03}\"\nargv = [\"sh\", \"-c\", \"{start}; sleep 0.05; {end}\"]\ntags = {{ db = \"warehouse\" }}\n\n"
        ));
    }
    jobs.push_str("[jobs.held]\n\n");
    for i in 0..24 {
        jobs.push_str(&format!(
            "[[jobs.held.steps]]\nkey = \"s{i:02}\"\nargv = [\"sh\", \"-c\", \"{start}; sleep 1; {end}\"]\ntags = {{ db = \"warehouse\" }}\n\n"
        ));
    }
    std::fs::write(dir.join("jobs.toml"), jobs).unwrap();
    let mut workers: Vec<Option<WorkerProcess>> = (0..3)
        .map(|i| Some(worker(dir, &format!("fleet-{i}"), "default", "3")))
        .collect();

    // 200 steps on 9 slots: never more than the limit at once, per the event log.
    let run_id = format!("fleet-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let out = run_configured(
        dir,
        &[
            "--jobs-file",
            "jobs.toml",
            "run",
            "limited",
            "--workers",
            "0",
            "--run-id",
            &run_id,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let logs = run_configured(
        dir,
        &["--jobs-file", "jobs.toml", "logs", &run_id, "--json"],
    );
    // Each step from its start to its start plus its run time: the worker's own clock (a
    // success event is stamped when the orchestrator records it).
    let mut started: std::collections::HashMap<String, u64> = Default::default();
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for line in stdout(&logs).lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = event["step_key"].as_str().unwrap_or_default().to_string();
        let at = event["timestamp_us"].as_u64().unwrap();
        match event["kind"].as_str().unwrap() {
            "step_start" => {
                started.insert(step, at);
            }
            "step_success" => {
                let start = started[&step];
                edges.push((start, 1));
                edges.push((start + event["duration_us"].as_u64().unwrap(), -1));
            }
            _ => {}
        }
    }
    assert_eq!(edges.len(), 400, "a start and an end per step");
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in &edges {
        now += d;
        most = most.max(now);
    }
    println!(
        "fleet limit {FLEET_LIMIT}: at most {most} of 200 steps ran at once on 3 workers x 3 slots"
    );
    // Never over the limit; and steps did run side by side (the short commands do not
    // always overlap four deep by their run times; the kill below holds all four).
    assert!(
        (2..=FLEET_LIMIT as i32).contains(&most),
        "the event log's most steps at once: {most}"
    );

    // A worker SIGKILLed while it holds slots: the others get them back within a lease.
    let marks = dir.join("marks");
    let _ = std::fs::remove_file(&marks);
    let held_id = format!("held-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut held_run = spawn_run(dir, "held", &held_id);
    let running_on = |marks: &[crate::common::marks::Mark]| {
        let mut running: std::collections::BTreeMap<String, usize> = Default::default();
        let mut open: std::collections::HashMap<(String, String), ()> = Default::default();
        for m in marks {
            let key = (m.step.clone(), m.worker.clone());
            if m.start {
                open.insert(key, ());
            } else {
                open.remove(&key);
            }
        }
        for (_, w) in open.keys() {
            *running.entry(w.clone()).or_default() += 1;
        }
        running
    };
    let mut victim = String::new();
    wait_until("the limit's slots all held", || {
        let running = running_on(&read_marks(&marks));
        if running.values().sum::<usize>() < FLEET_LIMIT {
            return false;
        }
        victim = running.iter().max_by_key(|(_, n)| **n).unwrap().0.clone();
        true
    });
    let index: usize = victim.trim_start_matches("fleet-").parse().unwrap();
    let held = running_on(&read_marks(&marks))[&victim];
    workers[index].take().unwrap().kill();
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let status = held_run.child().wait().unwrap();
    assert!(status.success(), "the held run failed after the kill");
    let spans = intervals(&read_marks(&marks), Some((&victim, killed_at)));
    let (most, back) = concurrency(&spans, killed_at, FLEET_LIMIT - held, &victim);
    let back = back.expect("the killed worker's slots never came back") - killed_at;
    println!(
        "killed {victim} holding {held} of {FLEET_LIMIT} slots: the others ran more than {} at \
         once {back:.2} s later (lease {FLEET_LEASE} s); at most {most} at once",
        FLEET_LIMIT - held
    );
    assert!(most <= FLEET_LIMIT, "{most} steps ran at once");
    // Free within one lease of the kill (its last renewal was at most a third of a lease
    // before), then taken at a waiting worker's next try (at most a second apart).
    assert!(
        back <= FLEET_LEASE + 2.0,
        "the slots came back after {back:.2} s"
    );
    for w in workers.into_iter().flatten() {
        assert_eq!(w.stop(), Some(0));
    }
    main.delete().await;
}
