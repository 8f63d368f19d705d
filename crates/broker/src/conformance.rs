//! The conformance suite every [`Broker`] implementation runs against itself.
//!
//! The same shape as every suite of the workspace: a [`BrokerFactory`] makes a fresh, empty,
//! isolated queue per check; each `check_*` panics with a message naming the broken promise
//! (every wait is bounded, so a broken broker fails instead of hanging);
//! [`run_broker_suite`] runs them all; and
//! [`broker_conformance_tests!`](crate::broker_conformance_tests) expands to one
//! `#[tokio::test]` per check, so they run in parallel and a failure names the clause:
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use stepq_broker::{conformance::BrokerFactory, Broker, InMemoryBroker};
//!
//! struct Memory;
//! #[async_trait::async_trait]
//! impl BrokerFactory for Memory {
//!     async fn fresh(&self, visibility_timeout: Duration) -> Arc<dyn Broker> {
//!         Arc::new(InMemoryBroker::with_visibility_timeout(visibility_timeout))
//!     }
//! }
//!
//! stepq_broker::broker_conformance_tests!(in_memory, Memory);
//! # fn main() {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! stepq_broker::conformance::check_round_trip(&Memory).await;
//! # });
//! # }
//! ```
//!
//! Not covered, because the [`Broker`] API cannot inject it: a malformed (non-JSON) body must
//! still reach the listener as a [`Delivery`] whose [`Delivery::message`] is
//! `Err(Malformed)`. Test that with the implementation's own raw-send (see
//! [`InMemoryBroker::kick_raw`](crate::InMemoryBroker::kick_raw)).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, DeliveryStream};
use crate::delivery::Delivery;
use crate::message::TaskMessage;

mod dead_letters;
pub use dead_letters::check_dead_letter_moves_aside_and_redrive_brings_back;

/// Makes brokers for the checks. The checks need no second handle on one queue, so unlike
/// the run store factories there is no `reopen`.
#[async_trait]
pub trait BrokerFactory: Send + Sync {
    /// A broker on a fresh, empty queue no other call shares, whose deliveries stay invisible
    /// for `visibility_timeout` unless acked, nacked or extended.
    async fn fresh(&self, visibility_timeout: Duration) -> Arc<dyn Broker>;
}

/// Longest wait for a delivery that must come.
const MUST_ARRIVE: Duration = Duration::from_secs(10);
/// Visibility timeout of checks that must see nothing redelivered on its own.
const LONG_VISIBILITY: Duration = Duration::from_secs(30);
/// Visibility timeout of checks that watch redelivery.
const SHORT_VISIBILITY: Duration = Duration::from_secs(1);
/// Task name of the checks' messages.
const TASK: &str = "stepq.conformance";

/// Runs every check, one after another.
pub async fn run_broker_suite<F: BrokerFactory + ?Sized>(factory: &F) {
    crate::__broker_checks!(__run_checks factory);
}

/// The checks of the broker suite, handed to `$callback` (internal).
#[doc(hidden)]
#[macro_export]
macro_rules! __broker_checks {
    ($callback:ident $($args:tt)*) => {
        $crate::$callback! { $($args)* [
            check_round_trip,
            check_batch_delivers_each_once,
            check_concurrent_listeners_share_the_work,
            check_nack_redelivers_at_once,
            check_unacked_redelivered_after_visibility_timeout,
            check_extend_visibility_keeps_hidden,
            check_ack_is_final,
            check_stop_ends_the_stream,
            check_dead_letter_moves_aside_and_redrive_brings_back,
        ] }
    };
}

