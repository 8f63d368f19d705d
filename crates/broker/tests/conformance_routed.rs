//! The broker conformance suite against routed brokers of in-memory lanes: three priority
//! levels (weighted and strict) over two queues, so every clause holds across lanes too. The
//! suite's messages carry no route labels, so they use the default queue and level; the
//! merged listener still polls every lane.

use std::sync::Arc;
use std::time::Duration;

use stepq_broker::conformance::BrokerFactory;
use stepq_broker::routing::{RoutedBroker, Routes};
use stepq_broker::{Broker, InMemoryBroker};

fn routed(routes: Routes, visibility_timeout: Duration) -> Arc<dyn Broker> {
    let broker = RoutedBroker::with_lanes(routes, ["default", "gpu"], |_, _| {
        Arc::new(InMemoryBroker::with_visibility_timeout(visibility_timeout)) as Arc<dyn Broker>
    })
    .expect("valid lanes");
    Arc::new(broker)
}

struct Weighted;

#[async_trait::async_trait]
impl BrokerFactory for Weighted {
    async fn fresh(&self, visibility_timeout: Duration) -> Arc<dyn Broker> {
        let routes = Routes::new(["high", "normal", "low"], "normal").unwrap();
        routed(routes, visibility_timeout)
    }
}

struct Strict;

#[async_trait::async_trait]
impl BrokerFactory for Strict {
    async fn fresh(&self, visibility_timeout: Duration) -> Arc<dyn Broker> {
        let routes = Routes::new(["high", "normal", "low"], "low")
            .unwrap()
            .strict();
        routed(routes, visibility_timeout)
    }
}

stepq_broker::broker_conformance_tests!(routed_weighted, Weighted);
stepq_broker::broker_conformance_tests!(routed_strict, Strict);
