//! The fault benchmark's figures and the Markdown report printed from them.

use std::fmt::Write as _;
use std::time::Duration;

use super::analysis::Hit;
use crate::bench_run::report::{machine, median, secs, total, Requests};
use crate::localstack;

/// One run of the recovery job.
pub(super) struct RecoveryRun {
    pub(super) run_id: String,
    /// The run record's final status.
    pub(super) status: String,
    /// From spawning `stepq run` to its exit.
    pub(super) wall: Duration,
    /// Workers SIGKILLed during the run.
    pub(super) kills: usize,
    /// Executions those kills cut short.
    pub(super) hits: Vec<Hit>,
    /// Longest time between consecutive starts (from the queueing to the last start).
    pub(super) longest_gap: Option<Duration>,
    /// When the longest gap began, seconds after the steps were queued.
    pub(super) gap_from: Option<f64>,
    /// Starts of step commands.
    pub(super) starts: usize,
    /// Steps started more than once / whose command ran to its end more than once.
    pub(super) started_twice: usize,
    pub(super) ended_twice: usize,
}

impl RecoveryRun {
    /// Kills that cut short at least one step.
    pub(super) fn kills_that_hit(&self) -> usize {
        let mut at: Vec<f64> = self.hits.iter().map(|h| h.killed_at).collect();
        at.sort_by(f64::total_cmp);
        at.dedup();
        at.len()
    }
}

/// One prefetch round.
pub(super) struct PrefetchRound {
    pub(super) status: String,
    /// How long the workers were idle before the run.
    pub(super) idle_before: Duration,
    /// From the run's first `StepQueued` until every step had started.
    pub(super) from_queued: Duration,
    /// From spawning `stepq run` until every step had started.
    pub(super) from_spawn: Duration,
}

/// Everything the fault benchmark measured.
pub(super) struct FaultFigures {
    pub(super) command: String,
    pub(super) commit: String,
    pub(super) date: String,
    pub(super) workers: usize,
    /// Slots of each recovery worker (the default: the cores).
    pub(super) recovery_concurrency: usize,
    pub(super) prefetch_concurrency: usize,
    pub(super) visibility_timeout: u32,
    pub(super) wait_time_seconds: u32,
    pub(super) recovery_steps: usize,
    pub(super) prefetch_steps: usize,
    pub(super) kill_every: Duration,
    /// The run without kills.
    pub(super) baseline: RecoveryRun,
    pub(super) runs: Vec<RecoveryRun>,
    pub(super) prefetch: Vec<PrefetchRound>,
    /// Requests of idle workers: (workers, window, requests).
    pub(super) idle: (usize, Duration, Requests),
    /// Requests in that window of kinds idle workers do not make.
    pub(super) idle_foreign: u64,
}

/// `min / median / max` of durations, in seconds with `decimals` decimals.
fn spread_to(values: &[Duration], decimals: usize) -> String {
    match (values.iter().min(), values.iter().max()) {
        (Some(min), Some(max)) => format!(
            "{:.d$} / {:.d$} / {:.d$} s",
            min.as_secs_f64(),
            median(values).as_secs_f64(),
            max.as_secs_f64(),
            d = decimals
        ),
        _ => "none".into(),
    }
}