/// One `#[tokio::test]` (multi-threaded runtime) per check of the [`Broker`] suite, named
/// after the check, in a module `$module`, each with the [`BrokerFactory`] `$factory` (an
/// expression evaluated inside the module, once per test).
///
/// Attributes before the module name go on every test (`#[ignore = "localstack"]`);
/// `except [check_..., ...]` leaves out checks that cannot apply to the broker by design (say
/// why in a comment). The caller's crate needs `tokio` as a dev-dependency.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// # use stepq_broker::{conformance::BrokerFactory, Broker, InMemoryBroker};
/// # struct Memory;
/// # #[async_trait::async_trait]
/// # impl BrokerFactory for Memory {
/// #     async fn fresh(&self, visibility_timeout: Duration) -> Arc<dyn Broker> {
/// #         Arc::new(InMemoryBroker::with_visibility_timeout(visibility_timeout))
/// #     }
/// # }
/// stepq_broker::broker_conformance_tests!(
///     #[ignore = "slow"]
///     in_memory,
///     Memory,
///     except [check_extend_visibility_keeps_hidden]
/// );
/// # fn main() {}
/// ```
///
/// [`Broker`]: crate::Broker
/// [`BrokerFactory`]: crate::conformance::BrokerFactory
#[macro_export]
macro_rules! broker_conformance_tests {
    ($(#[$attr:meta])* $module:ident, $factory:expr $(, except [$($skip:ident),* $(,)?])? $(,)?) => {
        $crate::__broker_checks! {
            __conformance_tests [$crate::conformance] {$(#[$attr])*} $module; $factory;
            [$($($skip),*)?]
        }
    };
}

/// A message with every field set, including non-ASCII text.
fn rich_message(n: usize) -> TaskMessage {
    let mut m = TaskMessage::new(TASK)
        .with_label("run_id", "run-ä-1")
        .with_label("step_key", format!("step_{n}"));
    m.labels.insert("priority".into(), serde_json::json!(5));
    m.labels_types.insert("priority".into(), 1);
    m.args = vec![
        serde_json::json!(n),
        serde_json::json!("Grüße ✓"),
        serde_json::Value::Null,
    ];
    m.kwargs.insert(
        "nested".into(),
        serde_json::json!({"list": [1.5, true, "x"], "empty": {}}),
    );
    m
}

async fn listen(broker: &Arc<dyn Broker>, stop: &CancellationToken) -> DeliveryStream {
    broker
        .listen(stop.clone())
        .await
        .unwrap_or_else(|e| panic!("{}: listen failed: {e}", broker.kind()))
}

/// The next delivery within `within`, `None` if none came. Panics on a broker error or an
/// ended stream.
async fn next_within(
    broker: &Arc<dyn Broker>,
    stream: &mut DeliveryStream,
    within: Duration,
    what: &str,
) -> Option<Delivery> {
    match tokio::time::timeout(within, stream.next()).await {
        Err(_) => None,
        Ok(Some(Ok(delivery))) => Some(delivery),
        Ok(Some(Err(e))) => panic!(
            "{}: broker error while waiting for {what}: {e}",
            broker.kind()
        ),
        Ok(None) => panic!(
            "{}: the stream ended while waiting for {what}",
            broker.kind()
        ),
    }
}

/// The next delivery; panics if none comes within 10 s.
async fn expect_delivery(
    broker: &Arc<dyn Broker>,
    stream: &mut DeliveryStream,
    what: &str,
) -> Delivery {
    next_within(broker, stream, MUST_ARRIVE, what)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{}: no delivery within {MUST_ARRIVE:?}: {what}",
                broker.kind()
            )
        })
}

/// Panics if anything is delivered within `within`.
async fn expect_silence(
    broker: &Arc<dyn Broker>,
    stream: &mut DeliveryStream,
    within: Duration,
    why: &str,
) {
    if let Some(d) = next_within(broker, stream, within, why).await {
        panic!(
            "{}: unexpected delivery (receive_count {}, body {:?}): {why}",
            broker.kind(),
            d.receive_count(),
            String::from_utf8_lossy(d.body())
        );
    }
}

fn decode(broker: &Arc<dyn Broker>, delivery: &Delivery) -> TaskMessage {
    delivery
        .message()
        .unwrap_or_else(|e| panic!("{}: a sent message does not decode: {e}", broker.kind()))
}

