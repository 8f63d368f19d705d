//! The job model: a job is a validated DAG of steps.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A named output of a step; optional outputs may be left un-emitted by the op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDef {
    /// Output name, unique within the step.
    pub name: String,
    /// Whether the op must emit this output for the step to succeed.
    pub required: bool,
}

/// A named input of a step, wired to an output of an upstream step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputDef {
    /// Input name, unique within the step.
    pub name: String,
    /// Key of the upstream step.
    pub from_step: String,
    /// Name of the upstream step's output.
    pub from_output: String,
}

/// Exponential backoff between retry attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Growth factor per attempt (>= 1.0).
    pub multiplier: f64,
    /// Upper bound of any single delay.
    pub max: Duration,
    /// Randomise each delay uniformly in `[delay/2, delay]` ("equal jitter").
    pub jitter: bool,
}

/// How often and how patiently a failed step is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts allowed, the first included (1 means no retry).
    pub max_attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
}

/// One step of a job: a keyed invocation of an op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDef {
    /// Key, unique in the job.
    pub key: String,
    /// Name of the op this step runs; one op may back several steps (aliases).
    pub op: String,
    /// Inputs, each wired to an upstream output.
    pub inputs: Vec<InputDef>,
    /// Outputs the op may emit.
    pub outputs: Vec<OutputDef>,
    /// Free-form tags (used e.g. for concurrency limits).
    pub tags: BTreeMap<String, String>,
    /// Retry policy; `None` means the run's default.
    pub retry: Option<RetryPolicy>,
}

/// One problem found while building a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The job has no steps.
    #[error("job `{job}` has no steps")]
    Empty {
        /// Job name.
        job: String,
    },
    /// Two steps share a key.
    #[error("duplicate step key `{key}`")]
    DuplicateStepKey {
        /// The repeated key.
        key: String,
    },
    /// Two inputs or two outputs of one step share a name.
    #[error("step `{step}` declares {what} `{name}` twice")]
    DuplicateName {
        /// Step key.
        step: String,
        /// "input" or "output".
        what: &'static str,
        /// The repeated name.
        name: String,
    },
    /// An input is wired to a step that does not exist.
    #[error("input `{input}` of step `{step}` is wired to unknown step `{upstream}`")]
    UnknownUpstreamStep {
        /// Consuming step.
        step: String,
        /// Input name.
        input: String,
        /// Missing upstream key.
        upstream: String,
    },
    /// An input is wired to an output its upstream step does not declare.
    #[error("input `{input}` of step `{step}` is wired to unknown output `{output}` of step `{upstream}`")]
    UnknownUpstreamOutput {
        /// Consuming step.
        step: String,
        /// Input name.
        input: String,
        /// Upstream key.
        upstream: String,
        /// Missing output name.
        output: String,
    },
    /// The steps form a cycle; `steps` lists the steps on it in order.
    #[error("cycle between steps: {}", steps.join(" -> "))]
    Cycle {
        /// The steps on the cycle, first repeated at the end is not included.
        steps: Vec<String>,
    },
    /// A retry policy is unusable (zero attempts, multiplier below 1).
    #[error("step `{step}` has an invalid retry policy: {reason}")]
    InvalidRetryPolicy {
        /// Step key.
        step: String,
        /// What is wrong.
        reason: String,
    },
}

/// Every problem found while building a job (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job `{job}`: {}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct JobErrors {
    /// Job name.
    pub job: String,
    /// One error per problem, in a stable order.
    pub errors: Vec<JobError>,
}

/// A validated job: a named DAG of steps. Cheap to clone behind an `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub(crate) name: String,
    pub(crate) steps: Vec<StepDef>,
    /// Step indices in a topological order.
    pub(crate) topo: Vec<usize>,
    pub(crate) index: std::collections::HashMap<String, usize>,
}

/// Collects steps and validates them into a [`Job`].
#[derive(Debug, Clone)]
pub struct JobBuilder {
    name: String,
    steps: Vec<StepDef>,
}

