//! A Rust Socket.IO client (Engine.IO v4 / Socket.IO v5 over WebSocket) for Courier and any
//! Socket.IO server, with Courier's durable streams on top.
//!
//! Modules, in the order bytes move through them:
//! - `engine`: one WebSocket to `<url><path>?EIO=4&transport=websocket`, the `open` handshake,
//!   Engine.IO frames in and out (codec from `courier-proto`).
//! - [`client`]: the [`Client`] (socket.io-client's `Manager`). One task owns the connection:
//!   it answers pings, watches for a silent server, reassembles binary packets, hands each
//!   Socket.IO packet to its namespace's socket, writes what the sockets queue, and on loss
//!   reconnects with exponential backoff and jitter ([`Reconnect`]).
//! - [`socket`]: a [`Socket`] per namespace: CONNECT with auth (plus `pid` and the last offset
//!   for connection state recovery), event handlers, emits with or without acks, binary
//!   arguments ([`Payload`]), a buffer for emits made while disconnected.
//! - [`streams`]: durable subscriptions ([`Subscription`], [`Delivery`] with an explicit ack)
//!   renewed after every reconnection, and confirmed publishes.
//! - [`api`]: a small client of the HTTP API of `courier serve`.
//!
//! ```no_run
//! # async fn run() -> courier_client::Result<()> {
//! use courier_client::{Client, StartAt};
//! use serde_json::json;
//!
//! let client = Client::connect("http://127.0.0.1:3000").await?;
//! let socket = client.socket("/");
//! socket.connect().await?;
//! let mut orders = socket.subscribe("orders", "billing", StartAt::All).await?;
//! socket.publish("orders", "order", &json!({"id": 7}), Some("order-7")).await?;
//! while let Some(delivery) = orders.recv().await {
//!     println!("{} #{}: {}", delivery.event, delivery.meta.seq, delivery.data);
//!     delivery.ack()?;
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod api;
pub mod client;
mod config;
mod engine;
mod error;
pub mod socket;
pub mod streams;

pub use api::ApiClient;
pub use client::{Client, ClientStatus};
pub use config::{Config, Reconnect};
pub use courier_proto::payload::Payload;
pub use error::{Error, Result};
pub use socket::{DisconnectReason, Event, Socket, Status};
pub use streams::{Delivery, DeliveryMeta, Published, StartAt, SubscribeOptions, Subscription};