async fn ack(broker: &Arc<dyn Broker>, delivery: Delivery) {
    delivery
        .ack()
        .await
        .unwrap_or_else(|e| panic!("{}: ack failed: {e}", broker.kind()));
}

/// kick, then listen: the message arrives unchanged, with receive count 1.
pub async fn check_round_trip<F: BrokerFactory + ?Sized>(factory: &F) {
    let broker = factory.fresh(LONG_VISIBILITY).await;
    let sent = rich_message(7);
    broker
        .kick(&sent)
        .await
        .unwrap_or_else(|e| panic!("{}: kick failed: {e}", broker.kind()));
    let stop = CancellationToken::new();
    let mut stream = listen(&broker, &stop).await;
    let delivery = expect_delivery(&broker, &mut stream, "the sent message").await;
    assert_eq!(
        decode(&broker, &delivery),
        sent,
        "{}: the delivered message differs from the sent one",
        broker.kind()
    );
    assert_eq!(
        delivery.receive_count(),
        1,
        "{}: receive_count of a first delivery",
        broker.kind()
    );
    ack(&broker, delivery).await;
    stop.cancel();
}

/// kick_batch of 25 (more than one SQS batch of 10): each message is delivered exactly once.
pub async fn check_batch_delivers_each_once<F: BrokerFactory + ?Sized>(factory: &F) {
    let broker = factory.fresh(LONG_VISIBILITY).await;
    let sent: Vec<TaskMessage> = (0..25).map(rich_message).collect();
    broker
        .kick_batch(&sent)
        .await
        .unwrap_or_else(|e| panic!("{}: kick_batch of 25 failed: {e}", broker.kind()));
    let stop = CancellationToken::new();
    let mut stream = listen(&broker, &stop).await;
    let mut received = BTreeMap::new();
    while received.len() < sent.len() {
        let what = format!("message {} of the batch of 25", received.len() + 1);
        let delivery = expect_delivery(&broker, &mut stream, &what).await;
        let message = decode(&broker, &delivery);
        ack(&broker, delivery).await;
        if let Some(previous) = received.insert(message.task_id.clone(), message) {
            panic!(
                "{}: message {} of the batch was delivered twice",
                broker.kind(),
                previous.task_id
            );
        }
    }
    for m in &sent {
        assert_eq!(
            received.get(&m.task_id),
            Some(m),
            "{}: batch message {} missing or changed",
            broker.kind(),
            m.task_id
        );
    }
    expect_silence(
        &broker,
        &mut stream,
        Duration::from_secs(1),
        "all 25 batch messages were delivered and acked",
    )
    .await;
    stop.cancel();
}

/// Two listeners take messages at the same time: each message goes to exactly one of them.
pub async fn check_concurrent_listeners_share_the_work<F: BrokerFactory + ?Sized>(factory: &F) {
    const COUNT: usize = 20;
    let broker = factory.fresh(LONG_VISIBILITY).await;
    let stop = CancellationToken::new();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let all_seen = Arc::new(tokio::sync::Notify::new());
    let mut listeners = Vec::new();
    for _ in 0..2 {
        let mut stream = listen(&broker, &stop).await;
        let (broker, stop, seen, all_seen) = (
            Arc::clone(&broker),
            stop.clone(),
            Arc::clone(&seen),
            Arc::clone(&all_seen),
        );
        listeners.push(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = stream.next() => next,
                };
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => panic!("{}: broker error in a listener: {e}", broker.kind()),
                    None => return,
                };
                let id = decode(&broker, &delivery).task_id;
                ack(&broker, delivery).await;
                let mut seen = seen.lock().unwrap();
                seen.push(id);
                if seen.len() >= COUNT {
                    all_seen.notify_one();
                }
            }
        }));
    }
    let sent: Vec<TaskMessage> = (0..COUNT).map(rich_message).collect();
    for m in &sent {
        broker
            .kick(m)
            .await
            .unwrap_or_else(|e| panic!("{}: kick failed: {e}", broker.kind()));
    }
    let finished = tokio::time::timeout(Duration::from_secs(30), all_seen.notified()).await;
    // Give a wrongly duplicated delivery a moment to show up before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    for l in listeners {
        l.await.expect("a listener panicked");
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        finished.is_ok(),
        "{}: two listeners received only {} of {COUNT} messages within 30 s",
        broker.kind(),
        seen.len()
    );
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "{}: a message went to both listeners (or twice to one): {seen:?}",
        broker.kind()
    );
    let expected: HashSet<&String> = sent.iter().map(|m| &m.task_id).collect();
    assert_eq!(
        unique,
        expected,
        "{}: listeners received other messages than were sent",
        broker.kind()
    );
}

