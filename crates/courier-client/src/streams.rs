//! Durable streams from a client: subscriptions that survive reconnections, deliveries the
//! application acknowledges, and confirmed publishes. They use Courier's reserved events
//! (`courier:subscribe`, `courier:unsubscribe`, `courier:publish`); see `docs/streams.md`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::Payload;
use crate::error::{Error, Result};
use crate::socket::{AckHandle, Socket};

/// Where a new consumer starts. Ignored when the consumer already exists: it goes on from its
/// stored position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Only entries published from now on.
    #[default]
    New,
    /// Every entry the stream still holds.
    All,
    /// From this sequence number on.
    Seq(u64),
}

impl StartAt {
    fn to_json(self) -> Value {
        match self {
            StartAt::New => json!("new"),
            StartAt::All => json!("all"),
            StartAt::Seq(n) => json!(n),
        }
    }
}

impl std::str::FromStr for StartAt {
    type Err = String;

    /// `new`, `all` or a sequence number.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "new" => Ok(StartAt::New),
            "all" => Ok(StartAt::All),
            n => n
                .parse()
                .map(StartAt::Seq)
                .map_err(|_| format!("expected new, all or a sequence number, not {n:?}")),
        }
    }
}

/// Settings of a consumer, applied when the server creates it. `None` keeps the server's
/// default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Time a delivery may stay unacknowledged before it is sent again (server default 30 s).
    pub ack_wait_ms: Option<u64>,
    /// Deliveries of one entry before it goes to the dead-letter stream (server default 5).
    pub max_deliver: Option<u32>,
    /// Deliveries in flight at once (server default 1000).
    pub max_ack_pending: Option<u32>,
}

/// A subscription as the socket keeps it, to route deliveries and to renew it.
pub(crate) struct Sub {
    pub consumer: String,
    /// The `courier:subscribe` argument, sent again after each unrecovered reconnection.
    pub request: Value,
    pub tx: mpsc::Sender<Delivery>,
}

/// Where a delivery comes from: the `meta` argument of a delivered event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryMeta {
    /// The stream.
    pub stream: String,
    /// The entry's sequence number in the stream.
    pub seq: u64,
    /// The message id given at publish time, if any.
    pub id: Option<String>,
    /// How many times the entry was sent to this consumer, this time included.
    pub deliveries: u32,
}

impl DeliveryMeta {
    /// Reads a `meta` argument; `None` when `v` is not one.
    pub(crate) fn parse(v: &Value) -> Option<DeliveryMeta> {
        let o = v.as_object()?;
        Some(DeliveryMeta {
            stream: o.get("stream")?.as_str()?.to_owned(),
            seq: o.get("seq")?.as_u64()?,
            id: match o.get("id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return None,
            },
            deliveries: o.get("deliveries")?.as_u64()?.try_into().ok()?,
        })
    }
}

/// One entry of a stream delivered to this consumer. The server sends it again after the
/// consumer's `ack_wait` until [`Delivery::ack`] is called, so call it once the entry is handled.
pub struct Delivery {
    /// The event name given at publish time.
    pub event: String,
    /// The data given at publish time.
    pub data: Value,
    /// Stream, sequence number, message id, delivery count.
    pub meta: DeliveryMeta,
    pub(crate) ack: AckHandle,
}

impl Delivery {
    /// Confirms the delivery. Fails with [`Error::StaleAck`] when it came on a connection that
    /// has since been lost: the server then sends it again.
    pub fn ack(self) -> Result<()> {
        self.ack.send(Payload::new())
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event)
            .field("data", &self.data)
            .field("meta", &self.meta)
            .finish()
    }
}

/// A durable subscription: deliveries of one stream to one consumer, in sequence order (with
/// redeliveries of unacknowledged entries in between). Renewed by the socket after every
/// reconnection. Ends with [`Subscription::unsubscribe`]; just dropping it leaves the server
/// delivering to a socket that drops everything.
pub struct Subscription {
    socket: Socket,
    stream: String,
    consumer: String,
    pending: u64,
    rx: mpsc::Receiver<Delivery>,
}

impl Subscription {
    /// The next delivery; `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The consumer.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Entries that were waiting for the consumer when it subscribed.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Ends the subscription; the consumer and its position stay on the server.
    pub async fn unsubscribe(self) -> Result<()> {
        self.socket.unsubscribe(&self.stream).await
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .finish()
    }
}

/// A confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The entry's sequence number.
    pub seq: u64,
    /// The message id was seen before: the entry was not stored again, `seq` is the original.
    #[serde(default)]
    pub duplicate: bool,
}

