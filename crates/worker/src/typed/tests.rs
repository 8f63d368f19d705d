use bytes::Bytes;
use serde::Deserialize;
use stepq_plan::{Backoff, RetryPolicy};

use super::*;
use crate::io::{decode_value, encode_value};
use crate::location::LocationError;
use crate::op::{op_map, op_output};
use crate::CodeLocation;

fn ctx(step: &str) -> OpContext {
    OpContext::new("run", "job", step)
}

fn inputs(values: &[(&str, Bytes)]) -> StepInputs {
    values
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
}

/// Runs step `step` of `location`'s job `job` on `given`.
async fn run(
    location: &CodeLocation,
    job: &str,
    step: &str,
    given: StepInputs,
) -> Result<StepOutputs, OpError> {
    let def = location.job(job).unwrap().step(step).unwrap().clone();
    location.op(&def.op).unwrap().run(&ctx(step), given).await
}

fn i64_of(out: &StepOutputs, name: &str) -> i64 {
    decode_value(out.get_raw(name).unwrap()).unwrap()
}

fn diamond() -> CodeLocation {
    let mut job = TypedJob::new("diamond");
    let (one, two) = job.source2("emit", ["one", "two"], |_ctx| async { Ok((1_i64, 2_i64)) });
    let left = job.map("left", &one, |_ctx, n: i64| async move { Ok(n + 1) });
    let right = job.map("right", &two, |_ctx, n: i64| async move { Ok(n + 1) });
    job.map2(
        "subtract",
        &left,
        &right,
        |_ctx, l: i64, r: i64| async move { Ok(l - r) },
    );
    CodeLocation::builder().typed_job(job).build().unwrap()
}

#[tokio::test]
async fn a_typed_diamond_wires_names_once_and_runs() {
    let location = diamond();
    let job = location.job("diamond").unwrap();
    let subtract = job.step("subtract").unwrap();
    assert_eq!(subtract.op, "diamond/subtract");
    let wired: Vec<_> = subtract
        .inputs
        .iter()
        .map(|i| {
            (
                i.name.as_str(),
                i.from_step.as_str(),
                i.from_output.as_str(),
            )
        })
        .collect();
    assert_eq!(
        wired,
        [("in0", "left", "result"), ("in1", "right", "result")]
    );

    let emitted = run(&location, "diamond", "emit", StepInputs::new())
        .await
        .unwrap();
    assert_eq!((i64_of(&emitted, "one"), i64_of(&emitted, "two")), (1, 2));
    let given = inputs(&[
        ("in0", encode_value(&2_i64).unwrap()),
        ("in1", encode_value(&3_i64).unwrap()),
    ]);
    let out = run(&location, "diamond", "subtract", given).await.unwrap();
    assert_eq!(i64_of(&out, "result"), -1);
}

#[tokio::test]
async fn an_optional_output_is_left_out_on_none_and_collect_reads_all_in_order() {
    let mut job = TypedJob::new("j");
    let n = job.source("n", |_ctx| async { Ok(3_i64) });
    let odd = job.map_optional("odd", &n, |_ctx, n: i64| async move {
        Ok((n % 2 == 1).then_some(n))
    });
    let parts: Vec<_> = (0..3)
        .map(|i| {
            job.map(&format!("p{i}"), &odd, move |_ctx, n: i64| async move {
                Ok(n * i)
            })
        })
        .collect();
    job.collect("sum", &parts, |_ctx, all: Vec<i64>| async move { Ok(all) });
    let location = CodeLocation::builder().typed_job(job).build().unwrap();
    let def = location.job("j").unwrap().step("odd").unwrap().clone();
    assert!(!def.outputs[0].required);

    let three = inputs(&[("in0", encode_value(&3_i64).unwrap())]);
    let out = run(&location, "j", "odd", three).await.unwrap();
    assert_eq!(i64_of(&out, "result"), 3);
    let two = inputs(&[("in0", encode_value(&2_i64).unwrap())]);
    assert!(run(&location, "j", "odd", two).await.unwrap().is_empty());

    let given = inputs(&[
        ("in0", encode_value(&0_i64).unwrap()),
        ("in1", encode_value(&3_i64).unwrap()),
        ("in2", encode_value(&6_i64).unwrap()),
    ]);
    let out = run(&location, "j", "sum", given).await.unwrap();
    let all: Vec<i64> = decode_value(out.get_raw("result").unwrap()).unwrap();
    assert_eq!(all, [0, 3, 6]);
}

#[test]
fn configure_sets_a_retry_policy_and_a_duplicate_key_is_reported() {
    let mut job = TypedJob::new("j");
    job.source("flaky", |_ctx| async { Ok(1_i64) });
    job.configure("flaky", |s| {
        s.retry(RetryPolicy::new(3, Backoff::none()))
            .tag("db", "warehouse")
    });
    let location = CodeLocation::builder().typed_job(job).build().unwrap();
    let flaky = location.job("j").unwrap().step("flaky").unwrap().clone();
    assert_eq!(flaky.retry.unwrap().max_attempts, 3);
    assert_eq!(flaky.tags["db"], "warehouse");

    let mut job = TypedJob::new("twice");
    job.source("a", |_ctx| async { Ok(1_i64) });
    job.source("a", |_ctx| async { Ok(2_i64) });
    let err = CodeLocation::builder().typed_job(job).build().unwrap_err();
    assert!(err.to_string().contains("duplicate step key `a`"), "{err}");
}