/// A nacked delivery comes back at once (long before the visibility timeout), counted twice,
/// to the same listener or to another one already waiting.
pub async fn check_nack_redelivers_at_once<F: BrokerFactory + ?Sized>(factory: &F) {
    let broker = factory.fresh(LONG_VISIBILITY).await;
    let sent = rich_message(1);
    broker.kick(&sent).await.expect("kick");
    let stop = CancellationToken::new();
    let mut stream = listen(&broker, &stop).await;
    let first = expect_delivery(&broker, &mut stream, "the sent message").await;
    first
        .nack()
        .await
        .unwrap_or_else(|e| panic!("{}: nack failed: {e}", broker.kind()));
    let again = expect_delivery(
        &broker,
        &mut stream,
        "the nacked message (visibility timeout is 30 s, so nack must release it at once)",
    )
    .await;
    assert_eq!(
        decode(&broker, &again),
        sent,
        "{}: redelivered message differs",
        broker.kind()
    );
    assert_eq!(
        again.receive_count(),
        2,
        "{}: receive_count after one nack",
        broker.kind()
    );

    // Another listener, already waiting, must be woken by the nack.
    let waiting = {
        let broker = Arc::clone(&broker);
        let mut other = listen(&broker, &stop).await;
        tokio::spawn(async move {
            let d = expect_delivery(
                &broker,
                &mut other,
                "a message nacked by another listener while this one waited",
            )
            .await;
            assert_eq!(
                d.receive_count(),
                3,
                "{}: receive_count after two nacks",
                broker.kind()
            );
            ack(&broker, d).await;
        })
    };
    // Let the other listener start waiting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    again
        .nack()
        .await
        .unwrap_or_else(|e| panic!("{}: nack failed: {e}", broker.kind()));
    drop(stream);
    if let Err(e) = waiting.await {
        std::panic::resume_unwind(e.into_panic());
    }
    stop.cancel();
}

/// A delivery neither acked nor nacked comes back after the visibility timeout (1 s), not
/// before half of it, counted twice.
pub async fn check_unacked_redelivered_after_visibility_timeout<F: BrokerFactory + ?Sized>(
    factory: &F,
) {
    let broker = factory.fresh(SHORT_VISIBILITY).await;
    let sent = rich_message(2);
    broker.kick(&sent).await.expect("kick");
    let stop = CancellationToken::new();
    let mut stream = listen(&broker, &stop).await;
    let first = expect_delivery(&broker, &mut stream, "the sent message").await;
    let received_at = Instant::now();
    let again = expect_delivery(
        &broker,
        &mut stream,
        "the unacked message after its 1 s visibility timeout",
    )
    .await;
    let hidden_for = received_at.elapsed();
    assert!(
        hidden_for >= SHORT_VISIBILITY / 2,
        "{}: an unacked message came back after {hidden_for:?}, before half its 1 s visibility timeout",
        broker.kind()
    );
    assert_eq!(
        decode(&broker, &again),
        sent,
        "{}: redelivered message differs",
        broker.kind()
    );
    assert_eq!(
        again.receive_count(),
        2,
        "{}: receive_count after one visibility timeout",
        broker.kind()
    );
    ack(&broker, again).await;
    drop(first);
    stop.cancel();
}

