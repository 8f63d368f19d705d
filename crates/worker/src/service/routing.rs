//! Queue routing and priority from `stepq.toml`: `[queues.NAME]` declares a named queue,
//! `[priority]` the priority levels; [`Routing`] is the checked result, which [`Backends`]
//! turns into a [`RoutedBroker`] (one lane per queue and level; see
//! [`stepq_broker::routing`]) and which checks a job's routing tags.
//!
//! ```toml
//! [queues.gpu]
//! url = "https://sqs.us-east-1.amazonaws.com/123456789012/stepq-gpu"  # on SQS
//!
//! [priority]
//! levels = ["high", "normal", "low"]   # highest first
//! default = "normal"
//! order = "weighted"                   # weighted (starvation-free) | strict
//! weights = [4, 2, 1]
//! ```
//!
//! A step goes to the queue its [`QUEUE_TAG`] names and at the level its [`PRIORITY_TAG`]
//! names (else the run's `--priority`, else the default level). On SQS, the default level of
//! a queue is the queue's URL itself and every other level is the queue beside it named
//! `<queue>-<level>` (`<queue>-<level>.fifo` for a FIFO queue); create them like the queue.
//!
//! [`Backends`]: super::Backends

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stepq_broker::routing::{is_lane_name, RoutedBroker, Routes, DEFAULT_QUEUE};
use stepq_broker::{Broker, BrokerError};
use stepq_plan::Job;
pub use stepq_protocol::{PRIORITY_TAG, QUEUE_TAG};

use super::settings::ConfigError;

/// `[queues.NAME]`: a named queue besides the default one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// The SQS queue URL (required on SQS; a URL ending `.fifo` is a FIFO queue). The
    /// embedded default needs none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// How workers order the priority levels (`priority.order`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LevelOrderSetting {
    /// Smooth weighted round-robin: higher levels first, lower ones never starved (default).
    #[default]
    Weighted,
    /// The highest level with a message, always.
    Strict,
}

/// `[priority]`: the priority levels, one queue each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrioritySettings {
    /// The levels, highest first.
    pub levels: Vec<String>,
    /// The level of a step and run that name none.
    pub default: String,
    /// `weighted` (default) or `strict`.
    pub order: LevelOrderSetting,
    /// One weight per level for `weighted` (each at least 1); unset: halving level by level
    /// (4, 2, 1 for three levels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<u32>>,
}

impl Default for PrioritySettings {
    fn default() -> Self {
        PrioritySettings {
            levels: vec!["high".into(), "normal".into(), "low".into()],
            default: "normal".into(),
            order: LevelOrderSetting::Weighted,
            weights: None,
        }
    }
}

/// Level names that would make a level's queue one of the queue's own companions
/// (`<queue>-dlq`, `<queue>-cancels`).
pub const RESERVED_LEVELS: [&str; 2] = ["dlq", "cancels"];

/// Why `sqs.config_source.dead_letter_queue_url` cannot be set with routing.
pub const SHARED_DLQ_REFUSED: &str = "with [queues] or [priority] every queue has its own \
    dead-letter queue (`<queue>-dlq`); one shared dead-letter queue cannot say where to redrive";

/// The last path segment of a queue URL: the queue's name.
fn queue_name(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or(url)
}

/// `<name>-<suffix>`, before `.fifo` on a FIFO queue's name.
fn sibling_name(name: &str, suffix: &str) -> String {
    match name.strip_suffix(".fifo") {
        Some(base) => format!("{base}-{suffix}.fifo"),
        None => format!("{name}-{suffix}"),
    }
}

/// A routing problem as a config error naming the key.
fn routing_error(e: BrokerError) -> ConfigError {
    match e {
        BrokerError::Config { field, reason } => ConfigError::invalid(field, reason),
        other => ConfigError::invalid("priority", other.to_string()),
    }
}

