//! Every kind of AWS call stepq makes ends within its bound (`stepq_aws::timeouts`) when the
//! endpoint accepts connections and then never answers (a frozen LocalStack or AWS endpoint),
//! and a GetObject body that arrives too slowly to finish ends within its transfer time. No LocalStack:
//! the endpoints are sockets this test owns. Slow (about a minute, the longest bound), so it
//! runs with the LocalStack suite: `cargo xtask localstack-test -- bounded_waits`.

use std::future::Future;
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use stepq_aws::sqs::owned_queue;
use stepq_aws::timeouts::{self, CallBound};
use stepq_aws::{S3OutputStore, SqsBroker, SqsConfig};
use stepq_broker::{Broker, TaskMessage};
use stepq_results::output::{OutputKey, OutputStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Timers fire late on a loaded machine; a call may end this much past its bound.
const SLACK: Duration = Duration::from_secs(3);

/// An endpoint that accepts every connection and never sends a byte back.
async fn frozen_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

/// An endpoint that answers every request with the headers of a 1,000-byte body and then
/// trickles it, a byte every 400 ms: fast enough for the SDK's stalled-stream protection
/// (which ends a body that moves under 1 byte/s after 5 s), too slow to ever finish.
async fn trickling_body_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                            content-length: 1000\r\netag: \"e\"\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..1000 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    if socket.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// AWS settings as every stepq process loads them, pointed at `endpoint`, with dummy keys.
async fn sdk_config(endpoint: &str) -> (SqsConfig, aws_config::SdkConfig) {
    let mut config = SqsConfig::new(format!("{endpoint}/000000000000/bounded"));
    config.region_name = Some("us-east-1".into());
    config.endpoint_url = Some(endpoint.to_string());
    let sdk = SqsBroker::load_sdk_config(&config)
        .await
        .into_builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "test",
        )))
        .build();
    (config, sdk)
}

/// Runs `call`, checks it failed with a temporary error between `at_least` and `bound` (plus
/// [`SLACK`]), and says how long it took.
async fn within<T, E: std::fmt::Display>(
    what: &str,
    at_least: Duration,
    bound: Duration,
    is_temporary: impl Fn(&E) -> bool,
    call: impl Future<Output = Result<T, E>>,
) -> String {
    let start = Instant::now();
    let outcome = call.await;
    let took = start.elapsed();
    let err = match outcome {
        Ok(_) => panic!("{what}: a frozen endpoint answered"),
        Err(e) => e,
    };
    assert!(is_temporary(&err), "{what}: not a temporary error: {err}");
    assert!(
        took <= bound + SLACK,
        "{what}: took {took:?}, over its bound of {bound:?}: {err}"
    );
    assert!(
        took >= at_least,
        "{what}: ended after {took:?}, before its attempts could time out \
         ({at_least:?}), so its timeouts are not the ones documented: {err}"
    );
    format!("{what}: {took:.1?} (bound {bound:?})")
}

/// Each attempt timed out: at least the attempts' timeouts.
fn attempts_only(bound: CallBound) -> Duration {
    bound.attempt * bound.attempts
}

#[tokio::test]
#[ignore = "slow (about a minute); cargo xtask localstack-test runs it"]
async fn every_aws_call_ends_within_its_bound_when_the_endpoint_freezes() {
    let frozen = frozen_endpoint().await;
    let (config, sdk) = sdk_config(&frozen).await;
    let broker = SqsBroker::from_sdk_config(config.clone(), &sdk).unwrap();
    let outputs = S3OutputStore::new(&sdk, "bucket", "stepq");
    let key = OutputKey::new("run", "step", "result");
    let big = bytes::Bytes::from(vec![7u8; 2 * 1024 * 1024]);
    let message = TaskMessage::new("bounded");

    let short = timeouts::longest_short_call();
    let poll = timeouts::longest_long_poll(20);
    let transfer = timeouts::longest_transfer(big.len() as u64);
    let lines = tokio::join!(
        within(
            "SendMessage",
            attempts_only(short),
            short.unanswered(),
            |e: &stepq_broker::BrokerError| e.is_temporary(),
            broker.kick(&message),
        ),
        within(
            "ReceiveMessage (20 s long poll)",
            attempts_only(poll),
            poll.unanswered(),
            |e: &stepq_broker::ServiceError| e.class() == stepq_broker::ErrorClass::Temporary,
            owned_queue::receive(broker.sqs_client(), &config.queue_url, 20),
        ),
        within(
            "GetObject",
            attempts_only(short),
            short.unanswered(),
            |e: &stepq_results::ResultError| e.is_temporary(),
            outputs.get(&key),
        ),
        within(
            "PutObject (2 MiB)",
            attempts_only(transfer),
            transfer.unanswered(),
            |e: &stepq_results::ResultError| e.is_temporary(),
            outputs.put(&key, big.clone()),
        ),
    );
    println!("{lines:#?}");
}

#[tokio::test]
#[ignore = "slow (10 s); cargo xtask localstack-test runs it"]
async fn a_body_that_trickles_ends_within_its_transfer_time() {
    let trickling = trickling_body_endpoint().await;
    let (_, sdk) = sdk_config(&trickling).await;
    let outputs = S3OutputStore::new(&sdk, "bucket", "stepq");
    let body = timeouts::transfer_attempt_timeout(1000);
    let line = within(
        "GetObject body",
        body,
        body,
        |e: &stepq_results::ResultError| e.is_temporary(),
        outputs.get(&OutputKey::new("run", "step", "result")),
    )
    .await;
    println!("{line}");
}
