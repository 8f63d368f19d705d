//! The fault benchmark's arithmetic, free of I/O: the start and end marks the steps' commands
//! write, the executions they make up, which executions a kill hit and when each hit step
//! started again, the longest gap between starts, and the time until N steps run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a mark says: a step's command began, or got to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MarkKind {
    Start,
    End,
}

/// One line a step's command wrote: `start|end RUN STEP WORKER UNIX_SECONDS`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Mark {
    pub(super) kind: MarkKind,
    pub(super) run: String,
    pub(super) step: String,
    pub(super) worker: String,
    /// Seconds since the Unix epoch.
    pub(super) at: f64,
}

/// The marks in `text`; lines that are not marks (a line cut short by a kill) are skipped.
pub(super) fn parse_marks(text: &str) -> Vec<Mark> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let kind = match fields.next()? {
                "start" => MarkKind::Start,
                "end" => MarkKind::End,
                _ => return None,
            };
            let run = fields.next()?.to_string();
            let step = fields.next()?.to_string();
            let worker = fields.next()?.to_string();
            let at = fields.next()?.parse().ok()?;
            fields.next().is_none().then_some(Mark {
                kind,
                run,
                step,
                worker,
                at,
            })
        })
        .collect()
}

/// One run of a step's command on a worker: when it began and, if it got there, ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Execution {
    pub(super) step: String,
    pub(super) worker: String,
    pub(super) start: f64,
    pub(super) end: Option<f64>,
}

/// The executions of run `run`, by start time: each start with the first end of the same step
/// on the same worker after it.
pub(super) fn executions(marks: &[Mark], run: &str) -> Vec<Execution> {
    let mut marks: Vec<&Mark> = marks.iter().filter(|m| m.run == run).collect();
    marks.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut out: Vec<Execution> = Vec::new();
    let mut open: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for m in marks {
        let key = (m.step.as_str(), m.worker.as_str());
        match m.kind {
            MarkKind::Start => {
                open.insert(key, out.len());
                out.push(Execution {
                    step: m.step.clone(),
                    worker: m.worker.clone(),
                    start: m.at,
                    end: None,
                });
            }
            MarkKind::End => {
                if let Some(i) = open.remove(&key) {
                    out[i].end = Some(m.at);
                }
            }
        }
    }
    out
}

/// A worker SIGKILLed at a time (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Kill {
    pub(super) worker: String,
    pub(super) at: f64,
}

/// A step's execution a kill cut short, and when the step started again.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Hit {
    pub(super) step: String,
    pub(super) killed_worker: String,
    pub(super) killed_at: f64,
    /// The step's next start after the kill, and on which worker.
    pub(super) rerun: Option<(f64, String)>,
    /// The cut-short command still wrote its end mark after the kill (it outlived its worker).
    pub(super) outlived: bool,
    /// Steps of the run that had not started once by `killed_at + visibility` (the latest
    /// time the killed message is visible again): ready steps queued ahead of the re-run.
    pub(super) never_started_at_reappear: usize,
    /// Commands running at `killed_at + visibility`.
    pub(super) running_at_reappear: usize,
}

impl Hit {
    /// Time from the kill to the step's next start.
    pub(super) fn delay(&self) -> Option<Duration> {
        self.rerun
            .as_ref()
            .map(|(at, _)| Duration::from_secs_f64((at - self.killed_at).max(0.0)))
    }
}

/// When `e` stopped running: its end, else its worker's kill, else never (still running).
fn stopped_at(e: &Execution, kills: &[Kill]) -> f64 {
    e.end.unwrap_or_else(|| {
        kills
            .iter()
            .filter(|k| k.worker == e.worker && k.at >= e.start)
            .map(|k| k.at)
            .fold(f64::INFINITY, f64::min)
    })
}

