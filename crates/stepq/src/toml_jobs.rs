//! Jobs declared in a TOML file whose ops are shell commands.
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
//! - `timeout_seconds`: the command is killed after this long and the step fails (`timeout`).
//! - `inputs`: `{ name = "upstream_step.output" }`. Each input is passed as the environment
//!   variable `STEPQ_INPUT_<NAME>` (name upper-cased), except the one named by `stdin`, which
//!   is written to the command's standard input instead (so large texts go through a pipe).
//!   A text value is passed as is; any other value as JSON. Without `stdin`, standard input is
//!   empty.
//! - `success_exit_codes`: exit codes that count as success (default `[0]`).
//! - `tags`, `retry` (`max_attempts`, `delay_seconds`, `multiplier`, `max_delay_seconds`,
//!   `jitter`).
//!
//! Every step has two outputs: `stdout` (the standard output, as text, unchanged) and
//! `exit_code` (an integer). A failing command (other exit code, killed by a signal, timed out,
//! not startable) fails the step with the tail of its standard error in the error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use stepq_plan::{Backoff, Job, RetryPolicy, StepDef};
use stepq_worker::{
    CodeLocation, CodeLocationBuilder, LocationErrors, Op, OpContext, OpError, StepInputs,
    StepOutputs,
};
use tokio::io::AsyncWriteExt;

/// Output holding a command's standard output.
pub const STDOUT_OUTPUT: &str = "stdout";
/// Output holding a command's exit code.
pub const EXIT_CODE_OUTPUT: &str = "exit_code";
/// Prefix of the environment variables carrying inputs.
pub const INPUT_ENV_PREFIX: &str = "STEPQ_INPUT_";
/// How much of standard error a failure carries (the end of it).
const STDERR_TAIL_BYTES: usize = 2048;

/// Why a jobs file could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TomlJobsError {
    /// The file could not be read.
    #[error("cannot read jobs file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown field, or a value of the wrong type.
    #[error("invalid jobs file `{path}`: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A step definition is unusable.
    #[error("invalid jobs file `{path}`: job `{job}`, step `{step}`: {reason}")]
    Step {
        /// The file.
        path: PathBuf,
        /// Job name.
        job: String,
        /// Step key.
        step: String,
        /// What is wrong.
        reason: String,
    },
    /// The steps do not form a valid job (unknown upstream, duplicate key, cycle ...).
    #[error("invalid jobs file `{path}`: {source}")]
    Job {
        /// The file.
        path: PathBuf,
        /// Every problem of the job.
        #[source]
        source: stepq_plan::JobErrors,
    },
    /// The file declares no job.
    #[error("jobs file `{path}` declares no job (add a `[jobs.NAME]` table)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The jobs clash with the code location they are added to (same job name).
    #[error("jobs file `{path}` does not fit the code location: {source}")]
    Location {
        /// The file.
        path: PathBuf,
        /// What clashes.
        #[source]
        source: LocationErrors,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    jobs: BTreeMap<String, JobSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSpec {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    steps: Vec<StepSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    key: String,
    argv: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    working_dir: Option<PathBuf>,
    #[serde(default)]
    timeout_seconds: Option<f64>,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    success_exit_codes: Option<Vec<i32>>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    retry: Option<RetrySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySpec {
    max_attempts: u32,
    #[serde(default)]
    delay_seconds: f64,
    #[serde(default = "default_multiplier")]
    multiplier: f64,
    #[serde(default)]
    max_delay_seconds: Option<f64>,
    #[serde(default)]
    jitter: bool,
}

fn default_multiplier() -> f64 {
    2.0
}

/// A job loaded from a jobs file, with its description.
#[derive(Debug, Clone)]
pub struct ShellJob {
    /// The job.
    pub job: Arc<Job>,
    /// Its description, if the file gives one.
    pub description: Option<String>,
}

/// The jobs of one file and the shell ops behind their steps.
#[derive(Clone)]
pub struct ShellJobs {
    path: PathBuf,
    jobs: Vec<ShellJob>,
    ops: Vec<(String, Arc<ShellOp>)>,
}

impl std::fmt::Debug for ShellJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShellJobs")
            .field("path", &self.path)
            .field(
                "jobs",
                &self.jobs.iter().map(|j| j.job.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The op name of step `step` of job `job` declared in a jobs file.
pub fn shell_op_name(job: &str, step: &str) -> String {
    format!("shell:{job}/{step}")
}

impl ShellJobs {
    /// Reads and validates a jobs file.
    pub fn load(path: &Path) -> Result<Self, TomlJobsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TomlJobsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, path, &base_dir)
    }

    /// Parses jobs-file text; `path` names it in errors and relative working directories are
    /// resolved against `base_dir`.
    pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Self, TomlJobsError> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| TomlJobsError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if spec.jobs.is_empty() {
            return Err(TomlJobsError::Empty {
                path: path.to_path_buf(),
            });
        }
        let mut jobs = Vec::new();
        let mut ops = Vec::new();
        for (name, job_spec) in spec.jobs {
            let mut builder = Job::builder(name.clone());
            for step in job_spec.steps {
                let (def, op) = build_step(&name, step, base_dir).map_err(|(step, reason)| {
                    TomlJobsError::Step {
                        path: path.to_path_buf(),
                        job: name.clone(),
                        step,
                        reason,
                    }
                })?;
                ops.push((def.op.clone(), Arc::new(op)));
                builder = builder.step(def);
            }
            let job = builder.build().map_err(|source| TomlJobsError::Job {
                path: path.to_path_buf(),
                source,
            })?;
            jobs.push(ShellJob {
                job: Arc::new(job),
                description: job_spec.description,
            });
        }
        Ok(ShellJobs {
            path: path.to_path_buf(),
            jobs,
            ops,
        })
    }

    /// The file the jobs came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The jobs, sorted by name.
    pub fn jobs(&self) -> &[ShellJob] {
        &self.jobs
    }

    /// Adds these jobs and their ops to a code location builder.
    pub fn register(&self, mut builder: CodeLocationBuilder) -> CodeLocationBuilder {
        for (name, op) in &self.ops {
            builder = builder.op(name.clone(), op.clone() as Arc<dyn Op>);
        }
        for job in &self.jobs {
            builder = builder.job(job.job.clone());
        }
        builder
    }

    /// A new code location holding everything of `base` plus these jobs. A job name present
    /// in both is an error naming the file.
    pub fn extend(&self, base: &CodeLocation) -> Result<CodeLocation, TomlJobsError> {
        let builder = copy_location(base);
        self.register(builder)
            .build()
            .map_err(|source| TomlJobsError::Location {
                path: self.path.clone(),
                source,
            })
    }
}

/// A builder holding every op and job of `location`, to add more to it.
pub fn copy_location(location: &CodeLocation) -> CodeLocationBuilder {
    let mut builder = CodeLocation::builder();
    for name in location.op_names() {
        if let Some(op) = location.op(name) {
            builder = builder.op(name, op);
        }
    }
    for job in location.jobs() {
        builder = builder.job(job.clone());
    }
    builder
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn seconds(what: &str, secs: f64) -> Result<Duration, String> {
    if secs.is_finite() && (0.0..1e12).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "`{what}` must be a number of seconds >= 0, got {secs}"
        ))
    }
}