/// A step whose routing tag names no queue or level ([`Routing::check_job`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job `{job}`, step `{step}`: tag `{tag} = \"{value}\"` {reason}")]
pub struct RouteTagError {
    /// The job.
    pub job: String,
    /// The step.
    pub step: String,
    /// The tag ([`QUEUE_TAG`] or [`PRIORITY_TAG`]).
    pub tag: String,
    /// Its value.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

/// Checked `[queues]` and `[priority]`, and the queues this process consumes.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// `None` when neither section is set: one plain queue, as without routing.
    routes: Option<Routes>,
    /// Whether `[priority]` is set (its levels exist, even a single one).
    priority: bool,
    /// The declared queues but the default one, with their URLs.
    queues: BTreeMap<String, Option<String>>,
    /// The queues this process's workers consume; `None`: every queue.
    consume: Option<Vec<String>>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing::none()
    }
}

impl Routing {
    /// No routing: the default queue only, no priority levels.
    pub fn none() -> Self {
        Routing {
            routes: None,
            priority: false,
            queues: BTreeMap::new(),
            consume: None,
        }
    }

    /// Checks `[queues]` and `[priority]`; errors name the key (`queues.GPU`,
    /// `priority.default`, …).
    pub fn from_settings(
        queues: &BTreeMap<String, QueueSettings>,
        priority: Option<&PrioritySettings>,
    ) -> Result<Self, ConfigError> {
        for name in queues.keys() {
            if !is_lane_name(name) {
                return Err(ConfigError::invalid(
                    format!("queues.{name}"),
                    "a queue name is 1-40 of a-z, 0-9, _ and -",
                ));
            }
        }
        if queues.contains_key(DEFAULT_QUEUE) {
            return Err(ConfigError::invalid(
                format!("queues.{DEFAULT_QUEUE}"),
                "the default queue is `sqs.queue_url` (embedded: the in-process queue); \
                 declare only the other queues",
            ));
        }
        let routes = match priority {
            Some(p) => {
                let routes =
                    Routes::new(p.levels.iter().cloned(), &p.default).map_err(routing_error)?;
                Some(match (p.order, &p.weights) {
                    (LevelOrderSetting::Strict, None) => routes.strict(),
                    (LevelOrderSetting::Strict, Some(_)) => {
                        return Err(ConfigError::invalid(
                            "priority.weights",
                            "weights apply to order = \"weighted\" only",
                        ))
                    }
                    (LevelOrderSetting::Weighted, None) => routes,
                    (LevelOrderSetting::Weighted, Some(w)) => {
                        routes.weighted(w.clone()).map_err(routing_error)?
                    }
                })
            }
            None if queues.is_empty() => None,
            None => Some(Routes::single()),
        };
        for level in routes.iter().flat_map(|r| r.levels()) {
            if RESERVED_LEVELS.contains(&level.as_str()) {
                return Err(ConfigError::invalid(
                    "priority.levels",
                    format!(
                        "`{level}` is reserved: `<queue>-{level}` is the queue's own {} queue",
                        if level == "dlq" {
                            "dead-letter"
                        } else {
                            "cancel"
                        }
                    ),
                ));
            }
        }
        Ok(Routing {
            priority: priority.is_some(),
            routes,
            queues: queues
                .iter()
                .map(|(name, q)| (name.clone(), q.url.clone()))
                .collect(),
            consume: None,
        })
    }

    /// The routing a config file asks for: [`Routing::from_settings`], consuming
    /// `worker_queues` when set. On SQS (`sqs_queue_url`, the default queue's URL) every
    /// named queue needs its `url`, and no two lanes (or a lane and a queue's dead-letter
    /// queue) may be the same SQS queue.
    pub fn from_config(
        queues: &BTreeMap<String, QueueSettings>,
        priority: Option<&PrioritySettings>,
        worker_queues: Option<&[String]>,
        sqs_queue_url: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let mut routing = Self::from_settings(queues, priority)?;
        if let Some(default_url) = sqs_queue_url {
            if let Some((name, _)) = routing.queues.iter().find(|(_, url)| url.is_none()) {
                return Err(ConfigError::invalid(
                    format!("queues.{name}.url"),
                    "required on SQS: the URL of the queue's SQS queue",
                ));
            }
            routing.check_lane_names(default_url)?;
        }
        if let Some(consume) = worker_queues {
            routing = routing.consuming(consume)?;
        }
        Ok(routing)
    }

