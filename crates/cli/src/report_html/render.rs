//! The report as one self-contained HTML page: the summary, an inline SVG chart of the
//! lanes and bars, and a table with a row per step; the style and the small script are
//! inlined from the `.css` / `.js` files beside this one.

use std::fmt::Write as _;
use std::time::Duration;

use stepq_runs::RunRecord;

use super::timeline::{Attempt, Outcome, PathSource, Timeline};
use crate::report::{format_timestamp, human_duration};

const TEMPLATE: &str = include_str!("report.html");
const STYLE: &str = include_str!("report.css");
const SCRIPT: &str = include_str!("report.js");

/// Width of the lane labels, in SVG units.
const LABEL_W: f64 = 190.0;
/// Width of the plot area.
const PLOT_W: f64 = 1140.0;
/// Height of the time axis above the lanes.
const AXIS_H: f64 = 22.0;
/// Height of one row of a lane, and of its bars.
const ROW_H: f64 = 18.0;
const BAR_H: f64 = 13.0;
/// Height of a queue-wait line (drawn centered on its bar's row, behind the bars).
const WAIT_H: f64 = 5.0;
/// Width of a character of a bar's label, to tell whether the step key fits in the bar.
const CHAR_W: f64 = 6.6;
/// Space between lanes.
const LANE_GAP: f64 = 6.0;
/// Characters of an error kept in a bar's title.
const ERROR_CHARS: usize = 2_000;
/// Critical-path steps named at each end of a long path in the summary.
const PATH_ENDS: usize = 6;
/// Skipped or canceled steps named in the summary (all are in the table).
const LISTED: usize = 30;

/// Renders the page for `record`'s run.
pub fn render(record: &RunRecord, timeline: &Timeline) -> String {
    let status = if timeline.running {
        format!("{} (RUNNING)", record.status)
    } else {
        record.status.to_string()
    };
    let title = format!("stepq report: {} ({})", record.run_id, record.job_name);
    let header =
        format!(
        "<h1>Run <code>{}</code> of <code>{}</code> <span class=\"status st-{}\">{}</span></h1>\
         <p class=\"meta\">{} to {}{}</p>",
        esc(&record.run_id),
        esc(&record.job_name),
        record.status,
        esc(&status),
        format_timestamp(timeline.start_us),
        format_timestamp(timeline.end_us),
        if timeline.running { " (now; the run is still going)" } else { "" },
    );
    fill(
        TEMPLATE,
        &[
            ("title", &esc(&title)),
            ("style", STYLE),
            ("header", &header),
            ("summary", &summary(timeline)),
            ("chart", &chart(timeline)),
            ("steps", &steps_table(timeline)),
            ("script", SCRIPT),
        ],
    )
}

