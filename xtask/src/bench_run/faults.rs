//! `cargo xtask bench --localstack --faults` (issue #16): real `stepq worker start` processes
//! on LocalStack, at default settings except the queue, endpoint and bucket.
//!
//! 1. Idle requests: the workers idle for [`IDLE_WINDOW`]; the AWS requests LocalStack logs
//!    meanwhile, per worker per minute.
//! 2. Recovery: `stepq run` of [`RECOVERY_STEPS`] independent 1-2 s `sleep` steps, once without
//!    kills, then again and again while every [`KILL_EVERY`] a random worker running a step is
//!    SIGKILLed and restarted under a fresh name, until `--kills` kills hit a running step.
//! 3. Prefetch: `--prefetch-rounds` runs of [`PREFETCH_STEPS`] independent `sleep 8` steps on
//!    three idle workers of concurrency 2: time until all of them run.
//!
//! Each step's command writes a `start` mark before it sleeps and an `end` mark after, with its
//! run, step and worker (`BENCH_WORKER`, set on each worker process) and the time, into a file
//! per worker process: the run's event log has one `StepStart` per attempt, so it does not show
//! when a redelivered attempt started again. The run log gives the queueing time (the first
//! `StepQueued`) and the run's status.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use stepq::{make_app, App, EventKind, StepqConfig};

use super::report::Requests;
use super::workers::stepq_command;
use super::BenchRunArgs;
use super::{create_queue, delete_queue, log_offset, requests_since, short_id, write_config};

mod analysis;
mod fleet;
mod render;

use analysis::{executions, hits, longest_gap, repeats, time_until_started, Kill};
use fleet::Fleet;
use render::{FaultFigures, PrefetchRound, RecoveryRun};

/// Workers of every fault scenario (the issue's three).
const FAULT_WORKERS: usize = 3;
/// Steps of the recovery job.
const RECOVERY_STEPS: usize = 60;
/// Steps of the prefetch job, and its workers' concurrency (one step per slot).
const PREFETCH_STEPS: usize = 6;
const PREFETCH_CONCURRENCY: usize = 2;
/// How often a worker is killed during a recovery run.
const KILL_EVERY: Duration = Duration::from_secs(5);
/// How long the idle workers' requests are counted.
const IDLE_WINDOW: Duration = Duration::from_secs(60);
/// Idle windows at most, until one has only requests of idle workers.
const IDLE_ATTEMPTS: usize = 3;
/// The requests an idle worker makes.
const IDLE_OPERATIONS: [&str; 2] = ["sqs.ReceiveMessage", "s3.PutObject"];
/// Runs with kills at most, should kills keep missing.
const MAX_RECOVERY_RUNS: usize = 30;
/// Longest a fault run may take.
const FAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Time for freshly started workers to be up and polling.
const WORKER_START: Duration = Duration::from_secs(5);

const RECOVERY_JOB: &str = "faults_60";
const PREFETCH_JOB: &str = "prefetch_6";

/// Seconds since the Unix epoch, now.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The `argv` of a step that marks its start, sleeps `seconds` and marks its end.
fn marking_sleep(seconds: f64) -> String {
    let mark = |kind: &str| {
        format!(
            "printf '{kind} %s %s %s %s\\n' \"$STEPQ_RUN_ID\" \"$STEPQ_STEP_KEY\" \
             \"$BENCH_WORKER\" \"$(date +%s.%N)\" >> \"$BENCH_MARKS\""
        )
    };
    let script = format!("{}; sleep {seconds:.1}; {}", mark("start"), mark("end"));
    format!("[\"sh\", \"-c\", {}]", toml_string(&script))
}

/// The jobs file: the recovery job (steps of 1.0-2.0 s) and the prefetch job (8 s steps).
fn jobs_toml() -> String {
    let mut out = String::new();
    for (job, steps, seconds) in [
        (
            RECOVERY_JOB,
            RECOVERY_STEPS,
            &(|i: usize| 1.0 + (i % 11) as f64 / 10.0) as &dyn Fn(usize) -> f64,
        ),
        (PREFETCH_JOB, PREFETCH_STEPS, &|_| 8.0),
    ] {
        out.push_str(&format!("[jobs.{job}]\n\n"));
        for i in 0..steps {
            out.push_str(&format!(
                "[[jobs.{job}.steps]]\nkey = \"s{i:02}\"\nargv = {}\n\n",
                marking_sleep(seconds(i))
            ));
        }
    }
    out
}

