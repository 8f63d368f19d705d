//! The `[sqs]` and `[s3]` sections of `stepq.toml`: where tasks are sent and where results,
//! outputs, run records, heartbeats and cancel markers are stored when running distributed.
//! Each key has its default here and its check in [`SqsSettings::validate`] /
//! [`S3Settings::validate`]; errors name the dotted key (`sqs.region_name`).

use serde::{Deserialize, Serialize};

use crate::s3::ResultKeys;
use crate::sqs::{SqsConfig, SqsConfigSource};

/// A setting that is out of range or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config value `{key}`: {reason}")]
pub struct InvalidSetting {
    /// Dotted key path, e.g. `s3.bucket`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        key: key.into(),
        reason: reason.into(),
    }
}

/// `[sqs]`: where tasks are sent when running distributed. The same fields as the broker's
/// [`SqsConfig`], except that `queue_url` may be unset (the embedded default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsSettings {
    /// Queue URL; a URL ending `.fifo` is a FIFO queue. Unset means the embedded default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
    /// AWS region; unset uses the AWS config chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_name: Option<String>,
    /// Endpoint override for SQS (e.g. LocalStack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Broker options (long polling, batch size, FIFO fairness, visibility, extended payloads).
    pub config_source: SqsConfigSource,
}

/// `[s3]`: where results, outputs and run records are stored when running distributed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// Bucket name; required when running distributed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key prefix of everything stepq stores (no leading or trailing `/`).
    pub base_path: String,
    /// Endpoint override (e.g. LocalStack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Region; unset uses `sqs.region_name`, then the AWS config chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_name: Option<String>,
    /// Also store every step task's result in S3 (`<base_path>/results/`) when the
    /// orchestrator's reply-queue notification carries it. Default `false`: a result that fits
    /// in the notification (under 200 KiB) travels only there (two requests fewer per step);
    /// SQS keeps it durably, and a worker that cannot send the notification stores the S3
    /// copy instead. Step outputs are always stored in S3, whatever this says.
    pub store_results: bool,
    /// How result objects are named: `"stepq"` (`<base_path>/results/<task_id>.json`) or
    /// `"taskiq"` (`<base_path>/results/<task_id>`, where taskiq-aio-sqs's
    /// `S3Backend(base_path="<base_path>/results")` looks). Set `"taskiq"` on every stepq
    /// process of a fleet shared with Python TaskIQ producers or workers.
    pub result_keys: ResultKeys,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            bucket: None,
            base_path: "stepq".to_string(),
            endpoint_url: None,
            region_name: None,
            store_results: false,
            result_keys: ResultKeys::Stepq,
        }
    }
}

impl SqsSettings {
    /// The broker's SQS config, when a queue URL is set. Bodies too large for SQS go to
    /// `s3.bucket` unless `sqs.config_source.s3_extended_bucket_name` names another bucket.
    pub fn sqs_config(&self, s3: &S3Settings) -> Option<SqsConfig> {
        self.queue_url.as_ref()?;
        Some(self.sqs_config_unchecked(s3))
    }

    fn sqs_config_unchecked(&self, s3: &S3Settings) -> SqsConfig {
        let mut config_source = self.config_source.clone();
        let mut payload_bucket_setting = "sqs.config_source.s3_extended_bucket_name";
        if config_source.s3_extended_bucket_name.is_none() {
            config_source.s3_extended_bucket_name = s3.bucket.clone();
            payload_bucket_setting = "s3.bucket";
        }
        SqsConfig {
            queue_url: self.queue_url.clone().unwrap_or_default(),
            region_name: self.region_name.clone(),
            endpoint_url: self.endpoint_url.clone(),
            config_source,
            payload_bucket_setting: Some(payload_bucket_setting.to_string()),
        }
    }