/// Replaces each `{{name}}` of the template, in one pass (so inserted text is never read as
/// a placeholder).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        match after.find("}}").and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (close, *v))
        }) {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn figure(out: &mut String, label: &str, value: &str) {
    let _ = write!(
        out,
        "<div class=\"fig\"><b>{}</b><span>{label}</span></div>",
        esc(value)
    );
}

fn summary(t: &Timeline) -> String {
    let s = &t.summary;
    let mut out = String::from("<div class=\"card figs\"><h2>Summary</h2>");
    figure(&mut out, "wall time", &human_duration(s.wall_time));
    figure(&mut out, "steps", &t.steps.len().to_string());
    figure(&mut out, "attempts", &s.attempts.to_string());
    figure(&mut out, "retries", &s.retries.to_string());
    figure(
        &mut out,
        "total queue wait",
        &human_duration(s.total_queue_wait),
    );
    figure(&mut out, "lanes", &t.lanes.len().to_string());
    out.push_str("<h3>Steps by state</h3><ul class=\"states\">");
    for (status, n) in &s.by_status {
        let _ = write!(out, "<li class=\"st-{status}\"><b>{n}</b> {status}</li>");
    }
    out.push_str("</ul></div><div class=\"card\"><h2>Slowest steps</h2><ol class=\"slow\">");
    let top = s.slowest.first().map_or(1, |(_, d)| d.as_micros().max(1));
    for (step, d) in &s.slowest {
        let pct = d.as_micros() as f64 * 100.0 / top as f64;
        let _ = write!(
            out,
            "<li><a href=\"#\" data-goto=\"{k}\">{k}</a><i style=\"width:{pct:.0}%\"></i><span>{}</span></li>",
            human_duration(*d),
            k = esc(step),
        );
    }
    out.push_str("</ol></div><div class=\"card\"><h2>Critical path</h2>");
    let how = match t.path_source {
        PathSource::JobGraph => concat!(
            "from the job's dependency graph: from the step that ended last, ",
            "back through the upstream step that ended last"
        ),
        PathSource::Timing => concat!(
            "the job was not at hand, so from timing: from the step that ended last, ",
            "back through the step that ended last before each was queued"
        ),
    };
    let _ = write!(
        out,
        "<p class=\"note\">{} step{}, {how}.</p><ol class=\"path\">",
        t.critical_path.len(),
        if t.critical_path.len() == 1 { "" } else { "s" },
    );
    let n = t.critical_path.len();
    for (i, step) in t.critical_path.iter().enumerate() {
        if n > 2 * PATH_ENDS && i == PATH_ENDS {
            let _ = write!(
                out,
                "<li class=\"more\">… {} more …</li>",
                n - 2 * PATH_ENDS
            );
        }
        if n <= 2 * PATH_ENDS || i < PATH_ENDS || i >= n - PATH_ENDS {
            let _ = write!(
                out,
                "<li><a href=\"#\" data-goto=\"{k}\">{k}</a></li>",
                k = esc(step)
            );
        }
    }
    out.push_str("</ol>");
    for status in ["FAILED", "SKIPPED", "CANCELED", "RUNNING"] {
        listed(&mut out, t, status);
    }
    out.push_str("</div>");
    out
}

/// A line naming the steps of one status (the first [`LISTED`]).
fn listed(out: &mut String, t: &Timeline, status: &str) {
    let keys: Vec<&str> = t
        .steps
        .iter()
        .filter(|r| r.status == status)
        .map(|r| r.step.as_str())
        .collect();
    if keys.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<p class=\"list st-{status}\"><b>{status} ({}):</b> ",
        keys.len()
    );
    for key in keys.iter().take(LISTED) {
        let _ = write!(
            out,
            "<a href=\"#\" data-goto=\"{k}\">{k}</a> ",
            k = esc(key)
        );
    }
    if keys.len() > LISTED {
        let _ = write!(out, "and {} more (see the table)", keys.len() - LISTED);
    }
    out.push_str("</p>");
}

/// A round step of about a tenth of the span: 1, 2 or 5 times a power of ten (µs).
fn tick_step(span_us: u64) -> u64 {
    let target = (span_us / 10).max(1);
    let mut step = 1;
    loop {
        for m in [1, 2, 5] {
            if step * m >= target {
                return step * m;
            }
        }
        step *= 10;
    }
}

