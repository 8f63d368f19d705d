//! `stepq dlq list | redrive | purge`: the task queue's dead letters — messages that can
//! never succeed, which workers moved aside (see `stepq_broker::dead_letter`).

use serde_json::json;
use stepq::app::{App, AppError};
use stepq::broker::dead_letter::{DeadLetter, DeadLetters};
use stepq::config::Mode;

use super::failure::Failure;
use super::table::simple_table;
use clap::Subcommand;

/// `stepq dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: id, deliveries, task and reason.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print one JSON document (`{"dead_letters": [...]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to the task queue, as they were (after fixing the cause).
    Redrive {
        /// Ids from `stepq dlq list`.
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete every dead letter for good.
    Purge {
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
}

/// The dead letters of the app's task queue.
fn dead_letters(app: &App) -> Result<std::sync::Arc<dyn DeadLetters>, Failure> {
    if app.mode() == Mode::Embedded {
        return Err(AppError::NotDistributed {
            what: "`stepq dlq` (the embedded default keeps dead letters inside the `stepq run` \
                   process that saw them; its run log names each: `stepq logs RUN_ID`)",
        }
        .into());
    }
    app.queue()
        .broker()
        .dead_letters()
        .ok_or_else(|| Failure::usage("this task queue's broker has no dead-letter place"))
}

/// Runs a `stepq dlq` command.
pub(super) async fn dlq(app: &App, command: DlqCommand) -> Result<u8, Failure> {
    let letters = dead_letters(app)?;
    match command {
        DlqCommand::List { limit, json } => {
            let listed = letters.list(limit).await.map_err(Failure::runtime)?;
            if json {
                let items: Vec<_> = listed.iter().map(letter_json).collect();
                println!("{}", json!({ "dead_letters": items }));
            } else if listed.is_empty() {
                println!("no dead letters");
            } else {
                print!("{}", table(&listed));
            }
            Ok(0)
        }
        DlqCommand::Redrive { ids, all } => {
            if ids.is_empty() && !all {
                return Err(Failure::usage(
                    "name the dead letters to redrive (ids from `stepq dlq list`), or --all",
                ));
            }
            let selected = (!all).then_some(ids.as_slice());
            let moved = letters.redrive(selected).await.map_err(Failure::runtime)?;
            println!("{moved} dead letter(s) moved back to the task queue");
            let missing = ids.len().saturating_sub(moved);
            if !all && missing > 0 {
                eprintln!("{missing} of the ids named were not found among the dead letters");
                return Ok(1);
            }
            Ok(0)
        }
        DlqCommand::Purge { yes } => {
            if !yes {
                return Err(Failure::usage(
                    "purging deletes every dead letter for good: add --yes",
                ));
            }
            let purged = letters.purge().await.map_err(Failure::runtime)?;
            println!("purged about {purged} dead letter(s)");
            Ok(0)
        }
    }
}

/// One dead letter as JSON: `id`, `reason`, `receive_count`, `task_name` / `task_id` (null
/// when the body is no task message) and `body` (text, lossily).
fn letter_json(letter: &DeadLetter) -> serde_json::Value {
    let message = letter.message();
    json!({
        "id": letter.id,
        "reason": letter.reason,
        "receive_count": letter.receive_count,
        "task_name": message.as_ref().map(|m| m.task_name.clone()),
        "task_id": message.as_ref().map(|m| m.task_id.clone()),
        "body": String::from_utf8_lossy(&letter.body),
    })
}

/// The dead letters as a table: id, deliveries, task, reason.
fn table(listed: &[DeadLetter]) -> String {
    let rows: Vec<[String; 4]> = listed
        .iter()
        .map(|l| {
            let task = l
                .message()
                .map(|m| format!("{} {}", m.task_name, m.task_id))
                .unwrap_or_else(|| "(not a task message)".to_string());
            [
                l.id.clone(),
                l.receive_count.to_string(),
                task,
                l.reason.clone(),
            ]
        })
        .collect();
    simple_table(["ID", "DELIVERIES", "TASK", "REASON"], &rows)
}
