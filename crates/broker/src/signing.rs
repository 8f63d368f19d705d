//! Signed task messages: an HMAC-SHA256 over the envelope with a key shared by the processes
//! of one deployment, so a worker runs only messages that a holder of the key sent.
//!
//! [`SignedBroker`] wraps any [`Broker`]: every message it sends carries the label
//! [`SIGNATURE_LABEL`] (`v1:<key id>:<mac>`), and every delivery is checked before the
//! consumer sees it. A delivery that is unsigned, signed with a key not accepted, tampered
//! with, or not a task message at all is never run and never answered (its task id is not
//! trusted, so no result is written under it): it is moved to the broker's dead-letter place
//! with the reason (see [`dead_letter`](crate::dead_letter)) and logged. A message a broker
//! without a dead-letter place delivers is left unacknowledged and comes back after its
//! visibility timeout, logged each time.
//!
//! The MAC covers the message's JSON encoding without the signature label, compact and with
//! the keys of every object sorted (task id, task name, labels, label types, args, kwargs),
//! so a label added after signing or a changed argument fails the check. Rotation: a [`MessageSigner`] signs
//! with one key and also accepts a second ([`MessageSigner::also_accept`]); roll the new key
//! out as the accepted one, then as the signing one (the old one accepted), then drop the old.
//!
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use stepq_broker::signing::{MessageSigner, SignedBroker, SigningKey};
//! use stepq_broker::{Broker, InMemoryBroker, TaskMessage};
//! use tokio_util::sync::CancellationToken;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let transport = InMemoryBroker::new();
//! let key = SigningKey::new("a shared secret of 16+ bytes").unwrap();
//! let broker = SignedBroker::new(transport.clone(), MessageSigner::new(key));
//! transport.kick(&TaskMessage::new("forged")).await.unwrap(); // not signed
//! broker.kick(&TaskMessage::new("add")).await.unwrap(); // signed
//!
//! let stop = CancellationToken::new();
//! let mut deliveries = broker.listen(stop.clone()).await.unwrap();
//! let delivery = deliveries.next().await.unwrap().unwrap();
//! assert_eq!(delivery.message().unwrap().task_name, "add");
//! delivery.ack().await.unwrap();
//! // The unsigned one, first on the queue, was never delivered: it waits in the dead
//! // letters, with its reason.
//! let letters = transport.dead_letters().unwrap().list(10).await.unwrap();
//! assert!(letters[0].reason.contains("no signature"), "{}", letters[0].reason);
//! stop.cancel();
//! # });
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, DeliveryStream, Demand};
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::TaskMessage;

/// The label holding a message's signature: `v1:<key id>:<mac, base64url>`.
pub const SIGNATURE_LABEL: &str = "stepq_signature";
/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// Version prefix of the signature label.
const VERSION: &str = "v1";
/// Prefix of the MAC's input, so the key signs nothing but stepq task messages.
const DOMAIN: &[u8] = b"stepq task message v1\n";

type HmacSha256 = Hmac<Sha256>;

/// A key given to [`SigningKey::new`] is too short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a signing key must be at least {MIN_KEY_BYTES} bytes, got {len} (use e.g. 32 random bytes in hex)")]
pub struct InvalidSigningKey {
    /// The given key's length in bytes.
    pub len: usize,
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The body is not a task message, so there is nothing to check.
    #[error("the body is not a task message, so its signature cannot be checked: {reason}")]
    NotATaskMessage {
        /// Why it does not decode.
        reason: String,
    },
    /// No signature label.
    #[error("the message carries no signature (label `{SIGNATURE_LABEL}`), and unsigned messages are not accepted")]
    Unsigned,
    /// The label is not `v1:<key id>:<mac>`.
    #[error("the signature label `{SIGNATURE_LABEL}` is not `{VERSION}:<key id>:<mac>`: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// Signed with a key this signer does not accept.
    #[error("the message is signed with key {key_id}, which is not accepted here (accepted: {accepted})")]
    UnknownKey {
        /// The key id the message names.
        key_id: String,
        /// The accepted key ids, comma-separated.
        accepted: String,
    },
    /// The MAC does not match the message.
    #[error("the signature (key {key_id}) does not match the message: it was changed after signing or signed with another key of the same id")]
    Mismatch {
        /// The key id the message names.
        key_id: String,
    },
}

/// A shared secret and its public id (the first 8 bytes of its SHA-256, in hex), which
/// messages name so a receiver knows which key to check with. `Debug` shows only the id.
#[derive(Clone)]
pub struct SigningKey {
    id: String,
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A key from its secret bytes (at least [`MIN_KEY_BYTES`]).
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, InvalidSigningKey> {
        let secret = secret.as_ref();
        if secret.len() < MIN_KEY_BYTES {
            return Err(InvalidSigningKey { len: secret.len() });
        }
        let digest = Sha256::digest(secret);
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(SigningKey {
            id,
            secret: secret.into(),
        })
    }

