//! In-process cancel markers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::CancelStore;
use crate::error::CancelError;
use crate::marker::{check_task_id, CancelMarker};

/// Cancel markers in memory, for the embedded default (broker and workers in one process).
/// Cloning gives another handle to the same markers.
#[derive(Debug, Clone, Default)]
pub struct InMemoryCancelStore {
    markers: Arc<Mutex<HashMap<String, CancelMarker>>>,
}

impl InMemoryCancelStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, CancelMarker>> {
        self.markers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl CancelStore for InMemoryCancelStore {
    async fn put(&self, marker: &CancelMarker) -> Result<(), CancelError> {
        check_task_id(&marker.task_id)?;
        self.lock().insert(marker.task_id.clone(), marker.clone());
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<CancelMarker>, CancelError> {
        check_task_id(task_id)?;
        Ok(self.lock().get(task_id).cloned())
    }

    async fn list(&self) -> Result<Vec<CancelMarker>, CancelError> {
        Ok(self.lock().values().cloned().collect())
    }

    async fn delete(&self, task_id: &str) -> Result<(), CancelError> {
        check_task_id(task_id)?;
        self.lock().remove(task_id);
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn lookups_are_free(&self) -> bool {
        true
    }
}
