//! The [`CancelChannel`] suite: a publish reaches every current subscriber (through any handle
//! on the channel) and nobody else, a subscriber that stops gets nothing more, a subscriber
//! that may have missed notices is told to resync, and `kind()` is a short name for logs.

use std::future::Future;

use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::WAIT;
use crate::{CancelChannel, ChannelEvent, ChannelStream};

/// Makes cancel channels for the suite.
pub trait CancelChannelFactory: Send + Sync {
    /// The channel under test.
    type Channel: CancelChannel;

    /// A channel on a new namespace no other call shares (a fresh queue-name prefix, ...), with
    /// no subscribers.
    fn fresh(&self) -> impl Future<Output = Self::Channel> + Send;

    /// Another, independent handle on the same channel as `channel`: what another process
    /// (the canceller, another worker) would open.
    fn reopen(&self, channel: &Self::Channel) -> impl Future<Output = Self::Channel> + Send;

    /// Makes every current subscription of `channel` miss notices, the way this channel can
    /// lose them (a broadcast subscriber falling behind, an SQS inbox deleted under its
    /// worker), so [`check_resync_where_notices_may_be_lost`] can see it say so.
    fn lose_notices(&self, channel: &Self::Channel) -> impl Future<Output = ()> + Send;
}

/// A fresh channel, started.
async fn started<F: CancelChannelFactory>(factory: &F) -> F::Channel {
    let channel = factory.fresh().await;
    channel
        .startup()
        .await
        .unwrap_or_else(|e| panic!("{}: startup failed: {e}", channel.kind()));
    channel
}

async fn subscribe<C: CancelChannel>(
    channel: &C,
    subscriber: &str,
    stop: &CancellationToken,
) -> ChannelStream {
    channel
        .subscribe(subscriber, stop.clone())
        .await
        .unwrap_or_else(|e| panic!("{}: subscribe({subscriber}) failed: {e}", channel.kind()))
}

async fn publish<C: CancelChannel>(channel: &C, task_id: &str, body: &str) -> usize {
    channel
        .publish(task_id, body.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{}: publish({task_id}) failed: {e}", channel.kind()))
}

async fn shutdown<C: CancelChannel>(channel: &C) {
    channel
        .shutdown()
        .await
        .unwrap_or_else(|e| panic!("{}: shutdown failed: {e}", channel.kind()));
}

/// The next event within [`WAIT`], `None` if the stream ended; panics if none comes.
async fn next_event(kind: &str, stream: &mut ChannelStream, what: &str) -> Option<ChannelEvent> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{kind}: nothing within {WAIT:?} while waiting for {what}"))
}

/// The body of the next notice, skipping resyncs (a channel may always ask for one); panics if
/// the stream ends or nothing comes within [`WAIT`].
async fn next_notice(kind: &str, stream: &mut ChannelStream, what: &str) -> Bytes {
    loop {
        match next_event(kind, stream, what).await {
            Some(ChannelEvent::Notice(body)) => return body,
            Some(ChannelEvent::Resync { .. }) => {}
            None => panic!("{kind}: the subscription ended while waiting for {what}"),
        }
    }
}

/// The bodies of the next `n` notices, sorted (a channel need not keep order).
async fn notices(kind: &str, stream: &mut ChannelStream, n: usize, who: &str) -> Vec<Bytes> {
    let mut bodies = Vec::with_capacity(n);
    for i in 0..n {
        let what = format!("notice {} of {n} to {who}", i + 1);
        bodies.push(next_notice(kind, stream, &what).await);
    }
    bodies.sort();
    bodies
}