fn build_step(
    job: &str,
    spec: StepSpec,
    base_dir: &Path,
) -> Result<(StepDef, ShellOp), (String, String)> {
    let key = spec.key.clone();
    let fail = |reason: String| (key.clone(), reason);
    if key.is_empty() {
        return Err(fail("`key` must not be empty".into()));
    }
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(fail(
            "`argv` must name a program: a non-empty list like [\"wc\", \"-l\"]".into(),
        ));
    }
    let timeout = match spec.timeout_seconds {
        None => None,
        Some(t) if t > 0.0 => Some(seconds("timeout_seconds", t).map_err(fail)?),
        Some(t) => return Err(fail(format!("`timeout_seconds` must be positive, got {t}"))),
    };
    let mut def = StepDef::new(key.clone(), shell_op_name(job, &key))
        .output(STDOUT_OUTPUT)
        .output(EXIT_CODE_OUTPUT);
    for (name, source) in &spec.inputs {
        if !is_env_name(name) {
            return Err(fail(format!(
                "input name `{name}` must be letters, digits and `_` (it becomes {INPUT_ENV_PREFIX}{})",
                name.to_uppercase()
            )));
        }
        let Some((from_step, from_output)) = source.rsplit_once('.') else {
            return Err(fail(format!(
                "input `{name}` = `{source}` must be `step.output`, e.g. `upstream.stdout`"
            )));
        };
        if from_step.is_empty() || from_output.is_empty() {
            return Err(fail(format!(
                "input `{name}` = `{source}` must be `step.output`, e.g. `upstream.stdout`"
            )));
        }
        def = def.input(name.clone(), from_step, from_output);
    }
    let upper: BTreeMap<String, &String> =
        spec.inputs.keys().map(|n| (n.to_uppercase(), n)).collect();
    if upper.len() != spec.inputs.len() {
        return Err(fail(
            "two inputs differ only in case; their environment variables would clash".into(),
        ));
    }
    if let Some(stdin) = &spec.stdin {
        if !spec.inputs.contains_key(stdin) {
            return Err(fail(format!(
                "`stdin` = `{stdin}` is not one of the step's inputs"
            )));
        }
    }
    for name in spec.env.keys() {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(fail(format!("`env` key `{name}` is not a variable name")));
        }
    }
    for (k, v) in spec.tags {
        def = def.tag(k, v);
    }
    if let Some(r) = spec.retry {
        let initial = seconds("retry.delay_seconds", r.delay_seconds).map_err(fail)?;
        let max = match r.max_delay_seconds {
            Some(m) => seconds("retry.max_delay_seconds", m).map_err(fail)?,
            None => initial.max(Duration::from_secs(300)),
        };
        def = def.retry(RetryPolicy::new(
            r.max_attempts,
            Backoff {
                initial,
                multiplier: r.multiplier,
                max,
                jitter: r.jitter,
            },
        ));
    }
    let working_dir = spec.working_dir.map(|d| base_dir.join(d));
    let op = ShellOp {
        argv: spec.argv,
        env: spec.env,
        working_dir,
        timeout,
        stdin_input: spec.stdin,
        success_exit_codes: spec.success_exit_codes.unwrap_or_else(|| vec![0]),
    };
    Ok((def, op))
}

