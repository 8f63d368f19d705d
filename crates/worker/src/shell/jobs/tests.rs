use super::*;

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
    kill_grace_seconds = 0.5
    working_dir = "sub"
"#;

#[test]
fn routing_keys_become_tags_the_step_over_its_tags_over_the_job() {
    let jobs = parse(
        r#"
        [jobs.ml]
        queue = "cpu"
        priority = "low"
        [[jobs.ml.steps]]
        key = "prep"
        argv = ["true"]
        [[jobs.ml.steps]]
        key = "train"
        argv = ["true"]
        queue = "gpu"
        tags = { "stepq/queue" = "tpu", "stepq/priority" = "high" }
        "#,
    )
    .unwrap();
    let job = &jobs.jobs[0].job;
    let tags = |key: &str| job.step(key).unwrap().tags.clone();
    assert_eq!(tags("prep")[QUEUE_TAG], "cpu");
    assert_eq!(tags("prep")[PRIORITY_TAG], "low");
    assert_eq!(tags("train")[QUEUE_TAG], "gpu");
    assert_eq!(tags("train")[PRIORITY_TAG], "high");
}

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
    assert_eq!(count_op.kill_grace, Duration::from_millis(500));
    let emit_op = &jobs
        .ops
        .iter()
        .find(|(n, _)| n == "shell:words/emit")
        .unwrap()
        .1;
    assert_eq!(emit_op.kill_grace, DEFAULT_KILL_GRACE);
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
    let msg =
        err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]\ncommand = \"rm -rf /\"");
    assert!(msg.contains("command"), "{msg}");
    let msg = err("[jobs.a]\ndescrption = \"x\"\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]");
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
    let msg = err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"cat\"]\nstdin = \"nope\"");
    assert!(msg.contains("`stdin` = `nope`"), "{msg}");
}

#[test]
fn duplicate_keys_bad_timeouts_and_retries_are_reported() {
    let msg = err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]");
    assert!(msg.contains("duplicate step key"), "{msg}");
    let msg =
        err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]\ntimeout_seconds = 0");
    assert!(msg.contains("timeout_seconds"), "{msg}");
    let msg =
        err("[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]\nkill_grace_seconds = -1");
    assert!(msg.contains("kill_grace_seconds"), "{msg}");
    let msg = err(
        "[jobs.a]\n[[jobs.a.steps]]\nkey = \"s\"\nargv = [\"true\"]\nretry = { max_attempts = 0 }",
    );
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
