//! The example jobs the stock `stepq` binary ships, written with the worker's op API. They are
//! also the acceptance tests of the engine (see `tests/examples.rs`).
//!
//! | job | steps | what it shows |
//! | --- | --- | --- |
//! | `single` | `simple` | one op returning 1 |
//! | `serial` | `simple` -> `add_one` | an input wired to an output: 2 |
//! | `diamond` | `emit_values` -> `add_one`, `renamed` -> `subtract` | two outputs and a join: -1 |
//! | `parallel` | `simple` -> `add_one_0` .. `add_one_9` | ten aliases of one string-keyed op side by side |
//! | `nested` | 16 steps | graphs inside graphs, flattened to `outer.inner.leaf` keys: 16 |
//! | `optional_outputs` | `optional_outputs` -> `echo_1`, `echo_2`, `echo_3` | 3 optional outputs, 1 emitted: 2 steps succeed, 2 are skipped |
//! | `failure` | `fails` -> `should_never_execute` | a failing op; its downstream step never runs |
//! | `retry` | `flaky` | fails twice, succeeds on attempt 3 |
//! | `slow` | `slow_0` .. `slow_3` | ops that sleep (run config `sleep_ms`, default 2000); a canceled one stops at once |
//! | `fanout_N` | `root` -> `leaf_0` .. `leaf_{N-1}` | no-op fan-out (N = 10, 50, 100, 1000, 10000) |
//! | `fanout_join_N` | `root` -> N leaves -> `join` | no-op fan-out and fan-in (N = 10, 50, 100) |
//! | `chain_N` | `step_0` -> .. -> `step_{N-1}` | no-op chain (N = 10, 100, 1000) |
//!
//! The subset example is the diamond run with the step selection `emit_values`.
//!
//! `single`, `serial`, `diamond` and `retry` are [`TypedJob`]s: each step an async closure,
//! its wiring checked by the compiler, its op registered as `job/step`. The others are
//! string-keyed jobs over the named ops of [`ops`] (which tests may replace), checked
//! against those ops' signatures when the location is built.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stepq_plan::{Backoff, Job, RetryPolicy, StepDef};
use stepq_worker::{
    op_fn, op_map, op_output, CodeLocation, CodeLocationBuilder, LocationErrors, Op, OpContext,
    OpError, StepOutputs, TypedJob,
};

/// Output name used by single-output example ops.
pub const RESULT: &str = "result";

/// Sizes of the `fanout_N` jobs in [`location`].
pub const FANOUT_SIZES: [usize; 5] = [10, 50, 100, 1000, 10_000];
/// Sizes of the `fanout_join_N` jobs in [`location`].
pub const FANOUT_JOIN_SIZES: [usize; 3] = [10, 50, 100];
/// Sizes of the `chain_N` jobs in [`location`].
pub const CHAIN_SIZES: [usize; 3] = [10, 100, 1000];

/// Default sleep of the `slow` job's ops.
pub const DEFAULT_SLEEP_MS: u64 = 2000;

