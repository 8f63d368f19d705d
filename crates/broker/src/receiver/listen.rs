//! The listen loop: [`Receiver::run`] takes deliveries from the broker only while a
//! concurrency slot is free, spawns the [delivery pipeline](super::pipeline) for each, backs
//! off after stream errors, and on stop drains the running tasks within the grace period
//! (then cancels the rest, whose messages the pipeline returns to the queue).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::pipeline::{process, Shared, HEARTBEAT_FAILURES};
use super::{Counters, Receiver, ReceiverStats};
use crate::broker::Demand;
use crate::error::BrokerError;
use stepq_core::SharedFailureLog;

/// Backoff after the broker's stream yields an error, at first ...
const STREAM_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// ... doubling after each further error up to this.
const STREAM_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Receiver {
    /// Listens and runs tasks until `stop` fires, then lets in-flight tasks finish within the
    /// grace period (cancelling and nacking the rest) and returns.
    ///
    /// Runs the middleware `startup` hooks first and `shutdown` hooks last; the broker and the
    /// result backend are started and shut down by the owner of the [`TaskQueue`](crate::TaskQueue)
    /// ([`TaskQueue::startup`](crate::TaskQueue::startup)), since producers may share them. An invalid config is
    /// [`BrokerError::Config`]; a broker stream that ends before `stop` fires is
    /// [`BrokerError::Closed`] (after in-flight tasks were drained).
    pub async fn run(self, stop: CancellationToken) -> Result<ReceiverStats, BrokerError> {
        self.config.validate()?;
        let Receiver {
            queue,
            handlers,
            config,
            cancel,
            gate,
            observer,
        } = self;
        let known = handlers.names();
        let shared = Arc::new(Shared {
            queue,
            handlers,
            known,
            config,
            cancel,
            gate,
            observer,
            grace_expired: CancellationToken::new(),
            stats: Counters::default(),
            heartbeat_failures: SharedFailureLog::new(HEARTBEAT_FAILURES),
        });
        shared.queue.middleware().startup().await?;
        let semaphore = Arc::new(Semaphore::new(shared.config.concurrency));
        // The stream is polled only while a permit is held: the free slots are that one and
        // the permits still available.
        let free = Arc::clone(&semaphore);
        let idle = Arc::clone(&semaphore);
        let concurrency = shared.config.concurrency;
        let demand = Demand::from_fn(move || free.available_permits() + 1)
            .with_running(move || concurrency.saturating_sub(idle.available_permits() + 1));
        let listening = shared
            .queue
            .broker()
            .listen_with_demand(stop.clone(), demand);
        let mut stream = match listening.await {
            Ok(stream) => stream,
            Err(e) => {
                shared.shutdown_middleware().await;
                return Err(e);
            }
        };
        tracing::info!(
            worker = %shared.config.worker_name,
            broker = shared.queue.broker().kind(),
            concurrency = shared.config.concurrency,
            tasks = ?shared.known,
            "receiver started"
        );

        let mut tasks = JoinSet::new();
        let mut backoff = STREAM_BACKOFF_MIN;
        let mut failing = stepq_core::FailureLog::new("receiving from the broker");
        let mut stream_ended = false;
        loop {
            while let Some(done) = tasks.try_join_next() {
                log_join(done);
            }
            // A permit first, so no delivery is taken that cannot run at once.
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                permit = Arc::clone(&semaphore).acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
            };
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    backoff = STREAM_BACKOFF_MIN;
                    failing.succeeded();
                    tasks.spawn(process(Arc::clone(&shared), delivery, permit));
                }
                Some(Err(e)) => {
                    drop(permit);
                    if let Some(observer) = &shared.observer {
                        observer.broker_error(&e);
                    }
                    // Logged once per period while it lasts (an outage), and once it ends.
                    failing.failed(&format_args!(
                        "{} ({} error; retrying in {backoff:?})",
                        e,
                        e.class()
                    ));
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(STREAM_BACKOFF_MAX);
                }
                None => {
                    stream_ended = !stop.is_cancelled();
                    break;
                }
            }
        }
        drop(stream);

        // Tasks that ended while the loop waited for the broker are not running: reap them
        // so the count below is only what the grace period waits for.
        while let Some(done) = tasks.try_join_next() {
            log_join(done);
        }
        let grace = shared.config.grace_period;
        if !tasks.is_empty() {
            tracing::info!(
                running = tasks.len(),
                grace = ?grace,
                "receiver stopping: waiting for running tasks"
            );
        }
        let drain = async {
            while let Some(done) = tasks.join_next().await {
                log_join(done);
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                running = tasks.len(),
                grace = ?grace,
                "grace period over: cancelling the running tasks and returning their messages"
            );
            shared.grace_expired.cancel();
            while let Some(done) = tasks.join_next().await {
                log_join(done);
            }
        }
        shared.shutdown_middleware().await;
        let stats = shared.stats.snapshot();
        tracing::info!(worker = %shared.config.worker_name, ?stats, "receiver stopped");
        if stream_ended {
            tracing::error!(
                broker = shared.queue.broker().kind(),
                "the broker's delivery stream ended before the receiver was stopped"
            );
            return Err(BrokerError::Closed);
        }
        Ok(stats)
    }
}