    /// The SQS queue name of every lane (`<queue url's name>` at the default level,
    /// `<name>-<level>` at the others; FIFO `.fifo` kept last), with the queue's own
    /// `-dlq` and `-cancels` names: no two may be the same queue.
    fn check_lane_names(&self, default_url: &str) -> Result<(), ConfigError> {
        let Some(routes) = &self.routes else {
            return Ok(());
        };
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut claim = |name: String, what: String| match seen.insert(name.clone(), what.clone()) {
            Some(other) => Err(ConfigError::invalid(
                "queues",
                format!("{what} and {other} are the same SQS queue `{name}`"),
            )),
            None => Ok(()),
        };
        let default = (DEFAULT_QUEUE.to_string(), Some(default_url.to_string()));
        for (queue, url) in std::iter::once((&default.0, &default.1)).chain(&self.queues) {
            let base = queue_name(url.as_deref().unwrap_or_default());
            for level in routes.levels() {
                let name = if level == routes.default_level() {
                    base.to_string()
                } else {
                    sibling_name(base, level)
                };
                claim(name, format!("queue `{queue}` at level `{level}`"))?;
            }
            claim(
                sibling_name(base, "dlq"),
                format!("queue `{queue}`'s dead-letter queue"),
            )?;
        }
        Ok(())
    }

    /// This routing with workers consuming `queues` only (each the default queue or a
    /// declared one).
    pub fn consuming(mut self, queues: &[String]) -> Result<Self, ConfigError> {
        if queues.is_empty() {
            return Err(ConfigError::invalid("worker.queues", "names no queue"));
        }
        for queue in queues {
            if queue != DEFAULT_QUEUE && !self.queues.contains_key(queue) {
                return Err(ConfigError::invalid(
                    "worker.queues",
                    format!(
                        "`{queue}` is not a declared queue (declared: {})",
                        self.queue_names().join(", ")
                    ),
                ));
            }
        }
        self.consume = Some(queues.to_vec());
        Ok(self)
    }

    /// Whether `[queues]` or `[priority]` is set: the broker is a routed one.
    pub fn is_routed(&self) -> bool {
        self.routes.is_some()
    }

    /// The queue names, the default queue first.
    pub fn queue_names(&self) -> Vec<String> {
        std::iter::once(DEFAULT_QUEUE.to_string())
            .chain(self.queues.keys().cloned())
            .collect()
    }

    /// The queues this process's workers consume (every queue unless narrowed).
    pub fn consumed(&self) -> Vec<String> {
        self.consume.clone().unwrap_or_else(|| self.queue_names())
    }

    /// The priority levels, highest first (empty without `[priority]`).
    pub fn levels(&self) -> Vec<String> {
        match &self.routes {
            Some(routes) if self.priority => routes.levels().to_vec(),
            _ => Vec::new(),
        }
    }

    /// The URL `[queues.NAME]` gives.
    pub fn queue_url(&self, queue: &str) -> Option<&str> {
        self.queues.get(queue).and_then(|u| u.as_deref())
    }

    /// The routes (levels and their order); `None` without routing.
    pub fn routes(&self) -> Option<&Routes> {
        self.routes.as_ref()
    }

