use super::*;

fn parse(text: &str) -> Result<StepqConfig, ConfigError> {
    let c = StepqConfig::from_toml_str(text, Path::new("stepq.toml"))?;
    c.validate()?;
    Ok(c)
}

fn invalid_key(text: &str) -> String {
    match parse(text) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid value, got {other:?}"),
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn empty_file_is_the_embedded_default() {
    let c = parse("").unwrap();
    assert_eq!(c, StepqConfig::default());
    assert_eq!(c.mode(), Mode::Embedded);
    assert!(c.enable_cancellation);
    assert_eq!(c.state_dir, PathBuf::from(".stepq"));
}

#[cfg(feature = "aws")]
#[test]
fn full_file_parses() {
    let c = parse(
        r#"
        enable_cancellation = false
        state_dir = "/var/lib/stepq"
        [sqs]
        queue_url = "https://sqs.us-east-1.amazonaws.com/1/q.fifo"
        region_name = "us-east-1"
        [s3]
        bucket = "my-bucket"
        base_path = "runs/stepq"
        [executor]
        max_in_flight = 4
        retry_mode = "deferred"
        step_timeout_seconds = 90
        fail_fast = true
        fuse_chains = false
        tag_concurrency_limits = [{ key = "db", value = "warehouse", limit = 2 }, { key = "gpu", value = "a100", limit = 1 }]
        [worker]
        concurrency = 3
        grace_period_seconds = 2.5
        "#,
    )
    .unwrap();
    assert_eq!(c.mode(), Mode::Distributed);
    assert!(!c.enable_cancellation);
    assert_eq!(c.executor.max_in_flight, 4);
    assert_eq!(c.executor.retry_mode, RetryModeSetting::Deferred);
    assert_eq!(c.step_timeout(), Some(std::time::Duration::from_secs(90)));
    assert!(c.executor.fail_fast);
    assert!(!c.executor.fuse_chains);
    assert!(ExecutorSettings::default().fuse_chains);
    assert_eq!(c.executor.tag_concurrency_limits.len(), 2);
    assert_eq!(c.executor.tag_concurrency_limits[1].value, "a100");
    assert_eq!(c.worker_concurrency(), 3);
    assert_eq!(c.grace_period(), std::time::Duration::from_millis(2500));
}

#[cfg(feature = "aws")]
#[test]
fn results_are_reply_only_unless_store_results() {
    assert!(!parse("").unwrap().s3.store_results);
    let c = parse("[s3]\nstore_results = true").unwrap();
    assert!(c.s3.store_results);
    let err = parse("[s3]\nstore_result = true").unwrap_err();
    assert!(err.to_string().contains("store_result"), "{err}");
}

#[cfg(feature = "aws")]
#[test]
fn task_always_eager_forces_embedded() {
    let c = parse(
        r#"
        task_always_eager = true
        [sqs]
        queue_url = "https://sqs.us-east-1.amazonaws.com/1/q"
        "#,
    )
    .unwrap();
    assert_eq!(c.mode(), Mode::Embedded);
}

#[test]
fn unknown_top_level_key_is_named() {
    let err = parse("task_always_eagre = true").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    assert!(msg.contains("task_always_eagre"), "{msg}");
    assert!(msg.contains("stepq.toml"), "{msg}");
}

#[test]
fn unknown_nested_key_is_named() {
    let msg = parse("[executor]\nmax_in_flght = 3")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("max_in_flght"), "{msg}");
    let msg = parse("[worker]\nthreads = 3").unwrap_err().to_string();
    assert!(msg.contains("threads"), "{msg}");
    #[cfg(feature = "aws")]
    {
        let msg = parse("[s3]\nbuckett = \"x\"").unwrap_err().to_string();
        assert!(msg.contains("buckett"), "{msg}");
    }
}

#[test]
fn wrong_types_and_bad_enum_values_are_parse_errors() {
    let msg = parse("[executor]\nmax_in_flight = \"many\"")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("max_in_flight"), "{msg}");
    let msg = parse("[executor]\nretry_mode = \"sometimes\"")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("sometimes"), "{msg}");
    let msg = parse("[worker]\nconcurrency = -1").unwrap_err().to_string();
    assert!(msg.contains("concurrency"), "{msg}");
}

