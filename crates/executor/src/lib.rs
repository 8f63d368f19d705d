//! # stepq-executor
//!
//! The orchestration loop.

pub mod protocol;
