//! End-to-end tests of the run loop against a real in-memory broker, result backend and output
//! store, with a real `Receiver` as the worker.

mod harness;

mod api;
mod cancel;
mod failures;
mod fused;
mod retries;
mod scheduling;