fn chart(t: &Timeline) -> String {
    let span = (t.end_us - t.start_us).max(1);
    let x_of = |us: u64| LABEL_W + (us.saturating_sub(t.start_us)) as f64 * PLOT_W / span as f64;
    // Top of each lane.
    let mut tops = Vec::with_capacity(t.lanes.len());
    let mut y = AXIS_H;
    for lane in &t.lanes {
        tops.push(y);
        y += lane.rows as f64 * ROW_H + LANE_GAP;
    }
    let height = y + 4.0;
    let width = LABEL_W + PLOT_W + 10.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" \
         width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"timeline\">"
    );
    for (i, (lane, top)) in t.lanes.iter().zip(&tops).enumerate() {
        let h = lane.rows as f64 * ROW_H + LANE_GAP;
        let _ = write!(
            out,
            "<rect class=\"lane{}\" x=\"0\" y=\"{:.1}\" width=\"{width}\" height=\"{h:.1}\"/>\
             <text class=\"label\" x=\"{:.1}\" y=\"{:.1}\"><title>{}</title>{} ({})</text>",
            i % 2,
            top - LANE_GAP / 2.0,
            LABEL_W - 8.0,
            top + BAR_H - 2.0,
            esc(&lane.name),
            esc(&cut(&lane.name, 22)),
            lane.attempts,
        );
    }
    let step = tick_step(span);
    let mut tick = 0;
    while tick <= span {
        let x = x_of(t.start_us + tick);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{height}\"/>\
             <text class=\"tick\" x=\"{x:.1}\" y=\"12\">{}</text>",
            AXIS_H - 6.0,
            human_duration(Duration::from_micros(tick)),
        );
        tick += step;
    }
    if t.running {
        let x = x_of(t.end_us);
        let _ = write!(
            out,
            "<line class=\"now\" x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{height}\"/>"
        );
    }
    let critical: std::collections::HashSet<&str> =
        t.critical_path.iter().map(String::as_str).collect();
    // Queue waits first, so that the bars are drawn over them.
    out.push_str("<g class=\"qw\">");
    for a in &t.attempts {
        let begin = a.queued_us.unwrap_or(a.end_us);
        let (x0, x1) = (x_of(begin), x_of(a.start_us.unwrap_or(a.end_us)));
        if x1 - x0 >= 0.5 {
            let y = tops[a.lane] + a.row as f64 * ROW_H + (BAR_H - WAIT_H) / 2.0;
            let _ = write!(
                out,
                "<rect class=\"{}\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{WAIT_H}\"/>",
                a.outcome.class(),
                x1 - x0
            );
        }
    }
    out.push_str("</g>");
    // Where the last label of each lane's row ends, so that labels never overlap.
    let mut labeled: std::collections::HashMap<(usize, usize), f64> = Default::default();
    for a in t.attempts.iter().filter(|a| a.start_us.is_some()) {
        let critical = critical.contains(a.step.as_str());
        let free = labeled.entry((a.lane, a.row)).or_insert(0.0);
        bar(&mut out, a, tops[a.lane], &x_of, critical, free);
    }
    out.push_str("</svg>");
    out
}

/// One started attempt: a `<g>` with its title (step, attempt, worker, times, error) and
/// the run-time rect, labeled with the step key where it fits (and its row is `free` from
/// earlier labels; moved past the label drawn).
fn bar(
    out: &mut String,
    a: &Attempt,
    top: f64,
    x_of: &dyn Fn(u64) -> f64,
    critical: bool,
    free: &mut f64,
) {
    let y = top + a.row as f64 * ROW_H;
    let x = x_of(a.start_us.unwrap_or(a.end_us));
    let w = (x_of(a.end_us) - x).max(1.0);
    let _ = write!(
        out,
        "<g class=\"a {}{}\" data-s=\"{}\"><title>{}</title>\
         <rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{BAR_H}\"/>",
        a.outcome.class(),
        if critical { " crit" } else { "" },
        esc(&a.step),
        esc(&bar_title(a)),
    );
    let label = if a.attempt > 1 {
        format!("{} #{}", a.step, a.attempt)
    } else {
        a.step.clone()
    };
    let label_w = (label.chars().count() as f64 + 1.0) * CHAR_W;
    if label_w < w && x >= *free {
        *free = x + w;
        let _ = write!(
            out,
            "<text class=\"bl\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x + 4.0,
            y + BAR_H - 3.0,
            esc(&label)
        );
    }
    out.push_str("</g>");
}

fn bar_title(a: &Attempt) -> String {
    let state = match a.outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "FAILED",
        Outcome::Canceled => "canceled",
        Outcome::Running => "RUNNING",
        Outcome::Queued => "queued",
        Outcome::Unknown => "no end recorded",
    };
    let mut text = format!(
        "{} #{} {state} · {} · queued {} · ran {}",
        a.step,
        a.attempt,
        a.worker.as_deref().unwrap_or("-"),
        human_duration(a.queue_wait()),
        if a.start_us.is_some() {
            human_duration(a.run_time())
        } else {
            "-".into()
        },
    );
    if let Some(error) = &a.error {
        let _ = write!(text, "\nerror: {}", cut(error, ERROR_CHARS));
    }
    text
}