/// `min / median / max` of durations, in tenths of seconds.
fn spread(values: &[Duration]) -> String {
    spread_to(values, 1)
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

impl FaultFigures {
    /// Every hit of every run with kills.
    fn hits(&self) -> impl Iterator<Item = (&RecoveryRun, &Hit)> {
        self.runs
            .iter()
            .flat_map(|r| r.hits.iter().map(move |h| (r, h)))
    }

    /// The report, as Markdown.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        let vis = self.visibility_timeout as f64;
        let slots = self.workers * self.recovery_concurrency;
        let _ = writeln!(
            out,
            "Machine: {}; LocalStack {} (native). Commit {}, {}. Command: `{}`.\n",
            machine(),
            localstack::LOCALSTACK_VERSION,
            self.commit,
            self.date,
            self.command
        );
        let _ = writeln!(
            out,
            "**Recovery.** {} `stepq worker start` processes at default settings (concurrency = \
             cores = {}, so {slots} slots; visibility timeout {} s, long poll {} s) and `stepq \
             run` of {} independent steps (`sleep` 1.0-2.0 s) as processes. Every {} s a random \
             worker that runs a step is SIGKILLed and restarted under a fresh name; runs repeat \
             until enough kills hit a running step. A step's start is when its command began (it \
             writes a mark; the run log records one `StepStart` per attempt, so it cannot show a \
             redelivered attempt's start). Re-run delay = the killed step's next start minus the \
             kill.\n",
            self.workers,
            self.recovery_concurrency,
            self.visibility_timeout,
            self.wait_time_seconds,
            self.recovery_steps,
            self.kill_every.as_secs()
        );
        let delays: Vec<Duration> = self.hits().filter_map(|(_, h)| h.delay()).collect();
        let hits = self.hits().count();
        let kills: usize = self.runs.iter().map(|r| r.kills).sum();
        let kills_hit: usize = self.runs.iter().map(RecoveryRun::kills_that_hit).sum();
        let gaps: Vec<Duration> = self.runs.iter().filter_map(|r| r.longest_gap).collect();
        let walls: Vec<Duration> = self.runs.iter().map(|r| r.wall).collect();
        let over = delays.iter().filter(|d| d.as_secs_f64() > vis).count();
        let _ = writeln!(out, "| figure | min / median / max |\n|---|---|");
        let _ = writeln!(
            out,
            "| re-run delay, {} killed steps ({kills_hit} of {kills} kills hit a running step, {} runs) | {} |",
            delays.len(),
            self.runs.len(),
            spread(&delays)
        );
        let _ = writeln!(
            out,
            "| longest gap between step starts, per run with kills | {} |",
            spread(&gaps)
        );
        let _ = writeln!(
            out,
            "| wall time, runs with kills (without kills: {}) | {} |",
            secs(self.baseline.wall),
            spread(&walls)
        );
        let from_queued: Vec<Duration> = self.prefetch.iter().map(|p| p.from_queued).collect();
        let from_spawn: Vec<Duration> = self.prefetch.iter().map(|p| p.from_spawn).collect();
        let _ = writeln!(
            out,
            "| prefetch: all {} steps started, from the first `StepQueued` ({} rounds) | {} |",
            self.prefetch_steps,
            self.prefetch.len(),
            spread_to(&from_queued, 3)
        );
        let _ = writeln!(
            out,
            "| prefetch: the same, from spawning `stepq run` | {} |",
            spread_to(&from_spawn, 3)
        );
        let backlog = self
            .hits()
            .filter(|(_, h)| h.never_started_at_reappear > 0)
            .count();
        let full = self
            .hits()
            .filter(|(_, h)| h.never_started_at_reappear == 0 && h.running_at_reappear >= slots)
            .count();
        let outlived = self.hits().filter(|(_, h)| h.outlived).count();
        // Delays by how many visibility timeouts they span (LocalStack re-queues expired
        // messages once a second, hence the slack).
        let cycles = |lo: f64, hi: f64| {
            delays
                .iter()
                .filter(|d| d.as_secs_f64() > lo && d.as_secs_f64() <= hi)
                .count()
        };
        let slack = 1.5;
        let statuses: Vec<&str> = std::iter::once(&self.baseline)
            .chain(&self.runs)
            .map(|r| r.status.as_str())
            .chain(self.prefetch.iter().map(|p| p.status.as_str()))
            .collect();
        let all_success = statuses.iter().all(|s| *s == "SUCCESS");
        let _ = writeln!(
            out,
            "\nRe-runs later than the visibility timeout ({vis:.0} s): {over} of {}. At kill + \
             {vis:.0} s (the latest the killed message is visible again), {backlog} of the {hits} \
             hits still had steps of the run queued that had never started, and {full} more had \
             all {slots} slots busy. Killed commands that outlived their worker: {outlived}. \
             Every run ended SUCCESS: {}. Re-run delays up to {:.1} s (one visibility timeout): \
             {}; up to {:.1} s (two): {}; longer: {}.\n",
            delays.len(),
            if all_success { "yes" } else { "NO" },
            vis + slack,
            cycles(0.0, vis + slack),
            2.0 * vis + slack,
            cycles(vis + slack, 2.0 * vis + slack),
            cycles(2.0 * vis + slack, f64::INFINITY),
        );
        let _ = writeln!(out, "| run | status | wall | kills | hits | command starts | steps started twice | steps ended twice | longest gap (at) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for (r, label) in std::iter::once((&self.baseline, " (no kills)"))
            .chain(self.runs.iter().map(|r| (r, "")))
        {
            let _ = writeln!(
                out,
                "| `{}`{label} | {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
                r.run_id,
                r.status,
                secs(r.wall),
                r.kills,
                r.hits.len(),
                r.starts,
                r.started_twice,
                r.ended_twice,
                opt_secs(r.longest_gap),
                r.gap_from.map_or("—".into(), |t| format!("+{t:.1} s")),
            );
        }
        let _ = writeln!(out, "\nEach hit: | run | step | re-run delay | steps never started at kill + {vis:.0} s | commands running then (of {slots}) |\n|---|---|---:|---:|---:|");
        for (r, h) in self.hits() {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                r.run_id,
                h.step,
                opt_secs(h.delay()),
                h.never_started_at_reappear,
                h.running_at_reappear
            );
        }
        let _ = writeln!(
            out,
            "\n**Prefetch.** {} idle `stepq worker start --concurrency {}` processes ({} slots), \
             then `stepq run` of {} independent `sleep 8` steps; the workers idle 2-20 s before \
             each round so the runs arrive at different points of the workers' long polls.\n",
            self.workers,
            self.prefetch_concurrency,
            self.workers * self.prefetch_concurrency,
            self.prefetch_steps
        );
        let _ = writeln!(
            out,
            "| round | status | idle before | all started after the first `StepQueued` | after spawning `stepq run` |\n|---:|---|---:|---:|---:|"
        );
        for (i, p) in self.prefetch.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} s | {} | {} |",
                i + 1,
                p.status,
                p.idle_before.as_secs_f64(),
                secs(p.from_queued),
                secs(p.from_spawn)
            );
        }
        let (workers, window, requests) = &self.idle;
        let per = |n: u64| n as f64 / *workers as f64 / (window.as_secs_f64() / 60.0);
        let receives = requests.get("sqs.ReceiveMessage").copied().unwrap_or(0);
        let by_op: Vec<String> = requests
            .iter()
            .map(|(op, n)| format!("{op} {:.1}", per(*n)))
            .collect();
        let _ = writeln!(
            out,
            "\n**Idle requests.** {workers} idle workers for {:.0} s: {:.1} `ReceiveMessage` per \
             worker per minute ({receives} in all); every request, per worker per minute: {:.1} \
             ({}). The window counts every request LocalStack logged, whoever made it: {}.",
            window.as_secs_f64(),
            per(receives),
            per(total(requests)),
            by_op.join(", "),
            if self.idle_foreign == 0 {
                "only kinds idle workers make (`ReceiveMessage`, `PutObject`)".to_string()
            } else {
                format!(
                    "{} requests of other kinds came from other clients, so it is an upper bound",
                    self.idle_foreign
                )
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, kills: usize, hits: Vec<Hit>) -> RecoveryRun {
        RecoveryRun {
            run_id: id.into(),
            status: "SUCCESS".into(),
            wall: Duration::from_secs(30),
            kills,
            hits,
            longest_gap: Some(Duration::from_millis(9500)),
            gap_from: Some(4.0),
            starts: 62,
            started_twice: 2,
            ended_twice: 0,
        }
    }

    fn hit(step: &str, delay: f64, never_started: usize) -> Hit {
        Hit {
            step: step.into(),
            killed_worker: "w0".into(),
            killed_at: 100.0,
            rerun: Some((100.0 + delay, "w1".into())),
            outlived: false,
            never_started_at_reappear: never_started,
            running_at_reappear: 6,
        }
    }

    #[test]
    fn the_report_has_the_spreads_the_runs_the_hits_and_the_idle_rate() {
        let figures = FaultFigures {
            command: "cargo xtask bench --localstack --faults".into(),
            commit: "abc1234".into(),
            date: "2026-01-01".into(),
            workers: 3,
            recovery_concurrency: 2,
            prefetch_concurrency: 2,
            visibility_timeout: 10,
            wait_time_seconds: 20,
            recovery_steps: 60,
            prefetch_steps: 6,
            kill_every: Duration::from_secs(5),
            baseline: run("base", 0, vec![]),
            runs: vec![
                run("r1", 3, vec![hit("s1", 8.0, 10), hit("s2", 12.0, 0)]),
                run("r2", 1, vec![hit("s3", 9.0, 0)]),
            ],
            prefetch: vec![PrefetchRound {
                status: "SUCCESS".into(),
                idle_before: Duration::from_secs(2),
                from_queued: Duration::from_millis(300),
                from_spawn: Duration::from_millis(900),
            }],
            idle: (
                3,
                Duration::from_secs(60),
                Requests::from([
                    ("sqs.ReceiveMessage".into(), 9),
                    ("s3.PutObject".into(), 12),
                ]),
            ),
            idle_foreign: 0,
        };
        let report = figures.render();
        assert!(
            report.contains(
                "| re-run delay, 3 killed steps (2 of 4 kills hit a running step, 2 runs) | 8.0 / 9.0 / 12.0 s |"
            ),
            "{report}"
        );
        assert!(
            report.contains("Re-runs later than the visibility timeout (10 s): 1 of 3"),
            "{report}"
        );
        assert!(
            report.contains("1 of the 3 hits still had steps"),
            "{report}"
        );
        assert!(report.contains("2 more had all 6 slots busy"), "{report}");
        assert!(report.contains("Every run ended SUCCESS: yes"), "{report}");
        assert!(
            report.contains(
                "up to 11.5 s (one visibility timeout): 2; up to 21.5 s (two): 1; longer: 0."
            ),
            "{report}"
        );
        assert!(report.contains("| `base` (no kills) | SUCCESS | 30.000 s | 0 |"));
        assert!(
            report.contains("| `r1` | s2 | 12.0 s | 0 | 6 |"),
            "{report}"
        );
        assert!(report.contains("| 1 | SUCCESS | 2 s | 0.300 s | 0.900 s |"));
        assert!(
            report.contains("(1 rounds) | 0.300 / 0.300 / 0.300 s |"),
            "{report}"
        );
        assert!(
            report.contains("3.0 `ReceiveMessage` per worker per minute (9 in all)"),
            "{report}"
        );
        assert!(report.contains("s3.PutObject 4.0"), "{report}");
        assert!(report.contains("only kinds idle workers make"), "{report}");
    }
}
