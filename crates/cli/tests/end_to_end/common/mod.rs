//! Helpers shared by the integration tests of `stepq`: running the `stepq` binary
//! ([`cli`]), in-process apps and code locations ([`app`]), and LocalStack queues, configs
//! and worker processes ([`localstack`]), a proxy that fakes an AWS outage ([`outage`]), and
//! plain HTTP to a worker's listener ([`http`]).
//!
//! Every test file that says `mod common;` compiles all of it and uses only some of it.

#![allow(dead_code)]

pub(crate) mod app;
pub(crate) mod cli;
pub(crate) mod http;
pub(crate) mod localstack;
pub(crate) mod marks;
pub(crate) mod outage;