/// Before anyone subscribes a publish reaches nobody; once `subscribe` returned, every publish,
/// through this handle or another one on the same channel, reaches every subscriber (and says
/// how many it reached), and no earlier notice shows up.
pub async fn check_publish_reaches_every_current_subscriber<F: CancelChannelFactory>(factory: &F) {
    let channel = started(factory).await;
    let other = factory.reopen(&channel).await;
    let kind = channel.kind();
    assert_eq!(
        publish(&channel, "t0", "before").await,
        0,
        "{kind}: a publish before anyone subscribed reached someone"
    );
    let stop = CancellationToken::new();
    let mut a = subscribe(&channel, "a", &stop).await;
    let mut b = subscribe(&other, "b", &stop).await;
    assert_eq!(
        publish(&channel, "t1", "one").await,
        2,
        "{kind}: a publish reaches both subscribers"
    );
    assert_eq!(
        publish(&other, "t2", "two").await,
        2,
        "{kind}: a publish through another handle reaches both subscribers"
    );
    let expected = vec![Bytes::from("one"), Bytes::from("two")];
    for (who, stream) in [("a", &mut a), ("b", &mut b)] {
        assert_eq!(
            notices(kind, stream, 2, who).await,
            expected,
            "{kind}: subscriber {who} got other notices than were published after it subscribed"
        );
    }
    stop.cancel();
    shutdown(&channel).await;
    shutdown(&other).await;
}

/// Once a subscriber's `stop` fires its stream ends, and later publishes reach only the others.
pub async fn check_a_stopped_subscriber_gets_nothing_more<F: CancelChannelFactory>(factory: &F) {
    let channel = started(factory).await;
    let kind = channel.kind();
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let mut a = subscribe(&channel, "a", &stop_a).await;
    let mut b = subscribe(&channel, "b", &stop_b).await;
    assert_eq!(publish(&channel, "t1", "first").await, 2, "{kind}");
    assert_eq!(next_notice(kind, &mut a, "the first notice").await, "first");
    assert_eq!(next_notice(kind, &mut b, "the first notice").await, "first");

    stop_a.cancel();
    if let Some(event) = next_event(kind, &mut a, "the end of a stopped subscription").await {
        panic!("{kind}: a stopped subscription yielded {event:?} instead of ending");
    }
    assert_eq!(
        publish(&channel, "t2", "second").await,
        1,
        "{kind}: a publish after one of two subscribers stopped"
    );
    assert_eq!(
        next_notice(kind, &mut b, "the notice after the other stopped").await,
        "second"
    );
    stop_b.cancel();
    shutdown(&channel).await;
}

/// Where a subscriber may have missed notices ([`CancelChannelFactory::lose_notices`]) it gets
/// [`ChannelEvent::Resync`], and its subscription goes on: later notices still reach it.
pub async fn check_resync_where_notices_may_be_lost<F: CancelChannelFactory>(factory: &F) {
    let channel = started(factory).await;
    let kind = channel.kind();
    let stop = CancellationToken::new();
    let mut stream = subscribe(&channel, "lagging", &stop).await;
    factory.lose_notices(&channel).await;
    loop {
        match next_event(kind, &mut stream, "a resync after notices were lost").await {
            Some(ChannelEvent::Resync { reason }) => {
                assert!(!reason.is_empty(), "{kind}: a resync says why");
                break;
            }
            Some(ChannelEvent::Notice(_)) => {}
            None => panic!("{kind}: the subscription ended instead of asking for a resync"),
        }
    }
    assert_eq!(
        publish(&channel, "t1", "after").await,
        1,
        "{kind}: a publish after the resync reaches the subscriber"
    );
    loop {
        let body = next_notice(kind, &mut stream, "the notice published after the resync").await;
        if body == "after" {
            break;
        }
    }
    stop.cancel();
    shutdown(&channel).await;
}

/// `kind()` is a short, stable name for logs: 1-32 lowercase ASCII letters, digits or dashes,
/// the same on every handle.
pub async fn check_kind_is_a_short_stable_name<F: CancelChannelFactory>(factory: &F) {
    let channel = factory.fresh().await;
    let kind = channel.kind();
    assert!(
        (1..=32).contains(&kind.len())
            && kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "kind() {kind:?} is not a short lowercase name"
    );
    assert_eq!(
        factory.reopen(&channel).await.kind(),
        kind,
        "kind() is stable"
    );
}

/// Runs every [`CancelChannel`] check, one after another.
pub async fn run_cancel_channel_suite<F: CancelChannelFactory>(factory: &F) {
    crate::__cancel_channel_checks!(__run_checks factory);
}
