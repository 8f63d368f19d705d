use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::InMemoryBroker;

/// A routed broker over in-memory lanes, and the lanes by name (`queue/level`).
fn routed(routes: Routes, queues: &[&str]) -> (RoutedBroker, BTreeMap<String, InMemoryBroker>) {
    let mut lanes = BTreeMap::new();
    let broker = RoutedBroker::with_lanes(routes, queues.iter().copied(), |queue, level| {
        let lane = InMemoryBroker::new();
        lanes.insert(format!("{queue}/{level}"), lane.clone());
        Arc::new(lane) as Arc<dyn Broker>
    })
    .unwrap();
    (broker, lanes)
}

fn three_levels() -> Routes {
    Routes::new(["high", "normal", "low"], "normal").unwrap()
}

fn message(name: &str, level: &str) -> TaskMessage {
    TaskMessage::new(name).with_label(PRIORITY_LABEL, level)
}

/// The task names of the next `n` deliveries, each acked.
async fn take(stream: &mut DeliveryStream, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let delivery = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a delivery in time")
            .unwrap()
            .unwrap();
        names.push(delivery.message().unwrap().task_name);
        delivery.ack().await.unwrap();
    }
    names
}

#[tokio::test]
async fn a_message_goes_to_the_lane_its_labels_name() {
    let (broker, lanes) = routed(three_levels(), &["gpu"]);
    broker.kick(&TaskMessage::new("plain")).await.unwrap();
    broker
        .kick_batch(&[
            message("urgent", "high").with_label(QUEUE_LABEL, "gpu"),
            TaskMessage::new("gpu").with_label(QUEUE_LABEL, "gpu"),
            message("later", "low"),
        ])
        .await
        .unwrap();
    let pending: BTreeMap<&str, usize> = lanes
        .iter()
        .map(|(name, lane)| (name.as_str(), lane.pending()))
        .collect();
    assert_eq!(
        pending,
        BTreeMap::from([
            ("default/high", 0),
            ("default/normal", 1),
            ("default/low", 1),
            ("gpu/high", 1),
            ("gpu/normal", 1),
            ("gpu/low", 0),
        ])
    );
}

#[tokio::test]
async fn an_unknown_queue_or_level_is_refused_naming_the_known_ones() {
    let (broker, lanes) = routed(three_levels(), &["gpu"]);
    let err = broker
        .kick(&TaskMessage::new("t").with_label(QUEUE_LABEL, "tpu"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("`tpu` is not a declared queue")
            && err.to_string().contains("default, gpu"),
        "{err}"
    );
    // A batch with one bad route sends nothing.
    let err = broker
        .kick_batch(&[TaskMessage::new("ok"), message("t", "urgent")])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("`urgent` is not a priority level (the levels are high, normal, low)"),
        "{err}"
    );
    assert!(lanes.values().all(|l| l.pending() == 0));
    assert!(broker.clone().consuming(["tpu"]).is_err());
    assert!(broker.clone().consuming(Vec::<String>::new()).is_err());
}

#[test]
fn bad_routes_are_refused() {
    assert!(Routes::new(Vec::<String>::new(), "x").is_err());
    assert!(Routes::new(["high", "high"], "high").is_err());
    assert!(Routes::new(["High"], "High").is_err());
    let err = Routes::new(["high", "low"], "normal").unwrap_err();
    assert!(err.to_string().contains("priority.default"), "{err}");
    assert!(three_levels().weighted(vec![1, 1]).is_err());
    assert!(three_levels().weighted(vec![3, 0, 1]).is_err());
    assert_eq!(three_levels().order(), &LevelOrder::Weighted(vec![4, 2, 1]));
    assert!(RoutedBroker::with_lanes(three_levels(), ["GPU"], |_, _| {
        Arc::new(InMemoryBroker::new()) as Arc<dyn Broker>
    })
    .is_err());
}

#[tokio::test]
async fn strict_order_serves_the_highest_level_first() {
    let (broker, _) = routed(three_levels().strict(), &[]);
    for i in 0..3 {
        broker
            .kick(&message(&format!("low{i}"), "low"))
            .await
            .unwrap();
        broker
            .kick(&message(&format!("normal{i}"), "normal"))
            .await
            .unwrap();
        broker
            .kick(&message(&format!("high{i}"), "high"))
            .await
            .unwrap();
    }
    let mut stream = broker
        .listen_with_demand(CancellationToken::new(), Demand::fixed(1))
        .await
        .unwrap();
    let order = take(&mut stream, 9).await;
    assert_eq!(
        order,
        ["high0", "high1", "high2", "normal0", "normal1", "normal2", "low0", "low1", "low2"]
    );
}

#[tokio::test]
async fn weighted_order_serves_levels_by_weight_and_starves_none() {
    let (broker, _) = routed(three_levels(), &[]);
    let mut batch = Vec::new();
    for i in 0..70 {
        for level in ["low", "normal", "high"] {
            batch.push(message(&format!("{level}{i}"), level));
        }
    }
    broker.kick_batch(&batch).await.unwrap();
    let mut stream = broker
        .listen_with_demand(CancellationToken::new(), Demand::fixed(1))
        .await
        .unwrap();
    let order = take(&mut stream, 70).await;
    let count = |level: &str| order.iter().filter(|n| n.starts_with(level)).count();
    // 4 : 2 : 1 while every level has messages.
    assert_eq!((count("high"), count("normal"), count("low")), (40, 20, 10));
    // Low waits at most one round of seven between its turns.
    let lows: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, n)| n.starts_with("low"))
        .map(|(i, _)| i)
        .collect();
    assert!(
        lows[0] < 7 && lows.windows(2).all(|w| w[1] - w[0] <= 7),
        "{lows:?}"
    );
}