/// What a `stepq run` process left: its wall time, the run's status and first `StepQueued`.
struct Finished {
    wall: Duration,
    spawned_at: f64,
    status: String,
    queued_at: f64,
}

/// A `stepq run JOB --run-id RUN_ID` process; while it runs, every [`KILL_EVERY`] a random
/// worker of `killer` running a step of the run is SIGKILLed and restarted. Returns what the
/// run left and the kills.
async fn run_orchestrator(
    env: &Env<'_>,
    job: &str,
    run_id: &str,
    mut killer: Option<&mut Fleet>,
) -> Result<(Finished, Vec<Kill>)> {
    let log = env.work.join(format!("{run_id}.log"));
    let spawned_at = now();
    let started = Instant::now();
    let mut child = stepq_command(env.bin, env.config_path, &log)?
        .arg("--jobs-file")
        .arg(env.jobs_path)
        .args(["run", job, "--workers", "0", "--run-id", run_id])
        .spawn()
        .with_context(|| format!("starting {}", env.bin.display()))?;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + KILL_EVERY, KILL_EVERY);
    let mut kills = Vec::new();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = ticks.tick() => {
                ensure!(
                    started.elapsed() < FAULT_RUN_TIMEOUT,
                    "run {run_id} took over {FAULT_RUN_TIMEOUT:?}"
                );
                if let Some(fleet) = killer.as_deref_mut() {
                    let busy = fleet.busy_slots(run_id)?;
                    if !busy.is_empty() {
                        let pick = (uuid::Uuid::new_v4().as_u128() % busy.len() as u128) as usize;
                        kills.push(fleet.kill_and_restart(busy[pick]).await?);
                    }
                }
            }
        }
    };
    let wall = started.elapsed();
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        bail!("`stepq run {job}` ({run_id}) exited {status}:\n{text}");
    }
    let record = env.app.runs().get_run(run_id).await?;
    let events = stepq::runs::read_all_events(env.app.runs().as_ref(), run_id).await?;
    let queued_us = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::StepQueued { .. }))
        .map(|e| e.timestamp_us)
        .context("the run's log has no StepQueued")?;
    let finished = Finished {
        wall,
        spawned_at,
        status: record.status.to_string(),
        queued_at: queued_us as f64 / 1e6,
    };
    Ok((finished, kills))
}

/// The requests of idle workers over [`IDLE_WINDOW`]: the first of [`IDLE_ATTEMPTS`] windows
/// with no request of a kind idle workers do not make (another client used LocalStack), else
/// the one with the fewest.
async fn idle_requests(log: &Path) -> Result<(usize, Duration, Requests)> {
    let mut best: Option<Requests> = None;
    for attempt in 1..=IDLE_ATTEMPTS {
        let offset = log_offset(log)?;
        tokio::time::sleep(IDLE_WINDOW).await;
        let requests = requests_since(log, offset)?;
        let others = foreign_requests(&requests);
        println!("   window {attempt}: {requests:?}");
        if best.as_ref().is_none_or(|b| others < foreign_requests(b)) {
            best = Some(requests);
        }
        if others == 0 {
            break;
        }
        println!("   {others} requests of other clients in the window; measuring again");
    }
    Ok((FAULT_WORKERS, IDLE_WINDOW, best.unwrap_or_default()))
}

/// Requests of kinds an idle worker does not make (long polls of its task queue and cancel
/// inbox, heartbeat writes).
fn foreign_requests(requests: &Requests) -> u64 {
    requests
        .iter()
        .filter(|(op, _)| !IDLE_OPERATIONS.contains(&op.as_str()))
        .map(|(_, n)| n)
        .sum()
}

/// What every orchestrator process needs.
struct Env<'a> {
    bin: &'a Path,
    config_path: &'a Path,
    jobs_path: &'a Path,
    work: &'a Path,
    app: &'a App,
}