#[test]
fn not_toml_is_a_parse_error() {
    assert!(matches!(
        parse("this is = = not toml"),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn out_of_range_values_name_their_key() {
    assert_eq!(
        invalid_key("[executor]\nmax_in_flight = 0"),
        "executor.max_in_flight"
    );
    assert_eq!(
        invalid_key("[executor]\nstep_timeout_seconds = 0"),
        "executor.step_timeout_seconds"
    );
    assert_eq!(
        invalid_key(
            "[executor]\ntag_concurrency_limits = [{ key = \"db\", value = \"w\", limit = 0 }]"
        ),
        "executor.tag_concurrency_limits"
    );
    assert_eq!(
        invalid_key(
            "[executor]\ntag_concurrency_limits = [{ key = \"\", value = \"w\", limit = 1 }]"
        ),
        "executor.tag_concurrency_limits"
    );
    assert_eq!(
        invalid_key("[executor]\ntag_concurrency_limits = [{ key = \"db\", value = \"w\", limit = 1 }, { key = \"db\", value = \"w\", limit = 2 }]"),
        "executor.tag_concurrency_limits"
    );
    assert_eq!(
        invalid_key("[worker]\nconcurrency = 0"),
        "worker.concurrency"
    );
    assert_eq!(
        invalid_key("[worker]\ngrace_period_seconds = -1"),
        "worker.grace_period_seconds"
    );
    assert_eq!(invalid_key("state_dir = \"\""), "state_dir");
}

#[cfg(feature = "aws")]
#[test]
fn bad_urls_regions_and_buckets_name_their_key() {
    assert_eq!(
        invalid_key("[sqs]\nqueue_url = \"\"\n[s3]\nbucket = \"b-1\""),
        "sqs.queue_url"
    );
    assert_eq!(
        invalid_key("[sqs]\nqueue_url = \"my-queue\"\n[s3]\nbucket = \"b-1\""),
        "sqs.queue_url"
    );
    assert_eq!(
        invalid_key("[sqs]\nendpoint_url = \"localhost:4566\""),
        "sqs.endpoint_url"
    );
    assert_eq!(
        invalid_key("[sqs]\nregion_name = \"US East\""),
        "sqs.region_name"
    );
    assert_eq!(invalid_key("[s3]\nbucket = \"Bad_Bucket\""), "s3.bucket");
    assert_eq!(invalid_key("[s3]\nbase_path = \"/abs\""), "s3.base_path");
    assert_eq!(invalid_key("[s3]\nbase_path = \"a/../b\""), "s3.base_path");
    assert_eq!(
        invalid_key("[s3]\nendpoint_url = \"ftp://x\""),
        "s3.endpoint_url"
    );
}

#[cfg(feature = "aws")]
#[test]
fn sqs_options_are_the_brokers() {
    let c = parse(
        r#"
        [sqs]
        queue_url = "http://127.0.0.1:4566/000000000000/q.fifo"
        endpoint_url = "http://127.0.0.1:4566"
        config_source = { wait_time_seconds = 5, max_number_of_messages = 3, visibility_timeout = 15 }
        [s3]
        bucket = "stepq-bucket"
        "#,
    )
    .unwrap();
    let sqs = c.sqs_config().unwrap();
    assert!(sqs.is_fifo());
    assert_eq!(sqs.config_source.wait_time_seconds, 5);
    assert_eq!(sqs.config_source.max_number_of_messages, 3);
    assert_eq!(sqs.config_source.visibility_timeout, 15);
    assert_eq!(
        sqs.config_source.s3_extended_bucket_name.as_deref(),
        Some("stepq-bucket"),
        "large bodies default to the s3 bucket"
    );
    assert_eq!(StepqConfig::default().sqs_config(), None);
}

#[cfg(feature = "aws")]
#[test]
fn out_of_range_sqs_options_name_their_key() {
    assert_eq!(
        invalid_key("[sqs]\nconfig_source = { wait_time_seconds = 21 }"),
        "sqs.config_source.wait_time_seconds"
    );
    assert_eq!(
        invalid_key("[sqs]\nconfig_source = { max_number_of_messages = 0 }"),
        "sqs.config_source.max_number_of_messages"
    );
    assert_eq!(
        invalid_key("[sqs]\nconfig_source = { delay_seconds = 901 }"),
        "sqs.config_source.delay_seconds"
    );
}

#[cfg(feature = "aws")]
#[test]
fn unknown_sqs_option_is_named() {
    let msg = parse("[sqs]\nconfig_source = { wait_time_secs = 3 }")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("sqs.config_source.wait_time_secs"), "{msg}");
    assert!(msg.contains("wait_time_seconds"), "{msg}");
    let msg = parse("[sqs]\nqueue = \"x\"").unwrap_err().to_string();
    assert!(msg.contains("queue"), "{msg}");
}

#[cfg(feature = "aws")]
#[test]
fn distributed_without_bucket_is_an_error() {
    assert_eq!(
        invalid_key("[sqs]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\""),
        "s3.bucket"
    );
}

#[cfg(feature = "aws")]
#[test]
fn env_overrides_the_file() {
    let mut c = StepqConfig::from_toml_str(
        "[sqs]\nqueue_url = \"https://file/q\"\n[s3]\nbucket = \"file-bucket\"",
        Path::new("f"),
    )
    .unwrap();
    c.apply_env(&env(&[
        (
            ENV_SQS_QUEUE_URL,
            "http://127.0.0.1:4566/000000000000/env-q",
        ),
        (ENV_SQS_ENDPOINT_URL, "http://127.0.0.1:4566"),
        (ENV_S3_BUCKET_NAME, "env-bucket"),
        (ENV_S3_ENDPOINT_URL, "http://127.0.0.1:4566"),
        (ENV_AWS_DEFAULT_REGION, "eu-west-1"),
        ("UNRELATED", "x"),
    ]))
    .unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.sqs.queue_url.as_deref(),
        Some("http://127.0.0.1:4566/000000000000/env-q")
    );
    assert_eq!(c.sqs.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
    assert_eq!(c.s3.bucket.as_deref(), Some("env-bucket"));
    assert_eq!(c.s3.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
    assert_eq!(c.sqs.region_name.as_deref(), Some("eu-west-1"));
    assert_eq!(c.mode(), Mode::Distributed);
}

#[cfg(feature = "aws")]
#[test]
fn empty_env_values_do_not_override() {
    let mut c = StepqConfig::default();
    c.apply_env(&env(&[(ENV_SQS_QUEUE_URL, ""), (ENV_S3_BUCKET_NAME, "  ")]))
        .unwrap();
    assert_eq!(c.sqs.queue_url, None);
    assert_eq!(c.s3.bucket, None);
    assert_eq!(c.mode(), Mode::Embedded);
}

#[cfg(feature = "aws")]
#[test]
fn env_values_are_validated() {
    let err = StepqConfig::load(None, &env(&[(ENV_SQS_QUEUE_URL, "not a url")])).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { key, .. } if key == "sqs.queue_url"),
        "{err:?}"
    );
}

#[cfg(feature = "aws")]
#[test]
fn env_alone_selects_distributed() {
    let c = StepqConfig::load(
        None,
        &env(&[
            (ENV_SQS_QUEUE_URL, "http://127.0.0.1:4566/000000000000/q"),
            (ENV_S3_BUCKET_NAME, "bucket"),
        ]),
    )
    .unwrap();
    assert_eq!(c.mode(), Mode::Distributed);
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let err = StepqConfig::load(Some(Path::new("/nonexistent/stepq.toml")), &BTreeMap::new())
        .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/stepq.toml"));
}

#[test]
fn health_interval_is_read_validated_and_overridable() {
    assert_eq!(
        StepqConfig::default().health_interval(),
        std::time::Duration::from_secs(10)
    );
    let c = parse("[worker]\nhealth_interval_seconds = 0.25").unwrap();
    assert_eq!(c.health_interval(), std::time::Duration::from_millis(250));
    for bad in ["0", "-1", "nan", "inf"] {
        assert_eq!(
            invalid_key(&format!("[worker]\nhealth_interval_seconds = {bad}")),
            "worker.health_interval_seconds",
            "{bad}"
        );
    }
    let c = StepqConfig::load(None, &env(&[(ENV_WORKER_HEALTH_INTERVAL_SECONDS, "2.5")])).unwrap();
    assert_eq!(c.health_interval(), std::time::Duration::from_millis(2500));
    for bad in ["soon", "0"] {
        let err = StepqConfig::load(None, &env(&[(ENV_WORKER_HEALTH_INTERVAL_SECONDS, bad)]))
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "worker.health_interval_seconds"),
            "{bad}: {err:?}"
        );
    }
    let msg = StepqConfig::load(None, &env(&[(ENV_WORKER_HEALTH_INTERVAL_SECONDS, "soon")]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(ENV_WORKER_HEALTH_INTERVAL_SECONDS), "{msg}");
}