/// An op that runs a command (see the [module docs](self) for how inputs and outputs map).
#[derive(Debug, Clone)]
pub struct ShellOp {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: Option<PathBuf>,
    timeout: Option<Duration>,
    stdin_input: Option<String>,
    success_exit_codes: Vec<i32>,
}

impl ShellOp {
    /// An op running `argv` with no extra environment, no timeout and no standard input.
    pub fn new(argv: Vec<String>) -> Self {
        ShellOp {
            argv,
            env: BTreeMap::new(),
            working_dir: None,
            timeout: None,
            stdin_input: None,
            success_exit_codes: vec![0],
        }
    }

    /// Kills the command after `timeout`.
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
            .stderr(Stdio::piped())
            .kill_on_drop(true);
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
        let mut child = cmd.spawn().map_err(|e| {
            OpError::from(e)
                .context(format!("cannot start `{}`", self.program()))
                .with_kind("spawn_error")
        })?;
        if let (Some(text), Some(mut stdin)) = (stdin_text, child.stdin.take()) {
            // Written concurrently with reading the output, so a command that writes before it
            // has read all its input cannot deadlock; a command that exits without reading
            // everything (e.g. `head`) makes the write fail, which is not an error of the step.
            tokio::spawn(async move {
                let _ = stdin.write_all(text.as_bytes()).await;
                let _ = stdin.shutdown().await;
            });
        }
        let finished = child.wait_with_output();
        let output = tokio::select! {
            out = async {
                match self.timeout {
                    Some(t) => tokio::time::timeout(t, finished).await.ok(),
                    None => Some(finished.await),
                }
            } => match out {
                Some(r) => r.map_err(|e| {
                    OpError::from(e)
                        .context(format!("waiting for `{}` failed", self.program()))
                        .with_kind("wait_error")
                })?,
                None => {
                    return Err(OpError::new(
                        "timeout",
                        format!(
                            "`{}` did not finish within {:?} and was killed",
                            self.program(),
                            self.timeout.unwrap_or_default()
                        ),
                    ))
                }
            },
            _ = ctx.cancelled() => {
                return Err(OpError::new(
                    "canceled",
                    format!("`{}` was killed: the step was canceled", self.program()),
                ))
            }
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
    use stepq_worker::{decode_value, encode_value};

    fn parse(text: &str) -> Result<ShellJobs, TomlJobsError> {
        ShellJobs::parse(text, Path::new("jobs.toml"), Path::new("/tmp"))
    }

    fn err(text: &str) -> String {
        let e = parse(text).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("jobs.toml"),
            "error does not name the file: {msg}"
        );
        msg
    }

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

    const PIPELINE: &str = r#"
        [jobs.words]
        description = "count unique words"
        [[jobs.words.steps]]
        key = "emit"
        argv = ["printf", "b\na\nb\n"]
        [[jobs.words.steps]]
        key = "unique"
        argv = ["sort", "-u"]
        inputs = { text = "emit.stdout" }
        stdin = "text"
        tags = { kind = "coreutils" }
        retry = { max_attempts = 3, delay_seconds = 0.25 }
        [[jobs.words.steps]]
        key = "count"
        argv = ["wc", "-l"]
        inputs = { lines = "unique.stdout" }
        stdin = "lines"
        timeout_seconds = 5
        working_dir = "sub"
    "#;

