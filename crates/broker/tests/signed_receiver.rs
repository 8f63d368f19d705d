//! A receiver on a signed queue: a forged task is neither run nor answered, and waits in the
//! dead letters while signed tasks run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stepq_broker::signing::{MessageSigner, SignedBroker, SigningKey};
use stepq_broker::{Broker, InMemoryBroker, Receiver, ReceiverConfig, TaskMessage, TaskQueue};
use stepq_results::{InMemoryResultBackend, ResultBackend};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_forged_task_is_not_run_not_answered_and_dead_lettered() {
    let transport = InMemoryBroker::new();
    let results = Arc::new(InMemoryResultBackend::new());
    let key = SigningKey::new("the fleet's shared secret, 32 b.").unwrap();
    let signed = SignedBroker::new(transport.clone(), MessageSigner::new(key));
    let queue = TaskQueue::new(Arc::new(signed), results.clone());

    let runs = Arc::new(AtomicUsize::new(0));
    let mut receiver = Receiver::new(queue.clone()).with_config(ReceiverConfig {
        concurrency: 2,
        worker_name: "w".into(),
        ..ReceiverConfig::default()
    });
    let counted = Arc::clone(&runs);
    receiver.register_fn("double", move |x: i64| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, std::io::Error>(x * 2) }
    });
    let stop = CancellationToken::new();
    let worker = tokio::spawn(receiver.run(stop.clone()));

    // Someone who can write to the queue but holds no key sends a task under a known id.
    let mut forged = TaskMessage::new("double");
    forged.args.push(serde_json::json!(1000));
    transport.kick(&forged).await.unwrap();
    let handle = queue.task::<i64, i64>("double").kiq(&21).await.unwrap();
    let wait = Some(Duration::from_secs(10));
    assert_eq!(handle.wait_result(wait).await.unwrap(), 42);

    // The forged message came first on the queue, and a refused delivery is dead-lettered
    // before the stream yields the next one: it is there by now.
    let listed = transport.dead_letters().unwrap().list(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].message().unwrap().task_id, forged.task_id);
    assert!(
        listed[0].reason.contains("no signature"),
        "{}",
        listed[0].reason
    );
    stop.cancel();
    let stats = worker.await.unwrap().unwrap();
    assert_eq!((stats.succeeded, stats.failed), (1, 0));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "only the signed task ran");
    assert!(
        results.get_result(&forged.task_id, false).await.is_err(),
        "no result is written under a forged message's id"
    );
}