    /// Checks every key (the broker checks its own fields, [`SqsConfig::validate`]; without a
    /// queue URL a stand-in URL lets it check the rest).
    pub fn validate(&self, s3: &S3Settings) -> Result<(), InvalidSetting> {
        if let Some(region) = &self.region_name {
            check_region("sqs.region_name", region)?;
        }
        let mut sqs = self.sqs_config_unchecked(s3);
        if self.queue_url.is_none() {
            sqs.queue_url = "https://sqs.us-east-1.amazonaws.com/000000000000/unset".into();
        }
        sqs.validate().map_err(|e| match e {
            stepq_broker::BrokerError::Config { field, reason } => {
                invalid(format!("sqs.{field}"), reason)
            }
            other => invalid("sqs", other.to_string()),
        })
    }
}

impl S3Settings {
    /// Checks every key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(bucket) = &self.bucket {
            check_bucket(bucket)?;
        }
        let base = &self.base_path;
        if base.starts_with('/') || base.ends_with('/') {
            return Err(invalid(
                "s3.base_path",
                format!("`{base}` must not start or end with `/`"),
            ));
        }
        if base.split('/').any(|seg| seg == "..") {
            return Err(invalid(
                "s3.base_path",
                format!("`{base}` must not contain `..`"),
            ));
        }
        if let Some(url) = &self.endpoint_url {
            check_url("s3.endpoint_url", url)?;
        }
        if let Some(region) = &self.region_name {
            check_region("s3.region_name", region)?;
        }
        Ok(())
    }

    /// AWS settings for S3: `sdk` (the broker's), with `s3.endpoint_url` / `s3.region_name`
    /// (or the SQS ones) overriding them.
    pub fn sdk_config(
        &self,
        sqs: &SqsSettings,
        sdk: &aws_config::SdkConfig,
    ) -> aws_config::SdkConfig {
        let mut builder = sdk.to_builder();
        if let Some(endpoint) = self.endpoint_url.as_ref().or(sqs.endpoint_url.as_ref()) {
            builder.set_endpoint_url(Some(endpoint.clone()));
        }
        if let Some(region) = self.region_name.as_ref().or(sqs.region_name.as_ref()) {
            builder.set_region(Some(aws_config::Region::new(region.clone())));
        }
        builder.build()
    }
}

/// Environment variable overriding `sqs.queue_url`.
pub const ENV_SQS_QUEUE_URL: &str = "STEPQ_SQS_QUEUE_URL";
/// Environment variable overriding `sqs.endpoint_url`.
pub const ENV_SQS_ENDPOINT_URL: &str = "STEPQ_SQS_ENDPOINT_URL";
/// Environment variable overriding `s3.bucket`.
pub const ENV_S3_BUCKET_NAME: &str = "STEPQ_S3_BUCKET_NAME";
/// Environment variable overriding `s3.endpoint_url`.
pub const ENV_S3_ENDPOINT_URL: &str = "STEPQ_S3_ENDPOINT_URL";
/// Environment variable overriding `sqs.region_name` (and so the S3 region).
pub const ENV_AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";

/// Applies the environment overrides of `[sqs]` and `[s3]` (`STEPQ_SQS_QUEUE_URL`,
/// `STEPQ_SQS_ENDPOINT_URL`, `STEPQ_S3_BUCKET_NAME`, `STEPQ_S3_ENDPOINT_URL`,
/// `AWS_DEFAULT_REGION`) from `env`. An empty variable counts as unset.
pub fn apply_env(
    sqs: &mut SqsSettings,
    s3: &mut S3Settings,
    env: &std::collections::BTreeMap<String, String>,
) {
    let get = |name: &str| env.get(name).filter(|v| !v.trim().is_empty()).cloned();
    if let Some(v) = get(ENV_SQS_QUEUE_URL) {
        sqs.queue_url = Some(v);
    }
    if let Some(v) = get(ENV_SQS_ENDPOINT_URL) {
        sqs.endpoint_url = Some(v);
    }
    if let Some(v) = get(ENV_S3_BUCKET_NAME) {
        s3.bucket = Some(v);
    }
    if let Some(v) = get(ENV_S3_ENDPOINT_URL) {
        s3.endpoint_url = Some(v);
    }
    if let Some(v) = get(ENV_AWS_DEFAULT_REGION) {
        sqs.region_name = Some(v);
    }
}

