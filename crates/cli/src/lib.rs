//! # stepq-cli
//!
//! The `stepq` command line, as a library so that a binary built on its own code location
//! gets the whole CLI with [`main`], and as the stock `stepq` binary (the [demo jobs](demo)
//! plus jobs from `--jobs-file` TOML files). The `stepq-worker` service binary for TOML jobs is
//! in the `stepq-worker` crate.
//!
//! Besides the commands ([`cli`]), it owns what only people read: live [`progress`], run
//! summaries and tables ([`report`]), HTML run reports ([`report_html`]), and worker-health
//! tables ([`health`]). It is the only crate of the workspace with `unsafe` code
//! ([`process`]).

#![warn(missing_docs)]

pub mod cli;
pub mod demo;
pub mod health;
pub mod process;
pub mod progress;
pub mod report;
pub mod report_html;

pub use cli::{main, main_from, run, Cli};