impl Shared {
    /// Runs the middleware `shutdown` hooks, counting a failure as a hook error.
    async fn shutdown_middleware(&self) {
        if self.queue.middleware().shutdown().await.is_err() {
            Counters::bump(&self.stats.hook_errors);
        }
    }
}

/// Logs a delivery task that did not end normally.
fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        // Handler panics are caught inside; this is a bug in the receiver itself. The delivery
        // was neither acked nor nacked, so it comes back after its visibility timeout.
        tracing::error!(error = %e, "a receiver task failed");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use stepq_results::InMemoryResultBackend;
    use tokio::sync::{mpsc, Notify};

    use super::*;
    use crate::message::TaskMessage;
    use crate::queue::TaskQueue;
    use crate::receiver::{ReceiverConfig, TaskContext, TaskHandler};
    use crate::InMemoryBroker;

    /// A handler that reports its start on `started` and finishes when `release` is notified.
    fn blocking(started: mpsc::UnboundedSender<()>, release: Arc<Notify>) -> TaskHandler {
        Arc::new(move |_ctx: TaskContext| {
            let (s, r) = (started.clone(), Arc::clone(&release));
            Box::pin(async move {
                let _ = s.send(());
                r.notified().await;
                Ok(json!(null))
            })
        })
    }

    fn receiver_of(queue: &TaskQueue, concurrency: usize, handler: TaskHandler) -> Receiver {
        let mut receiver = Receiver::new(queue.clone()).with_config(ReceiverConfig {
            concurrency,
            heartbeat_interval: None,
            ..ReceiverConfig::default()
        });
        receiver.register("block", handler);
        receiver
    }

    #[tokio::test]
    async fn a_busy_receiver_leaves_the_next_message_to_a_free_one() {
        let broker = InMemoryBroker::new();
        let queue = TaskQueue::new(
            Arc::new(broker.clone()),
            Arc::new(InMemoryResultBackend::new()),
        );
        let (tx, mut started) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        for _ in 0..2 {
            queue.kick(TaskMessage::new("block")).await.unwrap();
        }
        let stop = CancellationToken::new();
        let busy = receiver_of(&queue, 1, blocking(tx.clone(), Arc::clone(&release)));
        let busy = tokio::spawn(busy.run(stop.clone()));
        started.recv().await.unwrap();
        let free = receiver_of(&queue, 1, blocking(tx, Arc::clone(&release)));
        let free = tokio::spawn(free.run(stop.clone()));
        tokio::time::timeout(Duration::from_secs(5), started.recv())
            .await
            .expect("the second message starts on the free receiver at once")
            .unwrap();
        assert_eq!((broker.in_flight(), broker.pending()), (2, 0));
        release.notify_waiters();
        stop.cancel();
        let (a, b) = (busy.await.unwrap().unwrap(), free.await.unwrap().unwrap());
        assert_eq!((a.succeeded, b.succeeded), (1, 1));
    }

    /// Records the demand the receiver reports at each poll of the delivery stream.
    struct DemandProbe {
        inner: InMemoryBroker,
        seen: Arc<std::sync::Mutex<Vec<(usize, usize)>>>,
    }

    #[async_trait::async_trait]
    impl crate::Broker for DemandProbe {
        async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError> {
            self.inner.kick(message).await
        }
        async fn listen(
            &self,
            stop: CancellationToken,
        ) -> Result<crate::DeliveryStream, BrokerError> {
            self.inner.listen(stop).await
        }
        async fn listen_with_demand(
            &self,
            stop: CancellationToken,
            demand: Demand,
        ) -> Result<crate::DeliveryStream, BrokerError> {
            let inner = self.inner.listen(stop).await?;
            let seen = Arc::clone(&self.seen);
            let probed = futures::stream::unfold(inner, move |mut inner| {
                seen.lock().unwrap().push((demand.get(), demand.running()));
                async move { inner.next().await.map(|item| (item, inner)) }
            });
            Ok(probed.boxed())
        }
        fn kind(&self) -> &'static str {
            "probe"
        }
    }

    #[tokio::test]
    async fn the_broker_is_asked_for_no_more_than_the_free_slots_and_told_how_many_run() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let probe = DemandProbe {
            inner: InMemoryBroker::new(),
            seen: Arc::clone(&seen),
        };
        let queue = TaskQueue::new(Arc::new(probe), Arc::new(InMemoryResultBackend::new()));
        let (tx, mut started) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        for _ in 0..2 {
            queue.kick(TaskMessage::new("block")).await.unwrap();
        }
        let stop = CancellationToken::new();
        let receiver = receiver_of(&queue, 3, blocking(tx, Arc::clone(&release)));
        let worker = tokio::spawn(receiver.run(stop.clone()));
        started.recv().await.unwrap();
        started.recv().await.unwrap();
        // The third poll (waiting for a message that is not there) began with one slot free.
        let third_poll = async {
            while seen.lock().unwrap().len() < 3 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), third_poll)
            .await
            .expect("the receiver polls with listen_with_demand");
        // Each poll also said how many ran: none, then one, then two.
        assert_eq!(seen.lock().unwrap()[..3], [(3, 0), (2, 1), (1, 2)]);
        release.notify_waiters();
        stop.cancel();
        assert_eq!(worker.await.unwrap().unwrap().succeeded, 2);
    }

    /// Captures the log lines of the current thread (a current-thread test runtime runs every
    /// spawned task on it).
    #[derive(Clone, Default)]
    struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn install(&self) -> tracing::subscriber::DefaultGuard {
            let logs = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || logs.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_default(subscriber)
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[tokio::test]
    async fn an_idle_receiver_stops_at_once_and_waits_for_no_finished_task() {
        let logs = Logs::default();
        let _guard = logs.install();
        let broker = InMemoryBroker::new();
        let queue = TaskQueue::new(
            Arc::new(broker.clone()),
            Arc::new(InMemoryResultBackend::new()),
        );
        let quick: TaskHandler = Arc::new(|_ctx: TaskContext| Box::pin(async { Ok(json!(1)) }));
        let mut receiver = Receiver::new(queue.clone()).with_config(ReceiverConfig {
            concurrency: 1,
            heartbeat_interval: None,
            ..ReceiverConfig::default()
        });
        receiver.register("quick", quick);
        let sent = queue.kick(TaskMessage::new("quick")).await.unwrap();
        let stop = CancellationToken::new();
        let worker = tokio::spawn(receiver.run(stop.clone()));
        let handle = crate::TaskHandle::<serde_json::Value>::new(
            queue.clone(),
            sent.task_id.clone(),
            sent.task_name.clone(),
        );
        handle
            .wait_result(Some(Duration::from_secs(5)))
            .await
            .unwrap();
        let acked = async {
            while broker.in_flight() > 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), acked)
            .await
            .unwrap();

        // The loop now waits on the broker with the finished task not yet reaped.
        stop.cancel();
        let stats = tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .expect("an idle receiver stops at once")
            .unwrap()
            .unwrap();
        assert_eq!(stats.succeeded, 1);
        let text = logs.text();
        assert!(text.contains("receiver stopped"), "{text}");
        assert!(
            !text.contains("waiting for running tasks"),
            "nothing was running: {text}"
        );
    }

    #[tokio::test]
    async fn a_failed_task_is_logged_with_its_id_name_and_reason() {
        let logs = Logs::default();
        let _guard = logs.install();
        let broker = InMemoryBroker::new();
        let queue = TaskQueue::new(
            Arc::new(broker.clone()),
            Arc::new(InMemoryResultBackend::new()),
        );
        let refuse: TaskHandler = Arc::new(|_ctx: TaskContext| {
            Box::pin(async {
                Err(stepq_results::TaskError {
                    kind: stepq_results::FailureKind::InvalidStepArgs,
                    message: "unreadable step arguments: bad magic".into(),
                })
            })
        });
        let mut receiver = Receiver::new(queue.clone()).with_config(ReceiverConfig {
            heartbeat_interval: None,
            ..ReceiverConfig::default()
        });
        receiver.register("refuse", refuse);
        let sent = queue.kick(TaskMessage::new("refuse")).await.unwrap();
        let stop = CancellationToken::new();
        let worker = tokio::spawn(receiver.run(stop.clone()));
        let handle = crate::TaskHandle::<serde_json::Value>::new(
            queue.clone(),
            sent.task_id.clone(),
            sent.task_name.clone(),
        );
        let failed = handle.wait_result(Some(Duration::from_secs(5))).await;
        assert!(failed.is_err(), "the failed result is still stored");
        stop.cancel();
        assert_eq!(worker.await.unwrap().unwrap().failed, 1);
        let text = logs.text();
        let line = text
            .lines()
            .find(|l| l.contains("task failed"))
            .unwrap_or_else(|| panic!("no failure logged: {text}"));
        assert!(line.contains("ERROR"), "{line}");
        for needle in [
            sent.task_id.as_str(),
            "refuse",
            "InvalidStepArgs",
            "bad magic",
        ] {
            assert!(line.contains(needle), "{needle} missing: {line}");
        }
    }

    #[tokio::test]
    async fn no_delivery_is_taken_from_the_broker_while_every_slot_is_busy() {
        let broker = InMemoryBroker::new();
        let queue = TaskQueue::new(
            Arc::new(broker.clone()),
            Arc::new(InMemoryResultBackend::new()),
        );
        let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (s, r) = (Arc::clone(&started), Arc::clone(&release));
        let block: TaskHandler = Arc::new(move |_ctx: TaskContext| {
            let (s, r) = (Arc::clone(&s), Arc::clone(&r));
            Box::pin(async move {
                s.notify_one();
                r.notified().await;
                Ok(json!(null))
            })
        });
        let mut receiver = Receiver::new(queue.clone()).with_config(ReceiverConfig {
            concurrency: 1,
            heartbeat_interval: None,
            ..ReceiverConfig::default()
        });
        receiver.register("block", block);
        for _ in 0..2 {
            queue.kick(TaskMessage::new("block")).await.unwrap();
        }
        let stop = CancellationToken::new();
        let worker = tokio::spawn(receiver.run(stop.clone()));

        started.notified().await;
        // Time for the loop to take a second delivery, were it to take one without a slot.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!((broker.in_flight(), broker.pending()), (1, 1));
        release.notify_one();
        started.notified().await;
        assert_eq!((broker.in_flight(), broker.pending()), (1, 0));
        release.notify_one();

        stop.cancel();
        let stats = worker.await.unwrap().unwrap();
        assert_eq!(stats.succeeded, 2);
        assert_eq!((broker.in_flight(), broker.pending()), (0, 0));
    }
}
