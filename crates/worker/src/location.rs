//! `CodeLocation`: the named ops and jobs a worker can run.
//!
//! A queue message names a job and a step, never code: whatever a worker runs is looked up here.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use stepq_plan::Job;

use crate::io::list_or_none;
use crate::op::Op;

/// One problem found while building a code location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    /// Two ops were registered under one name.
    #[error("op `{op}` is registered twice")]
    DuplicateOp {
        /// The repeated name.
        op: String,
    },
    /// Two jobs share a name.
    #[error("job `{job}` is registered twice")]
    DuplicateJob {
        /// The repeated name.
        job: String,
    },
    /// A step runs an op that is not registered.
    #[error("step `{step}` of job `{job}` runs op `{op}`, which is not registered (registered ops: {})", list_or_none(&known.iter().map(String::as_str).collect::<Vec<_>>()))]
    UnknownOp {
        /// Job name.
        job: String,
        /// Step key.
        step: String,
        /// The missing op name.
        op: String,
        /// Names of the registered ops.
        known: Vec<String>,
    },
    /// A typed job does not validate.
    #[error(transparent)]
    InvalidJob(stepq_plan::JobErrors),
    /// A step's inputs or outputs do not match what its op declares it reads and emits
    /// ([`Op::signature`]).
    #[error("step `{step}` of job `{job}`: {problem}")]
    Wiring {
        /// Job name.
        job: String,
        /// Step key.
        step: String,
        /// What does not match, naming the input or output and the op.
        problem: String,
    },
    /// A step's input is wired to an upstream output of another type.
    #[error("step `{step}` of job `{job}`: input `{input}` reads {input_type} but is wired to `{from}`, which is {output_type}")]
    TypeMismatch {
        /// Job name.
        job: String,
        /// Step key.
        step: String,
        /// Input name.
        input: String,
        /// The type the step's op reads.
        input_type: &'static str,
        /// The upstream output, `step.output`.
        from: String,
        /// The type the upstream op emits there.
        output_type: &'static str,
    },
}

/// Every problem found while building a code location (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid code location: {}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct LocationErrors {
    /// One error per problem, in a stable order.
    pub errors: Vec<LocationError>,
}

/// The ops and jobs a worker can run, by name. Immutable once built; share it in an `Arc`.
///
/// ```
/// use stepq_plan::{Job, StepDef};
/// use stepq_worker::{op_map, op_output, CodeLocation};
///
/// let serial = Job::builder("serial")
///     .step(StepDef::new("simple", "simple").output("result"))
///     .step(StepDef::new("add_one", "add_one").input("num", "simple", "result").output("result"))
///     .build()
///     .unwrap();
/// let location = CodeLocation::builder()
///     .op("simple", op_output("result", |_ctx, _in| async { Ok(1_i64) }))
///     .op("add_one", op_map("num", "result", |_ctx, n: i64| async move { Ok(n + 1) }))
///     .job(serial)
///     .build()
///     .unwrap();
/// assert_eq!(location.job_names().collect::<Vec<_>>(), ["serial"]);
/// assert!(location.op("add_one").is_some());
/// ```
#[derive(Clone, Default)]
pub struct CodeLocation {
    ops: BTreeMap<String, Arc<dyn Op>>,
    jobs: BTreeMap<String, Arc<Job>>,
}

