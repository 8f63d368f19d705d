//! `stepq report`: real runs on the embedded default (a shell-step diamond with a retried
//! step and a failure; the 1,000-leaf `fanout_1000` demo job) written as HTML and rendered
//! in headless Chromium: the screenshot is not blank and the rendered DOM holds every step.
//!
//! Without `/usr/bin/chromium` the rendering part is skipped with a note, unless `CI` is
//! set, where it fails. With `STEPQ_BLESS=1` the screenshots are copied to
//! `docs/report-diamond.png` and `docs/report-fanout-1000.png`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::cli::{run, stdout, text};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A diamond of shell steps: `extract` feeds `flaky_transform` (fails once, then succeeds
/// on its retry) and `enrich`; `load` joins them and fails; `notify` is skipped.
fn diamond_jobs_file(dir: &Path) -> PathBuf {
    let flag = dir.join("flaky.flag");
    let toml = format!(
        r#"
[jobs.etl_diamond]
description = "a diamond with a retried step and a failing join"

[[jobs.etl_diamond.steps]]
key = "extract"
argv = ["sh", "-c", "sleep 0.3; echo 41"]

[[jobs.etl_diamond.steps]]
key = "flaky_transform"
argv = ["sh", "-c", "sleep 0.2; if [ -f '{flag}' ]; then echo 42; else touch '{flag}'; echo 'transient: upstream API timed out' >&2; exit 1; fi"]
inputs = {{ x = "extract.stdout" }}
retry = {{ max_attempts = 3, delay_seconds = 0.1 }}

[[jobs.etl_diamond.steps]]
key = "enrich"
argv = ["sh", "-c", "sleep 0.8; echo 7"]
inputs = {{ x = "extract.stdout" }}

[[jobs.etl_diamond.steps]]
key = "load"
argv = ["sh", "-c", "sleep 0.2; echo 'load failed: table orders is locked' >&2; exit 3"]
inputs = {{ a = "flaky_transform.stdout", b = "enrich.stdout" }}

[[jobs.etl_diamond.steps]]
key = "notify"
argv = ["echo", "done"]
inputs = {{ x = "load.stdout" }}
"#,
        flag = flag.display()
    );
    let path = dir.join("jobs.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// `stepq report` in `dir`; returns the file written, checking what the command says.
fn report(dir: &Path, args: &[&str], expected: &Path) -> (String, Duration) {
    let started = Instant::now();
    let out = run(dir, args);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = stdout(&out);
    assert!(said.starts_with("wrote "), "{said}");
    assert!(said.contains(&expected.display().to_string()), "{said}");
    let html = std::fs::read_to_string(dir.join(expected)).unwrap();
    for fetches in ["src=", "<link", "href=\"http", "url(", "@import"] {
        assert!(
            !html.contains(fetches),
            "self-contained, yet it says {fetches}"
        );
    }
    (html, took)
}

#[test]
fn report_of_a_diamond_with_a_retry_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = diamond_jobs_file(dir.path());
    let jobs = jobs.to_str().unwrap();
    let args = [
        "--jobs-file",
        jobs,
        "run",
        "etl_diamond",
        "--workers",
        "2",
        "--run-id",
        "diamond-run",
    ];
    let out = run(dir.path(), &args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let file = dir.path().join("diamond.html");
    let (html, _) = report(
        dir.path(),
        &[
            "--jobs-file",
            jobs,
            "report",
            "diamond-run",
            "-o",
            "diamond.html",
        ],
        Path::new("diamond.html"),
    );
    let html_path = file.canonicalize().unwrap();
    let unknown = run(dir.path(), &["report", "no-such-run"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    let steps = ["extract", "flaky_transform", "enrich", "load", "notify"];
    for step in steps {
        assert!(html.contains(&format!("data-step=\"{step}\"")), "{step}");
    }
    // Both attempts of the flaky step are bars; the failures' errors are in their titles.
    assert_eq!(html.matches("data-s=\"flaky_transform\"").count(), 2);
    assert!(html.contains("transient: upstream API timed out"));
    assert!(html.contains("load failed: table orders is locked"));
    assert!(
        html.contains("<g class=\"a fail crit\" data-s=\"load\""),
        "load failed on the critical path"
    );
    assert!(html.contains("from the job's dependency graph"));
    assert!(html.contains("SKIPPED (1):"));
    if let Some(dom) = render(&html_path, "diamond", "report-diamond.png") {
        for step in steps {
            assert!(
                dom.contains(&format!("data-step=\"{step}\"")),
                "{step} in the DOM"
            );
        }
    }
}

#[test]
fn report_of_a_1000_step_fanout() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[
            "run",
            "fanout_1000",
            "--workers",
            "4",
            "--run-id",
            "fanout-run",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The default file: RUN_ID.html in the current directory.
    let (html, took) = report(
        dir.path(),
        &["report", "fanout-run"],
        Path::new("fanout-run.html"),
    );
    eprintln!(
        "1,000-step report: {} bytes, `stepq report` took {took:?}",
        html.len()
    );
    assert!(html.len() < 1_000_000, "{} bytes", html.len());
    let keys: Vec<String> = std::iter::once("root".to_string())
        .chain((0..1000).map(|i| format!("leaf_{i}")))
        .collect();
    for key in &keys {
        assert!(html.contains(&format!("data-step=\"{key}\"")), "{key}");
    }
    let html_path = dir.path().join("fanout-run.html").canonicalize().unwrap();
    if let Some(dom) = render(&html_path, "fanout", "report-fanout-1000.png") {
        let found: HashSet<&str> = dom
            .split("data-step=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        for key in &keys {
            assert!(found.contains(key.as_str()), "{key} in the DOM");
        }
    }
}

/// Renders the page in headless Chromium: checks the screenshot is not blank (copying it to
/// `docs/` with `STEPQ_BLESS=1`) and returns the rendered DOM; `None` when Chromium is
/// missing outside CI.
fn render(html: &Path, name: &str, blessed: &str) -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{CHROMIUM} is missing: install the `chromium` package to render the report"
        );
        eprintln!("note: {CHROMIUM} is missing, the report is not rendered (install `chromium`)");
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let png = work.path().join(format!("{name}.png"));
    let url = format!("file://{}", html.display());
    chromium(
        work.path(),
        &[&format!("--screenshot={}", png.display()), &url],
    );
    check_not_blank(&png);
    if std::env::var("STEPQ_BLESS").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs")
            .join(blessed);
        std::fs::copy(&png, &docs).unwrap();
    }
    let dom = chromium(work.path(), &["--dump-dom", &url]);
    assert!(dom.contains("<svg"), "the chart is in the rendered DOM");
    Some(dom)
}

/// Runs headless Chromium with a profile of its own under `work`; returns its stdout.
fn chromium(work: &Path, args: &[&str]) -> String {
    let profile = tempfile::tempdir_in(work).unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let reader = {
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut out, &mut text).map(|_| text)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish in 120 s: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "chromium {args:?}: {status}");
    reader.join().unwrap().unwrap()
}

/// The screenshot has many colors and no single color covers nearly all of it.
fn check_not_blank(path: &Path) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    let pixels = &buf[..info.buffer_size()];
    for px in pixels.chunks_exact(channels) {
        *counts.entry(&px[..channels.min(3)]).or_default() += 1;
    }
    let total = pixels.len() / channels;
    let top = counts.values().max().copied().unwrap_or(0);
    assert!(
        (info.width, info.height) == (1400, 900),
        "{}x{}",
        info.width,
        info.height
    );
    assert!(counts.len() >= 32, "only {} colors: blank?", counts.len());
    assert!(
        top * 100 < total * 90,
        "one color covers {top} of {total} pixels"
    );
}