/// Every example op by name. Tests may replace some (e.g. to count calls) before building a
/// location with [`location_with`].
pub fn ops() -> BTreeMap<String, Arc<dyn Op>> {
    let mut ops: BTreeMap<String, Arc<dyn Op>> = BTreeMap::new();
    ops.insert(
        "simple".into(),
        op_output(RESULT, |_ctx, _inputs| async { Ok(1_i64) }),
    );
    ops.insert(
        "add_one".into(),
        op_map("num", RESULT, |_ctx, n: i64| async move { Ok(n + 1) }),
    );
    ops.insert(
        "optional_outputs".into(),
        op_fn(|_ctx, _inputs| async { StepOutputs::one("optional_1", &1_i64) }),
    );
    ops.insert(
        "echo".into(),
        op_map("value", RESULT, |_ctx, v: i64| async move { Ok(v) }),
    );
    ops.insert(
        "fails".into(),
        op_output(RESULT, |_ctx, _inputs| async {
            Err::<i64, _>(OpError::new("example_failure", "this op always fails"))
        }),
    );
    ops.insert(
        "should_never_execute".into(),
        op_map("num", RESULT, |_ctx, n: i64| async move {
            Err::<i64, _>(OpError::new(
                "must_not_run",
                format!("should_never_execute ran with input {n}: its upstream step failed"),
            ))
        }),
    );
    ops.insert(
        "sleep".into(),
        op_output(RESULT, |ctx, _inputs| async move {
            let ms = ctx
                .run_config()
                .get("sleep_ms")
                .and_then(|v| v.as_u64())
                .unwrap_or(DEFAULT_SLEEP_MS);
            // A canceled step's future is dropped by the worker, which ends the sleep at once
            // and reports the step CANCELED.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        }),
    );
    ops.insert(
        "noop".into(),
        op_output(RESULT, |_ctx, _inputs| async { Ok(()) }),
    );
    ops
}

fn step(key: &str, op: &str) -> StepDef {
    StepDef::new(key, op).output(RESULT)
}

fn build(builder: stepq_plan::JobBuilder) -> Job {
    builder
        .build()
        .unwrap_or_else(|e| panic!("example job is invalid: {e}"))
}

/// `single`: `simple` returns 1.
pub fn single_job() -> TypedJob {
    let mut job = TypedJob::new("single");
    job.source("simple", |_ctx| async { Ok(1_i64) });
    job
}

/// `serial`: `add_one(simple())` = 2.
pub fn serial_job() -> TypedJob {
    let mut job = TypedJob::new("serial");
    let one = job.source("simple", |_ctx| async { Ok(1_i64) });
    job.map("add_one", &one, |_ctx, n: i64| async move { Ok(n + 1) });
    job
}

/// `diamond`: `emit_values` (1, 2) -> `add_one` (2) and `renamed` (3) -> `subtract` (-1).
pub fn diamond_job() -> TypedJob {
    let add_one = |_ctx, n: i64| async move { Ok(n + 1) };
    let mut job = TypedJob::new("diamond");
    let names = ["value_one", "value_two"];
    let (one, two) = job.source2("emit_values", names, |_ctx| async { Ok((1_i64, 2_i64)) });
    let left = job.map("add_one", &one, add_one);
    let right = job.map("renamed", &two, add_one);
    job.map2(
        "subtract",
        &left,
        &right,
        |_ctx, l: i64, r: i64| async move { Ok(l - r) },
    );
    job
}

/// `retry`: `flaky` fails twice and succeeds on attempt 3 (3 attempts allowed).
pub fn retry_job() -> TypedJob {
    let mut job = TypedJob::new("retry");
    job.source("flaky", flaky);
    job.configure("flaky", |s| s.retry(RetryPolicy::new(3, Backoff::none())));
    job
}

/// Fails with a retry request on attempts 1 and 2; returns the attempt number on the third.
async fn flaky(ctx: OpContext) -> Result<i64, OpError> {
    if ctx.attempt() < 3 {
        ctx.warn(format!("attempt {} fails on purpose", ctx.attempt()));
        Err(OpError::retry(format!(
            "flaky fails on attempt {}, succeeds on attempt 3",
            ctx.attempt()
        )))
    } else {
        Ok(i64::from(ctx.attempt()))
    }
}

/// The typed example jobs: `single`, `serial`, `diamond`, `retry`.
pub fn typed_jobs() -> Vec<TypedJob> {
    vec![single_job(), serial_job(), diamond_job(), retry_job()]
}

/// `parallel`: `simple` then 10 aliases of `add_one` (`add_one_0` .. `add_one_9`), each 2.
pub fn parallel_job() -> Job {
    let mut b = Job::builder("parallel").step(step("simple", "simple"));
    for i in 0..10 {
        b = b.step(step(&format!("add_one_{i}"), "add_one").input("num", "simple", RESULT));
    }
    build(b)
}

/// Steps of a graph of `depth` levels, each level two copies of the one below in sequence,
/// flattened with `parent.child` keys; a leaf adds one to its input, the first leaf of the
/// whole job starts from `simple`. Returns the key of the graph's last step.
fn nested_graph(
    prefix: &str,
    depth: u32,
    input: Option<String>,
    steps: &mut Vec<StepDef>,
) -> String {
    if depth == 0 {
        let def = match &input {
            None => step(prefix, "simple"),
            Some(up) => step(prefix, "add_one").input("num", up.as_str(), RESULT),
        };
        steps.push(def);
        return prefix.to_string();
    }
    let first = nested_graph(&format!("{prefix}.first"), depth - 1, input, steps);
    nested_graph(&format!("{prefix}.second"), depth - 1, Some(first), steps)
}

/// `nested`: a graph of graphs four levels deep, flattened to 16 steps whose last
/// (`outer.second.second.second.second`) yields 16.
pub fn nested_job() -> Job {
    let mut steps = Vec::new();
    nested_graph("outer", 4, None, &mut steps);
    build(Job::builder("nested").steps(steps))
}

/// Key of the last step of [`nested_job`].
pub const NESTED_LAST_STEP: &str = "outer.second.second.second.second";

/// `optional_outputs`: three optional outputs, one emitted; `echo_1` runs, `echo_2` and
/// `echo_3` are skipped.
pub fn optional_outputs_job() -> Job {
    let mut b = Job::builder("optional_outputs").step(
        StepDef::new("optional_outputs", "optional_outputs")
            .optional_output("optional_1")
            .optional_output("optional_2")
            .optional_output("optional_3"),
    );
    for i in 1..=3 {
        b = b.step(step(&format!("echo_{i}"), "echo").input(
            "value",
            "optional_outputs",
            format!("optional_{i}"),
        ));
    }
    build(b)
}

/// `failure`: `fails` raises; `should_never_execute` downstream is skipped.
pub fn failure_job() -> Job {
    build(
        Job::builder("failure").step(step("fails", "fails")).step(
            step("should_never_execute", "should_never_execute").input("num", "fails", RESULT),
        ),
    )
}

/// `retry`: `flaky` fails twice and succeeds on attempt 3 (its policy allows 3 attempts with
/// `slow`: four independent steps that sleep `sleep_ms` of the run config (default 2000 ms),
/// for interrupt and concurrency checks.
pub fn slow_job() -> Job {
    build(Job::builder("slow").steps((0..4).map(|i| step(&format!("slow_{i}"), "sleep"))))
}

/// `fanout_N`: a no-op `root` and `n` no-op leaves consuming it (`n + 1` steps).
pub fn fanout_job(n: usize) -> Job {
    let mut steps = Vec::with_capacity(n + 1);
    steps.push(step("root", "noop"));
    steps.extend((0..n).map(|i| step(&format!("leaf_{i}"), "noop").input("up", "root", RESULT)));
    build(Job::builder(format!("fanout_{n}")).steps(steps))
}

/// `fanout_join_N`: `root` -> `n` leaves -> `join`, all no-ops (`n + 2` steps).
pub fn fanout_join_job(n: usize) -> Job {
    let mut steps = Vec::with_capacity(n + 2);
    steps.push(step("root", "noop"));
    let mut join = step("join", "noop");
    for i in 0..n {
        let key = format!("leaf_{i}");
        steps.push(step(&key, "noop").input("up", "root", RESULT));
        join = join.input(format!("in_{i}"), key, RESULT);
    }
    steps.push(join);
    build(Job::builder(format!("fanout_join_{n}")).steps(steps))
}

/// `chain_N`: `n` no-op steps, each consuming the previous one.
pub fn chain_job(n: usize) -> Job {
    let steps = (0..n).map(|i| {
        let s = step(&format!("step_{i}"), "noop");
        if i == 0 {
            s
        } else {
            s.input("up", format!("step_{}", i - 1), RESULT)
        }
    });
    build(Job::builder(format!("chain_{n}")).steps(steps))
}

/// Every string-keyed example job: the fixed ones, then the generated fan-outs and chains
/// (the typed ones are [`typed_jobs`]).
pub fn jobs() -> Vec<Job> {
    let mut jobs = vec![
        parallel_job(),
        nested_job(),
        optional_outputs_job(),
        failure_job(),
        slow_job(),
    ];
    jobs.extend(FANOUT_SIZES.iter().map(|&n| fanout_job(n)));
    jobs.extend(FANOUT_JOIN_SIZES.iter().map(|&n| fanout_join_job(n)));
    jobs.extend(CHAIN_SIZES.iter().map(|&n| chain_job(n)));
    jobs
}

/// A builder holding `ops`, `jobs` and the [`typed_jobs`], to add more before building.
pub fn builder_with(
    ops: BTreeMap<String, Arc<dyn Op>>,
    jobs: impl IntoIterator<Item = Job>,
) -> CodeLocationBuilder {
    let mut builder = CodeLocation::builder();
    for (name, op) in ops {
        builder = builder.op(name, op);
    }
    for job in jobs {
        builder = builder.job(job);
    }
    for job in typed_jobs() {
        builder = builder.typed_job(job);
    }
    builder
}

/// A code location with `ops` (usually [`ops`] with some replaced) and every example job.
pub fn location_with(ops: BTreeMap<String, Arc<dyn Op>>) -> Result<CodeLocation, LocationErrors> {
    builder_with(ops, jobs()).build()
}

/// The code location of the stock `stepq` binary: every example op and job.
pub fn location() -> CodeLocation {
    location_with(ops()).unwrap_or_else(|e| panic!("the example location is invalid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_worker::{decode_value, encode_value, OpContext, StepInputs};

    /// Runs op `name` of the example location (a named op, or `job/step` of a typed job).
    async fn run_op(name: &str, inputs: &[(&str, i64)]) -> Result<StepOutputs, OpError> {
        let op = location().op(name).unwrap();
        let inputs = inputs
            .iter()
            .map(|(n, v)| (n.to_string(), encode_value(v).unwrap()))
            .collect::<StepInputs>();
        op.run(&OpContext::new("r", "j", name), inputs).await
    }

    fn value(out: &StepOutputs, name: &str) -> i64 {
        decode_value(out.get_raw(name).unwrap()).unwrap()
    }

    #[test]
    fn location_builds_with_every_job() {
        let location = location();
        for name in [
            "single",
            "serial",
            "diamond",
            "parallel",
            "nested",
            "optional_outputs",
            "failure",
            "retry",
            "slow",
            "fanout_10000",
            "fanout_join_50",
            "chain_1000",
        ] {
            assert!(location.job(name).is_some(), "missing job {name}");
        }
    }

    #[test]
    fn shapes() {
        assert_eq!(parallel_job().steps().len(), 11);
        let nested = nested_job();
        assert_eq!(nested.steps().len(), 16);
        assert_eq!(nested.topological_order().last(), Some(NESTED_LAST_STEP));
        assert_eq!(
            nested.topological_order().next(),
            Some("outer.first.first.first.first")
        );
        assert_eq!(fanout_job(10).steps().len(), 11);
        assert_eq!(fanout_join_job(10).steps().len(), 12);
        assert_eq!(fanout_join_job(10).step("join").unwrap().inputs.len(), 10);
        assert_eq!(
            chain_job(5).topological_order().collect::<Vec<_>>().len(),
            5
        );
        assert_eq!(parallel_job().step("add_one_3").unwrap().op, "add_one");
        let (diamond, ops) = diamond_job().build().unwrap();
        assert_eq!(diamond.step("renamed").unwrap().op, "diamond/renamed");
        assert_eq!(ops.len(), 4);
    }

    #[tokio::test]
    async fn ops_compute_the_documented_values() {
        assert_eq!(value(&run_op("simple", &[]).await.unwrap(), RESULT), 1);
        assert_eq!(
            value(&run_op("add_one", &[("num", 1)]).await.unwrap(), RESULT),
            2
        );
        let emitted = run_op("diamond/emit_values", &[]).await.unwrap();
        assert_eq!(
            (value(&emitted, "value_one"), value(&emitted, "value_two")),
            (1, 2)
        );
        let diff = run_op("diamond/subtract", &[("in0", 2), ("in1", 3)])
            .await
            .unwrap();
        assert_eq!(value(&diff, RESULT), -1);
        let optional = run_op("optional_outputs", &[]).await.unwrap();
        assert_eq!(optional.names().collect::<Vec<_>>(), ["optional_1"]);
        assert_eq!(
            run_op("fails", &[]).await.unwrap_err().kind(),
            "example_failure"
        );
    }

    #[tokio::test]
    async fn flaky_succeeds_on_the_third_attempt() {
        let op = location().op("retry/flaky").unwrap();
        for attempt in 1..=2 {
            let ctx = OpContext::new("r", "retry", "flaky").with_attempt(attempt);
            let e = op.run(&ctx, StepInputs::new()).await.unwrap_err();
            assert_eq!(e.retry_requested(), Some(None));
        }
        let ctx = OpContext::new("r", "retry", "flaky").with_attempt(3);
        assert_eq!(
            value(&op.run(&ctx, StepInputs::new()).await.unwrap(), RESULT),
            3
        );
    }

    #[tokio::test]
    async fn sleep_reads_its_duration_from_the_run_config() {
        let op = ops().remove("sleep").unwrap();
        let ctx = OpContext::new("r", "slow", "slow_0")
            .with_run_config(serde_json::json!({"sleep_ms": 1}));
        let out = op.run(&ctx, StepInputs::new()).await.unwrap();
        assert_eq!(value(&out, RESULT), 1);
    }
}
