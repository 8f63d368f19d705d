use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use super::*;
use crate::InMemoryBroker;

const KEY: &str = "0123456789abcdef0123456789abcdef";
const NEXT_KEY: &str = "fedcba9876543210fedcba9876543210";

fn signer(secret: &str) -> MessageSigner {
    MessageSigner::new(SigningKey::new(secret).unwrap())
}

fn golden_message() -> TaskMessage {
    let mut message = TaskMessage::new("add").with_label("run_id", "run-1");
    // The label type code stepq wrote before it used TaskIQ's own (3): the golden signature
    // was computed over this message, and the canonical form must not change.
    message.labels_types.insert("run_id".into(), 0);
    message.task_id = "00000000-0000-4000-8000-000000000001".into();
    message.args = vec![json!({"b": 3, "a": 2})];
    message.kwargs = json!({"z": 1, "m": [true, null]})
        .as_object()
        .unwrap()
        .clone();
    message
}

#[test]
fn the_signature_of_a_known_message_is_the_golden_one() {
    // Computed outside Rust (Python's hmac over the sorted, compact JSON; see the module
    // docs): a change to the canonical form or the label breaks every deployed fleet.
    let signed = signer(KEY).sign(&golden_message());
    assert_eq!(
        signed.label(SIGNATURE_LABEL),
        Some("v1:3eb1bd439947eb76:E-d1vflBGgZbNaggWGE43F4-F2aZKVpCGdtfiF5Zles")
    );
    assert_eq!(
        signed.labels_types[SIGNATURE_LABEL],
        crate::message::LABEL_TYPE_STR
    );
    assert_eq!(signer(KEY).key_id(), "3eb1bd439947eb76");
}

#[test]
fn a_signed_message_checks_after_the_wire_and_a_resign_replaces_the_label() {
    let signer = signer(KEY);
    let signed = signer.sign(&golden_message());
    signer.verify_body(&signed.to_json()).unwrap();
    let again = signer.sign(&signed);
    assert_eq!(again, signed);
}

#[test]
fn every_change_after_signing_fails_the_check() {
    let signer = signer(KEY);
    let signed = signer.sign(&golden_message());
    type Edit = fn(&mut TaskMessage);
    let edits: [(&str, Edit); 6] = [
        ("args", |m| m.args[0]["a"] = json!(200)),
        ("kwargs", |m| {
            m.kwargs.insert("extra".into(), json!(1));
        }),
        ("task name", |m| m.task_name = "rm_rf".into()),
        ("task id", |m| {
            m.task_id = "00000000-0000-4000-8000-000000000002".into()
        }),
        ("a label added", |m| {
            m.labels.insert("run_id2".into(), json!("x"));
        }),
        ("a label changed", |m| {
            m.labels.insert("run_id".into(), json!("run-2"));
        }),
    ];
    for (what, edit) in edits {
        let mut tampered = signed.clone();
        edit(&mut tampered);
        let e = signer.verify(&tampered).unwrap_err();
        assert!(
            matches!(&e, SignatureError::Mismatch { key_id } if key_id == "3eb1bd439947eb76"),
            "{what}: {e}"
        );
    }
}

#[test]
fn unsigned_malformed_and_foreign_messages_are_refused_naming_why() {
    let signer = signer(KEY);
    let e = signer.verify(&golden_message()).unwrap_err();
    assert_eq!(e, SignatureError::Unsigned);
    assert!(e.to_string().contains("no signature"), "{e}");

    for (label, says) in [
        (json!(7), "not a string"),
        (json!("v1:abc"), "three"),
        (json!("v2:3eb1bd439947eb76:AAAA"), "unknown version `v2`"),
        (json!("v1:3eb1bd439947eb76:***"), "not base64url"),
    ] {
        let mut m = golden_message();
        m.labels.insert(SIGNATURE_LABEL.into(), label);
        let e = signer.verify(&m).unwrap_err();
        assert!(matches!(e, SignatureError::Malformed { .. }), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }

    let foreign = self::signer(NEXT_KEY).sign(&golden_message());
    let e = signer.verify(&foreign).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, SignatureError::UnknownKey { .. }), "{text}");
    assert!(text.contains(self::signer(NEXT_KEY).key_id()), "{text}");
    assert!(text.contains("accepted: 3eb1bd439947eb76"), "{text}");

    let e = signer.verify_body(b"{not json").unwrap_err();
    assert!(matches!(e, SignatureError::NotATaskMessage { .. }), "{e}");
}