/// Every execution a kill cut short — it had started on the killed worker before the kill and
/// had not ended by then — with the step's next start; `visibility` is the visibility timeout
/// in seconds (the longest a killed message stays hidden).
pub(super) fn hits(execs: &[Execution], kills: &[Kill], visibility: f64) -> Vec<Hit> {
    let mut out = Vec::new();
    for kill in kills {
        for e in execs.iter().filter(|e| {
            e.worker == kill.worker && e.start <= kill.at && e.end.is_none_or(|end| end > kill.at)
        }) {
            let rerun = execs
                .iter()
                .filter(|r| r.step == e.step && r.start > kill.at)
                .min_by(|a, b| a.start.total_cmp(&b.start))
                .map(|r| (r.start, r.worker.clone()));
            let reappear = kill.at + visibility;
            let started_by: BTreeSet<&str> = execs
                .iter()
                .filter(|x| x.start <= reappear)
                .map(|x| x.step.as_str())
                .collect();
            let steps: BTreeSet<&str> = execs.iter().map(|x| x.step.as_str()).collect();
            out.push(Hit {
                step: e.step.clone(),
                killed_worker: kill.worker.clone(),
                killed_at: kill.at,
                rerun,
                outlived: e.end.is_some(),
                never_started_at_reappear: steps.len() - started_by.len(),
                running_at_reappear: execs
                    .iter()
                    .filter(|x| x.start <= reappear && stopped_at(x, kills) > reappear)
                    .count(),
            });
        }
    }
    out
}

/// The longest time between consecutive starts of `execs`, counting from `t0` (when the
/// steps were queued) to the last start — while some step still waited to start. Returns
/// (gap start, gap end).
pub(super) fn longest_gap(t0: f64, execs: &[Execution]) -> Option<(f64, f64)> {
    let mut starts: Vec<f64> = execs.iter().map(|e| e.start).collect();
    starts.sort_by(f64::total_cmp);
    std::iter::once(t0)
        .chain(starts)
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
}

/// Time from `t0` until `n` distinct steps had started, if they did.
pub(super) fn time_until_started(t0: f64, execs: &[Execution], n: usize) -> Option<Duration> {
    let mut firsts: BTreeMap<&str, f64> = BTreeMap::new();
    for e in execs {
        let at = firsts.entry(e.step.as_str()).or_insert(e.start);
        *at = at.min(e.start);
    }
    let mut times: Vec<f64> = firsts.into_values().collect();
    times.sort_by(f64::total_cmp);
    times
        .get(n.checked_sub(1)?)
        .map(|at| Duration::from_secs_f64((at - t0).max(0.0)))
}

