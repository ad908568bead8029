//! A socket: one client's membership of one namespace.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use courier_proto::socket::{Packet, PacketType};
use futures_util::future::BoxFuture;
use http::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::adapter::SocketInfo;
use super::conn::Conn;
use super::message::{
    AckError, AckSender, DisconnectReason, EmitError, Message, Payload, send_or_close,
};
use super::namespace::{BroadcastOperator, Namespace, Room};
use super::run_now_or_spawn;
use crate::auth::Identity;
use crate::engine::{CloseReason, Sid, Transport, new_id};

pub(crate) type EventHandler = Arc<dyn Fn(Socket, Message) -> BoxFuture<'static, ()> + Send + Sync>;
type DisconnectHandler =
    Box<dyn FnOnce(Socket, DisconnectReason) -> BoxFuture<'static, ()> + Send + Sync>;

/// What the client sent when it opened its connection.
#[derive(Debug)]
pub struct Handshake {
    /// Request headers.
    pub headers: HeaderMap,
    /// The raw query string.
    pub query: String,
    /// The peer address, when the server knows it.
    pub address: Option<SocketAddr>,
    /// When the connection was opened.
    pub issued: SystemTime,
}

/// A client's membership of one namespace. Cheap to clone; every clone is the same socket.
#[derive(Clone)]
pub struct Socket(pub(crate) Arc<SocketInner>);

pub(crate) struct SocketInner {
    pub(crate) id: Sid,
    pub(crate) ns: Namespace,
    pub(crate) conn: Arc<Conn>,
    auth: Value,
    // Blocking locks (parking_lot, which does not poison) throughout: each is held for a few instructions and never across an await.
    events: RwLock<HashMap<String, EventHandler>>,
    fallback: RwLock<Option<EventHandler>>,
    on_disconnect: Mutex<Vec<DisconnectHandler>>,
    acks: Mutex<HashMap<u64, AckSlot>>,
    next_ack: AtomicU64,
    connected: AtomicBool,
    data: Mutex<Value>,
    /// Private id of the session, for connection state recovery.
    pub(crate) pid: Option<Arc<str>>,
    /// Recovery-log offset when the session began.
    pub(crate) since: u64,
    recovered: bool,
    /// Durable subscriptions: (stream, consumer).
    pub(crate) subscriptions: Mutex<Vec<(String, String)>>,
    /// Who the client is, once a middleware says.
    identity: Mutex<Option<Arc<Identity>>>,
    /// The subject a recovered session had: only the same subject gets it back.
    pub(crate) restored_sub: Option<String>,
    /// Closes the connection when the identity expires; stopped when the socket leaves.
    expiry: Mutex<Option<tokio::task::AbortHandle>>,
    /// Whether the socket counts toward its subject's `max_sockets_per_sub`.
    holds_slot: AtomicBool,
}

/// Who waits for an acknowledgement.
pub(crate) enum AckSlot {
    /// A task awaiting it.
    Wait(oneshot::Sender<Payload>),
    /// A callback run when it arrives.
    Call(Box<dyn FnOnce(Payload) + Send>),
}

/// What a recovered session brings back.
pub(crate) struct Restore {
    pub sid: Sid,
    pub pid: Arc<str>,
    pub since: u64,
    pub data: Value,
    pub sub: Option<String>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.0.id)
            .field("ns", &self.0.ns.name())
            .finish()
    }
}