/// extend_visibility keeps a delivery hidden past the original timeout; it comes back after
/// the extension.
pub async fn check_extend_visibility_keeps_hidden<F: BrokerFactory + ?Sized>(factory: &F) {
    let broker = factory.fresh(SHORT_VISIBILITY).await;
    broker.kick(&rich_message(3)).await.expect("kick");
    let stop = CancellationToken::new();
    let mut stream = listen(&broker, &stop).await;
    let first = expect_delivery(&broker, &mut stream, "the sent message").await;
    first
        .extend_visibility(Duration::from_secs(4))
        .await
        .unwrap_or_else(|e| panic!("{}: extend_visibility failed: {e}", broker.kind()));
    expect_silence(
        &broker,
        &mut stream,
        Duration::from_millis(2500),
        "visibility was extended to 4 s, past the 1 s timeout",
    )
    .await;
    let again = expect_delivery(
        &broker,
        &mut stream,
        "the message after its extended visibility ran out",
    )
    .await;
    assert_eq!(again.receive_count(), 2, "{}: receive_count", broker.kind());
    ack(&broker, again).await;
    stop.cancel();
}

/// An acked message never comes back, not even after the visibility timeout.
pub async fn check_ack_is_final<F: BrokerFactory + ?Sized>(factory: &F) {
    let broker = factory.fresh(SHORT_VISIBILITY).await;
    broker.kick(&rich_message(4)).await.expect("kick");
    let stop = CancellationToken::new();
    let mut stream = listen(&broker, &stop).await;
    let delivery = expect_delivery(&broker, &mut stream, "the sent message").await;
    ack(&broker, delivery).await;
    expect_silence(
        &broker,
        &mut stream,
        Duration::from_millis(2500),
        "the message was acked; it must not come back after the 1 s visibility timeout",
    )
    .await;
    stop.cancel();
}

/// Firing the stop token ends a waiting stream, and a message sent afterwards is not held by
/// the stopped listener: another listener gets it at once.
pub async fn check_stop_ends_the_stream<F: BrokerFactory + ?Sized>(factory: &F) {
    let broker = factory.fresh(LONG_VISIBILITY).await;
    let stop = CancellationToken::new();
    let mut stream = listen(&broker, &stop).await;
    let waiting = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            match stream.next().await {
                None => {}
                Some(Ok(d)) => panic!(
                    "{}: a stream on an empty queue yielded a delivery: {:?}",
                    broker.kind(),
                    String::from_utf8_lossy(d.body())
                ),
                Some(Err(e)) => panic!("{}: a stopped stream yielded an error: {e}", broker.kind()),
            }
        })
    };
    // Let the listener start waiting before it is stopped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    tokio::time::timeout(MUST_ARRIVE, waiting)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: the stream did not end within {MUST_ARRIVE:?} of stop",
                broker.kind()
            )
        })
        .expect("the waiting listener panicked");

    let mut stopped_stream = listen(&broker, &stop).await;
    match tokio::time::timeout(MUST_ARRIVE, stopped_stream.next()).await {
        Ok(None) => {}
        Ok(Some(_)) => panic!(
            "{}: listening with an already fired stop token yielded an item",
            broker.kind()
        ),
        Err(_) => panic!(
            "{}: listening with an already fired stop token did not end",
            broker.kind()
        ),
    }

    let sent = rich_message(5);
    broker.kick(&sent).await.expect("kick");
    let fresh = CancellationToken::new();
    let mut stream = listen(&broker, &fresh).await;
    let delivery = expect_delivery(
        &broker,
        &mut stream,
        "a message sent after the first listener stopped (it must not be held by it)",
    )
    .await;
    assert_eq!(
        decode(&broker, &delivery),
        sent,
        "{}: message differs",
        broker.kind()
    );
    ack(&broker, delivery).await;
    fresh.cancel();
}
