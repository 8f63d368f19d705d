//! Admission of ready steps under the run's limits: `max_in_flight` and per-tag-value limits.
//!
//! Ready steps wait in FIFO order. A step held back only by a tag limit is parked under that
//! tag, so it never blocks steps behind it; when a step with that tag ends, parked steps are
//! considered first. Each step is looked at O(1) times per admission, so a 10,000-step fan-out
//! costs O(steps) overall.

use std::collections::VecDeque;

use stepq_plan::Job;

use crate::config::TagLimit;

/// One tag limit's counters and the steps parked under it.
#[derive(Debug)]
struct TagSlot {
    limit: usize,
    in_flight: usize,
    parked: VecDeque<usize>,
    /// Listed in `reopened`.
    reopened: bool,
}

impl TagSlot {
    fn has_room(&self) -> bool {
        self.in_flight < self.limit
    }
}

/// Decides which ready steps (by index in the job) may be submitted now.
#[derive(Debug)]
pub(crate) struct Admission {
    max_in_flight: usize,
    in_flight: usize,
    slots: Vec<TagSlot>,
    /// Limited tags of each step of the job (indices into `slots`).
    step_slots: Vec<Vec<usize>>,
    ready: VecDeque<usize>,
    /// Tags that may have room and have parked steps.
    reopened: Vec<usize>,
}

