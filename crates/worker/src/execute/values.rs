//! A step's values: loading its inputs (inline values first, the rest from the output store,
//! concurrently), checking the emitted outputs against the step's declaration, and storing
//! them.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use stepq_core::{retry_temporary, Backoff, SharedFailureLog};
use stepq_plan::{EventKind, StepDef};
use stepq_results::{OutputKey, OutputStore, ResultError};

use super::{
    StepAttempt, Stop, INPUT_LOAD_ERROR, MISSING_INPUT, MISSING_OUTPUT, OUTPUT_STORE_ERROR,
    UNKNOWN_OUTPUT,
};
use crate::io::{list_or_none, StepInputs, StepOutputs};

impl StepAttempt<'_> {
    /// Loads every input of `step` (a `StepInputLoaded` event each).
    pub(super) async fn load_inputs(
        &self,
        step: &StepDef,
        outputs: &dyn OutputStore,
    ) -> Result<StepInputs, Stop> {
        // Inline values first; the rest from the store, concurrently.
        let loaded = join_all(step.inputs.iter().map(|i| async move {
            match self.inline.get(&i.from_step, &i.from_output) {
                Some(bytes) => Ok(bytes.clone()),
                None => {
                    let key = OutputKey::new(&self.args.run_id, &i.from_step, &i.from_output);
                    outputs.get(&key).await
                }
            }
        }))
        .await;
        let mut inputs = StepInputs::new();
        for (input, result) in step.inputs.iter().zip(loaded) {
            match result {
                Ok(bytes) => {
                    self.event(EventKind::StepInputLoaded {
                        input: input.name.clone(),
                        bytes: bytes.len() as u64,
                    });
                    inputs.insert(input.name.clone(), bytes);
                }
                Err(ResultError::OutputNotFound { .. }) => {
                    return Err(Stop::failed(
                        MISSING_INPUT,
                        format!(
                            "input `{}` of step `{}` needs output `{}` of step `{}` in run `{}`, \
                             which is not in the output store",
                            input.name,
                            self.step_key,
                            input.from_output,
                            input.from_step,
                            self.args.run_id
                        ),
                    ))
                }
                Err(e) => {
                    return Err(Stop::store(
                        INPUT_LOAD_ERROR,
                        format!(
                            "loading input `{}` of step `{}` (output `{}` of step `{}`) failed",
                            input.name, self.step_key, input.from_output, input.from_step
                        ),
                        &e,
                    ))
                }
            }
        }
        Ok(inputs)
    }

    /// Checks that every emitted output is declared and every required one emitted.
    pub(super) fn check_outputs(&self, step: &StepDef, emitted: &StepOutputs) -> Result<(), Stop> {
        let undeclared: Vec<&str> = emitted
            .names()
            .filter(|n| step.output_def(n).is_none())
            .collect();
        if !undeclared.is_empty() {
            let declared: Vec<&str> = step.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(Stop::failed(
                UNKNOWN_OUTPUT,
                format!(
                    "op `{}` of step `{}` emitted undeclared output(s) {}; the step declares: {}",
                    step.op,
                    self.step_key,
                    quoted(&undeclared),
                    list_or_none(&declared)
                ),
            ));
        }
        let missing: Vec<&str> = step
            .outputs
            .iter()
            .filter(|o| o.required && emitted.get_raw(&o.name).is_none())
            .map(|o| o.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Stop::failed(
                MISSING_OUTPUT,
                format!(
                    "op `{}` of step `{}` did not emit required output(s) {}",
                    step.op,
                    self.step_key,
                    quoted(&missing)
                ),
            ));
        }
        Ok(())
    }

    /// Stores the emitted outputs (a `StepOutputHandled` event each); returns them.
    pub(super) async fn store_outputs(
        &self,
        store: &dyn OutputStore,
        emitted: StepOutputs,
    ) -> Result<Vec<(String, Bytes)>, Stop> {
        let items: Vec<(OutputKey, Bytes)> = emitted
            .into_iter()
            .map(|(name, bytes)| {
                (
                    OutputKey::new(&self.args.run_id, self.step_key, name),
                    bytes,
                )
            })
            .collect();
        let stored = join_all(items.iter().map(|(k, v)| put_retrying(store, k, v))).await;
        let mut names = Vec::with_capacity(items.len());
        let mut first_error = None;
        for ((key, bytes), result) in items.into_iter().zip(stored) {
            match result {
                Ok(()) => {
                    self.event(EventKind::StepOutputHandled {
                        output: key.output_name.clone(),
                        bytes: bytes.len() as u64,
                    });
                    names.push((key.output_name, bytes));
                }
                Err(e) if first_error.is_none() => first_error = Some((key, e)),
                Err(_) => {}
            }
        }
        match first_error {
            None => Ok(names),
            Some((key, e)) => Err(Stop::store(
                OUTPUT_STORE_ERROR,
                format!(
                    "storing output `{}` of step `{}` failed",
                    key.output_name, self.step_key
                ),
                &e,
            )),
        }
    }
}

/// How long storing one output is retried while the store fails with a temporary error (an
/// outage) before the step fails with [`OUTPUT_STORE_ERROR`]: a command that ran is not run
/// again because its store blinked.
pub const OUTPUT_STORE_RETRY_FOR: Duration = Duration::from_secs(60);

/// Failures to store step outputs, shared by every step of the process: an outage that ten
/// running steps meet is one warning (and one "works again"), not ten. The step's span names
/// the run and step of a failure logged.
static OUTPUT_STORE_FAILURES: LazyLock<SharedFailureLog> =
    LazyLock::new(|| SharedFailureLog::new("storing step outputs"));

/// Stores one output, retrying temporary failures for up to [`OUTPUT_STORE_RETRY_FOR`]
/// (logged once per period for the whole process: [`OUTPUT_STORE_FAILURES`]).
async fn put_retrying(
    store: &dyn OutputStore,
    key: &OutputKey,
    bytes: &Bytes,
) -> Result<(), ResultError> {
    let backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(5),
        OUTPUT_STORE_RETRY_FOR,
    );
    let mut failing = OUTPUT_STORE_FAILURES.clone();
    retry_temporary(backoff, &mut failing, ResultError::class, || {
        store.put(key, bytes.clone())
    })
    .await
}

/// The names, each in backquotes, comma-separated.
fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