/// How often steps ran: (steps started more than once, steps whose command got to its end
/// more than once).
pub(super) fn repeats(execs: &[Execution]) -> (usize, usize) {
    let mut started: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ended: BTreeMap<&str, usize> = BTreeMap::new();
    for e in execs {
        *started.entry(&e.step).or_default() += 1;
        if e.end.is_some() {
            *ended.entry(&e.step).or_default() += 1;
        }
    }
    (
        started.values().filter(|&&n| n > 1).count(),
        ended.values().filter(|&&n| n > 1).count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(step: &str, worker: &str, start: f64, end: Option<f64>) -> Execution {
        Execution {
            step: step.into(),
            worker: worker.into(),
            start,
            end,
        }
    }

    #[test]
    fn marks_are_parsed_and_junk_is_skipped() {
        let text = "start r1 s0 w0 100.25\nend r1 s0 w0 101.5\nstart r1 s1 w0\n\
                    bogus r1 s1 w0 1\nstart r1 s2 w1 x\nend r1 s3 w1 5 extra\n";
        let marks = parse_marks(text);
        assert_eq!(marks.len(), 2);
        assert_eq!(
            marks[0],
            Mark {
                kind: MarkKind::Start,
                run: "r1".into(),
                step: "s0".into(),
                worker: "w0".into(),
                at: 100.25
            }
        );
        assert_eq!(marks[1].kind, MarkKind::End);
    }

    #[test]
    fn executions_pair_each_start_with_its_end_per_run() {
        let marks = parse_marks(
            "start r1 a w0 1\nstart r1 b w1 1.5\nend r1 a w0 2\nstart r2 a w0 3\n\
             start r1 b w2 12\nend r1 b w2 13\n",
        );
        assert_eq!(
            executions(&marks, "r1"),
            [
                exec("a", "w0", 1.0, Some(2.0)),
                exec("b", "w1", 1.5, None),
                exec("b", "w2", 12.0, Some(13.0)),
            ]
        );
        assert_eq!(executions(&marks, "r2"), [exec("a", "w0", 3.0, None)]);
    }

    #[test]
    fn a_kill_hits_what_ran_on_its_worker_and_the_rerun_is_the_next_start() {
        let execs = [
            exec("a", "w0", 0.0, Some(1.0)), // ended before the kill: not hit
            exec("b", "w0", 1.0, None),      // hit
            exec("c", "w1", 1.0, Some(3.0)), // other worker
            exec("d", "w0", 1.5, Some(5.5)), // outlived the kill at 2
            exec("e", "w2", 4.0, Some(5.0)),
            exec("f", "w2", 20.0, Some(21.0)), // not started by 12: queued ahead
            exec("b", "w2", 10.5, Some(11.5)),
            exec("d", "w1", 11.0, Some(12.5)),
        ];
        let kills = [Kill {
            worker: "w0".into(),
            at: 2.0,
        }];
        let hits = hits(&execs, &kills, 10.0);
        assert_eq!(hits.len(), 2);
        let b = &hits[0];
        assert_eq!(b.step, "b");
        assert_eq!(b.rerun, Some((10.5, "w2".into())));
        assert_eq!(b.delay(), Some(Duration::from_millis(8500)));
        assert!(!b.outlived);
        assert_eq!(b.never_started_at_reappear, 1, "only f");
        // At 12: d on w1 (11-12.5) runs; b on w2 ended at 11.5; d on w0 ended at 5.5.
        assert_eq!(b.running_at_reappear, 1);
        assert!(hits[1].outlived);
        assert_eq!(hits[1].step, "d");
    }

    #[test]
    fn a_step_never_started_again_has_no_delay() {
        let execs = [exec("a", "w0", 1.0, None)];
        let kills = [Kill {
            worker: "w0".into(),
            at: 2.0,
        }];
        let hits = hits(&execs, &kills, 10.0);
        assert_eq!(hits[0].delay(), None);
        // The killed execution no longer runs after its worker's kill.
        assert_eq!(hits[0].running_at_reappear, 0);
    }

    #[test]
    fn the_longest_gap_counts_from_the_queueing_to_the_last_start() {
        let execs = [
            exec("a", "w0", 10.5, Some(11.0)),
            exec("b", "w0", 11.0, None),
            exec("c", "w1", 23.0, Some(24.0)),
            exec("d", "w1", 12.0, Some(13.0)),
        ];
        assert_eq!(longest_gap(10.0, &execs), Some((12.0, 23.0)));
        assert_eq!(longest_gap(0.0, &execs[..1]), Some((0.0, 10.5)));
        assert_eq!(longest_gap(0.0, &[]), None);
    }

    #[test]
    fn time_until_n_distinct_steps_started() {
        let execs = [
            exec("a", "w0", 10.5, None),
            exec("a", "w1", 10.7, None), // a duplicate does not count twice
            exec("b", "w1", 11.0, None),
            exec("c", "w1", 13.0, None),
        ];
        let ms = Duration::from_millis;
        assert_eq!(time_until_started(10.0, &execs, 2), Some(ms(1000)));
        assert_eq!(time_until_started(10.0, &execs, 3), Some(ms(3000)));
        assert_eq!(time_until_started(10.0, &execs, 4), None);
        assert_eq!(time_until_started(10.0, &execs, 0), None);
    }

    #[test]
    fn repeats_count_steps_started_and_ended_more_than_once() {
        let execs = [
            exec("a", "w0", 1.0, None),
            exec("a", "w1", 2.0, Some(3.0)),
            exec("b", "w0", 1.0, Some(2.0)),
            exec("b", "w1", 4.0, Some(5.0)),
            exec("c", "w1", 4.0, Some(5.0)),
        ];
        assert_eq!(repeats(&execs), (2, 1));
    }
}
