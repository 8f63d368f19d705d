//! [`ShellJobs`]: jobs of shell-command steps read from a TOML file (see the
//! [module docs](super) for the format).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use stepq_plan::{Backoff, Job, RetryPolicy, StepDef};
use stepq_protocol::{PRIORITY_TAG, QUEUE_TAG};

use super::{ShellOp, DEFAULT_KILL_GRACE, EXIT_CODE_OUTPUT, INPUT_ENV_PREFIX, STDOUT_OUTPUT};
use crate::{CodeLocation, CodeLocationBuilder, LocationErrors, Op};

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
    /// The queue of every step that names none (tag `stepq/queue`).
    #[serde(default)]
    queue: Option<String>,
    /// The priority level of every step that names none (tag `stepq/priority`).
    #[serde(default)]
    priority: Option<String>,
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
    kill_grace_seconds: Option<f64>,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    success_exit_codes: Option<Vec<i32>>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// Shorthand for the tag `stepq/queue`.
    #[serde(default)]
    queue: Option<String>,
    /// Shorthand for the tag `stepq/priority`.
    #[serde(default)]
    priority: Option<String>,
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
            for mut step in job_spec.steps {
                // Routing: the step's own key, else its tag, else the job's default.
                for (tag, own, default) in [
                    (QUEUE_TAG, step.queue.take(), &job_spec.queue),
                    (PRIORITY_TAG, step.priority.take(), &job_spec.priority),
                ] {
                    match (own, default) {
                        (Some(value), _) => {
                            step.tags.insert(tag.to_string(), value);
                        }
                        (None, Some(value)) => {
                            step.tags
                                .entry(tag.to_string())
                                .or_insert_with(|| value.clone());
                        }
                        (None, None) => {}
                    }
                }
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
    let kill_grace = match spec.kill_grace_seconds {
        None => DEFAULT_KILL_GRACE,
        Some(g) => seconds("kill_grace_seconds", g).map_err(fail)?,
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
        kill_grace,
    };
    Ok((def, op))
}

#[cfg(test)]
mod tests;