#[tokio::test]
async fn queues_of_one_level_take_turns_and_a_listener_consumes_only_its_queues() {
    let (broker, lanes) = routed(Routes::single(), &["gpu", "io"]);
    for i in 0..3 {
        for queue in ["default", "gpu", "io"] {
            broker
                .kick(&TaskMessage::new(format!("{queue}{i}")).with_label(QUEUE_LABEL, queue))
                .await
                .unwrap();
        }
    }
    let gpu_and_io = broker.clone().consuming(["io", "gpu"]).unwrap();
    assert_eq!(
        gpu_and_io.consumed_queues().collect::<Vec<_>>(),
        ["io", "gpu"]
    );
    let mut stream = gpu_and_io
        .listen_with_demand(CancellationToken::new(), Demand::fixed(1))
        .await
        .unwrap();
    let order = take(&mut stream, 6).await;
    assert_eq!(order, ["io0", "gpu0", "io1", "gpu1", "io2", "gpu2"]);
    assert_eq!(lanes["default/normal"].pending(), 3);
    let nothing = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
    assert!(nothing.is_err(), "the default queue is not consumed");
}

#[tokio::test]
async fn a_listener_takes_no_more_than_its_demand_and_releases_what_it_holds_on_stop() {
    let (broker, lanes) = routed(three_levels(), &[]);
    let batch: Vec<_> = (0..10).map(|i| message(&format!("t{i}"), "low")).collect();
    broker.kick_batch(&batch).await.unwrap();
    let low = &lanes["default/low"];
    let stop = CancellationToken::new();
    let mut stream = broker
        .listen_with_demand(stop.clone(), Demand::fixed(3))
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    // One yielded, two held for the consumer's next polls, seven left on the queue.
    assert_eq!((low.pending(), low.in_flight()), (7, 3));
    first.ack().await.unwrap();
    drop(stream);
    // The two held deliveries are made visible again at once.
    tokio::time::timeout(Duration::from_secs(5), async {
        while low.pending() != 9 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("held deliveries released");
    assert_eq!(low.in_flight(), 0);
}

#[tokio::test]
async fn a_higher_level_message_sent_while_waiting_is_delivered() {
    let (broker, _) = routed(three_levels().strict(), &["gpu"]);
    let mut stream = broker
        .listen_with_demand(CancellationToken::new(), Demand::fixed(1))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move { take(&mut stream, 1).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    broker
        .kick(&message("late", "high").with_label(QUEUE_LABEL, "gpu"))
        .await
        .unwrap();
    assert_eq!(waiting.await.unwrap(), ["late"]);
}

#[tokio::test]
async fn dead_letters_of_every_lane_are_listed_and_redriven_to_their_lane() {
    let (broker, lanes) = routed(three_levels(), &["gpu"]);
    broker
        .kick_batch(&[
            message("a", "high").with_label(QUEUE_LABEL, "gpu"),
            message("b", "low"),
        ])
        .await
        .unwrap();
    let mut stream = broker
        .listen_with_demand(CancellationToken::new(), Demand::fixed(1))
        .await
        .unwrap();
    for _ in 0..2 {
        let delivery = stream.next().await.unwrap().unwrap();
        delivery.dead_letter("never works").await.unwrap();
    }
    let letters = broker.dead_letters().unwrap();
    let listed = letters.list(10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().any(|id| id.starts_with("gpu/high:")), "{ids:?}");
    assert!(
        ids.iter().any(|id| id.starts_with("default/low:")),
        "{ids:?}"
    );
    let gpu: Vec<String> = ids
        .iter()
        .filter(|id| id.starts_with("gpu/"))
        .map(|id| id.to_string())
        .collect();
    assert_eq!(letters.redrive(Some(&gpu)).await.unwrap(), 1);
    assert_eq!(lanes["gpu/high"].pending(), 1);
    assert_eq!(letters.list(10).await.unwrap().len(), 1);
    assert_eq!(letters.purge().await.unwrap(), 1);
}

#[tokio::test]
async fn queues_of_one_level_share_a_receive_of_several() {
    let (broker, _) = routed(Routes::single(), &["gpu", "io"]);
    for i in 0..4 {
        for queue in ["gpu", "io"] {
            broker
                .kick(&TaskMessage::new(format!("{queue}{i}")).with_label(QUEUE_LABEL, queue))
                .await
                .unwrap();
        }
    }
    let mut stream = broker
        .listen_with_demand(CancellationToken::new(), Demand::fixed(2))
        .await
        .unwrap();
    let order = take(&mut stream, 8).await;
    // Each pair of deliveries (one receive of two) has one of each queue.
    for pair in order.chunks(2) {
        let mut queues: Vec<&str> = pair.iter().map(|n| &n[..n.len() - 1]).collect();
        queues.sort_unstable();
        assert_eq!(queues, ["gpu", "io"], "{order:?}");
    }
}