    /// The key's public id (16 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self, canonical: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("HMAC takes keys of any size");
        mac.update(DOMAIN);
        mac.update(canonical);
        mac
    }
}

/// Signs messages with one key and checks them against it and, while keys rotate, one more.
#[derive(Debug, Clone)]
pub struct MessageSigner {
    signing: SigningKey,
    also_accepted: Option<SigningKey>,
    accept_unsigned: bool,
}

impl MessageSigner {
    /// Signs with `key` and accepts only messages signed with it.
    pub fn new(key: SigningKey) -> Self {
        MessageSigner {
            signing: key,
            also_accepted: None,
            accept_unsigned: false,
        }
    }

    /// Also accepts messages signed with `key` (the old or the next key, while rotating).
    pub fn also_accept(mut self, key: SigningKey) -> Self {
        self.also_accepted = Some(key);
        self
    }

    /// Lets unsigned messages through (still refusing wrongly signed ones): only while a
    /// fleet moves to signing, so workers accept what not-yet-signing producers send.
    pub fn accepting_unsigned(mut self, accept: bool) -> Self {
        self.accept_unsigned = accept;
        self
    }

    /// The id of the key that signs.
    pub fn key_id(&self) -> &str {
        self.signing.id()
    }

    /// `message` with its signature label set (replacing any earlier one).
    pub fn sign(&self, message: &TaskMessage) -> TaskMessage {
        let mut signed = message.clone();
        signed.labels.remove(SIGNATURE_LABEL);
        signed.labels_types.remove(SIGNATURE_LABEL);
        let mac = self
            .signing
            .mac(&canonical(&signed))
            .finalize()
            .into_bytes();
        let label = format!(
            "{VERSION}:{}:{}",
            self.signing.id(),
            URL_SAFE_NO_PAD.encode(mac)
        );
        signed.with_label(SIGNATURE_LABEL, label)
    }

    /// Checks a decoded message's signature.
    pub fn verify(&self, message: &TaskMessage) -> Result<(), SignatureError> {
        let Some(label) = message.labels.get(SIGNATURE_LABEL) else {
            return if self.accept_unsigned {
                Ok(())
            } else {
                Err(SignatureError::Unsigned)
            };
        };
        let malformed = |reason: &str| SignatureError::Malformed {
            reason: reason.to_string(),
        };
        let label = label.as_str().ok_or_else(|| malformed("not a string"))?;
        let mut parts = label.splitn(3, ':');
        let (Some(version), Some(key_id), Some(mac)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("fewer than three `:`-separated parts"));
        };
        if version != VERSION {
            return Err(malformed(&format!("unknown version `{version}`")));
        }
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|e| malformed(&format!("the MAC is not base64url: {e}")))?;
        let key = [Some(&self.signing), self.also_accepted.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id() == key_id)
            .ok_or_else(|| SignatureError::UnknownKey {
                key_id: key_id.to_string(),
                accepted: self.accepted_ids().join(", "),
            })?;
        let mut unsigned = message.clone();
        unsigned.labels.remove(SIGNATURE_LABEL);
        unsigned.labels_types.remove(SIGNATURE_LABEL);
        key.mac(&canonical(&unsigned))
            .verify_slice(&mac)
            .map_err(|_| SignatureError::Mismatch {
                key_id: key_id.to_string(),
            })
    }

    /// Checks a delivered body: it must decode as a task message and carry a good signature.
    pub fn verify_body(&self, body: &[u8]) -> Result<(), SignatureError> {
        let message =
            TaskMessage::from_json(body).map_err(|e| SignatureError::NotATaskMessage {
                reason: e.to_string(),
            })?;
        self.verify(&message)
    }

    fn accepted_ids(&self) -> Vec<&str> {
        [Some(&self.signing), self.also_accepted.as_ref()]
            .into_iter()
            .flatten()
            .map(SigningKey::id)
            .collect()
    }
}

/// The bytes a signature covers: the message as compact JSON with the keys of every object
/// sorted, whatever map order a build of `serde_json` keeps (its `preserve_order` feature
/// may be on in one process and off in another).
fn canonical(message: &TaskMessage) -> Vec<u8> {
    let value = serde_json::to_value(message).expect("TaskMessage always serializes");
    serde_json::to_vec(&Sorted(&value)).expect("JSON values always serialize")
}

/// A JSON value serialized with sorted object keys.
struct Sorted<'a>(&'a serde_json::Value);

impl serde::Serialize for Sorted<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    out.serialize_entry(key, &Sorted(value))?;
                }
                out.end()
            }
            serde_json::Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Sorted(item))?;
                }
                out.end()
            }
            scalar => scalar.serialize(serializer),
        }
    }
}