impl Socket {
    /// Subscribes to `stream` as `consumer` (created at `start` if new) with the server's
    /// default consumer settings. See [`Socket::subscribe_with`].
    pub async fn subscribe(
        &self,
        stream: &str,
        consumer: &str,
        start: StartAt,
    ) -> Result<Subscription> {
        self.subscribe_with(stream, consumer, start, SubscribeOptions::default())
            .await
    }

    /// Subscribes to `stream` as `consumer`. A socket consumes a stream through one consumer at
    /// a time. The subscription is renewed after every reconnection that did not recover the
    /// session (a recovered session keeps it on the server).
    pub async fn subscribe_with(
        &self,
        stream: &str,
        consumer: &str,
        start: StartAt,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let mut request = Map::new();
        request.insert("stream".into(), json!(stream));
        request.insert("consumer".into(), json!(consumer));
        request.insert("from".into(), start.to_json());
        if let Some(v) = options.ack_wait_ms {
            request.insert("ack_wait_ms".into(), json!(v));
        }
        if let Some(v) = options.max_deliver {
            request.insert("max_deliver".into(), json!(v));
        }
        if let Some(v) = options.max_ack_pending {
            request.insert("max_ack_pending".into(), json!(v));
        }
        let request = Value::Object(request);
        let (tx, rx) = mpsc::channel(self.inner.subscription_capacity.max(1));
        {
            // Registered first: deliveries may arrive before the answer.
            let mut subs = self.inner.subs.lock();
            if let Some(s) = subs.get(stream) {
                return Err(Error::AlreadySubscribed {
                    stream: stream.to_owned(),
                    consumer: s.consumer.clone(),
                });
            }
            subs.insert(
                stream.to_owned(),
                Sub {
                    consumer: consumer.to_owned(),
                    request: request.clone(),
                    tx,
                },
            );
        }
        let answer = self.reserved("courier:subscribe", request).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.inner.subs.lock().remove(stream);
                return Err(e);
            }
        };
        Ok(Subscription {
            socket: self.clone(),
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            pending: answer.get("pending").and_then(Value::as_u64).unwrap_or(0),
            rx,
        })
    }

    /// Ends this socket's subscription to `stream`.
    pub async fn unsubscribe(&self, stream: &str) -> Result<()> {
        self.inner.subs.lock().remove(stream);
        self.reserved("courier:unsubscribe", json!({"stream": stream}))
            .await
            .map(drop)
    }

    /// Publishes `(event, data)` to `stream` and waits until the server has made it durable.
    /// With an `id`, a repeat within the stream's dedupe window is confirmed again with the
    /// original sequence number and `duplicate: true`, so a publish can be retried safely.
    pub async fn publish(
        &self,
        stream: &str,
        event: &str,
        data: &Value,
        id: Option<&str>,
    ) -> Result<Published> {
        let mut request = json!({"stream": stream, "event": event, "data": data});
        if let Some(id) = id {
            request["id"] = json!(id);
        }
        let answer = self.reserved("courier:publish", request).await?;
        serde_json::from_value(answer.clone()).map_err(|_| Error::BadAnswer(answer.to_string()))
    }

    /// Sends a reserved event with one object argument; returns the `{ok: true, ...}` answer.
    async fn reserved(&self, event: &str, arg: Value) -> Result<Value> {
        let timeout = self.client().config().request_timeout;
        let answer = self.request(event, Payload::from(arg), timeout).await?;
        let answer = answer.args.into_iter().next().unwrap_or(Value::Null);
        match Error::from_answer(&answer) {
            Some(e) => Err(e),
            None => Ok(answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_is_recognised() {
        let m = DeliveryMeta::parse(&json!({"stream": "s", "seq": 3, "id": null, "deliveries": 1}));
        assert_eq!(
            m,
            Some(DeliveryMeta {
                stream: "s".into(),
                seq: 3,
                id: None,
                deliveries: 1
            })
        );
        assert!(DeliveryMeta::parse(&json!({"stream": "s"})).is_none());
        assert!(DeliveryMeta::parse(&json!("7")).is_none());
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!("new".parse::<StartAt>(), Ok(StartAt::New));
        assert_eq!("all".parse::<StartAt>(), Ok(StartAt::All));
        assert_eq!("42".parse::<StartAt>(), Ok(StartAt::Seq(42)));
        assert!("x".parse::<StartAt>().is_err());
        assert_eq!(StartAt::Seq(4).to_json(), json!(4));
    }
}
