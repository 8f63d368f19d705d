//! CI builds the example and runs it once on the embedded broker.

#[test]
fn the_example_worker_service_runs_its_job_once() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_example-worker-service"))
        .arg("--once")
        .output()
        .expect("the example starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Success: double.n = 42"), "{stdout}");
}