impl Socket {
    pub(crate) fn new(
        ns: Namespace,
        conn: Arc<Conn>,
        auth: Value,
        restore: Option<Restore>,
        shared_position: Option<u64>,
    ) -> Socket {
        let recovered = restore.is_some();
        let (id, pid, since, data, restored_sub) = match restore {
            Some(r) => (r.sid, Some(r.pid), r.since, r.data, r.sub),
            None => {
                let recovery = conn.io.recovery.as_ref();
                // A cluster's node id starts the pid: any node can tell whose session it is.
                let pid = recovery.map(|_| match conn.io.shared_recovery() {
                    Some(a) => format!("{}{}", a.node_id(), new_id()).into(),
                    None => new_id(),
                });
                let since = match (shared_position, recovery) {
                    (Some(position), _) => position,
                    (None, Some(store)) => store.recovery_offset(),
                    (None, None) => 0,
                };
                (new_id(), pid, since, Value::Null, None)
            }
        };
        Socket(Arc::new(SocketInner {
            id,
            ns,
            conn,
            auth,
            events: RwLock::new(HashMap::new()),
            fallback: RwLock::new(None),
            on_disconnect: Mutex::new(Vec::new()),
            acks: Mutex::new(HashMap::new()),
            // A recovered socket may still get acks the client owed its earlier connection:
            // numbering from a random point keeps them from matching a new request.
            next_ack: AtomicU64::new(if recovered {
                rand::random_range(1u64 << 20..1u64 << 52)
            } else {
                0
            }),
            connected: AtomicBool::new(false),
            data: Mutex::new(data),
            pid,
            since,
            recovered,
            subscriptions: Mutex::new(Vec::new()),
            identity: Mutex::new(None),
            restored_sub,
            expiry: Mutex::new(None),
            holds_slot: AtomicBool::new(false),
        }))
    }

    /// The socket id (also the name of a room that holds only this socket).
    pub fn id(&self) -> &Sid {
        &self.0.id
    }

    /// The id of the Engine.IO connection the socket lives on (shared by the connection's
    /// sockets in other namespaces).
    pub fn connection_id(&self) -> &Sid {
        self.0.conn.session.sid()
    }

    /// The namespace.
    pub fn ns(&self) -> &Namespace {
        &self.0.ns
    }

    /// The auth payload the client sent with CONNECT (`{}` when none).
    pub fn auth(&self) -> &Value {
        &self.0.auth
    }

    /// The connection's handshake.
    pub fn handshake(&self) -> &Handshake {
        &self.0.conn.handshake
    }

    /// The transport the connection currently uses.
    pub fn transport(&self) -> Transport {
        self.0.conn.session.transport()
    }

    /// Whether this socket continues a session that connection state recovery restored: same id,
    /// rooms and data, with the broadcasts it missed replayed.
    pub fn recovered(&self) -> bool {
        self.0.recovered
    }