/// Every key of the broker's options, for error messages about an unknown one.
pub fn known_config_source_keys() -> Vec<String> {
    let all = SqsConfigSource {
        is_fair_queue: Some(true),
        s3_extended_bucket_name: Some(String::new()),
        ..SqsConfigSource::default()
    };
    serde_json::to_value(&all)
        .ok()
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
        .unwrap_or_default()
}

fn check_url(key: &str, url: &str) -> Result<(), InvalidSetting> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest)
            if !rest.is_empty() && !rest.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(invalid(key, format!("`{url}` is not an http(s) URL"))),
    }
}

fn check_region(key: &str, region: &str) -> Result<(), InvalidSetting> {
    let ok = !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{region}` is not an AWS region name (e.g. us-east-1)"),
        ))
    }
}

fn check_bucket(bucket: &str) -> Result<(), InvalidSetting> {
    let len_ok = (3..=63).contains(&bucket.len());
    let chars_ok = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ends_ok = bucket
        .chars()
        .next()
        .zip(bucket.chars().last())
        .is_some_and(|(a, b)| a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric());
    if len_ok && chars_ok && ends_ok {
        Ok(())
    } else {
        Err(invalid(
            "s3.bucket",
            format!("`{bucket}` is not a valid S3 bucket name (3-63 lowercase letters, digits, `-`, `.`)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_regions_buckets_and_base_paths_name_their_key() {
        let s3 = |f: fn(&mut S3Settings)| {
            let mut s = S3Settings::default();
            f(&mut s);
            s.validate().unwrap_err().key
        };
        assert_eq!(s3(|s| s.bucket = Some("A".into())), "s3.bucket");
        assert_eq!(s3(|s| s.base_path = "/x".into()), "s3.base_path");
        assert_eq!(s3(|s| s.base_path = "a/../b".into()), "s3.base_path");
        assert_eq!(
            s3(|s| s.endpoint_url = Some("ftp://x".into())),
            "s3.endpoint_url"
        );
        assert_eq!(
            s3(|s| s.region_name = Some("US East".into())),
            "s3.region_name"
        );
        S3Settings::default().validate().unwrap();

        let s3 = S3Settings::default();
        let mut sqs = SqsSettings {
            region_name: Some("Nowhere!".into()),
            ..SqsSettings::default()
        };
        assert_eq!(sqs.validate(&s3).unwrap_err().key, "sqs.region_name");
        sqs.region_name = None;
        sqs.config_source.wait_time_seconds = 25;
        let err = sqs.validate(&s3).unwrap_err();
        assert_eq!(err.key, "sqs.config_source.wait_time_seconds", "{err}");
    }

    #[test]
    fn the_extended_payload_bucket_defaults_to_the_s3_bucket() {
        let s3 = S3Settings {
            bucket: Some("results".into()),
            ..S3Settings::default()
        };
        let mut sqs = SqsSettings::default();
        assert!(sqs.sqs_config(&s3).is_none(), "no queue URL, no SQS config");
        sqs.queue_url = Some("https://sqs.us-east-1.amazonaws.com/1/q".into());
        let config = sqs.sqs_config(&s3).unwrap();
        assert_eq!(
            config.config_source.s3_extended_bucket_name.as_deref(),
            Some("results")
        );
        // A missing bucket is then reported under the setting that named it.
        assert_eq!(config.payload_bucket_setting.as_deref(), Some("s3.bucket"));
        sqs.config_source.s3_extended_bucket_name = Some("payloads".into());
        assert_eq!(
            sqs.sqs_config(&s3)
                .unwrap()
                .payload_bucket_setting
                .as_deref(),
            Some("sqs.config_source.s3_extended_bucket_name")
        );
        assert!(known_config_source_keys().contains(&"wait_time_seconds".to_string()));
    }
}
