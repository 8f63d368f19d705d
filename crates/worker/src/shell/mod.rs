//! Shell commands as ops ([`ShellOp`]), and jobs of them declared in a TOML file
//! ([`ShellJobs`]).
//!
//! A worker only runs jobs from the files it was started with: a queue message names a job and
//! a step, never a command.
//!
//! ```toml
//! [jobs.word_count]
//! description = "count the distinct words of a sentence"
//!
//! [[jobs.word_count.steps]]
//! key = "words"
//! argv = ["printf", "b\\na\\nb\\n"]
//!
//! [[jobs.word_count.steps]]
//! key = "unique"
//! argv = ["sort", "-u"]
//! inputs = { text = "words.stdout" }
//! stdin = "text"
//!
//! [[jobs.word_count.steps]]
//! key = "count"
//! argv = ["wc", "-l"]
//! inputs = { lines = "unique.stdout" }
//! stdin = "lines"
//! env = { LC_ALL = "C" }
//! timeout_seconds = 10
//! kill_grace_seconds = 2
//! tags = { kind = "coreutils" }
//! retry = { max_attempts = 3, delay_seconds = 0.5 }
//! ```
//!
//! Per step:
//! - `key` (required): the step key, unique in the job.
//! - `argv` (required): the program and its arguments. It is run directly, never through a
//!   shell; write `argv = ["sh", "-c", "..."]` to use one.
//! - `env`: extra environment variables. The command inherits the worker's environment, plus
//!   `STEPQ_RUN_ID`, `STEPQ_JOB_NAME`, `STEPQ_STEP_KEY` and `STEPQ_ATTEMPT`.
//! - `working_dir`: where the command runs; a relative path is relative to the directory of
//!   the jobs file. Default: the worker's current directory.
//! - `timeout_seconds`: the command is stopped after this long and the step fails (`timeout`).
//! - `kill_grace_seconds`: how long the command's processes get between SIGTERM and SIGKILL
//!   when the step is stopped (default 5, [`DEFAULT_KILL_GRACE`]; 0 kills at once).
//! - `inputs`: `{ name = "upstream_step.output" }`. Each input is passed as the environment
//!   variable `STEPQ_INPUT_<NAME>` (name upper-cased), except the one named by `stdin`, which
//!   is written to the command's standard input instead (so large texts go through a pipe).
//!   A text value is passed as is; any other value as JSON. Without `stdin`, standard input is
//!   empty.
//! - `success_exit_codes`: exit codes that count as success (default `[0]`).
//! - `tags`, `retry` (`max_attempts`, `delay_seconds`, `multiplier`, `max_delay_seconds`,
//!   `jitter`).
//! - `queue`, `priority`: the queue and priority level the step is sent to (the tags
//!   `stepq/queue` and `stepq/priority`, which they override; see
//!   [`service::routing`](crate::service::routing)). On `[jobs.NAME]`, the same two keys
//!   are the default of every step that names none.
//!
//! Every command runs as the leader of a process group of its own, and no process of it is
//! left behind: on timeout, cancel, a worker stopping (past its grace period) or the op's
//! future being dropped, the whole group gets SIGTERM, then SIGKILL after
//! `kill_grace_seconds`; when the command exits, whatever it left running in its group
//! (`cmd &` without `wait`) is stopped the same way before the step reports. On Linux the
//! group also goes if its worker dies, even SIGKILLed: the command runs under a supervisor
//! process whose parent-death signal makes it SIGKILL the whole group (see `supervisor.rs`
//! and `docs/cancellation.md`, "Step processes"). A process that leaves the group (`setsid`,
//! `setpgid`) is not followed.
//!
//! Every step has two outputs: `stdout` (the standard output, as text, unchanged) and
//! `exit_code` (an integer). A failing command (other exit code, killed by a signal, timed out,
//! not startable) fails the step with the tail of its standard error in the error.

mod jobs;
mod op;
mod process_group;
#[cfg(target_os = "linux")]
mod supervisor;

pub use jobs::{copy_location, shell_op_name, ShellJob, ShellJobs, TomlJobsError};
pub use op::ShellOp;

/// Output holding a command's standard output.
pub const STDOUT_OUTPUT: &str = "stdout";
/// Output holding a command's exit code.
pub const EXIT_CODE_OUTPUT: &str = "exit_code";
/// Prefix of the environment variables carrying inputs.
pub const INPUT_ENV_PREFIX: &str = "STEPQ_INPUT_";
/// How long a command's processes get between SIGTERM and SIGKILL by default
/// ([`ShellOp::with_kill_grace`], `kill_grace_seconds` in a jobs file).
pub const DEFAULT_KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// How much of standard error a failure carries (the end of it).
pub(crate) const STDERR_TAIL_BYTES: usize = 2048;
