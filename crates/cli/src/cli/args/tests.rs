use super::*;
use crate::cli::EXIT_USAGE;
use clap::CommandFactory;

#[test]
fn the_command_line_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn run_arguments_parse() {
    let cli = Cli::parse_from([
        "stepq",
        "run",
        "diamond",
        "--steps",
        "emit_values,add_one",
        "--workers",
        "3",
        "--run-config",
        "{\"sleep_ms\": 5}",
        "--config",
        "stepq.toml",
    ]);
    assert_eq!(cli.config, Some(PathBuf::from("stepq.toml")));
    let Command::Run(args) = cli.command else {
        panic!("not a run")
    };
    assert_eq!(args.job, "diamond");
    assert_eq!(args.steps.unwrap(), ["emit_values", "add_one"]);
    assert_eq!(args.workers, Some(3));
    assert_eq!(
        parse_run_config(args.run_config.as_deref()).unwrap()["sleep_ms"],
        5
    );
}

#[test]
fn bad_run_config_is_a_usage_error() {
    let e = parse_run_config(Some("{nope")).unwrap_err();
    assert_eq!(e.code, EXIT_USAGE);
    assert!(e.message.contains("--run-config"), "{}", e.message);
    let e = parse_run_config(Some("@/nonexistent/config.json")).unwrap_err();
    assert_eq!(e.code, EXIT_USAGE);
    assert!(
        e.message.contains("/nonexistent/config.json"),
        "{}",
        e.message
    );
}

#[test]
fn run_config_is_read_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rc.json");
    std::fs::write(&path, r#"{"sleep_ms": 7}"#).unwrap();
    let value = parse_run_config(Some(&format!("@{}", path.display()))).unwrap();
    assert_eq!(value["sleep_ms"], 7);
    std::fs::write(&path, "not json").unwrap();
    let e = parse_run_config(Some(&format!("@{}", path.display()))).unwrap_err();
    assert!(e.message.contains("not valid JSON"), "{}", e.message);
}

#[test]
fn worker_arguments_parse() {
    let cli = Cli::parse_from([
        "stepq",
        "worker",
        "start",
        "--jobs-file",
        "a.toml",
        "--jobs-file",
        "b.toml",
        "--log-format",
        "json",
        "--concurrency",
        "4",
    ]);
    assert_eq!(cli.jobs_files.len(), 2);
    assert_eq!(cli.log_format, LogFormat::Json);
    assert!(matches!(
        cli.command,
        Command::Worker(WorkerCommand::Start(WorkerStartArgs {
            concurrency: Some(4),
            ..
        }))
    ));
}

#[test]
fn cancel_arguments_parse() {
    let cli = Cli::parse_from(["stepq", "cancel", "run-1", "--wait", "0"]);
    let Command::Cancel(args) = cli.command else {
        panic!("not a cancel")
    };
    assert_eq!(args.run_id, "run-1");
    assert_eq!(args.wait, 0.0);
    let cli = Cli::parse_from(["stepq", "cancel", "run-2"]);
    assert!(
        matches!(cli.command, Command::Cancel(CancelArgs { wait, force: false, .. }) if wait == 30.0)
    );
    let cli = Cli::parse_from(["stepq", "cancel", "run-3", "--force"]);
    assert!(matches!(
        cli.command,
        Command::Cancel(CancelArgs { force: true, .. })
    ));
}

