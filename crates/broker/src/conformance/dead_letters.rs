//! The dead-letter check of the broker suite (see [`DeadLetters`](crate::DeadLetters)).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    ack, decode, expect_delivery, expect_silence, listen, rich_message, BrokerFactory, MUST_ARRIVE,
    SHORT_VISIBILITY,
};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::Broker;

/// The dead letters listed, waiting up to [`MUST_ARRIVE`] for `done` to hold (a listing may
/// lag a move on SQS).
async fn listed_until(
    broker: &Arc<dyn Broker>,
    letters: &dyn DeadLetters,
    what: &str,
    done: impl Fn(&[DeadLetter]) -> bool,
) -> Vec<DeadLetter> {
    let deadline = Instant::now() + MUST_ARRIVE;
    loop {
        let listed = letters
            .list(100)
            .await
            .unwrap_or_else(|e| panic!("{}: listing dead letters failed: {e}", broker.kind()));
        if done(&listed) {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {what}: dead letters listed {listed:?}",
            broker.kind()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A dead-lettered delivery leaves the queue (not delivered again, even after its visibility
/// timeout) and is listed with its body, reason and receive count; redriven, it is delivered
/// again unchanged and no longer listed; purged, the dead letters are gone.
pub async fn check_dead_letter_moves_aside_and_redrive_brings_back<F: BrokerFactory + ?Sized>(
    factory: &F,
) {
    let broker = factory.fresh(SHORT_VISIBILITY).await;
    let letters = broker
        .dead_letters()
        .unwrap_or_else(|| panic!("{}: the broker has no dead-letter place", broker.kind()));
    let letters = letters.as_ref();
    assert!(
        letters.list(100).await.expect("list").is_empty(),
        "{}: a fresh queue has dead letters",
        broker.kind()
    );
    let sent = rich_message(3);
    broker.kick(&sent).await.expect("kick");
    let stop = CancellationToken::new();
    let mut stream = listen(&broker, &stop).await;
    let delivery = expect_delivery(&broker, &mut stream, "the sent message").await;
    delivery
        .dead_letter("poisoned on purpose")
        .await
        .unwrap_or_else(|e| panic!("{}: dead_letter failed: {e}", broker.kind()));
    drop(delivery);
    expect_silence(
        &broker,
        &mut stream,
        SHORT_VISIBILITY * 3,
        "a dead-lettered message is not delivered again",
    )
    .await;
    let listed = listed_until(&broker, letters, "the dead letter is listed", |l| {
        !l.is_empty()
    })
    .await;
    assert_eq!(listed.len(), 1, "{}: {listed:?}", broker.kind());
    let letter = &listed[0];
    assert_eq!(letter.reason, "poisoned on purpose", "{}", broker.kind());
    assert_eq!(letter.receive_count, 1, "{}", broker.kind());
    assert_eq!(
        letter.message().as_ref(),
        Some(&sent),
        "{}: the dead letter's body is the message",
        broker.kind()
    );

    let moved = letters
        .redrive(Some(std::slice::from_ref(&letter.id)))
        .await
        .unwrap_or_else(|e| panic!("{}: redrive failed: {e}", broker.kind()));
    assert_eq!(moved, 1, "{}: redriven", broker.kind());
    let again = expect_delivery(&broker, &mut stream, "the redriven message").await;
    assert_eq!(
        decode(&broker, &again),
        sent,
        "{}: redriven unchanged",
        broker.kind()
    );
    ack(&broker, again).await;
    listed_until(
        &broker,
        letters,
        "a redriven letter is no longer listed",
        |l| l.is_empty(),
    )
    .await;

    // Two more, purged.
    for n in [4, 5] {
        broker.kick(&rich_message(n)).await.expect("kick");
        let d = expect_delivery(&broker, &mut stream, "a message to purge").await;
        d.dead_letter("to purge").await.expect("dead_letter");
    }
    listed_until(&broker, letters, "both are listed", |l| l.len() == 2).await;
    letters
        .purge()
        .await
        .unwrap_or_else(|e| panic!("{}: purge failed: {e}", broker.kind()));
    listed_until(&broker, letters, "purged letters are gone", |l| {
        l.is_empty()
    })
    .await;
    assert_eq!(
        letters.redrive(None).await.expect("redrive of nothing"),
        0,
        "{}",
        broker.kind()
    );
    stop.cancel();
}
