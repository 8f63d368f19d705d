//! Every lane's dead-letter place as one: listed lane by lane, each letter's id prefixed with
//! its lane (`queue/level:id`) when there is more than one lane, redriven back to its own
//! lane.

use async_trait::async_trait;
use std::sync::Arc;

use super::Lane;
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::error::BrokerError;

/// The dead letters of a routed broker's lanes.
pub(super) struct RoutedDeadLetters {
    /// (lane name, its dead letters), for each lane that has a dead-letter place.
    lanes: Vec<(String, Arc<dyn DeadLetters>)>,
}

impl RoutedDeadLetters {
    /// The dead letters of `lanes`; `None` if no lane has a dead-letter place.
    pub(super) fn of(lanes: Vec<Lane>) -> Option<Self> {
        let lanes: Vec<_> = lanes
            .iter()
            .filter_map(|lane| Some((lane.name(), lane.broker.dead_letters()?)))
            .collect();
        (!lanes.is_empty()).then_some(RoutedDeadLetters { lanes })
    }

    /// Whether ids carry their lane.
    fn prefixed(&self) -> bool {
        self.lanes.len() > 1
    }
}

#[async_trait]
impl DeadLetters for RoutedDeadLetters {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut all = Vec::new();
        for (name, letters) in &self.lanes {
            if all.len() >= limit {
                break;
            }
            for mut letter in letters.list(limit - all.len()).await? {
                if self.prefixed() {
                    letter.id = format!("{name}:{}", letter.id);
                }
                all.push(letter);
            }
        }
        Ok(all)
    }

    /// Moves the given letters (or all) back to their lanes; an id naming no lane is
    /// skipped, as an id no lane holds is.
    async fn redrive(&self, ids: Option<&[String]>) -> Result<usize, BrokerError> {
        let mut moved = 0;
        for (name, letters) in &self.lanes {
            let mine: Option<Vec<String>> = ids.map(|ids| {
                ids.iter()
                    .filter_map(|id| {
                        if self.prefixed() {
                            id.strip_prefix(name.as_str())?
                                .strip_prefix(':')
                                .map(str::to_string)
                        } else {
                            Some(id.clone())
                        }
                    })
                    .collect()
            });
            match &mine {
                Some(mine) if mine.is_empty() => {}
                _ => moved += letters.redrive(mine.as_deref()).await?,
            }
        }
        Ok(moved)
    }

    async fn purge(&self) -> Result<usize, BrokerError> {
        let mut purged = 0;
        for (_, letters) in &self.lanes {
            purged += letters.purge().await?;
        }
        Ok(purged)
    }
}
