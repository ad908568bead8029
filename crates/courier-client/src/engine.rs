//! Engine.IO v4 over one WebSocket: opening it, the handshake, frames in and out.
//!
//! The client speaks WebSocket only (no long-polling, hence no upgrade): the request carries
//! `transport=websocket` and the server answers with its `open` packet as the first frame.

use std::time::Duration;

use bytes::Bytes;
use courier_proto::engine::{Data, Packet};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

use crate::config::Endpoint;
use crate::error::{Error, Result};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server says in its `open` packet.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Handshake {
    pub sid: String,
    pub ping_interval: u64,
    pub ping_timeout: u64,
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
}

fn default_max_payload() -> usize {
    1_000_000
}

/// One frame to write: a text packet and the binary attachments that must follow it directly.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub text: Bytes,
    pub attachments: Vec<Bytes>,
}

impl Frame {
    pub fn text(text: Bytes) -> Frame {
        Frame {
            text,
            attachments: Vec::new(),
        }
    }

    /// The largest single WebSocket message of the frame.
    pub fn largest(&self) -> usize {
        self.attachments
            .iter()
            .map(Bytes::len)
            .fold(self.text.len(), usize::max)
    }
}

/// An open Engine.IO connection.
pub(crate) struct Transport {
    pub ws: Ws,
    pub handshake: Handshake,
}

impl Transport {
    /// Opens the WebSocket and reads the handshake, all within `timeout`.
    pub async fn open(endpoint: &Endpoint, timeout: Duration) -> Result<Transport> {
        let connect_err = |reason: String| Error::Connect {
            url: endpoint.url.clone(),
            reason,
        };
        let open = async {
            let (mut ws, _) = ClientBuilder::from_uri(endpoint.ws_uri.clone())
                .connect()
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            let first = loop {
                match ws.next().await {
                    Some(Ok(m)) if m.is_text() => break m,
                    Some(Ok(m)) if m.is_ping() || m.is_pong() => continue,
                    Some(Ok(_)) => return Err(Error::Handshake("expected a text frame".into())),
                    Some(Err(e)) => return Err(connect_err(e.to_string())),
                    None => return Err(connect_err("closed before the handshake".into())),
                }
            };
            let text = Bytes::from(first.into_payload());
            match Packet::decode_text(text) {
                Ok(Packet::Open(json)) => {
                    let handshake: Handshake = serde_json::from_slice(&json)
                        .map_err(|e| Error::Handshake(e.to_string()))?;
                    Ok(Transport { ws, handshake })
                }
                Ok(other) => Err(Error::Handshake(format!(
                    "expected an open packet, got type {}",
                    other.type_char() as char
                ))),
                Err(e) => Err(Error::Handshake(e.to_string())),
            }
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| connect_err(format!("no handshake within {timeout:?}")))?
    }

    /// Time without a ping after which the server is taken for gone.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake.ping_interval + self.handshake.ping_timeout)
    }

    /// Queues a frame (text then attachments) without flushing.
    pub async fn feed(&mut self, frame: Frame) -> Result<(), tokio_websockets::Error> {
        self.ws.feed(Message::text(frame.text)).await?;
        for a in frame.attachments {
            self.ws.feed(Message::binary(a)).await?;
        }
        Ok(())
    }

    /// Queues one Engine.IO packet without flushing.
    pub async fn feed_packet(&mut self, packet: &Packet) -> Result<(), tokio_websockets::Error> {
        match packet {
            Packet::Message(Data::Binary(b)) => self.ws.feed(Message::binary(b.clone())).await,
            p => self.ws.feed(Message::text(p.to_text())).await,
        }
    }
}

/// What arrived in one WebSocket message.
pub(crate) enum Incoming {
    Packet(Packet),
    /// The peer closed the WebSocket.
    Closed,
    /// A WebSocket-level ping or pong: nothing to do.
    Nothing,
}

/// Decodes one WebSocket message into an Engine.IO packet.
pub(crate) fn decode(msg: Message) -> Result<Incoming, courier_proto::engine::DecodeError> {
    if msg.is_close() {
        return Ok(Incoming::Closed);
    }
    if msg.is_text() {
        let text = Bytes::from(msg.into_payload());
        return Packet::decode_text(text).map(Incoming::Packet);
    }
    if msg.is_binary() {
        let bin = Bytes::from(msg.into_payload());
        return Ok(Incoming::Packet(Packet::Message(Data::Binary(bin))));
    }
    Ok(Incoming::Nothing)
}