#[derive(Deserialize)]
struct Operands {
    left: i64,
    right: i64,
}

#[tokio::test]
async fn op_struct_reads_its_fields_as_inputs() {
    let op = op_struct("result", |_ctx, Operands { left, right }| async move {
        Ok(left - right)
    });
    let sig = op.signature().unwrap();
    let names: Vec<_> = sig
        .inputs
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["left", "right"]);
    let given = inputs(&[
        ("left", encode_value(&5_i64).unwrap()),
        ("right", encode_value(&2_i64).unwrap()),
    ]);
    let out = op.run(&ctx("s"), given).await.unwrap();
    assert_eq!(i64_of(&out, "result"), 3);

    let missing = inputs(&[("left", encode_value(&5_i64).unwrap())]);
    assert_eq!(
        op.run(&ctx("s"), missing).await.unwrap_err().kind(),
        "unknown_input"
    );
    let wrong = inputs(&[
        ("left", encode_value("x").unwrap()),
        ("right", encode_value(&2_i64).unwrap()),
    ]);
    assert_eq!(
        op.run(&ctx("s"), wrong).await.unwrap_err().kind(),
        "input_decode_error"
    );
}

/// A string-keyed job checked against the signatures of its ops.
fn check(job: stepq_plan::JobBuilder) -> Vec<LocationError> {
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Named {
        text: String,
    }
    let ops = CodeLocation::builder()
        .op("emit", op_output("result", |_ctx, _in| async { Ok(1_i64) }))
        .op(
            "shout",
            op_map("text", "result", |_ctx, s: String| async move { Ok(s) }),
        )
        .op(
            "named",
            op_struct("result", |_ctx, Named { text }| async move { Ok(text) }),
        )
        .op("maybe", Arc::new(OptionalEmit));
    match ops.job(job.build().unwrap()).build() {
        Ok(_) => vec![],
        Err(e) => e.errors,
    }
}

/// An op declaring one optional output.
struct OptionalEmit;

#[async_trait]
impl Op for OptionalEmit {
    async fn run(&self, _ctx: &OpContext, _inputs: StepInputs) -> Result<StepOutputs, OpError> {
        Ok(StepOutputs::new())
    }

    fn signature(&self) -> Option<&OpSignature> {
        static SIGNATURE: std::sync::LazyLock<OpSignature> = std::sync::LazyLock::new(|| {
            OpSignature::new(Some(vec![]), vec![Port::of::<i64>("maybe").optional()])
        });
        Some(&SIGNATURE)
    }
}

#[test]
fn a_type_mismatch_names_the_job_step_input_and_both_types() {
    let errors = check(
        Job::builder("etl")
            .step(StepDef::new("emit", "emit").output("result"))
            .step(
                StepDef::new("shout", "shout")
                    .input("text", "emit", "result")
                    .output("result"),
            ),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    let text = errors[0].to_string();
    assert_eq!(
        text,
        "step `shout` of job `etl`: input `text` reads alloc::string::String but is wired to \
         `emit.result`, which is i64"
    );
}

#[test]
fn wiring_names_are_checked_against_the_signatures() {
    let errors = check(
        Job::builder("etl")
            .step(
                StepDef::new("emit", "emit")
                    .output("result")
                    .output("extra"),
            )
            .step(
                StepDef::new("a", "shout")
                    .input("txt", "emit", "result")
                    .output("result"),
            )
            .step(StepDef::new("b", "named").input("text", "emit", "extra"))
            .step(StepDef::new("c", "maybe").output("maybe")),
    );
    let texts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let expected = [
        "step `emit` of job `etl`: output `extra` is never emitted by op `emit`",
        "step `a` of job `etl`: input `txt` is not read by op `shout` (it reads: text)",
        "step `a` of job `etl`: op `shout` reads input `text` (alloc::string::String), which the step does not wire",
        "step `b` of job `etl`: op `named` emits output `result` (alloc::string::String), which the step does not declare",
        "step `c` of job `etl`: output `maybe` is optional in op `maybe` but required by the step (declare it with `optional_output`)",
    ];
    assert_eq!(texts, expected);
}

#[test]
fn untyped_ops_and_matching_wiring_pass() {
    assert!(check(
        Job::builder("ok")
            .step(StepDef::new("emit", "emit").output("result"))
            .step(
                StepDef::new("n", "named")
                    .input("text", "emit", "result")
                    .output("result")
            )
            .step(StepDef::new("m", "maybe").optional_output("maybe")),
    )
    .is_empty());
}
