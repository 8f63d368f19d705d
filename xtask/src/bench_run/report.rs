//! The figures `bench-run` collects and the Markdown report it prints from them.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    BenchRunArgs, ORCHESTRATOR_APP, ORCHESTRATOR_BEFORE, ORCHESTRATOR_CLI, ORCHESTRATOR_INLINE,
    ORCHESTRATOR_REPLY_ONLY,
};
use crate::localstack;

/// AWS requests by `service.Operation`.
pub(super) type Requests = BTreeMap<String, u64>;

/// One step scenario's figures.
pub(super) struct StepFigures {
    pub(super) orchestrator: &'static str,
    pub(super) job: String,
    pub(super) steps: usize,
    pub(super) walls: Vec<Duration>,
    pub(super) requests: Requests,
}

impl StepFigures {
    /// AWS requests per step, over all the measured runs.
    pub(super) fn requests_per_step(&self) -> f64 {
        total(&self.requests) as f64 / (self.steps * self.walls.len()) as f64
    }

    /// Prints the median wall time per run and per step, and the AWS requests per step.
    pub(super) fn print_summary(&self) {
        let m = median(&self.walls);
        println!(
            "   median {} ({} per step), {:.2} AWS requests per step",
            secs(m),
            ms(m / self.steps as u32),
            self.requests_per_step()
        );
    }
}

/// One broker-alone measurement.
pub(super) struct BrokerFigures {
    pub(super) concurrency: usize,
    pub(super) tasks: usize,
    pub(super) wall: Duration,
    pub(super) requests: Requests,
}

/// All requests of a count.
pub(super) fn total(requests: &Requests) -> u64 {
    requests.values().sum()
}

/// The median of wall times.
pub(super) fn median(walls: &[Duration]) -> Duration {
    let mut sorted = walls.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// A duration in milliseconds.
pub(super) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A duration in seconds.
pub(super) fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// CPU model, cores and memory of this machine.
pub(super) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("?".to_string(), |kb| format!("{:.0}", kb / 1024.0 / 1024.0));
    format!("{model}, {cores} cores available, {mem_gib} GiB RAM")
}

/// The report, as a Markdown section.
pub(super) fn render(
    args: &BenchRunArgs,
    steps: &[StepFigures],
    broker: &[BrokerFigures],
    workers: &str,
) -> String {
    let mut out = String::new();
    let push = |out: &mut String, line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    push(&mut out, format!("Machine: {}; LocalStack {} (native). Workers: {workers}, concurrency {} each. Orchestrators in the measuring process (release build), an `Executor` started directly (no run store): `{ORCHESTRATOR_BEFORE}` stores results in S3 before announcing them on the reply queue, sends one step per task and hands no input inline; `{ORCHESTRATOR_REPLY_ONLY}` adds `ReplyToMiddleware::with_reply_only`; `{ORCHESTRATOR_INLINE}` adds inline inputs; `{ORCHESTRATOR_APP}` is the executor `stepq::make_app` builds from the workers' config (adds fused chains). `{ORCHESTRATOR_CLI}` (with worker processes only) is `stepq run JOB --workers 0` run as a process per run: the same executor, plus the run store's records and event log, the cancel watch, the reply queue's creation and deletion, and the process start. Each job: one warm-up run, then {} measured runs.", machine(), localstack::LOCALSTACK_VERSION, args.bench.worker_concurrency, args.bench.reps));
    push(&mut out, String::new());
    push(&mut out, "| orchestrator | job | steps | wall per run (median) | min – max | wall per step (median) | AWS requests per step |".into());
    push(&mut out, "|---|---|---:|---:|---:|---:|---:|".into());
    for f in steps {
        let m = median(&f.walls);
        let min = f.walls.iter().min().copied().unwrap_or_default();
        let max = f.walls.iter().max().copied().unwrap_or_default();
        push(
            &mut out,
            format!(
                "| {} | `{}` | {} | {} | {} – {} | {} | {:.2} |",
                f.orchestrator,
                f.job,
                f.steps,
                secs(m),
                secs(min),
                secs(max),
                ms(m / f.steps as u32),
                f.requests_per_step()
            ),
        );
    }
    push(&mut out, String::new());
    push(&mut out, "AWS requests per step, by operation (all processes: orchestrator, workers, and the workers' heartbeats):".into());
    push(&mut out, String::new());
    let mut header = "| operation |".to_string();
    let mut rule = "|---|".to_string();
    for f in steps {
        header.push_str(&format!(" `{}`, {} |", f.job, f.orchestrator));
        rule.push_str("---:|");
    }
    push(&mut out, header);
    push(&mut out, rule);
    let mut operations: Vec<&String> = steps.iter().flat_map(|f| f.requests.keys()).collect();
    operations.sort();
    operations.dedup();
    for op in operations {
        let mut line = format!("| {op} |");
        for f in steps {
            let n = f.requests.get(op).copied().unwrap_or(0);
            line.push_str(&format!(
                " {:.2} |",
                n as f64 / (f.steps * f.walls.len()) as f64
            ));
        }
        push(&mut out, line);
    }
    push(&mut out, String::new());
    push(&mut out, format!("Broker alone (`SqsBroker` + one `Receiver`, results in memory): {} no-op tasks sent in `kick_batch` calls of 100 while the worker drains them.", args.bench.broker_tasks));
    push(&mut out, String::new());
    push(
        &mut out,
        "| worker concurrency | wall | tasks/s | AWS requests per task | by operation |".into(),
    );
    push(&mut out, "|---:|---:|---:|---:|---|".into());
    for b in broker {
        push(
            &mut out,
            format!(
                "| {} | {} |",
                b.concurrency,
                throughput_cells(b.tasks, b.wall, &b.requests)
            ),
        );
    }
    out
}

