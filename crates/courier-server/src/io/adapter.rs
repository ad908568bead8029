//! The seam between one node and a cluster of them.
//!
//! Room membership has one owner on each node: the namespace's table of sockets and the rooms
//! they are in. An [`Adapter`] carries what must reach beyond the node: broadcasts, requests for
//! the sockets of other nodes, and the news that a room gained its first local member or lost
//! its last (so that a cluster listens only for the rooms it has). A single node has no adapter,
//! and its event path pays nothing for the seam.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::namespace::{Namespace, Room};
use crate::engine::Sid;
use courier_proto::payload::Payload;
use courier_store::{RecoveryEvent, SessionRecord};

/// Which sockets of a namespace an operation is for: those in any of `rooms` (every socket when
/// empty), minus those in any of `except`. A socket id names the room holding only that socket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Targets {
    /// Rooms whose members are targeted.
    pub rooms: Vec<Room>,
    /// Rooms whose members are left out.
    pub except: Vec<Room>,
}

/// A broadcast, as it travels to the other nodes.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// The namespace.
    pub nsp: Arc<str>,
    /// The event name.
    pub event: String,
    /// Its arguments, binary attachments included.
    pub payload: Payload,
    /// Who gets it.
    pub targets: Targets,
    /// Dropped for clients that are not keeping up.
    pub volatile: bool,
}

/// A socket as an operation on several nodes lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketInfo {
    /// The socket id.
    pub id: Sid,
    /// Its rooms, its own id included.
    pub rooms: Vec<Room>,
    /// Its data.
    pub data: Value,
    /// Its transport (`polling`, `websocket`), when the node that has it says.
    pub transport: Option<String>,
    /// Its identity's subject, when it has one and its node says.
    pub sub: Option<String>,
}

/// What came back from a broadcast that asked for acknowledgements.
#[derive(Debug, Default)]
pub struct Acks {
    /// How many sockets the event was sent to.
    pub recipients: usize,
    /// The answers: the socket, when its node says which (a Node server does not), and the
    /// arguments of the acknowledgement.
    pub answers: Vec<(Option<Sid>, Payload)>,
}

/// What a namespace hands to the other nodes of a cluster. Every method concerns other nodes
/// only: the namespace has already done the local part. Set with [`crate::Io::set_adapter`].
pub trait Adapter: Send + Sync + 'static {
    /// `ns` now exists on this node.
    fn namespace_added(&self, ns: &Namespace);

    /// `room` of `ns` gained its first member on this node, or lost its last one;
    /// [`Namespace::has_room`] says which, at the time the adapter looks.
    fn room_changed(&self, ns: &Namespace, room: &Room);

    /// Resolves once broadcasts to `room` from the other nodes reach this node (the cluster
    /// listens for the room), or after a short wait if it cannot tell.
    fn room_ready(&self, ns: &Namespace, room: &Room) -> BoxFuture<'static, ()>;

    /// Sends `b` to the other nodes.
    fn broadcast(&self, b: Broadcast);

    /// Sends `b` to the other nodes and counts the sockets it reached there.
    fn broadcast_counted(&self, b: Broadcast) -> BoxFuture<'static, usize>;

    /// Sends `b` with acknowledgement requests to the sockets of the other nodes and collects
    /// their answers until `timeout`.
    fn broadcast_with_ack(&self, b: Broadcast, timeout: Duration) -> BoxFuture<'static, Acks>;

    /// The targeted sockets of the other nodes.
    fn fetch_sockets(&self, nsp: &str, targets: &Targets) -> BoxFuture<'static, Vec<SocketInfo>>;

    /// Makes the targeted sockets of the other nodes join (`join`) or leave `rooms`.
    fn change_rooms(&self, nsp: &str, targets: &Targets, rooms: &[Room], join: bool);

    /// Disconnects the targeted sockets of the other nodes (closing their connections with
    /// `close`); resolves to how many there were.
    fn disconnect_sockets(
        &self,
        nsp: &str,
        targets: &Targets,
        close: bool,
    ) -> BoxFuture<'static, usize>;

    // Connection state recovery shared by every node. When `shares_recovery` is false, the
    // node's own store keeps sessions and the log, and the methods below are not called.

    /// Whether recovery sessions and the log of recoverable broadcasts live with the adapter,
    /// so that a client can be recovered by any node.
    fn shares_recovery(&self) -> bool;

    /// This node's id, which starts the private id of every session it makes.
    fn node_id(&self) -> &str;

    /// Logs a recoverable broadcast (`data`: its `[event, ...args]` JSON) and delivers it on
    /// every node, this one included, in the order of the log. With `count`, resolves to how
    /// many sockets it reached.
    fn broadcast_logged(
        &self,
        b: Broadcast,
        data: bytes::Bytes,
        count: bool,
    ) -> BoxFuture<'static, usize>;

    /// The log's position now: a socket that connects now has missed nothing before it.
    fn recovery_position(&self, nsp: &str) -> BoxFuture<'static, u64>;

    /// Keeps `record` as the session `pid` (`expires_ms` is `LIVE_SESSION` while connected).
    fn save_session(&self, pid: &str, record: SessionRecord);

    /// Forgets the session `pid` (its socket left on purpose).
    fn drop_session(&self, pid: &str);

    /// Takes the session `pid` if it can be recovered now (its connection is gone).
    fn take_session(&self, pid: &str) -> BoxFuture<'static, Option<SessionRecord>>;

    /// The logged broadcasts of `nsp` after `after`, or `None` if some of them are no longer
    /// kept.
    fn recoverable_after(
        &self,
        nsp: &str,
        after: u64,
    ) -> BoxFuture<'static, Option<Vec<RecoveryEvent>>>;
}

/// Waits for `remote`, or answers at once when there is no adapter.
pub(crate) async fn or_default<T: Default>(remote: Option<BoxFuture<'static, T>>) -> T {
    match remote {
        Some(f) => f.await,
        None => T::default(),
    }
}
