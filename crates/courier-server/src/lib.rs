//! Courier's Socket.IO server, as a library.
//!
//! Modules, in the order bytes move through them:
//! - [`engine`]: Engine.IO v4. HTTP long-polling and WebSocket transports, the upgrade between
//!   them, heartbeats, one bounded outbound queue per connection drained by a single writer.
//!   On a cluster ([`Io::set_peers`], [`Peers`]) a request for another node's session is
//!   forwarded to that node, so a load balancer needs no sticky sessions.
//! - `io`: Socket.IO v5 on top of the engine. [`Io`] holds namespaces; a [`Socket`] is one
//!   client in one namespace, with event handlers, acknowledgements both ways and rooms;
//!   [`BroadcastOperator`] picks sockets by room and encodes a broadcast once for all of them.
//! - `io::streams`: the delivery engine. One runner per active consumer reads entries from the
//!   [`store`], sends them to subscribed sockets as events with ack requests, and keeps the
//!   consumer's position (pending, redelivery with backoff, dead letters, `max_ack_pending`).
//! - `io::recovery`: connection state recovery; broadcasts carry offsets, lost sessions are kept
//!   in the store and restored with the broadcasts they missed.
//! - [`serve`]: a ready HTTP/1.1 accept loop with graceful shutdown. [`Io::service`] is a plain
//!   tower `Service`, so the hub also mounts in axum or any hyper server.
//! - [`auth`]: identities (from JSON Web Tokens), grants as NATS-style patterns, and the
//!   authorizer asked before a client joins a room, relays to it, publishes or subscribes.
//!
//! - [`stats`]: what the server counts (one atomic add each), for metrics and the admin UI.
//!
//! Codecs live in `courier-proto`; this crate does the I/O and the semantics.
#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod engine;
mod io;
mod serve;
pub mod stats;

pub use config::{Config, Cors};
pub use courier_store as store;
pub use engine::Peers;
pub use io::{
    AckError, AckSender, Acks, Adapter, Authorizer, Broadcast, BroadcastOperator, ConnectError,
    DisconnectReason, DynamicNamespace, EmitError, Handshake, Io, IoHandler, IoService, Message,
    Namespace, Observer, Overview, Payload, Room, Setup, SharedStreams, Socket, SocketInfo,
    Streams, Subscribed, Targets, deliver, error_answer,
};
pub use serve::{ServeOptions, serve, serve_with};
