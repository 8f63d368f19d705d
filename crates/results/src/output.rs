//! The output store: step outputs as bytes, keyed by run, step and output name.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::ResultError;

/// Addresses one stored output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutputKey {
    /// Run id.
    pub run_id: String,
    /// Step key.
    pub step_key: String,
    /// Output name.
    pub output_name: String,
}

impl OutputKey {
    /// A key from its three parts.
    pub fn new(
        run_id: impl Into<String>,
        step_key: impl Into<String>,
        output_name: impl Into<String>,
    ) -> Self {
        OutputKey {
            run_id: run_id.into(),
            step_key: step_key.into(),
            output_name: output_name.into(),
        }
    }

    /// Checks that each part is usable as a path segment; returns the relative path
    /// `run/step/output`.
    pub fn relative_path(&self) -> Result<String, ResultError> {
        for part in [&self.run_id, &self.step_key, &self.output_name] {
            crate::local::check_segment(part)?;
        }
        Ok(format!(
            "{}/{}/{}",
            self.run_id, self.step_key, self.output_name
        ))
    }
}

impl std::fmt::Display for OutputKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.run_id, self.step_key, self.output_name)
    }
}

/// Stores step outputs so a step on one machine reads what a step on another wrote.
#[async_trait]
pub trait OutputStore: Send + Sync + 'static {
    /// Stores (or overwrites) an output.
    async fn put(&self, key: &OutputKey, value: Bytes) -> Result<(), ResultError>;

    /// Reads an output; a missing one is [`ResultError::OutputNotFound`].
    async fn get(&self, key: &OutputKey) -> Result<Bytes, ResultError>;

    /// Whether an output is stored.
    async fn exists(&self, key: &OutputKey) -> Result<bool, ResultError>;

    /// Deletes every output of a run.
    async fn delete_run(&self, run_id: &str) -> Result<(), ResultError>;
}