    /// A routed broker with one lane per queue and level, each built by `lane(queue,
    /// level, is_default_level)`, consuming the queues this routing consumes; `None` without
    /// routing.
    pub fn broker<E>(
        &self,
        mut lane: impl FnMut(&str, &str, bool) -> Result<Arc<dyn Broker>, E>,
    ) -> Result<Option<RoutedBroker>, E>
    where
        E: From<BrokerError>,
    {
        let Some(routes) = &self.routes else {
            return Ok(None);
        };
        let default_level = routes.default_level().to_string();
        let mut failed = None;
        let broker =
            RoutedBroker::with_lanes(routes.clone(), self.queues.keys(), |q, l| {
                match lane(q, l, l == default_level) {
                    Ok(b) => b,
                    Err(e) => {
                        failed.get_or_insert(e);
                        Arc::new(stepq_broker::InMemoryBroker::new())
                    }
                }
            })?;
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(Some(match &self.consume {
            Some(queues) => broker.consuming(queues)?,
            None => broker,
        }))
    }

    /// Checks the routing tags of `job`'s steps: a [`QUEUE_TAG`] must name a declared queue
    /// and a [`PRIORITY_TAG`] a level; the error names the job, the step and the tag.
    pub fn check_job(&self, job: &Job) -> Result<(), RouteTagError> {
        for step in job.steps() {
            let bad = |tag: &str, value: &str, reason: String| RouteTagError {
                job: job.name().to_string(),
                step: step.key.clone(),
                tag: tag.to_string(),
                value: value.to_string(),
                reason,
            };
            if let Some(queue) = step.tags.get(QUEUE_TAG) {
                if queue != DEFAULT_QUEUE && !self.queues.contains_key(queue) {
                    return Err(bad(
                        QUEUE_TAG,
                        queue,
                        format!(
                            "names no declared queue (declared: {}; add [queues.{queue}] to \
                             stepq.toml)",
                            self.queue_names().join(", ")
                        ),
                    ));
                }
            }
            if let Some(level) = step.tags.get(PRIORITY_TAG) {
                self.check_level(level)
                    .map_err(|why| bad(PRIORITY_TAG, level, why))?;
            }
        }
        Ok(())
    }