#[test]
fn file_is_loaded_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stepq.toml");
    std::fs::write(&path, "[worker]\nconcurrency = 5\n").unwrap();
    let c = StepqConfig::load(Some(&path), &BTreeMap::new()).unwrap();
    assert_eq!(c.worker_concurrency(), 5);
}

/// docs/configuration.md's reference block is `StepqConfig::default()` as TOML: one
/// default per setting, written down once. `STEPQ_BLESS=1 cargo test -p stepq` rewrites it.
#[cfg(feature = "aws")]
#[test]
fn the_documented_defaults_are_the_codes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = (
        "<!-- defaults:begin -->\n```toml\n",
        "```\n<!-- defaults:end -->",
    );
    let start = doc
        .find(begin)
        .expect("docs/configuration.md has a defaults block")
        + begin.len();
    let stop = start + doc[start..].find(end).expect("the defaults block ends");
    let generated = toml::to_string(&StepqConfig::default()).unwrap();
    if std::env::var_os("STEPQ_BLESS").is_some() {
        std::fs::write(
            &path,
            format!("{}{generated}{}", &doc[..start], &doc[stop..]),
        )
        .unwrap();
        return;
    }
    assert_eq!(
        doc[start..stop],
        generated,
        "docs/configuration.md's defaults differ from the code's; run STEPQ_BLESS=1 cargo test -p stepq"
    );
    // The documented defaults read back as the defaults.
    let parsed = StepqConfig::from_toml_str(&generated, &path).unwrap();
    assert_eq!(parsed, StepqConfig::default());
}