    /// Who the client is, when a connect middleware set it (see [`crate::auth`]).
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.0.identity.lock().clone()
    }

    /// The identity's subject, for logs.
    pub fn sub(&self) -> Option<String> {
        self.0.identity.lock().as_ref().map(|i| i.sub.clone())
    }

    /// Says who the client is; meant for a connect middleware. Operations are then checked
    /// against its grants ([`crate::auth::check_grants`]), and once `identity.expires` passes the
    /// server closes the connection: the client sees `transport close`, reconnects on its own
    /// with the token its `auth` callback gives, and with recovery on gets its session back.
    pub fn set_identity(&self, identity: Identity) {
        *self.0.identity.lock() = Some(Arc::new(identity));
    }

    /// Asks the server's authorizer whether this socket may do `access` ([`crate::Io::set_authorizer`]).
    pub fn authorize(&self, access: &crate::auth::Access<'_>) -> Result<(), String> {
        self.0.conn.io.authorize(self, access)
    }

    /// Whether the socket is still in its namespace.
    pub fn connected(&self) -> bool {
        self.0.connected.load(Ordering::Acquire)
    }

    /// Application data kept with the socket.
    pub fn data(&self) -> Value {
        self.0.data.lock().clone()
    }

    /// Replaces the socket's application data.
    pub fn set_data(&self, v: Value) {
        *self.0.data.lock() = v;
        self.session_changed();
    }

    /// Keeps the recovery session current while connected.
    pub(crate) fn session_changed(&self) {
        if self.connected() {
            let io = &self.0.conn.io;
            io.save_session(self, courier_store::LIVE_SESSION);
        }
    }

    /// Registers the handler of `event`. The handler runs in arrival order; it is polled at once
    /// and only spawned as a task if it has to wait.
    pub fn on<F, Fut>(&self, event: impl Into<String>, handler: F)
    where
        F: Fn(Socket, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h: EventHandler = Arc::new(move |s, m| Box::pin(handler(s, m)));
        self.0.events.write().insert(event.into(), h);
    }

    /// Registers the handler of every event that has no handler of its own.
    pub fn on_any<F, Fut>(&self, handler: F)
    where
        F: Fn(Socket, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h: EventHandler = Arc::new(move |s, m| Box::pin(handler(s, m)));
        *self.0.fallback.write() = Some(h);
    }

    /// Registers a handler for the socket's disconnection.
    pub fn on_disconnect<F, Fut>(&self, handler: F)
    where
        F: FnOnce(Socket, DisconnectReason) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.0
            .on_disconnect
            .lock()
            .push(Box::new(move |s, r| Box::pin(handler(s, r))));
    }

    /// Sends `event` with one argument.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, arg: &T) -> Result<(), EmitError> {
        self.emit_payload(event, Payload::new().arg(arg)?)
    }

    /// Sends `event` with a whole payload (several or binary arguments).
    pub fn emit_payload(&self, event: &str, payload: Payload) -> Result<(), EmitError> {
        self.note_sent(event, &payload);
        let nsp = self.0.ns.name();
        let out = super::message::outbound(payload, |args, n| Packet::event(nsp, event, args, n));
        send_or_close(&self.0.conn.session, out, false)
    }

    /// Sends `event` and waits for the client's acknowledgement, up to the configured
    /// `ack_timeout`.
    pub async fn emit_with_ack(&self, event: &str, payload: Payload) -> Result<Payload, AckError> {
        let timeout = self.0.conn.io.config.ack_timeout;
        self.emit_with_ack_timeout(event, payload, timeout).await
    }

    /// Sends `event` and waits for the client's acknowledgement, up to `timeout`.
    pub async fn emit_with_ack_timeout(
        &self,
        event: &str,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Payload, AckError> {
        let rx = self.send_with_ack(event, payload)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(AckError::Disconnected),
            Err(_) => {
                self.note_ack_timeout();
                Err(AckError::Timeout)
            }
        }
    }

    /// Counts an emit to this socket alone and tells the observer.
    fn note_sent(&self, event: &str, payload: &Payload) {
        let io = &self.0.conn.io;
        if let Some(s) = io.stats() {
            s.events_emitted.inc();
        }
        if let Some(o) = io.observer() {
            o.event_sent(self, event, &payload.args);
        }
    }

    pub(crate) fn note_ack_timeout(&self) {
        if let Some(s) = self.0.conn.io.stats() {
            s.ack_timeouts.inc();
        }
    }

    /// Sends `event` with a fresh ack id; the receiver resolves with the answer.
    pub(crate) fn send_with_ack(&self, event: &str, payload: Payload) -> Result<AckWait, AckError> {
        self.note_sent(event, &payload);
        let id = self.0.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.0.acks.lock().insert(id, AckSlot::Wait(tx));
        let nsp = self.0.ns.name();
        let out = super::message::outbound(payload, |args, n| Packet {
            id: Some(id),
            ..Packet::event(nsp, event, args, n)
        });
        if send_or_close(&self.0.conn.session, out, false).is_err() {
            self.0.acks.lock().remove(&id);
            return Err(AckError::NotSent);
        }
        Ok(AckWait {
            rx,
            socket: self.clone(),
            id,
        })
    }

    /// Queues a packet built for a fresh ack id; `on_ack` runs when the client answers.
    /// Returns false if the packet could not be queued.
    pub(crate) fn send_with_callback(
        &self,
        build: impl FnOnce(u64) -> crate::engine::Outbound,
        on_ack: Box<dyn FnOnce(Payload) + Send>,
    ) -> bool {
        if let Some(s) = self.0.conn.io.stats() {
            s.events_emitted.inc();
        }
        let id = self.0.next_ack.fetch_add(1, Ordering::Relaxed);
        self.0.acks.lock().insert(id, AckSlot::Call(on_ack));
        if send_or_close(&self.0.conn.session, build(id), false).is_err() {
            self.0.acks.lock().remove(&id);
            return false;
        }
        true
    }

    /// Joins a room.
    pub fn join(&self, room: impl Into<Room>) {
        let room = room.into();
        let observer = self.0.conn.io.observer();
        let name = observer.map(|_| room.clone());
        let added = self.0.ns.add_to_room(&self.0.id, room);
        self.session_changed();
        if let (true, Some(o), Some(room)) = (added, observer, name) {
            o.room_joined(self, &room);
        }
    }

    /// Leaves a room.
    pub fn leave(&self, room: &str) {
        let removed = self.0.ns.remove_from_room(&self.0.id, room);
        self.session_changed();
        if let (true, Some(o)) = (removed, self.0.conn.io.observer()) {
            o.room_left(self, room);
        }
    }

    /// The rooms the socket is in, its own id included, sorted.
    pub fn rooms(&self) -> Vec<Room> {
        let mut rooms = self.0.ns.rooms_of(&self.0.id);
        rooms.push(self.0.id.clone());
        rooms.sort();
        rooms
    }

    /// The socket as operations on every node of a cluster list it.
    pub fn info(&self) -> SocketInfo {
        SocketInfo {
            id: self.0.id.clone(),
            rooms: self.rooms(),
            data: self.data(),
            transport: Some(self.transport().name().to_owned()),
            sub: self.sub(),
        }
    }

    /// Targets the other sockets in `room` (not this one).
    pub fn to(&self, room: impl Into<Room>) -> BroadcastOperator {
        self.broadcast().to(room)
    }

    /// Targets every other socket of the namespace.
    pub fn broadcast(&self) -> BroadcastOperator {
        self.0.ns.broadcast().except(self.0.id.clone())
    }

    /// Removes the socket from its namespace; the client sees `io server disconnect` and does not
    /// reconnect on its own. The connection stays open for its other namespaces.
    pub fn disconnect(&self) {
        let nsp = self.0.ns.name();
        let out = Packet::new(PacketType::Disconnect, nsp, None).encode_message();
        let _ = self.0.conn.session.send(crate::engine::Outbound::Text(out));
        self.0.conn.remove_socket(nsp);
        self.close(DisconnectReason::ServerNamespaceDisconnect);
    }

    /// Closes the whole connection; the client sees `transport close` and reconnects on its own.
    pub fn close_connection(&self) {
        self.0.conn.session.close(CloseReason::ForcedClose);
    }

    /// Counts the socket toward its subject's `max_sockets_per_sub`; false if it has that many.
    pub(crate) fn claim_identity_slot(&self) -> bool {
        let io = &self.0.conn.io;
        let max = io.config.max_sockets_per_sub;
        let Some(sub) = self.sub().filter(|_| max > 0) else {
            return true;
        };
        let mut n = io.per_sub.entry(sub).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        self.0.holds_slot.store(true, Ordering::Release);
        true
    }

    /// Marks the socket connected and registers it with its namespace.
    pub(crate) fn attach(&self) {
        self.0.connected.store(true, Ordering::Release);
        self.0.ns.insert(self);
        if let Some(at) = self.identity().and_then(|i| i.expires) {
            let wait = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            let socket = Arc::downgrade(&self.0);
            let task = tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(s) = socket.upgrade().map(Socket) {
                    tracing::info!(sid = %s.id(), nsp = s.ns().name(), sub = s.sub(), "token expired: closing the connection");
                    s.0.conn.session.close(CloseReason::TokenExpired);
                }
            });
            *self.0.expiry.lock() = Some(task.abort_handle());
        }
    }

    /// Everything that must happen once when the socket leaves: rooms, pending acks, handlers.
    pub(crate) fn close(&self, reason: DisconnectReason) {
        if !self.0.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        if let Some(task) = self.0.expiry.lock().take() {
            task.abort();
        }
        if self.0.holds_slot.swap(false, Ordering::AcqRel)
            && let Some(sub) = self.sub()
        {
            self.0.conn.io.per_sub.remove_if_mut(&sub, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
        // Kept for recovery before the rooms are forgotten.
        self.0.conn.io.socket_closing(self, reason);
        self.0.ns.remove(self);
        // Dropping the senders wakes every waiting emit_with_ack with `Disconnected`.
        self.0.acks.lock().clear();
        tracing::debug!(sid = %self.0.id, nsp = self.0.ns.name(), reason = reason.as_str(), "socket disconnected");
        if let Some(s) = self.0.conn.io.stats() {
            s.disconnected(reason);
        }
        if let Some(o) = self.0.conn.io.observer() {
            o.socket_disconnected(self, reason);
        }
        let handlers = std::mem::take(&mut *self.0.on_disconnect.lock());
        for h in handlers {
            run_now_or_spawn(h(self.clone(), reason));
        }
        self.0.events.write().clear();
        *self.0.fallback.write() = None;
    }

    /// Runs the handler of an incoming event.
    pub(crate) fn dispatch(&self, packet: Packet, attachments: Vec<bytes::Bytes>) {
        let Some(Value::Array(mut args)) = packet.data else {
            return;
        };
        let Value::String(event) = args.remove(0) else {
            return;
        };
        let io = &self.0.conn.io;
        if let Some(s) = io.stats() {
            s.events_received.inc();
        }
        if let Some(o) = io.observer() {
            o.event_received(self, &event, &args);
        }
        let ack = packet.id.map(|id| self.ack_sender(id));
        let msg = Message::new(event, Payload { args, attachments }, ack);
        let msg = match self.0.conn.io.streams.get() {
            Some(streams) if msg.event.starts_with("courier:") => {
                match super::streams::handle_reserved(streams, self, msg) {
                    Some(msg) => msg,
                    None => return,
                }
            }
            _ => msg,
        };
        let event = &msg.event;
        let handler = self
            .0
            .events
            .read()
            .get(event)
            .cloned()
            .or_else(|| self.0.fallback.read().clone());
        let Some(handler) = handler else {
            tracing::trace!(sid = %self.0.id, event, "no handler for event");
            return;
        };
        self.0.conn.run(handler(self.clone(), msg));
    }

    /// Answers the client's acknowledgement request `id`.
    pub(crate) fn ack_sender(&self, id: u64) -> AckSender {
        AckSender {
            session: self.0.conn.session.clone(),
            nsp: self.0.ns.name_arc(),
            id,
        }
    }

    /// Hands an acknowledgement from the client to whoever waits for it.
    pub(crate) fn resolve_ack(&self, id: u64, payload: Payload) {
        let slot = self.0.acks.lock().remove(&id);
        if let (Some(_), Some(s)) = (&slot, self.0.conn.io.stats()) {
            s.acks_received.inc();
        }
        match slot {
            Some(AckSlot::Wait(tx)) => {
                let _ = tx.send(payload);
            }
            Some(AckSlot::Call(f)) => f(payload),
            None => tracing::debug!(sid = %self.0.id, id, "ack for no pending request"),
        }
    }

    fn forget_ack(&self, id: u64) {
        self.0.acks.lock().remove(&id);
    }
}

/// A pending acknowledgement; dropping it forgets the ack id.
pub(crate) struct AckWait {
    rx: oneshot::Receiver<Payload>,
    socket: Socket,
    id: u64,
}

impl Future for AckWait {
    type Output = Result<Payload, oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx)
    }
}

impl Drop for AckWait {
    fn drop(&mut self) {
        self.socket.forget_ack(self.id);
    }
}