impl std::fmt::Debug for CodeLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeLocation")
            .field("ops", &self.ops.keys().collect::<Vec<_>>())
            .field("jobs", &self.jobs.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Collects ops and jobs and validates them into a [`CodeLocation`].
#[derive(Default)]
pub struct CodeLocationBuilder {
    ops: Vec<(String, Arc<dyn Op>)>,
    jobs: Vec<Arc<Job>>,
    invalid: Vec<stepq_plan::JobErrors>,
}

impl CodeLocation {
    /// Starts building a code location.
    pub fn builder() -> CodeLocationBuilder {
        CodeLocationBuilder::default()
    }

    /// A job by name.
    pub fn job(&self, name: &str) -> Option<Arc<Job>> {
        self.jobs.get(name).cloned()
    }

    /// An op by name.
    pub fn op(&self, name: &str) -> Option<Arc<dyn Op>> {
        self.ops.get(name).cloned()
    }

    /// Job names, sorted.
    pub fn job_names(&self) -> impl Iterator<Item = &str> {
        self.jobs.keys().map(String::as_str)
    }

    /// Op names, sorted.
    pub fn op_names(&self) -> impl Iterator<Item = &str> {
        self.ops.keys().map(String::as_str)
    }

    /// Every job, sorted by name.
    pub fn jobs(&self) -> impl Iterator<Item = &Arc<Job>> {
        self.jobs.values()
    }
}

impl CodeLocationBuilder {
    /// Registers an op under `name` (the name steps refer to in [`stepq_plan::StepDef::op`]).
    pub fn op(mut self, name: impl Into<String>, op: Arc<dyn Op>) -> Self {
        self.ops.push((name.into(), op));
        self
    }

    /// Adds a job.
    pub fn job(mut self, job: impl Into<Arc<Job>>) -> Self {
        self.jobs.push(job.into());
        self
    }

    /// Adds a [`TypedJob`](crate::TypedJob) and the ops of its steps (named `job/step`); a
    /// job that does not validate (two steps with one key) is reported by
    /// [`build`](Self::build).
    pub fn typed_job(mut self, job: crate::TypedJob) -> Self {
        match job.build() {
            Ok((job, ops)) => {
                self.ops.extend(ops);
                self.jobs.push(Arc::new(job));
            }
            Err(errors) => self.invalid.push(errors),
        }
        self
    }

    /// Checks that op and job names are unique, that every step's op is registered and that
    /// every step's wiring matches its op's [signature](Op::signature) (names, types and
    /// optionality of inputs and outputs); returns the location or every problem found.
    pub fn build(self) -> Result<CodeLocation, LocationErrors> {
        let mut errors: Vec<LocationError> = self
            .invalid
            .into_iter()
            .map(LocationError::InvalidJob)
            .collect();
        let mut ops = BTreeMap::new();
        for (name, op) in self.ops {
            match ops.entry(name) {
                Entry::Occupied(e) => errors.push(LocationError::DuplicateOp {
                    op: e.key().clone(),
                }),
                Entry::Vacant(e) => {
                    e.insert(op);
                }
            }
        }
        let known: Vec<String> = ops.keys().cloned().collect();
        let mut jobs = BTreeMap::new();
        for job in self.jobs {
            for step in job.steps() {
                if !ops.contains_key(&step.op) {
                    errors.push(LocationError::UnknownOp {
                        job: job.name().to_string(),
                        step: step.key.clone(),
                        op: step.op.clone(),
                        known: known.clone(),
                    });
                }
            }
            errors.extend(crate::signature::check_job(&job, &ops));
            if jobs.contains_key(job.name()) {
                errors.push(LocationError::DuplicateJob {
                    job: job.name().to_string(),
                });
            } else {
                jobs.insert(job.name().to_string(), job);
            }
        }
        if errors.is_empty() {
            Ok(CodeLocation { ops, jobs })
        } else {
            Err(LocationErrors { errors })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::op_output;
    use stepq_plan::StepDef;

    fn job(name: &str, op: &str) -> Job {
        Job::builder(name)
            .step(StepDef::new("only", op).output("result"))
            .build()
            .unwrap()
    }

    fn noop() -> Arc<dyn Op> {
        op_output("result", |_ctx, _in| async { Ok(()) })
    }

    #[test]
    fn lookups() {
        let location = CodeLocation::builder()
            .op("b", noop())
            .op("a", noop())
            .job(job("second", "a"))
            .job(Arc::new(job("first", "b")))
            .build()
            .unwrap();
        assert_eq!(
            location.job_names().collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert_eq!(location.op_names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(location.job("first").unwrap().name(), "first");
        assert!(location.job("third").is_none());
        assert!(location.op("c").is_none());
        assert_eq!(location.jobs().count(), 2);
        assert!(format!("{location:?}").contains("second"));
    }

    #[test]
    fn empty_location_is_valid() {
        let location = CodeLocation::builder().build().unwrap();
        assert_eq!(location.job_names().count(), 0);
    }

    #[test]
    fn unregistered_op_names_job_step_and_op() {
        let err = CodeLocation::builder()
            .op("known", noop())
            .job(job("etl", "missing"))
            .build()
            .unwrap_err();
        assert_eq!(
            err.errors,
            [LocationError::UnknownOp {
                job: "etl".into(),
                step: "only".into(),
                op: "missing".into(),
                known: vec!["known".into()],
            }]
        );
        let text = err.to_string();
        assert!(
            text.contains("`only`") && text.contains("`etl`") && text.contains("`missing`"),
            "{text}"
        );
        assert!(text.contains("registered ops: known"), "{text}");
    }

    #[test]
    fn duplicates_are_all_reported() {
        let err = CodeLocation::builder()
            .op("a", noop())
            .op("a", noop())
            .job(job("j", "a"))
            .job(job("j", "a"))
            .job(job("k", "zzz"))
            .build()
            .unwrap_err();
        assert_eq!(err.errors.len(), 3, "{err}");
        assert!(err
            .errors
            .contains(&LocationError::DuplicateOp { op: "a".into() }));
        assert!(err
            .errors
            .contains(&LocationError::DuplicateJob { job: "j".into() }));
        assert!(matches!(&err.errors[2], LocationError::UnknownOp { op, .. } if op == "zzz"));
    }

    #[test]
    fn no_ops_registered_says_none() {
        let err = CodeLocation::builder()
            .job(job("j", "x"))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("registered ops: (none)"), "{err}");
    }
}
