//! [`ShellOp`]: an op that runs one command.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::process_group::ProcessGroup;
use super::{
    DEFAULT_KILL_GRACE, EXIT_CODE_OUTPUT, INPUT_ENV_PREFIX, STDERR_TAIL_BYTES, STDOUT_OUTPUT,
};
use crate::{Op, OpContext, OpError, StepInputs, StepOutputs};

/// An op that runs a command (see the [module docs](super) for how inputs and outputs map).
#[derive(Debug, Clone)]
pub struct ShellOp {
    pub(super) argv: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) working_dir: Option<PathBuf>,
    pub(super) timeout: Option<Duration>,
    pub(super) stdin_input: Option<String>,
    pub(super) success_exit_codes: Vec<i32>,
    pub(super) kill_grace: Duration,
}

impl ShellOp {
    /// An op running `argv` with no extra environment, no timeout, no standard input and
    /// [`DEFAULT_KILL_GRACE`] between SIGTERM and SIGKILL.
    pub fn new(argv: Vec<String>) -> Self {
        ShellOp {
            argv,
            env: BTreeMap::new(),
            working_dir: None,
            timeout: None,
            stdin_input: None,
            success_exit_codes: vec![0],
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }

    /// How long the command's processes get between SIGTERM and SIGKILL when the step is
    /// cancelled, times out or is dropped, and what the command leaves running when it exits
    /// (default [`DEFAULT_KILL_GRACE`]; zero kills at once).
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Stops the command (its whole process group) after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Writes input `name` to the command's standard input.
    pub fn with_stdin_input(mut self, name: impl Into<String>) -> Self {
        self.stdin_input = Some(name.into());
        self
    }

    /// Sets an environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Runs the command in `dir`.
    pub fn with_working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    fn program(&self) -> &str {
        &self.argv[0]
    }
}

/// An input's value as the text handed to a command: a string as is, anything else as JSON.
fn input_text(inputs: &StepInputs, name: &str) -> Result<String, OpError> {
    let value: serde_json::Value = inputs.get(name)?;
    Ok(match value {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// How the wait for a command ended.
enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Canceled,
}

/// Reads a pipe to its end on a task of its own (an absent pipe reads as empty).
fn read_all<R>(pipe: Option<R>) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_end(&mut bytes).await?;
        }
        Ok(bytes)
    })
}

/// What a [`read_all`] task read, or why it could not.
async fn collected(
    reading: tokio::task::JoinHandle<std::io::Result<Vec<u8>>>,
    program: &str,
) -> Result<Vec<u8>, OpError> {
    let error = match reading.await {
        Ok(Ok(bytes)) => return Ok(bytes),
        Ok(Err(e)) => OpError::from(e),
        Err(e) => OpError::new("wait_error", e.to_string()),
    };
    Err(error
        .context(format!("reading the output of `{program}` failed"))
        .with_kind("wait_error"))
}

/// The last `STDERR_TAIL_BYTES` of standard error, as text.
fn stderr_tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL_BYTES);
    let text = String::from_utf8_lossy(&stderr[start..]);
    let text = text.trim();
    if start > 0 {
        format!("...{text}")
    } else {
        text.to_string()
    }
}