#[test]
fn launch_resume_and_logs_arguments_parse() {
    let cli = Cli::parse_from([
        "stepq",
        "launch",
        "slow",
        "--steps",
        "slow_0,slow_1",
        "--run-config",
        "{\"sleep_ms\": 5}",
        "--run-id",
        "r1",
        "--tag",
        "owner=me",
        "--tag",
        "team=data=eng",
    ]);
    let Command::Launch(args) = cli.command else {
        panic!("not a launch")
    };
    assert_eq!(args.job, "slow");
    assert_eq!(args.steps.unwrap(), ["slow_0", "slow_1"]);
    assert_eq!(args.run_id.as_deref(), Some("r1"));
    let tags = parse_tags(&args.tags).unwrap();
    assert_eq!(tags["owner"], "me");
    assert_eq!(tags["team"], "data=eng");
    let e = parse_tags(&["nope".to_string()]).unwrap_err();
    assert_eq!(e.code, EXIT_USAGE);
    assert!(e.message.contains("KEY=VALUE"), "{}", e.message);

    let cli = Cli::parse_from(["stepq", "resume", "r1", "--force"]);
    assert!(matches!(
        cli.command,
        Command::Resume(ResumeArgs {
            force: true,
            here: false,
            workers: None,
            ..
        })
    ));
    let cli = Cli::parse_from(["stepq", "resume", "r1", "--here", "--workers", "3"]);
    assert!(matches!(
        cli.command,
        Command::Resume(ResumeArgs {
            force: false,
            here: true,
            workers: Some(3),
            ..
        })
    ));
    let cli = Cli::parse_from(["stepq", "logs", "r1", "-f"]);
    assert!(matches!(
        cli.command,
        Command::Logs(LogsArgs { follow: true, .. })
    ));
}

#[test]
fn runs_filter_arguments_parse_into_a_run_filter() {
    let cli = Cli::parse_from([
        "stepq",
        "runs",
        "--status",
        "failure,CANCELED",
        "--status",
        "Success",
        "--job",
        "diamond",
        "--tag",
        "owner=me",
        "--tag",
        "team=data=eng",
        "--since",
        "2h",
        "--limit",
        "5",
        "--json",
    ]);
    let Command::Runs(args) = cli.command else {
        panic!("not runs")
    };
    assert!(args.json);
    let now = 10 * 3_600 * 1_000_000;
    let filter = args.filter(now);
    assert_eq!(
        filter.statuses,
        [RunStatus::Failure, RunStatus::Canceled, RunStatus::Success]
    );
    assert_eq!(filter.job_name.as_deref(), Some("diamond"));
    assert_eq!(
        filter.tags,
        [
            ("owner".to_string(), "me".to_string()),
            ("team".to_string(), "data=eng".to_string())
        ]
    );
    assert_eq!(filter.created_since, Some(8 * 3_600 * 1_000_000));
    assert_eq!(filter.limit, Some(5));

    let Command::Runs(args) = Cli::parse_from(["stepq", "runs"]).command else {
        panic!("not runs")
    };
    let filter = args.filter(now);
    assert_eq!(
        filter,
        RunFilter::new().with_limit(20),
        "the default limit stays 20"
    );
    assert!(!args.json);
    let Command::Runs(args) =
        Cli::parse_from(["stepq", "runs", "--since", "2026-05-01T12:00:00Z"]).command
    else {
        panic!("not runs")
    };
    assert_eq!(args.filter(now).created_since, Some(1_777_636_800_000_000));
}

#[test]
fn bad_runs_filter_values_are_refused_by_the_parser() {
    for args in [
        ["stepq", "runs", "--status", "running"],
        ["stepq", "runs", "--tag", "nokey"],
        ["stepq", "runs", "--since", "5x"],
        ["stepq", "runs", "--since", "2026-02-30"],
        ["stepq", "runs", "--limit", "-1"],
    ] {
        let e = Cli::try_parse_from(args).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{args:?}");
    }
}

#[test]
fn json_flags_parse_on_every_listing_command() {
    assert!(matches!(
        Cli::parse_from(["stepq", "status", "r1", "--json"]).command,
        Command::Status { json: true, .. }
    ));
    assert!(matches!(
        Cli::parse_from(["stepq", "jobs", "--json"]).command,
        Command::Jobs { json: true }
    ));
    assert!(matches!(
        Cli::parse_from(["stepq", "worker", "list", "--json"]).command,
        Command::Worker(WorkerCommand::List { json: true })
    ));
    assert!(matches!(
        Cli::parse_from(["stepq", "logs", "r1", "--follow", "--json"]).command,
        Command::Logs(LogsArgs {
            follow: true,
            json: true,
            ..
        })
    ));
}