/// A broker that signs what it sends and refuses deliveries that do not check (see the
/// [module docs](self)). Everything else is the wrapped broker's.
#[derive(Debug, Clone)]
pub struct SignedBroker<B> {
    inner: B,
    signer: Arc<MessageSigner>,
}

impl<B: Broker> SignedBroker<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, signer: MessageSigner) -> Self {
        SignedBroker {
            inner,
            signer: Arc::new(signer),
        }
    }

    /// The wrapped broker.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The signer.
    pub fn signer(&self) -> &MessageSigner {
        &self.signer
    }
}

/// The deliveries of `stream` whose signature checks; the others are dead-lettered.
fn checked(
    stream: DeliveryStream,
    signer: Arc<MessageSigner>,
    kind: &'static str,
) -> DeliveryStream {
    stream
        .filter_map(move |item| {
            let signer = Arc::clone(&signer);
            async move {
                let delivery = match item {
                    Ok(delivery) => delivery,
                    Err(e) => return Some(Err(e)),
                };
                match signer.verify_body(delivery.body()) {
                    Ok(()) => Some(Ok(delivery)),
                    Err(refused) => {
                        reject(delivery, &refused, kind).await;
                        None
                    }
                }
            }
        })
        .boxed()
}

/// Moves a refused delivery to the dead letters, logging what it claimed to be.
async fn reject(delivery: Delivery, refused: &SignatureError, broker: &'static str) {
    let claimed = delivery.message().ok();
    let task_id = claimed.as_ref().map_or("?", |m| m.task_id.as_str());
    let task_name = claimed.as_ref().map_or("?", |m| m.task_name.as_str());
    let reason = format!("refused by signature check: {refused}");
    match delivery.dead_letter(&reason).await {
        Ok(()) => tracing::error!(
            broker,
            claimed_task_id = task_id,
            claimed_task_name = task_name,
            error = %refused,
            "refused a task message (not run, no result written); moved it to the dead letters"
        ),
        Err(e) => tracing::error!(
            broker,
            claimed_task_id = task_id,
            claimed_task_name = task_name,
            error = %refused,
            dead_letter_error = %e,
            "refused a task message (not run, no result written); it could not be dead-lettered \
             and comes back after its visibility timeout"
        ),
    }
}

#[async_trait]
impl<B: Broker> Broker for SignedBroker<B> {
    async fn startup(&self) -> Result<(), BrokerError> {
        self.inner.startup().await
    }

    async fn shutdown(&self) -> Result<(), BrokerError> {
        self.inner.shutdown().await
    }

    async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError> {
        self.inner.kick(&self.signer.sign(message)).await
    }

    async fn kick_batch(&self, messages: &[TaskMessage]) -> Result<(), BrokerError> {
        let signed: Vec<TaskMessage> = messages.iter().map(|m| self.signer.sign(m)).collect();
        self.inner.kick_batch(&signed).await
    }

    async fn listen(&self, stop: CancellationToken) -> Result<DeliveryStream, BrokerError> {
        let stream = self.inner.listen(stop).await?;
        Ok(checked(stream, Arc::clone(&self.signer), self.inner.kind()))
    }

    async fn listen_with_demand(
        &self,
        stop: CancellationToken,
        demand: Demand,
    ) -> Result<DeliveryStream, BrokerError> {
        let stream = self.inner.listen_with_demand(stop, demand).await?;
        Ok(checked(stream, Arc::clone(&self.signer), self.inner.kind()))
    }

    async fn probe(&self) -> Result<(), BrokerError> {
        self.inner.probe().await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn dead_letters(&self) -> Option<Arc<dyn crate::dead_letter::DeadLetters>> {
        self.inner.dead_letters()
    }
}

/// So a broker already shared as `Arc<dyn Broker>` (a [`TaskQueue`](crate::TaskQueue)'s) can
/// be wrapped.
#[async_trait]
impl Broker for Arc<dyn Broker> {
    async fn startup(&self) -> Result<(), BrokerError> {
        (**self).startup().await
    }
    async fn shutdown(&self) -> Result<(), BrokerError> {
        (**self).shutdown().await
    }
    async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError> {
        (**self).kick(message).await
    }
    async fn kick_batch(&self, messages: &[TaskMessage]) -> Result<(), BrokerError> {
        (**self).kick_batch(messages).await
    }
    async fn listen(&self, stop: CancellationToken) -> Result<DeliveryStream, BrokerError> {
        (**self).listen(stop).await
    }
    async fn listen_with_demand(
        &self,
        stop: CancellationToken,
        demand: Demand,
    ) -> Result<DeliveryStream, BrokerError> {
        (**self).listen_with_demand(stop, demand).await
    }
    async fn probe(&self) -> Result<(), BrokerError> {
        (**self).probe().await
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn dead_letters(&self) -> Option<Arc<dyn crate::dead_letter::DeadLetters>> {
        (**self).dead_letters()
    }
}

#[cfg(test)]
mod tests;