    #[test]
    fn parses_a_pipeline_into_a_job() {
        let jobs = parse(PIPELINE).unwrap();
        assert_eq!(jobs.jobs().len(), 1);
        let job = &jobs.jobs()[0];
        assert_eq!(job.description.as_deref(), Some("count unique words"));
        let job = &job.job;
        assert_eq!(job.name(), "words");
        assert_eq!(
            job.topological_order().collect::<Vec<_>>(),
            ["emit", "unique", "count"]
        );
        let unique = job.step("unique").unwrap();
        assert_eq!(unique.op, "shell:words/unique");
        assert_eq!(unique.inputs[0].from_step, "emit");
        assert_eq!(unique.inputs[0].from_output, "stdout");
        assert_eq!(unique.tags["kind"], "coreutils");
        let retry = unique.retry.as_ref().unwrap();
        assert_eq!(retry.max_attempts, 3);
        assert_eq!(retry.backoff.initial, Duration::from_millis(250));
        assert!(unique.output_def(EXIT_CODE_OUTPUT).is_some());
        let count_op = &jobs
            .ops
            .iter()
            .find(|(n, _)| n == "shell:words/count")
            .unwrap()
            .1;
        assert_eq!(count_op.working_dir.as_deref(), Some(Path::new("/tmp/sub")));
        assert_eq!(count_op.timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn registers_into_a_location_and_rejects_clashing_names() {
        let jobs = parse(PIPELINE).unwrap();
        let location = jobs.extend(&CodeLocation::default()).unwrap();
        assert!(location.job("words").is_some());
        assert!(location.op("shell:words/emit").is_some());
        let again = jobs.extend(&location).unwrap_err();
        assert!(matches!(again, TomlJobsError::Location { .. }));
        assert!(again.to_string().contains("words"), "{again}");
    }

    #[test]
    fn bad_toml_names_the_file() {
        let msg = err("[jobs.x\nkey=1");
        assert!(msg.contains("invalid jobs file"), "{msg}");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let msg = err(
            "[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]\ncommand = \"rm -rf /\"",
        );
        assert!(msg.contains("command"), "{msg}");
        let msg =
            err("[jobs.a]\ndescrption = \"x\"\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]");
        assert!(msg.contains("descrption"), "{msg}");
        let msg = err("job = 1");
        assert!(msg.contains("job"), "{msg}");
    }

    #[test]
    fn a_shell_string_is_not_argv() {
        let msg = err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = \"echo hi\"");
        assert!(msg.contains("argv"), "{msg}");
    }

    #[test]
    fn missing_and_empty_argv_are_errors() {
        let msg = err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"");
        assert!(msg.contains("argv"), "{msg}");
        let msg = err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = []");
        assert!(msg.contains("`argv` must name a program"), "{msg}");
        assert!(msg.contains("job `a`, step `s`"), "{msg}");
    }

    #[test]
    fn cycles_are_reported_with_the_file() {
        let msg = err(r#"
            [jobs.loop]
            [[jobs.loop.steps]]
            key = "a"
            argv = ["cat"]
            inputs = { x = "b.stdout" }
            [[jobs.loop.steps]]
            key = "b"
            argv = ["cat"]
            inputs = { x = "a.stdout" }
            "#);
        assert!(msg.contains("cycle"), "{msg}");
    }

    #[test]
    fn bad_input_wiring_is_reported() {
        let msg = err(
            "[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"cat\"]\ninputs = { x = \"nodot\" }",
        );
        assert!(msg.contains("step.output"), "{msg}");
        let msg = err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"cat\"]\ninputs = { x = \"ghost.stdout\" }");
        assert!(msg.contains("ghost"), "{msg}");
        let msg = err(
            "[jobs.a]\n[[jobs.a.steps]]\nkey = \"u\"\nargv = [\"true\"]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"cat\"]\ninputs = { x = \"u.stderr\" }",
        );
        assert!(msg.contains("stderr"), "{msg}");
        let msg = err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"cat\"]\ninputs = { \"bad-name\" = \"u.stdout\" }");
        assert!(msg.contains("bad-name"), "{msg}");
        let msg =
            err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"cat\"]\nstdin = \"nope\"");
        assert!(msg.contains("`stdin` = `nope`"), "{msg}");
    }

    #[test]
    fn duplicate_keys_bad_timeouts_and_retries_are_reported() {
        let msg = err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]");
        assert!(msg.contains("duplicate step key"), "{msg}");
        let msg =
            err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]\ntimeout_seconds = 0");
        assert!(msg.contains("timeout_seconds"), "{msg}");
        let msg = err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]\nretry = { max_attempts = 0 }");
        assert!(msg.contains("retry"), "{msg}");
        let msg = err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]\nretry = { max_attempts = 2, delay_seconds = -1 }");
        assert!(msg.contains("delay_seconds"), "{msg}");
    }

    #[test]
    fn empty_files_and_jobs_are_errors() {
        let msg = err("");
        assert!(msg.contains("declares no job"), "{msg}");
        let msg = err("[jobs.a]");
        assert!(msg.contains("no steps"), "{msg}");
    }

    #[test]
    fn missing_file_is_named() {
        let e = ShellJobs::load(Path::new("/nonexistent/jobs.toml")).unwrap_err();
        assert!(matches!(e, TomlJobsError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/jobs.toml"));
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
