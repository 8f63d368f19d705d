//! Example: a user's code location with its own ops — served as a worker service by
//! `src/main.rs`, run once on the embedded broker by `tests/once.rs`.
use stepq_plan::{Job, StepDef};
use stepq_worker::{op_map, op_output, CodeLocation};

/// The ops, and a job wiring them: `double(emit())`.
pub fn location() -> CodeLocation {
    let emit = StepDef::new("emit", "emit").output("n");
    let double = StepDef::new("double", "double").input("n", "emit", "n");
    let job = Job::builder("double").step(emit).step(double.output("n"));
    let times_two = op_map("n", "n", |_ctx, n: i64| async move { Ok(n * 2) });
    CodeLocation::builder()
        .op("emit", op_output("n", |_ctx, _inputs| async { Ok(21_i64) }))
        .op("double", times_two)
        .job(job.build().expect("a valid job"))
        .build()
        .expect("every step has its op")
}
