//! The end-to-end scenarios of the `stepq` command line and the app it drives: the CLI
//! binary against the embedded default ([`cli`], [`demo_jobs`], [`launch`], [`resume`],
//! [`cancel`], [`cancel_force`], [`crash`], [`gc`], [`health`], [`json`], [`report`], [`shell_processes`], [`takeover`]) and, gated with
//! `#[ignore = "localstack"]`, against SQS + S3 on LocalStack with several
//! `stepq worker start` processes ([`localstack`], [`localstack_health`],
//! [`localstack_launch`], [`localstack_progress`]; run them with `cargo xtask localstack-test`). One test binary, so
//! they link once.

mod common;

mod cancel;
mod cancel_force;
mod cli;
mod crash;
mod demo_jobs;
mod gc;
mod health;
mod json;
mod launch;
mod localstack;
mod localstack_chaos;
mod localstack_fairness;
mod localstack_health;
mod localstack_http;
mod localstack_launch;
mod localstack_outage;
mod localstack_progress;
mod localstack_routing;
mod report;
mod resume;
mod run_metrics;
mod shell_processes;
mod signing;
mod tables;
mod takeover;