/// The cells `wall | tasks/s | AWS requests per task | by operation` of `tasks` tasks that
/// took `wall` and made `requests`.
pub(super) fn throughput_cells(tasks: usize, wall: Duration, requests: &Requests) -> String {
    let per_op: Vec<String> = requests
        .iter()
        .map(|(op, n)| format!("{op} {:.2}", *n as f64 / tasks as f64))
        .collect();
    format!(
        "{} | {:.0} | {:.2} | {}",
        secs(wall),
        tasks as f64 / wall.as_secs_f64(),
        total(requests) as f64 / tasks as f64,
        per_op.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::BenchArgs;

    #[test]
    fn median_takes_the_middle_run() {
        let d = Duration::from_millis;
        assert_eq!(median(&[d(30), d(10), d(20)]), d(20));
        assert_eq!(median(&[d(40), d(10), d(30), d(20)]), d(30));
        assert_eq!(median(&[d(5)]), d(5));
    }

    #[test]
    fn the_report_has_a_row_per_scenario_and_per_operation() {
        let args = BenchRunArgs {
            bench: BenchArgs {
                localstack: true,
                reps: 2,
                worker_concurrency: 8,
                broker_tasks: 100,
                in_process_workers: false,
                faults: false,
                kills: 20,
                prefetch_rounds: 10,
                peer: None,
                peer_tasks: 1000,
                keep: false,
            },
            endpoint: "http://127.0.0.1:4566".into(),
            stepq_bin: None,
            taskiq_python: None,
        };
        let steps = [StepFigures {
            orchestrator: ORCHESTRATOR_APP,
            job: "chain_10".into(),
            steps: 10,
            walls: vec![Duration::from_millis(200), Duration::from_millis(180)],
            requests: Requests::from([("sqs.SendMessage".into(), 40), ("s3.PutObject".into(), 20)]),
        }];
        let broker = [BrokerFigures {
            concurrency: 10,
            tasks: 100,
            wall: Duration::from_millis(100),
            requests: Requests::from([("sqs.DeleteMessageBatch".into(), 10)]),
        }];
        let report = render(&args, &steps, &broker, "two test workers");
        assert!(
            report.contains("| make_app default (+ fused chains) | `chain_10` | 10 | 0.200 s | 0.180 s – 0.200 s | 20.0 ms | 3.00 |"),
            "{report}"
        );
        assert!(report.contains("| sqs.SendMessage | 2.00 |"), "{report}");
        assert!(report.contains("| s3.PutObject | 1.00 |"), "{report}");
        assert!(
            report.contains("| 10 | 0.100 s | 1000 | 0.10 | sqs.DeleteMessageBatch 0.10 |"),
            "{report}"
        );
        assert!(report.contains("two test workers"));
    }
}