#[async_trait]
impl Op for ShellOp {
    async fn run(&self, ctx: &OpContext, inputs: StepInputs) -> Result<StepOutputs, OpError> {
        let mut cmd = tokio::process::Command::new(self.program());
        cmd.args(&self.argv[1..])
            .envs(&self.env)
            .env("STEPQ_RUN_ID", ctx.run_id())
            .env("STEPQ_JOB_NAME", ctx.job_name())
            .env("STEPQ_STEP_KEY", ctx.step_key())
            .env("STEPQ_ATTEMPT", ctx.attempt().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        let mut stdin_text = None;
        for name in inputs.names() {
            let text = input_text(&inputs, name)?;
            if self.stdin_input.as_deref() == Some(name) {
                stdin_text = Some(text);
            } else {
                cmd.env(format!("{INPUT_ENV_PREFIX}{}", name.to_uppercase()), text);
            }
        }
        if self.stdin_input.is_some() && stdin_text.is_none() {
            return Err(OpError::new(
                "missing_input",
                format!(
                    "input `{}` for standard input was not loaded",
                    self.stdin_input.as_deref().unwrap_or_default()
                ),
            ));
        }
        cmd.stdin(if stdin_text.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut group = ProcessGroup::spawn(&mut cmd, self.kill_grace).map_err(|e| {
            OpError::from(e)
                .context(format!("cannot start `{}`", self.program()))
                .with_kind("spawn_error")
        })?;
        let child = group.child_mut();
        if let (Some(text), Some(mut stdin)) = (stdin_text, child.stdin.take()) {
            // Written concurrently with reading the output, so a command that writes before it
            // has read all its input cannot deadlock; a command that exits without reading
            // everything (e.g. `head`) makes the write fail, which is not an error of the step.
            tokio::spawn(async move {
                let _ = stdin.write_all(text.as_bytes()).await;
                let _ = stdin.shutdown().await;
            });
        }
        // Read on tasks of their own, so the pipes drain while the command runs; they end when
        // the last process holding a pipe does (the group is taken down below, in every case).
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        let ended = {
            let exited = group.wait();
            tokio::select! {
                out = async {
                    match self.timeout {
                        Some(t) => tokio::time::timeout(t, exited).await.ok(),
                        None => Some(exited.await),
                    }
                } => match out {
                    Some(status) => Ended::Exited(status),
                    None => Ended::TimedOut,
                },
                _ = ctx.cancelled() => Ended::Canceled,
            }
        };
        let status = match ended {
            Ended::Exited(Ok(status)) => {
                // What the command left running in its group goes too.
                group.finish().await;
                status
            }
            Ended::Exited(Err(e)) => {
                group.terminate().await;
                return Err(OpError::from(e)
                    .context(format!("waiting for `{}` failed", self.program()))
                    .with_kind("wait_error"));
            }
            Ended::TimedOut => {
                group.terminate().await;
                return Err(OpError::new(
                    "timeout",
                    format!(
                        "`{}` did not finish within {:?} and was killed",
                        self.program(),
                        self.timeout.unwrap_or_default()
                    ),
                ));
            }
            Ended::Canceled => {
                group.terminate().await;
                return Err(OpError::new(
                    "canceled",
                    format!("`{}` was killed: the step was canceled", self.program()),
                ));
            }
        };
        let output = std::process::Output {
            status,
            stdout: collected(stdout, self.program()).await?,
            stderr: collected(stderr, self.program()).await?,
        };
        let tail = stderr_tail(&output.stderr);
        let code = match output.status.code() {
            Some(code) => code,
            None => {
                #[cfg(unix)]
                let how = {
                    use std::os::unix::process::ExitStatusExt;
                    match output.status.signal() {
                        Some(sig) => format!("was killed by signal {sig}"),
                        None => "ended without an exit code".to_string(),
                    }
                };
                #[cfg(not(unix))]
                let how = "ended without an exit code".to_string();
                return Err(with_stderr(
                    OpError::new("command_failed", format!("`{}` {how}", self.program())),
                    &tail,
                ));
            }
        };
        if !self.success_exit_codes.contains(&code) {
            return Err(with_stderr(
                OpError::new(
                    "command_failed",
                    format!("`{}` exited with status {code}", self.program()),
                ),
                &tail,
            ));
        }
        if !tail.is_empty() {
            ctx.info(format!("stderr of `{}`: {tail}", self.program()));
        }
        let stdout = String::from_utf8(output.stdout).map_err(|e| {
            OpError::new(
                "stdout_not_text",
                format!(
                    "standard output of `{}` is not UTF-8 text (invalid byte at {})",
                    self.program(),
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        StepOutputs::new()
            .with(STDOUT_OUTPUT, &stdout)?
            .with(EXIT_CODE_OUTPUT, &i64::from(code))
    }
}

fn with_stderr(error: OpError, tail: &str) -> OpError {
    if tail.is_empty() {
        error.with_cause("standard error was empty")
    } else {
        error.with_cause(format!("stderr: {tail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_value, encode_value};

    fn ctx() -> OpContext {
        OpContext::new("run-1", "job", "step")
    }

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn text_input(name: &str, text: &str) -> StepInputs {
        StepInputs::from_iter([(name.to_string(), encode_value(text).unwrap())])
    }

    fn stdout_of(out: &StepOutputs) -> String {
        decode_value(out.get_raw(STDOUT_OUTPUT).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn captures_stdout_and_exit_code() {
        let op = ShellOp::new(argv(&["echo", "hello world"]));
        let out = op.run(&ctx(), StepInputs::new()).await.unwrap();
        assert_eq!(stdout_of(&out), "hello world\n");
        let code: i64 = decode_value(out.get_raw(EXIT_CODE_OUTPUT).unwrap()).unwrap();
        assert_eq!(code, 0);
    }

    #[tokio::test]
    async fn argv_is_not_parsed_by_a_shell() {
        let op = ShellOp::new(argv(&["echo", "$HOME; rm -rf /tmp/x"]));
        let out = op.run(&ctx(), StepInputs::new()).await.unwrap();
        assert_eq!(stdout_of(&out), "$HOME; rm -rf /tmp/x\n");
    }

    #[tokio::test]
    async fn stdin_input_is_piped_and_others_are_env() {
        let op = ShellOp::new(argv(&["sort"])).with_stdin_input("text");
        let out = op
            .run(&ctx(), text_input("text", "b\nc\na\n"))
            .await
            .unwrap();
        assert_eq!(stdout_of(&out), "a\nb\nc\n");

        let op = ShellOp::new(argv(&[
            "sh",
            "-c",
            "printf '%s|%s|%s' \"$STEPQ_INPUT_GREETING\" \"$STEPQ_STEP_KEY\" \"$STEPQ_ATTEMPT\"",
        ]));
        let out = op
            .run(&ctx(), text_input("greeting", "hi there"))
            .await
            .unwrap();
        assert_eq!(stdout_of(&out), "hi there|step|1");
    }

    #[tokio::test]
    async fn non_text_inputs_are_passed_as_json() {
        let op = ShellOp::new(argv(&["sh", "-c", "printf '%s' \"$STEPQ_INPUT_N\""]));
        let inputs = StepInputs::from_iter([("n".to_string(), encode_value(&vec![1, 2]).unwrap())]);
        let out = op.run(&ctx(), inputs).await.unwrap();
        assert_eq!(stdout_of(&out), "[1,2]");
    }

    #[tokio::test]
    async fn env_and_working_dir_apply() {
        let dir = tempfile::tempdir().unwrap();
        let op = ShellOp::new(argv(&[
            "sh",
            "-c",
            "printf '%s %s' \"$GREETING\" \"$(pwd)\"",
        ]))
        .with_env("GREETING", "hello")
        .with_working_dir(dir.path());
        let out = op.run(&ctx(), StepInputs::new()).await.unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(stdout_of(&out), format!("hello {}", canonical.display()));
    }

    #[tokio::test]
    async fn non_zero_exit_fails_with_stderr_tail() {
        let op = ShellOp::new(argv(&[
            "sh",
            "-c",
            "echo going >&2; echo bad thing >&2; exit 3",
        ]));
        let e = op.run(&ctx(), StepInputs::new()).await.unwrap_err();
        assert_eq!(e.kind(), "command_failed");
        assert!(e.message().contains("status 3"), "{e}");
        assert!(e.to_string().contains("bad thing"), "{e}");
    }

    #[tokio::test]
    async fn long_stderr_is_cut_to_its_tail() {
        let op = ShellOp::new(argv(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 2000 ]; do echo line$i >&2; i=$((i+1)); done; exit 1",
        ]));
        let e = op.run(&ctx(), StepInputs::new()).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains("line1999"), "{text}");
        assert!(!text.contains("line0\n"), "{text}");
        assert!(text.len() < STDERR_TAIL_BYTES + 200, "{}", text.len());
    }

    #[tokio::test]
    async fn allowed_exit_codes_succeed() {
        let mut op = ShellOp::new(argv(&["sh", "-c", "exit 1"]));
        op.success_exit_codes = vec![0, 1];
        let out = op.run(&ctx(), StepInputs::new()).await.unwrap();
        let code: i64 = decode_value(out.get_raw(EXIT_CODE_OUTPUT).unwrap()).unwrap();
        assert_eq!(code, 1);
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let op = ShellOp::new(argv(&["/nonexistent/stepq-no-such-program"]));
        let e = op.run(&ctx(), StepInputs::new()).await.unwrap_err();
        assert_eq!(e.kind(), "spawn_error");
        assert!(e.to_string().contains("stepq-no-such-program"), "{e}");
    }

    #[tokio::test]
    async fn timeout_kills_the_command() {
        let op = ShellOp::new(argv(&["sleep", "30"])).with_timeout(Duration::from_millis(100));
        let e = op.run(&ctx(), StepInputs::new()).await.unwrap_err();
        assert_eq!(e.kind(), "timeout");
    }

    #[tokio::test]
    async fn cancellation_kills_the_command() {
        let token = tokio_util::sync::CancellationToken::new();
        let ctx = ctx().with_cancellation(token.clone());
        let op = ShellOp::new(argv(&["sleep", "30"]));
        let run = tokio::spawn(async move { op.run(&ctx, StepInputs::new()).await });
        token.cancel();
        let e = run.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), "canceled");
    }

    #[tokio::test]
    async fn killed_by_a_signal_is_a_failure() {
        let op = ShellOp::new(argv(&["sh", "-c", "kill -9 $$"]));
        let e = op.run(&ctx(), StepInputs::new()).await.unwrap_err();
        assert_eq!(e.kind(), "command_failed");
        assert!(e.message().contains("signal 9"), "{e}");
    }

    #[tokio::test]
    async fn binary_stdout_is_an_error() {
        let op = ShellOp::new(argv(&["printf", "\\377\\376"]));
        let e = op.run(&ctx(), StepInputs::new()).await.unwrap_err();
        assert_eq!(e.kind(), "stdout_not_text");
    }

    #[tokio::test]
    async fn a_command_that_ignores_stdin_does_not_fail() {
        let big = "x".repeat(1 << 20);
        let op = ShellOp::new(argv(&["true"])).with_stdin_input("text");
        op.run(&ctx(), text_input("text", &big)).await.unwrap();
    }
}