/// Figures of a finished recovery run from the marks and the kills made during it.
fn recovery_figures(
    run_id: &str,
    finished: &Finished,
    marks: &[analysis::Mark],
    kills: &[Kill],
    visibility: f64,
) -> RecoveryRun {
    let execs = executions(marks, run_id);
    let gap = longest_gap(finished.queued_at, &execs);
    let (started_twice, ended_twice) = repeats(&execs);
    RecoveryRun {
        run_id: run_id.to_string(),
        status: finished.status.clone(),
        wall: finished.wall,
        kills: kills.len(),
        hits: hits(&execs, kills, visibility),
        longest_gap: gap.map(|(a, b)| Duration::from_secs_f64(b - a)),
        gap_from: gap.map(|(a, _)| a - finished.queued_at),
        starts: execs.len(),
        started_twice,
        ended_twice,
    }
}

/// The short commit and whether the tree had changes, and today's date (UTC).
fn commit_and_date(root: &Path) -> (String, String) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = if dirty {
        format!("{commit} (with uncommitted changes in the tree)")
    } else {
        commit
    };
    (commit, date)
}

/// `bench-run --faults`.
pub(super) async fn bench_faults(
    root: &Path,
    args: &BenchRunArgs,
    sqs: &aws_sdk_sqs::Client,
    log: &Path,
) -> Result<u8> {
    let bin = args
        .stepq_bin
        .as_deref()
        .context("--faults needs the stepq binary (--stepq-bin)")?;
    let id = short_id();
    let work = root.join(format!("target/stepq-bench/faults-{id}"));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let jobs_path = work.join("jobs.toml");
    std::fs::write(&jobs_path, jobs_toml())?;
    let task_queue = create_queue(sqs, &format!("stepq-bench-faults-{id}")).await?;
    let outcome = async {
        let (config_path, config) = write_config(&work, &args.endpoint, &task_queue, &id, None)?;
        measure(
            root,
            args,
            bin,
            &config_path,
            &config,
            &jobs_path,
            &work,
            log,
        )
        .await
    }
    .await;
    delete_queue(sqs, &task_queue).await;
    let report = outcome?.render();
    let path = work.join("report.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{report}\n(also written to {})", path.display());
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    root: &Path,
    args: &BenchRunArgs,
    bin: &Path,
    config_path: &Path,
    config: &StepqConfig,
    jobs_path: &Path,
    work: &Path,
    log: &Path,
) -> Result<FaultFigures> {
    let sqs_config = config.sqs_config().context("a distributed config")?;
    let visibility = sqs_config.config_source.visibility_timeout;
    let app = make_app(config).await?;
    let env = Env {
        bin,
        config_path,
        jobs_path,
        work,
        app: &app,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!("== {FAULT_WORKERS} workers (default settings), idle for {IDLE_WINDOW:?}");
    let mut fleet = Fleet::start(bin, config_path, jobs_path, work, "recovery", None).await?;
    let outcome = async {
        let idle = idle_requests(log).await?;

        println!("== {RECOVERY_JOB}: one run without kills");
        let run_id = format!("faults-{}-base", short_id());
        let (finished, _) = run_orchestrator(&env, RECOVERY_JOB, &run_id, None).await?;
        let baseline =
            recovery_figures(&run_id, &finished, &fleet.marks()?, &[], visibility as f64);
        println!("   {} {}", baseline.status, super::secs(baseline.wall));

        let mut runs: Vec<RecoveryRun> = Vec::new();
        while runs.iter().map(RecoveryRun::kills_that_hit).sum::<usize>() < args.bench.kills {
            ensure!(
                runs.len() < MAX_RECOVERY_RUNS,
                "{MAX_RECOVERY_RUNS} runs and too few kills hit a step"
            );
            let run_id = format!("faults-{}-{}", short_id(), runs.len() + 1);
            println!("== {RECOVERY_JOB} with a worker SIGKILLed every {KILL_EVERY:?}: {run_id}");
            let (finished, kills) =
                run_orchestrator(&env, RECOVERY_JOB, &run_id, Some(&mut fleet)).await?;
            let run = recovery_figures(
                &run_id,
                &finished,
                &fleet.marks()?,
                &kills,
                visibility as f64,
            );
            let delays: Vec<String> = run
                .hits
                .iter()
                .map(|h| {
                    h.delay()
                        .map_or("never".into(), |d| format!("{:.1}", d.as_secs_f64()))
                })
                .collect();
            println!(
                "   {} {}, {} kills, re-run delays [{}] s, longest gap {:?}",
                run.status,
                super::secs(run.wall),
                run.kills,
                delays.join(", "),
                run.longest_gap
            );
            runs.push(run);
        }
        anyhow::Ok((idle, baseline, runs))
    }
    .await;
    let outcome = outcome.with_context(|| fleet.log_tails());
    fleet.stop().await;
    let (idle, baseline, runs) = outcome?;

    println!(
        "== prefetch: {FAULT_WORKERS} idle workers of concurrency {PREFETCH_CONCURRENCY}, \
         {} rounds of {PREFETCH_JOB}",
        args.bench.prefetch_rounds
    );
    let mut fleet = Fleet::start(
        bin,
        config_path,
        jobs_path,
        work,
        "prefetch",
        Some(PREFETCH_CONCURRENCY),
    )
    .await?;
    let outcome = async {
        let mut rounds = Vec::new();
        for round in 0..args.bench.prefetch_rounds {
            // 2-20 s of idling: the run arrives at a different point of the long polls.
            let idle_before = Duration::from_secs(2 + ((round * 7) % 19) as u64);
            tokio::time::sleep(idle_before).await;
            let run_id = format!("prefetch-{}-{}", short_id(), round + 1);
            let (finished, _) = run_orchestrator(&env, PREFETCH_JOB, &run_id, None).await?;
            let execs = executions(&fleet.marks()?, &run_id);
            let all_started = |t0| {
                time_until_started(t0, &execs, PREFETCH_STEPS)
                    .with_context(|| format!("run {run_id}: not every step started"))
            };
            let round = PrefetchRound {
                status: finished.status,
                idle_before,
                from_queued: all_started(finished.queued_at)?,
                from_spawn: all_started(finished.spawned_at)?,
            };
            println!(
                "   round {}: all {PREFETCH_STEPS} running {} after StepQueued, {} after spawn",
                rounds.len() + 1,
                super::secs(round.from_queued),
                super::secs(round.from_spawn)
            );
            rounds.push(round);
        }
        anyhow::Ok(rounds)
    }
    .await;
    let outcome = outcome.with_context(|| fleet.log_tails());
    fleet.stop().await;
    let prefetch = outcome?;
    if let Err(e) = app.shutdown().await {
        eprintln!("warning: the run-store app did not shut down cleanly: {e}");
    }

    let (commit, date) = commit_and_date(root);
    let mut command = format!(
        "cargo xtask bench --localstack --faults --kills {}",
        args.bench.kills
    );
    if args.bench.prefetch_rounds != 10 {
        command.push_str(&format!(
            " --prefetch-rounds {}",
            args.bench.prefetch_rounds
        ));
    }
    Ok(FaultFigures {
        command,
        commit,
        date,
        workers: FAULT_WORKERS,
        recovery_concurrency: cores,
        prefetch_concurrency: PREFETCH_CONCURRENCY,
        visibility_timeout: visibility,
        wait_time_seconds: sqs_config.config_source.wait_time_seconds,
        recovery_steps: RECOVERY_STEPS,
        prefetch_steps: PREFETCH_STEPS,
        kill_every: KILL_EVERY,
        baseline,
        runs,
        prefetch,
        idle_foreign: foreign_requests(&idle.2),
        idle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_idle_workers_do_not_make_are_foreign() {
        let requests = Requests::from([
            ("sqs.ReceiveMessage".into(), 12),
            ("s3.PutObject".into(), 18),
            ("sqs.SendMessage".into(), 3),
            ("sqs.CreateQueue".into(), 1),
        ]);
        assert_eq!(foreign_requests(&requests), 4);
        assert_eq!(foreign_requests(&Requests::new()), 0);
    }

    #[test]
    fn the_jobs_file_is_valid_toml_with_marking_steps() {
        let text = jobs_toml();
        let jobs = stepq::ShellJobs::parse(&text, Path::new("jobs.toml"), Path::new(".")).unwrap();
        assert_eq!(jobs.jobs().len(), 2);
        assert_eq!(
            text.matches("[[jobs.faults_60.steps]]").count(),
            RECOVERY_STEPS
        );
        assert_eq!(
            text.matches("[[jobs.prefetch_6.steps]]").count(),
            PREFETCH_STEPS
        );
        assert!(text.contains("sleep 1.0;"), "{text}");
        assert!(text.contains("sleep 2.0;"), "{text}");
        assert!(text.contains("sleep 8.0;"), "{text}");
        assert!(
            text.contains(r#"printf 'start %s %s %s %s\\n' \"$STEPQ_RUN_ID\""#),
            "{text}"
        );
    }
}