impl StepDef {
    /// A step with the given key running the given op, with no inputs, outputs or tags.
    pub fn new(key: impl Into<String>, op: impl Into<String>) -> Self {
        StepDef {
            key: key.into(),
            op: op.into(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            tags: BTreeMap::new(),
            retry: None,
        }
    }

    /// Adds an input wired to `from_output` of step `from_step`.
    pub fn input(
        mut self,
        name: impl Into<String>,
        from_step: impl Into<String>,
        from_output: impl Into<String>,
    ) -> Self {
        self.inputs.push(InputDef {
            name: name.into(),
            from_step: from_step.into(),
            from_output: from_output.into(),
        });
        self
    }

    /// Adds a required output.
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.outputs.push(OutputDef {
            name: name.into(),
            required: true,
        });
        self
    }

    /// Adds an optional output.
    pub fn optional_output(mut self, name: impl Into<String>) -> Self {
        self.outputs.push(OutputDef {
            name: name.into(),
            required: false,
        });
        self
    }

    /// Sets a tag.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Looks up an output definition by name.
    pub fn output_def(&self, name: &str) -> Option<&OutputDef> {
        self.outputs.iter().find(|o| o.name == name)
    }
}

impl Backoff {
    /// No delay between attempts.
    pub fn none() -> Self {
        Backoff {
            initial: Duration::ZERO,
            multiplier: 1.0,
            max: Duration::ZERO,
            jitter: false,
        }
    }

    /// Exponential backoff starting at `initial`, doubling, capped at `max`, with jitter.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            multiplier: 2.0,
            max,
            jitter: true,
        }
    }

    /// The delay before attempt `next_attempt` (2 = the first retry).
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(64) as i32;
        let raw = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let capped = raw.min(self.max.as_secs_f64()).max(0.0);
        let secs = if self.jitter && capped > 0.0 {
            use rand::RngExt;
            let half = capped / 2.0;
            half + rand::rng().random_range(0.0..=half)
        } else {
            capped
        };
        Duration::from_secs_f64(secs)
    }
}

impl RetryPolicy {
    /// Up to `max_attempts` attempts with the given backoff.
    pub fn new(max_attempts: u32, backoff: Backoff) -> Self {
        RetryPolicy {
            max_attempts,
            backoff,
        }
    }
}