#[test]
fn while_rotating_both_keys_are_accepted_and_new_messages_use_the_signing_key() {
    let old = signer(KEY);
    let rotating = signer(NEXT_KEY).also_accept(SigningKey::new(KEY).unwrap());
    rotating.verify(&old.sign(&golden_message())).unwrap();
    let fresh = rotating.sign(&golden_message());
    rotating.verify(&fresh).unwrap();
    assert!(fresh
        .label(SIGNATURE_LABEL)
        .unwrap()
        .contains(rotating.key_id()));
    // Workers still on the old key alone refuse the new key's messages: roll the new key
    // out as accepted first.
    assert!(old.verify(&fresh).is_err());
    let prepared = signer(KEY).also_accept(SigningKey::new(NEXT_KEY).unwrap());
    prepared.verify(&fresh).unwrap();
}

#[test]
fn accepting_unsigned_still_refuses_wrong_signatures() {
    let lenient = signer(KEY).accepting_unsigned(true);
    lenient.verify(&golden_message()).unwrap();
    let mut tampered = lenient.sign(&golden_message());
    tampered.task_name = "other".into();
    assert!(lenient.verify(&tampered).is_err());
}

#[test]
fn keys_must_be_long_and_never_show_their_secret() {
    let e = SigningKey::new("short").unwrap_err();
    assert_eq!(e, InvalidSigningKey { len: 5 });
    assert!(e.to_string().contains("at least 16 bytes"), "{e}");
    let key = SigningKey::new(KEY).unwrap();
    let shown = format!("{key:?} {:?}", MessageSigner::new(key.clone()));
    assert!(!shown.contains(KEY), "{shown}");
    assert!(shown.contains(key.id()), "{shown}");
}

#[tokio::test]
async fn the_broker_delivers_signed_messages_and_dead_letters_the_rest() {
    let transport = InMemoryBroker::with_visibility_timeout(Duration::from_secs(30));
    let broker = SignedBroker::new(transport.clone(), signer(KEY));
    broker.kick(&TaskMessage::new("one")).await.unwrap();
    broker
        .kick_batch(&[TaskMessage::new("two"), TaskMessage::new("three")])
        .await
        .unwrap();
    transport.kick(&TaskMessage::new("unsigned")).await.unwrap();
    let mut tampered = signer(KEY).sign(&TaskMessage::new("tampered"));
    tampered.args.push(json!("injected"));
    transport.kick(&tampered).await.unwrap();
    transport.kick_raw("not a task message");
    transport
        .kick(&signer(NEXT_KEY).sign(&TaskMessage::new("foreign")))
        .await
        .unwrap();
    broker.kick(&TaskMessage::new("last")).await.unwrap();

    let stop = CancellationToken::new();
    let mut deliveries = broker.listen(stop.clone()).await.unwrap();
    let mut names = Vec::new();
    for _ in 0..4 {
        let delivery = deliveries.next().await.unwrap().unwrap();
        names.push(delivery.message().unwrap().task_name);
        delivery.ack().await.unwrap();
    }
    assert_eq!(names, ["one", "two", "three", "last"]);
    assert_eq!((transport.pending(), transport.in_flight()), (0, 0));

    let letters = broker.dead_letters().unwrap().list(10).await.unwrap();
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    for (reason, says) in reasons.iter().zip([
        "no signature",
        "does not match",
        "not a task message",
        "not accepted here",
    ]) {
        assert!(
            reason.starts_with("refused by signature check: "),
            "{reason}"
        );
        assert!(reason.contains(says), "{reason}");
    }
    // The letters keep the bodies as sent, so a person can look and redrive.
    assert_eq!(&letters[2].body[..], b"not a task message");
    assert_eq!(letters[1].message().unwrap(), tampered);
    stop.cancel();
    assert!(deliveries.next().await.is_none());
}

#[tokio::test]
async fn a_broker_shared_as_a_trait_object_can_be_wrapped() {
    let transport = InMemoryBroker::new();
    let shared: Arc<dyn Broker> = Arc::new(transport.clone());
    let broker = SignedBroker::new(shared, signer(KEY));
    assert_eq!(broker.kind(), "memory");
    broker.startup().await.unwrap();
    broker.kick(&TaskMessage::new("a")).await.unwrap();
    let stop = CancellationToken::new();
    let mut deliveries = broker
        .listen_with_demand(stop.clone(), Demand::fixed(1))
        .await
        .unwrap();
    let delivery = deliveries.next().await.unwrap().unwrap();
    signer(KEY).verify_body(delivery.body()).unwrap();
    delivery.ack().await.unwrap();
    stop.cancel();
    broker.shutdown().await.unwrap();
}
