//! The handle of a started run: its event stream, interruption, and final result.

use std::pin::Pin;
use std::task::{Context, Poll};

use stepq_plan::Event;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::outcome::RunResult;

/// The events of one run, in the order the loop emitted them; ends when the run ends.
///
/// The stream is bounded: a consumer that stops reading holds the run back once the buffer
/// is full, so read it to the end or drop it (a dropped stream is noticed and no longer fed).
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
}

impl EventStream {
    pub(crate) fn new(rx: mpsc::Receiver<Event>) -> Self {
        EventStream { rx }
    }

    /// The next event, or `None` once the run ended and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures::Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// A started run: take its [`EventStream`], interrupt it, or await its [`RunResult`].
#[derive(Debug)]
pub struct RunHandle {
    run_id: String,
    events: Option<EventStream>,
    interrupt: CancellationToken,
    task: JoinHandle<RunResult>,
    step_count: usize,
}

impl RunHandle {
    pub(crate) fn new(
        run_id: String,
        events: EventStream,
        interrupt: CancellationToken,
        task: JoinHandle<RunResult>,
        step_count: usize,
    ) -> Self {
        RunHandle {
            run_id,
            events: Some(events),
            interrupt,
            task,
            step_count,
        }
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// How many steps this run runs: its selection minus the steps its known state says
    /// completed (for a resume, only what runs again).
    pub fn step_count(&self) -> usize {
        self.step_count
    }

    /// Takes the event stream (`None` if already taken). If it is never taken, [`wait`]
    /// drops it, so an unread stream never holds the run back.
    ///
    /// [`wait`]: RunHandle::wait
    pub fn events(&mut self) -> Option<EventStream> {
        self.events.take()
    }

    /// Interrupts the run: nothing more is submitted, steps not started are canceled, in-flight
    /// steps are asked to cancel and get the config's `cancel_grace` to report; the run ends
    /// CANCELED. Calling it again, or after the run ended, does nothing.
    pub fn interrupt(&self) {
        self.interrupt.cancel();
    }

    /// A token that interrupts this run when cancelled (e.g. from a Ctrl-C handler).
    pub fn interrupt_token(&self) -> CancellationToken {
        self.interrupt.clone()
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the run to end and returns its result.
    ///
    /// # Panics
    ///
    /// Re-raises a panic of the run loop (a bug), and panics if the runtime shut the loop
    /// down before it ended.
    pub async fn wait(mut self) -> RunResult {
        drop(self.events.take());
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("run `{}` loop did not finish: {e}", self.run_id),
        }
    }
}