    /// Whether `level` is a priority level; else why not.
    pub fn check_level(&self, level: &str) -> Result<(), String> {
        let levels = self.levels();
        if levels.iter().any(|l| l == level) {
            return Ok(());
        }
        Err(if levels.is_empty() {
            "names no priority level: no [priority] levels are configured".to_string()
        } else {
            format!(
                "names no priority level (the levels are {})",
                levels.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_plan::StepDef;

    fn settings(toml_text: &str) -> Result<Routing, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            queues: BTreeMap<String, QueueSettings>,
            priority: Option<PrioritySettings>,
        }
        let file: File = toml::from_str(toml_text).unwrap();
        Routing::from_settings(&file.queues, file.priority.as_ref())
    }

    #[test]
    fn no_sections_no_routing() {
        let routing = settings("").unwrap();
        assert!(!routing.is_routed());
        assert_eq!(routing.queue_names(), ["default"]);
        assert!(routing.levels().is_empty());
    }

    #[test]
    fn queues_and_levels_are_read() {
        let routing =
            settings("[queues.gpu]\nurl = \"http://q/gpu\"\n[priority]\norder = \"strict\"\n")
                .unwrap();
        assert!(routing.is_routed());
        assert_eq!(routing.queue_names(), ["default", "gpu"]);
        assert_eq!(routing.levels(), ["high", "normal", "low"]);
        assert_eq!(routing.queue_url("gpu"), Some("http://q/gpu"));
        assert_eq!(
            routing.routes().unwrap().order(),
            &stepq_broker::routing::LevelOrder::Strict
        );
        let consuming = routing.consuming(&["gpu".into()]).unwrap();
        assert_eq!(consuming.consumed(), ["gpu"]);
    }

    #[test]
    fn bad_sections_are_refused_naming_the_key() {
        let key = |text: &str| match settings(text).unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("{other}"),
        };
        assert_eq!(key("[queues.GPU]\n"), "queues.GPU");
        assert_eq!(key("[queues.default]\n"), "queues.default");
        assert_eq!(
            key("[priority]\ndefault = \"urgent\"\n"),
            "priority.default"
        );
        assert_eq!(key("[priority]\nweights = [1, 0, 1]\n"), "priority.weights");
        assert_eq!(
            key("[priority]\norder = \"strict\"\nweights = [3, 2, 1]\n"),
            "priority.weights"
        );
        assert_eq!(key("[priority]\nlevels = []\n"), "priority.levels");
        let routing = settings("[queues.gpu]\n").unwrap();
        let err = routing.consuming(&["tpu".into()]).unwrap_err();
        assert!(err.to_string().contains("worker.queues"), "{err}");
    }

    #[test]
    fn on_sqs_every_named_queue_needs_a_url() {
        let queues = BTreeMap::from([("gpu".to_string(), QueueSettings::default())]);
        let sqs = Some("https://q/1/stepq");
        let err = Routing::from_config(&queues, None, None, sqs).unwrap_err();
        assert!(err.to_string().contains("queues.gpu.url"), "{err}");
        let embedded = Routing::from_config(&queues, None, Some(&["gpu".into()]), None).unwrap();
        assert_eq!(embedded.consumed(), ["gpu"]);
    }

    #[test]
    fn lanes_that_would_be_one_sqs_queue_are_refused() {
        let sqs = Some("https://q/1/stepq");
        let gpu = |url: &str| {
            BTreeMap::from([(
                "gpu".to_string(),
                QueueSettings {
                    url: Some(url.into()),
                },
            )])
        };
        let levels = PrioritySettings {
            levels: vec!["gpu".into(), "normal".into()],
            default: "normal".into(),
            ..PrioritySettings::default()
        };
        // The default queue at level `gpu` is `stepq-gpu`, the gpu queue's own URL.
        let err = Routing::from_config(&gpu("https://q/1/stepq-gpu"), Some(&levels), None, sqs)
            .unwrap_err();
        assert!(
            err.to_string().contains("same SQS queue `stepq-gpu`"),
            "{err}"
        );
        Routing::from_config(&gpu("https://q/1/gpu-tasks"), Some(&levels), None, sqs).unwrap();
        let reserved = PrioritySettings {
            levels: vec!["dlq".into(), "normal".into()],
            default: "normal".into(),
            ..PrioritySettings::default()
        };
        let err = Routing::from_settings(&BTreeMap::new(), Some(&reserved)).unwrap_err();
        assert!(err.to_string().contains("`dlq` is reserved"), "{err}");
    }

    #[test]
    fn a_step_routed_nowhere_is_refused_naming_the_step_and_the_tag() {
        let routing = settings("[queues.gpu]\n[priority]\n").unwrap();
        let job = |tag: &str, value: &str| {
            Job::builder("ml")
                .step(StepDef::new("prep", "noop"))
                .step(StepDef::new("train", "noop").tag(tag, value))
                .build()
                .unwrap()
        };
        routing.check_job(&job(QUEUE_TAG, "gpu")).unwrap();
        routing.check_job(&job(PRIORITY_TAG, "high")).unwrap();
        let err = routing.check_job(&job(QUEUE_TAG, "tpu")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "job `ml`, step `train`: tag `stepq/queue = \"tpu\"` names no declared queue \
                 (declared: default, gpu"
            ),
            "{text}"
        );
        let err = routing.check_job(&job(PRIORITY_TAG, "urgent")).unwrap_err();
        assert!(
            err.to_string()
                .contains("tag `stepq/priority = \"urgent\"`")
                && err.to_string().contains("the levels are high, normal, low"),
            "{err}"
        );
        // Without [priority], no level exists.
        let err = settings("")
            .unwrap()
            .check_job(&job(PRIORITY_TAG, "high"))
            .unwrap_err();
        assert!(err.to_string().contains("no [priority] levels"), "{err}");
    }
}