impl Job {
    /// Starts building a job with the given name.
    pub fn builder(name: impl Into<String>) -> JobBuilder {
        JobBuilder {
            name: name.into(),
            steps: Vec::new(),
        }
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All steps, in declaration order.
    pub fn steps(&self) -> &[StepDef] {
        &self.steps
    }

    /// Looks up a step by key.
    pub fn step(&self, key: &str) -> Option<&StepDef> {
        self.index.get(key).map(|&i| &self.steps[i])
    }

    /// The index of a step in [`Job::steps`].
    pub fn step_index(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Step keys in a topological order (every step after all its upstream steps).
    pub fn topological_order(&self) -> impl Iterator<Item = &str> {
        self.topo.iter().map(|&i| self.steps[i].key.as_str())
    }
}

impl JobBuilder {
    /// Adds a step.
    pub fn step(mut self, step: StepDef) -> Self {
        self.steps.push(step);
        self
    }

    /// Adds several steps.
    pub fn steps(mut self, steps: impl IntoIterator<Item = StepDef>) -> Self {
        self.steps.extend(steps);
        self
    }

    /// Validates the steps and returns the job, or every problem found.
    pub fn build(self) -> Result<Job, JobErrors> {
        let JobBuilder { name, steps } = self;
        let mut errors = Vec::new();
        if steps.is_empty() {
            errors.push(JobError::Empty { job: name.clone() });
        }
        let mut index = std::collections::HashMap::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            if index.insert(step.key.clone(), i).is_some() {
                errors.push(JobError::DuplicateStepKey {
                    key: step.key.clone(),
                });
            }
        }
        for step in &steps {
            check_unique_names(step, &mut errors);
            if let Some(policy) = &step.retry {
                if let Some(reason) = retry_policy_problem(policy) {
                    errors.push(JobError::InvalidRetryPolicy {
                        step: step.key.clone(),
                        reason,
                    });
                }
            }
            for input in &step.inputs {
                match index.get(&input.from_step) {
                    None => errors.push(JobError::UnknownUpstreamStep {
                        step: step.key.clone(),
                        input: input.name.clone(),
                        upstream: input.from_step.clone(),
                    }),
                    Some(&u) if steps[u].output_def(&input.from_output).is_none() => {
                        errors.push(JobError::UnknownUpstreamOutput {
                            step: step.key.clone(),
                            input: input.name.clone(),
                            upstream: input.from_step.clone(),
                            output: input.from_output.clone(),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        // Cycles are looked for even when other problems were found (unknown upstream steps
        // are left out of the graph), so one build reports everything.
        match topological_sort(&steps, &index) {
            Ok(topo) if errors.is_empty() => Ok(Job {
                name,
                steps,
                topo,
                index,
            }),
            Ok(_) => Err(JobErrors { job: name, errors }),
            Err(cycles) => {
                errors.extend(cycles);
                Err(JobErrors { job: name, errors })
            }
        }
    }
}

fn check_unique_names(step: &StepDef, errors: &mut Vec<JobError>) {
    let mut seen = std::collections::HashSet::new();
    for input in &step.inputs {
        if !seen.insert(input.name.as_str()) {
            errors.push(JobError::DuplicateName {
                step: step.key.clone(),
                what: "input",
                name: input.name.clone(),
            });
        }
    }
    seen.clear();
    for output in &step.outputs {
        if !seen.insert(output.name.as_str()) {
            errors.push(JobError::DuplicateName {
                step: step.key.clone(),
                what: "output",
                name: output.name.clone(),
            });
        }
    }
}

fn retry_policy_problem(policy: &RetryPolicy) -> Option<String> {
    if policy.max_attempts == 0 {
        return Some("max_attempts must be at least 1".into());
    }
    if !(policy.backoff.multiplier >= 1.0 && policy.backoff.multiplier.is_finite()) {
        return Some(format!(
            "backoff multiplier must be a finite number >= 1, got {}",
            policy.backoff.multiplier
        ));
    }
    None
}

/// Upstream step indices of `step`, ignoring inputs wired to unknown steps.
fn upstream_indices<'a>(
    step: &'a StepDef,
    index: &'a std::collections::HashMap<String, usize>,
) -> impl Iterator<Item = usize> + 'a {
    step.inputs
        .iter()
        .filter_map(|inp| index.get(&inp.from_step).copied())
}

/// Kahn's algorithm; on failure, reports every distinct cycle among the leftover steps.
fn topological_sort(
    steps: &[StepDef],
    index: &std::collections::HashMap<String, usize>,
) -> Result<Vec<usize>, Vec<JobError>> {
    let n = steps.len();
    let mut indegree = vec![0usize; n];
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, step) in steps.iter().enumerate() {
        let mut ups: Vec<usize> = upstream_indices(step, index).collect();
        ups.sort_unstable();
        ups.dedup();
        indegree[i] = ups.len();
        for u in ups {
            downstream[u].push(i);
        }
    }
    let mut queue: std::collections::VecDeque<usize> =
        (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = queue.pop_front() {
        order.push(i);
        for &d in &downstream[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                queue.push_back(d);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Leftover steps either sit on a cycle or downstream of one. Walk upstream edges among
    // leftovers from each unvisited one until a step repeats: that closes a cycle.
    let leftover: Vec<bool> = indegree.iter().map(|&d| d > 0).collect();
    let mut reported = vec![false; n];
    let mut errors = Vec::new();
    for start in 0..n {
        if !leftover[start] || reported[start] {
            continue;
        }
        let mut path = Vec::new();
        let mut pos_in_path = std::collections::HashMap::new();
        let mut cur = start;
        loop {
            if reported[cur] {
                break;
            }
            if let Some(&p) = pos_in_path.get(&cur) {
                let cycle: Vec<usize> = path[p..].iter().rev().copied().collect();
                for &c in &cycle {
                    reported[c] = true;
                }
                errors.push(JobError::Cycle {
                    steps: cycle.iter().map(|&c| steps[c].key.clone()).collect(),
                });
                break;
            }
            pos_in_path.insert(cur, path.len());
            path.push(cur);
            // Every leftover step has at least one leftover upstream step.
            cur = upstream_indices(&steps[cur], index)
                .find(|&u| leftover[u])
                .expect("leftover step has a leftover upstream");
        }
        for &p in &path {
            reported[p] = true;
        }
    }
    Err(errors)
}