fn steps_table(t: &Timeline) -> String {
    let critical: std::collections::HashSet<&str> =
        t.critical_path.iter().map(String::as_str).collect();
    let mut out = format!(
        "<h2>Steps ({})</h2><table id=\"steps\"><thead><tr><th>step</th><th>status</th>\
         <th>attempts</th><th>worker</th><th>queue wait</th><th>run time</th><th>detail</th></tr>\
         </thead><tbody>",
        t.steps.len()
    );
    let dur = |d: Option<Duration>| d.map(human_duration).unwrap_or_else(|| "-".into());
    // Steps still running: their run time so far.
    let running: std::collections::HashMap<&str, Duration> = t
        .attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Running)
        .map(|a| (a.step.as_str(), a.run_time()))
        .collect();
    for r in &t.steps {
        let ran = match (r.duration, running.get(r.step.as_str())) {
            (None, Some(so_far)) => format!("{} so far", human_duration(*so_far)),
            (d, _) => dur(d),
        };
        // Cells and rows close themselves (HTML's optional end tags): a tenth smaller.
        let _ = writeln!(
            out,
            concat!(
                "<tr data-step=\"{k}\" class=\"st-{}{}\">",
                "<td>{k}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}"
            ),
            r.status,
            if critical.contains(r.step.as_str()) {
                " crit"
            } else {
                ""
            },
            r.status,
            r.attempts,
            esc(r.worker.as_deref().unwrap_or("-")),
            dur(r.queue_wait),
            ran,
            esc(&cut(r.detail.as_deref().unwrap_or(""), 300)),
            k = esc(&r.step),
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_plan::{ErrorInfo, EventKind};

    use crate::report::event_at as at;

    #[test]
    fn placeholders_are_filled_once_and_text_is_escaped() {
        let page = fill("<{{a}}|{{b}}|{{none}}>", &[("a", "{{b}}"), ("b", "x")]);
        assert_eq!(page, "<{{b}}|x|{{none}}>");
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(cut("abcdef", 3), "abc…");
    }

    #[test]
    fn failures_carry_their_error_and_running_steps_reach_now() {
        let events = vec![
            at(
                0,
                "bad<1>",
                EventKind::StepQueued {
                    attempt: 1,
                    task_id: "t".into(),
                },
            ),
            at(
                5,
                "bad<1>",
                EventKind::StepStart {
                    attempt: 1,
                    worker: "w".into(),
                },
            ),
            at(
                50,
                "bad<1>",
                EventKind::StepFailure {
                    error: ErrorInfo::new("op_error", "it <broke>"),
                    will_retry: false,
                },
            ),
            at(
                60,
                "slow",
                EventKind::StepQueued {
                    attempt: 1,
                    task_id: "u".into(),
                },
            ),
            at(
                70,
                "slow",
                EventKind::StepStart {
                    attempt: 1,
                    worker: "w".into(),
                },
            ),
        ];
        let t = Timeline::build(&events, None, None, 1_000);
        let record = stepq_runs::RunRecord::new("r", "job", serde_json::Value::Null);
        let page = render(&record, &t);
        assert!(page.contains("data-step=\"bad&lt;1&gt;\""), "escaped key");
        assert!(page.contains("<g class=\"a fail crit\" data-s=\"bad&lt;1&gt;\"><title>"));
        assert!(page.contains("error: [op_error] it &lt;broke&gt;</title>"));
        assert!(page.contains("<g class=\"a run crit\" data-s=\"slow\">"));
        assert!(page.contains("class=\"now\""), "a line at now");
        assert!(page.contains("RUNNING (1):"));
        assert!(
            page.contains("930µs so far"),
            "running time so far in the table"
        );
        assert!(!page.contains("{{"), "every placeholder filled");
    }
}
