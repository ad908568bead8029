//! What handlers receive and send: payloads, incoming messages, acknowledgements, reasons.

use std::sync::Arc;

use courier_proto::socket::Packet;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::engine::{CloseReason, Outbound, SendError, Session};

pub use courier_proto::payload::Payload;

/// Encodes the packet that carries `payload`; `packet` builds it from the arguments and the
/// number of attachments.
pub(crate) fn outbound(
    payload: Payload,
    packet: impl FnOnce(Vec<Value>, usize) -> Packet,
) -> Outbound {
    let text = packet(payload.args, payload.attachments.len()).encode_message();
    if payload.attachments.is_empty() {
        Outbound::Text(text)
    } else {
        Outbound::WithAttachments(text, Arc::from(payload.attachments))
    }
}

/// An event received from a client.
#[derive(Debug)]
pub struct Message {
    /// The event name.
    pub event: String,
    /// Its arguments.
    pub payload: Payload,
    ack: Option<AckSender>,
}

impl Message {
    pub(crate) fn new(event: String, payload: Payload, ack: Option<AckSender>) -> Self {
        Message {
            event,
            payload,
            ack,
        }
    }

    /// Deserializes all arguments as one value, typically a tuple.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.payload.parse()
    }

    /// Deserializes argument `i`.
    pub fn arg<T: DeserializeOwned>(&self, i: usize) -> Result<T, serde_json::Error> {
        self.payload.get(i)
    }

    /// Whether the client asked for an acknowledgement.
    pub fn wants_ack(&self) -> bool {
        self.ack.is_some()
    }

    /// Takes the acknowledgement callback, to answer later or elsewhere.
    pub fn take_ack(&mut self) -> Option<AckSender> {
        self.ack.take()
    }

    /// Acknowledges with one argument (nothing happens if no ack was asked for).
    pub fn ack<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), EmitError> {
        match self.ack.take() {
            Some(a) => a.send(Payload::new().arg(v)?),
            None => Ok(()),
        }
    }

    /// Acknowledges with a whole payload.
    pub fn ack_payload(&mut self, payload: Payload) -> Result<(), EmitError> {
        match self.ack.take() {
            Some(a) => a.send(payload),
            None => Ok(()),
        }
    }
}

/// Answers one acknowledgement request of a client.
#[derive(Debug)]
pub struct AckSender {
    pub(crate) session: Arc<Session>,
    pub(crate) nsp: Arc<str>,
    pub(crate) id: u64,
}

impl AckSender {
    /// Sends the acknowledgement.
    pub fn send(self, payload: Payload) -> Result<(), EmitError> {
        let out = outbound(payload, |args, n| Packet::ack(&self.nsp, self.id, args, n));
        send_or_close(&self.session, out, false)
    }

    /// Sends the acknowledgement with arguments that are JSON text already: an array, written
    /// in parts.
    pub(crate) fn send_json(self, args: &[&[u8]]) -> Result<(), EmitError> {
        let text = courier_proto::socket::ack_message(&self.nsp, self.id, args);
        send_or_close(&self.session, Outbound::Text(text), false)
    }
}

/// Queues `out`; a full queue disconnects the client unless the packet is volatile.
pub(crate) fn send_or_close(
    session: &Session,
    out: Outbound,
    volatile: bool,
) -> Result<(), EmitError> {
    match session.send(out) {
        Ok(()) => Ok(()),
        Err(SendError::Full) if volatile => {
            if let Some(s) = &session.stats {
                s.volatile_drops.inc();
            }
            Err(EmitError::Dropped)
        }
        Err(SendError::Full) => {
            tracing::warn!(sid = %session.sid(), "client too slow: outbound queue full, disconnecting");
            session.close(CloseReason::SlowClient);
            Err(EmitError::Closed)
        }
        Err(SendError::Closed) => Err(EmitError::Closed),
    }
}

/// Why an emit did not reach the outbound queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The socket is disconnected.
    #[error("socket disconnected")]
    Closed,
    /// A volatile packet was dropped because the client was not keeping up.
    #[error("volatile packet dropped")]
    Dropped,
    /// An argument could not be serialized.
    #[error("argument not serializable: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Why an acknowledgement never came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The client did not answer in time.
    #[error("operation has timed out")]
    Timeout,
    /// The socket disconnected before answering.
    #[error("socket disconnected before acknowledging")]
    Disconnected,
    /// The event could not be sent.
    #[error("event could not be sent")]
    NotSent,
}

/// Why a socket left its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client left the namespace.
    ClientNamespaceDisconnect,
    /// The server removed the socket from the namespace.
    ServerNamespaceDisconnect,
    /// The whole connection closed.
    Connection(CloseReason),
}

impl DisconnectReason {
    /// The reason as Socket.IO names it.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientNamespaceDisconnect => "client namespace disconnect",
            DisconnectReason::ServerNamespaceDisconnect => "server namespace disconnect",
            DisconnectReason::Connection(r) => r.as_str(),
        }
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal from a connect middleware, sent to the client as CONNECT_ERROR `{message, data}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectError {
    /// Shown to the client as `err.message`.
    pub message: String,
    /// Shown to the client as `err.data`.
    pub data: Option<Value>,
}

impl ConnectError {
    /// A refusal with a message.
    pub fn new(message: impl Into<String>) -> Self {
        ConnectError {
            message: message.into(),
            data: None,
        }
    }

    /// Adds the `data` the client sees.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut v = serde_json::json!({"message": self.message});
        if let Some(d) = &self.data {
            v["data"] = d.clone();
        }
        v
    }
}