impl Admission {
    /// Admission for the steps of `job` under these limits.
    pub(crate) fn new(job: &Job, max_in_flight: usize, limits: &[TagLimit]) -> Self {
        let step_slots = job
            .steps()
            .iter()
            .map(|step| {
                limits
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| step.tags.get(&l.key) == Some(&l.value))
                    .map(|(k, _)| k)
                    .collect()
            })
            .collect();
        Admission {
            max_in_flight,
            in_flight: 0,
            slots: limits
                .iter()
                .map(|l| TagSlot {
                    limit: l.limit,
                    in_flight: 0,
                    parked: VecDeque::new(),
                    reopened: false,
                })
                .collect(),
            step_slots,
            ready: VecDeque::new(),
            reopened: Vec::new(),
        }
    }

    /// Queues a ready step.
    pub(crate) fn push(&mut self, step: usize) {
        self.ready.push_back(step);
    }

    /// Steps in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The first limited tag of `step` with no room, if any.
    fn blocking_slot(&self, step: usize) -> Option<usize> {
        self.step_slots[step]
            .iter()
            .copied()
            .find(|&k| !self.slots[k].has_room())
    }

    fn admit(&mut self, step: usize, out: &mut Vec<usize>) {
        self.in_flight += 1;
        for &k in &self.step_slots[step] {
            self.slots[k].in_flight += 1;
        }
        out.push(step);
    }

    /// Admits `step` or parks it under the tag that blocks it.
    fn admit_or_park(&mut self, step: usize, out: &mut Vec<usize>) {
        match self.blocking_slot(step) {
            None => self.admit(step, out),
            Some(k) => self.slots[k].parked.push_back(step),
        }
    }

    /// Takes every waiting step the limits allow now, counting them in flight.
    pub(crate) fn take_admitted(&mut self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.reopened.len() {
            let k = self.reopened[i];
            while self.in_flight < self.max_in_flight && self.slots[k].has_room() {
                let Some(step) = self.slots[k].parked.pop_front() else {
                    break;
                };
                self.admit_or_park(step, &mut out);
            }
            if self.slots[k].parked.is_empty() || !self.slots[k].has_room() {
                self.slots[k].reopened = false;
                self.reopened.swap_remove(i);
            } else {
                i += 1;
            }
            if self.in_flight >= self.max_in_flight {
                break;
            }
        }
        while self.in_flight < self.max_in_flight {
            let Some(step) = self.ready.pop_front() else {
                break;
            };
            self.admit_or_park(step, &mut out);
        }
        out
    }

    /// Records that an admitted step left flight (its attempt ended).
    pub(crate) fn release(&mut self, step: usize) {
        debug_assert!(self.in_flight > 0);
        self.in_flight -= 1;
        for &k in &self.step_slots[step] {
            let slot = &mut self.slots[k];
            slot.in_flight -= 1;
            if !slot.parked.is_empty() && !slot.reopened {
                slot.reopened = true;
                self.reopened.push(k);
            }
        }
    }

    /// Removes and returns every waiting (not admitted) step.
    pub(crate) fn drain_waiting(&mut self) -> Vec<usize> {
        let mut out: Vec<usize> = self.ready.drain(..).collect();
        for slot in &mut self.slots {
            out.extend(slot.parked.drain(..));
            slot.reopened = false;
        }
        self.reopened.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_plan::StepDef;

    fn job(tags: &[Option<&str>]) -> Job {
        Job::builder("j")
            .steps(tags.iter().enumerate().map(|(i, t)| {
                let s = StepDef::new(format!("s{i}"), "op");
                match t {
                    Some(v) => s.tag("db", *v),
                    None => s,
                }
            }))
            .build()
            .unwrap()
    }

    #[test]
    fn max_in_flight_holds_back_the_rest_in_order() {
        let job = job(&[None; 5]);
        let mut a = Admission::new(&job, 2, &[]);
        for i in 0..5 {
            a.push(i);
        }
        assert_eq!(a.take_admitted(), vec![0, 1]);
        assert_eq!(a.take_admitted(), Vec::<usize>::new());
        a.release(0);
        assert_eq!(a.take_admitted(), vec![2]);
        a.release(1);
        a.release(2);
        assert_eq!(a.take_admitted(), vec![3, 4]);
        assert_eq!(a.in_flight(), 2);
    }

    #[test]
    fn tag_limit_parks_without_blocking_others() {
        let w = Some("warehouse");
        let job = job(&[w, w, w, None, None]);
        let mut a = Admission::new(&job, 10, &[TagLimit::new("db", "warehouse", 1)]);
        for i in 0..5 {
            a.push(i);
        }
        assert_eq!(a.take_admitted(), vec![0, 3, 4]);
        a.release(3);
        assert_eq!(a.take_admitted(), Vec::<usize>::new());
        a.release(0);
        assert_eq!(a.take_admitted(), vec![1]);
        a.release(1);
        assert_eq!(a.take_admitted(), vec![2]);
    }

    #[test]
    fn parked_steps_come_back_only_when_their_tag_has_room() {
        let w = Some("warehouse");
        let job = job(&[w, w, None, None]);
        let mut a = Admission::new(&job, 2, &[TagLimit::new("db", "warehouse", 1)]);
        for i in 0..4 {
            a.push(i);
        }
        assert_eq!(a.take_admitted(), vec![0, 2]);
        a.release(2);
        // Step 1 stays parked (its tag is full); step 3 goes.
        assert_eq!(a.take_admitted(), vec![3]);
        a.release(0);
        assert_eq!(a.take_admitted(), vec![1]);
        assert_eq!(a.in_flight(), 2);
    }

    #[test]
    fn step_with_two_limited_tags_moves_to_the_tag_that_blocks_it() {
        let job = Job::builder("j")
            .step(StepDef::new("a", "op").tag("db", "w").tag("api", "x"))
            .step(StepDef::new("b", "op").tag("db", "w").tag("api", "x"))
            .step(StepDef::new("c", "op").tag("api", "x"))
            .build()
            .unwrap();
        let limits = [TagLimit::new("db", "w", 1), TagLimit::new("api", "x", 1)];
        let mut a = Admission::new(&job, 10, &limits);
        a.push(0);
        a.push(2);
        a.push(1);
        assert_eq!(a.take_admitted(), vec![0]);
        a.release(0);
        let next = a.take_admitted();
        assert_eq!(next.len(), 1, "one of c and b, never both: {next:?}");
        a.release(next[0]);
        let last = a.take_admitted();
        assert_eq!(last.len(), 1);
        assert_ne!(last, next);
        assert!(a.drain_waiting().is_empty());
    }

    #[test]
    fn drain_returns_waiting_and_parked_steps() {
        let w = Some("warehouse");
        let job = job(&[w, w, None, None]);
        let mut a = Admission::new(&job, 2, &[TagLimit::new("db", "warehouse", 1)]);
        for i in 0..4 {
            a.push(i);
        }
        assert_eq!(a.take_admitted(), vec![0, 2]);
        let mut rest = a.drain_waiting();
        rest.sort();
        assert_eq!(rest, vec![1, 3]);
        a.release(0);
        assert!(a.take_admitted().is_empty());
    }
}