/// Every key of docs/configuration.md's example file exists and its values are valid.
#[cfg(feature = "aws")]
#[test]
fn the_documented_example_is_a_valid_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let begin = "<!-- example:begin -->\n```toml\n";
    let start = doc
        .find(begin)
        .expect("docs/configuration.md has an example block")
        + begin.len();
    let stop = start + doc[start..].find("```").unwrap();
    let config = StepqConfig::from_toml_str(&doc[start..stop], &path).unwrap();
    config.validate().unwrap();
    assert_eq!(config.mode(), Mode::Distributed);
}

/// Without feature `aws`, whatever asks for SQS or S3 is refused by name, and the other
/// sections keep their checks.
#[cfg(not(feature = "aws"))]
#[test]
fn without_aws_a_distributed_config_is_refused_by_name() {
    let refused = |text: &str| match StepqConfig::from_toml_str(text, Path::new("stepq.toml")) {
        Err(ConfigError::NoAwsSupport { key }) => key,
        other => panic!("expected NoAwsSupport, got {other:?}"),
    };
    assert_eq!(
        refused("[sqs]\nregion_name = \"us-east-1\"\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\""),
        "sqs.queue_url"
    );
    assert_eq!(refused("[s3]\nbucket = \"b-1\""), "s3.bucket");
    assert_eq!(
        refused("task_always_eager = true\n[sqs]\nqueue_url = \"https://q\""),
        "sqs.queue_url"
    );
    assert_eq!(refused("sqs = 1"), "sqs");
    let err = StepqConfig::load(
        None,
        &env(&[(ENV_SQS_QUEUE_URL, "https://sqs.us-east-1.amazonaws.com/1/q")]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::NoAwsSupport { .. }), "{err:?}");
    assert!(msg.contains(ENV_SQS_QUEUE_URL), "{msg}");
    assert!(msg.contains("feature `aws`"), "{msg}");

    // Empty sections ask for nothing; unknown keys elsewhere are still named.
    assert_eq!(parse("[sqs]\n[s3]\n").unwrap(), StepqConfig::default());
    let msg = parse("[sqs]\n[executor]\nmax_in_flght = 3")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("max_in_flght"), "{msg}");
    let msg = parse("task_always_eagre = true").unwrap_err().to_string();
    assert!(msg.contains("task_always_eagre"), "{msg}");
    // Only the queue URL selects SQS: other AWS variables are left alone.
    let c = StepqConfig::load(
        None,
        &env(&[
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            (ENV_SQS_QUEUE_URL, " "),
        ]),
    )
    .unwrap();
    assert_eq!(c.mode(), Mode::Embedded);
}
