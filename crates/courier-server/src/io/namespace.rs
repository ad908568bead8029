//! Namespaces, their rooms, and broadcasting to sets of sockets.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use std::time::Duration;

use courier_proto::socket::Packet;
use dashmap::DashMap;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::adapter::{Acks, Adapter, Broadcast, SocketInfo, Targets, or_default};
use super::message::{AckError, ConnectError, EmitError, Payload, send_or_close};
use super::socket::Socket;
use crate::engine::{Outbound, Sid};

/// A room name.
pub type Room = Arc<str>;

pub(crate) type Middleware =
    Arc<dyn Fn(Socket) -> BoxFuture<'static, Result<(), ConnectError>> + Send + Sync>;
pub(crate) type ConnectHandler = Arc<dyn Fn(Socket) -> BoxFuture<'static, ()> + Send + Sync>;

/// Middlewares and the connection handler; shared by every namespace a dynamic pattern creates.
#[doc(hidden)]
#[derive(Default)]
pub struct Handlers {
    pub(crate) middlewares: Vec<Middleware>,
    pub(crate) on_connect: Option<ConnectHandler>,
}

/// Registers middlewares and a connection handler. Implemented by [`Namespace`] and by
/// [`crate::DynamicNamespace`].
pub trait Setup {
    #[doc(hidden)]
    fn handlers(&self) -> &RwLock<Handlers>;

    /// Adds a middleware run on each CONNECT, in order, before the socket joins; an `Err` refuses
    /// the client with CONNECT_ERROR.
    fn middleware<F, Fut>(&self, f: F) -> &Self
    where
        F: Fn(Socket) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ConnectError>> + Send + 'static,
    {
        let m: Middleware = Arc::new(move |s| Box::pin(f(s)));
        self.handlers().write().middlewares.push(m);
        self
    }

    /// Sets the handler run for each socket that joins.
    fn on_connect<F, Fut>(&self, f: F) -> &Self
    where
        F: Fn(Socket) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h: ConnectHandler = Arc::new(move |s| Box::pin(f(s)));
        self.handlers().write().on_connect = Some(h);
        self
    }
}

/// A namespace. Cheap to clone.
#[derive(Clone)]
pub struct Namespace(Arc<Inner>);

struct Inner {
    name: Arc<str>,
    /// The sockets and the rooms each is in: the one record of membership. `rooms` is its
    /// index by room, changed only together with it.
    sockets: DashMap<Sid, Member>,
    rooms: DashMap<Room, HashSet<Sid>>,
    handlers: Arc<RwLock<Handlers>>,
    recovery: Option<courier_store::Store>,
    /// Reaches the other nodes of a cluster; unset on a single node.
    adapter: OnceLock<Arc<dyn Adapter>>,
    stats: Option<Arc<crate::stats::Stats>>,
}

struct Member {
    socket: Socket,
    rooms: HashSet<Room>,
}

impl Setup for Namespace {
    fn handlers(&self) -> &RwLock<Handlers> {
        &self.0.handlers
    }
}

impl Namespace {
    pub(crate) fn new(
        name: &str,
        handlers: Arc<RwLock<Handlers>>,
        recovery: Option<courier_store::Store>,
        stats: Option<Arc<crate::stats::Stats>>,
    ) -> Self {
        Namespace(Arc::new(Inner {
            name: name.into(),
            sockets: DashMap::new(),
            rooms: DashMap::new(),
            handlers,
            recovery,
            adapter: OnceLock::new(),
            stats,
        }))
    }

    /// Hands what goes beyond this node to `adapter` (once; later calls are ignored).
    pub(crate) fn set_adapter(&self, adapter: Arc<dyn Adapter>) {
        if self.0.adapter.set(adapter.clone()).is_ok() {
            adapter.namespace_added(self);
        }
    }

    fn adapter(&self) -> Option<&Arc<dyn Adapter>> {
        self.0.adapter.get()
    }

    /// The namespace's name, e.g. `/` or `/chat`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub(crate) fn name_arc(&self) -> Arc<str> {
        self.0.name.clone()
    }

    pub(crate) fn middlewares(&self) -> Vec<Middleware> {
        self.0.handlers.read().middlewares.clone()
    }

    pub(crate) fn connect_handler(&self) -> Option<ConnectHandler> {
        self.0.handlers.read().on_connect.clone()
    }

    /// Number of connected sockets.
    pub fn len(&self) -> usize {
        self.0.sockets.len()
    }

    /// Whether no socket is connected.
    pub fn is_empty(&self) -> bool {
        self.0.sockets.is_empty()
    }

    /// The socket with id `sid`.
    pub fn socket(&self, sid: &str) -> Option<Socket> {
        self.0.sockets.get(sid).map(|m| m.socket.clone())
    }

    /// Whether a socket of this node is in `room` (a socket id names the room of that socket).
    pub fn has_room(&self, room: &str) -> bool {
        self.0.rooms.contains_key(room) || self.0.sockets.contains_key(room)
    }

    /// Resolves once broadcasts to `room` from every node reach this one: at once on a single
    /// node; on a cluster, once it listens for the room (a socket that just joined a room it is
    /// the first here to be in can miss what another node sends before that).
    pub fn room_ready(&self, room: &Room) -> BoxFuture<'static, ()> {
        match self.adapter() {
            Some(a) => a.room_ready(self, room),
            None => Box::pin(std::future::ready(())),
        }
    }

    /// Every socket of this node.
    pub fn sockets(&self) -> Vec<Socket> {
        self.0.sockets.iter().map(|m| m.socket.clone()).collect()
    }

    /// Targets every socket of the namespace.
    pub fn broadcast(&self) -> BroadcastOperator {
        BroadcastOperator {
            ns: self.clone(),
            rooms: Vec::new(),
            except: Vec::new(),
            volatile: false,
            local: false,
            timeout: None,
        }
    }

    /// Targets the sockets in `room`.
    pub fn to(&self, room: impl Into<Room>) -> BroadcastOperator {
        self.broadcast().to(room)
    }

    /// Sends `event` with one argument to every socket; returns how many were sent to.
    pub fn emit<T: serde::Serialize + ?Sized>(
        &self,
        event: &str,
        arg: &T,
    ) -> Result<usize, EmitError> {
        self.broadcast().emit(event, arg)
    }

    pub(crate) fn insert(&self, socket: &Socket) {
        let member = Member {
            socket: socket.clone(),
            rooms: HashSet::new(),
        };
        self.0.sockets.insert(socket.id().clone(), member);
        if let Some(a) = self.adapter() {
            a.room_changed(self, socket.id());
        }
    }

    pub(crate) fn remove(&self, socket: &Socket) {
        // Only this socket's entry: a recovered socket with the same id may already be in.
        let Some((sid, member)) = self
            .0
            .sockets
            .remove_if(socket.id(), |_, m| Arc::ptr_eq(&m.socket.0, &socket.0))
        else {
            return;
        };
        for room in member.rooms {
            self.drop_member(&room, &sid);
        }
        if let Some(a) = self.adapter() {
            a.room_changed(self, &sid);
        }
    }

    /// Puts a connected socket in `room`.
    /// Returns whether it joined (it was connected and not in the room).
    pub(crate) fn add_to_room(&self, sid: &Sid, room: Room) -> bool {
        // Lock order: the socket's entry, then the room index; never the other way.
        let Some(mut member) = self.0.sockets.get_mut(sid) else {
            return false;
        };
        if !member.rooms.insert(room.clone()) {
            return false;
        }
        let mut created = false;
        self.0
            .rooms
            .entry(room.clone())
            .or_insert_with(|| {
                created = true;
                HashSet::new()
            })
            .insert(sid.clone());
        drop(member);
        if let (true, Some(a)) = (created, self.adapter()) {
            a.room_changed(self, &room);
        }
        true
    }

    /// Returns whether it left (it was in the room).
    pub(crate) fn remove_from_room(&self, sid: &Sid, room: &str) -> bool {
        let Some(mut member) = self.0.sockets.get_mut(sid) else {
            return false;
        };
        if member.rooms.remove(room) {
            drop(member);
            self.drop_member(room, sid);
            return true;
        }
        false
    }

    /// The rooms `sid` is in, its own id not included.
    pub(crate) fn rooms_of(&self, sid: &str) -> Vec<Room> {
        self.0
            .sockets
            .get(sid)
            .map(|m| m.rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn drop_member(&self, room: &str, sid: &Sid) {
        let removed = self.0.rooms.remove_if_mut(room, |_, members| {
            members.remove(sid);
            members.is_empty()
        });
        if let (Some((room, _)), Some(a)) = (removed, self.adapter()) {
            a.room_changed(self, &room);
        }
    }

    /// Room names and how many sockets of this node each holds.
    pub fn rooms(&self) -> Vec<(Room, usize)> {
        self.0
            .rooms
            .iter()
            .map(|e| (e.key().clone(), e.value().len()))
            .collect()
    }

    fn members(&self, room: &str, into: &mut HashSet<Sid>) {
        if let Some(m) = self.0.rooms.get(room) {
            into.extend(m.iter().cloned());
        }
        // Each socket is alone in the room named after its id; that room is not stored.
        if self.0.sockets.contains_key(room) {
            into.insert(room.into());
        }
    }
}

/// The `[event, ...args]` JSON of a broadcast, as the recovery log keeps it.
fn event_data(event: &str, args: &[serde_json::Value]) -> bytes::Bytes {
    // Written in place: the arguments are not copied into an array first.
    let mut out = vec![b'['];
    serde_json::to_writer(&mut out, event).expect("JSON values serialize");
    for arg in args {
        out.push(b',');
        serde_json::to_writer(&mut out, arg).expect("JSON values serialize");
    }
    out.push(b']');
    bytes::Bytes::from(out)
}

/// A set of sockets chosen by rooms, to emit to or act on. Built from [`Namespace::to`],
/// [`Socket::to`] and friends.
#[derive(Clone)]
pub struct BroadcastOperator {
    ns: Namespace,
    rooms: Vec<Room>,
    except: Vec<Room>,
    volatile: bool,
    local: bool,
    timeout: Option<Duration>,
}

impl BroadcastOperator {
    /// Adds a room to the targets (with none, the whole namespace is targeted).
    pub fn to(mut self, room: impl Into<Room>) -> Self {
        self.rooms.push(room.into());
        self
    }

    /// Excludes the sockets in `room` (a socket id excludes that socket).
    pub fn except(mut self, room: impl Into<Room>) -> Self {
        self.except.push(room.into());
        self
    }

    /// Drops the event for clients that are not keeping up instead of disconnecting them.
    pub fn volatile(mut self) -> Self {
        self.volatile = true;
        self
    }

    /// Acts on this node's sockets only, not on the other nodes of a cluster.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }

    /// How long [`BroadcastOperator::emit_with_ack`] waits.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// The adapter, unless this operator acts locally only.
    fn adapter(&self) -> Option<&Arc<dyn Adapter>> {
        if self.local {
            return None;
        }
        self.ns.adapter()
    }

    fn targets(&self) -> Targets {
        Targets {
            rooms: self.rooms.clone(),
            except: self.except.clone(),
        }
    }

    fn remote(&self, event: &str, payload: &Payload) -> Broadcast {
        Broadcast {
            nsp: self.ns.name_arc(),
            event: event.to_owned(),
            payload: payload.clone(),
            targets: self.targets(),
            volatile: self.volatile,
        }
    }

    /// The targeted sockets of this node.
    pub fn sockets(&self) -> Vec<Socket> {
        let mut out = Vec::new();
        self.for_each_target(|s| out.push(s.clone()));
        out
    }

    /// Calls `f` for each targeted socket, without collecting them first (a broadcast to a
    /// whole namespace walks its map once).
    fn for_each_target(&self, mut f: impl FnMut(&Socket)) {
        let mut excluded = HashSet::new();
        for r in &self.except {
            self.ns.members(r, &mut excluded);
        }
        if self.rooms.is_empty() {
            for e in self.ns.0.sockets.iter() {
                if !excluded.contains(e.key()) {
                    f(&e.value().socket);
                }
            }
            return;
        }
        let mut sids = HashSet::new();
        for r in &self.rooms {
            self.ns.members(r, &mut sids);
        }
        for sid in sids.difference(&excluded) {
            if let Some(m) = self.ns.0.sockets.get(sid) {
                f(&m.socket);
            }
        }
    }

    /// Sends `event` with one argument; returns how many sockets it was queued for.
    pub fn emit<T: serde::Serialize + ?Sized>(
        &self,
        event: &str,
        arg: &T,
    ) -> Result<usize, EmitError> {
        self.emit_payload(event, Payload::new().arg(arg)?)
    }

    /// Sends `event` with a payload, encoded once for every recipient, to this node's sockets
    /// and those of the other nodes. Returns how many of this node's sockets it was queued for.
    /// (With a cluster whose nodes share recovery, a recoverable broadcast reaches this node's
    /// sockets through the shared log too, and 0 is returned.)
    pub fn emit_payload(&self, event: &str, payload: Payload) -> Result<usize, EmitError> {
        if let Some(a) = self.adapter() {
            if self.logged_by(a, &payload) {
                let data = event_data(event, &payload.args);
                // Queued before the call returns; the future would only wait for a count.
                drop(a.broadcast_logged(self.remote(event, &payload), data, false));
                return Ok(0);
            }
            a.broadcast(self.remote(event, &payload));
        }
        self.emit_here(event, payload)
    }

    /// Like [`BroadcastOperator::emit_payload`], and counts the sockets of every node.
    pub async fn emit_counted(&self, event: &str, payload: Payload) -> Result<usize, EmitError> {
        let Some(a) = self.adapter() else {
            return self.emit_here(event, payload);
        };
        if self.logged_by(a, &payload) {
            let data = event_data(event, &payload.args);
            return Ok(a
                .broadcast_logged(self.remote(event, &payload), data, true)
                .await);
        }
        let remote = a.broadcast_counted(self.remote(event, &payload));
        let here = self.emit_here(event, payload)?;
        Ok(here + remote.await)
    }

    /// As with the reference server, only plain events (no binary, not volatile) are logged
    /// for recovery; they carry their offset as the last argument.
    fn recoverable(&self, payload: &Payload) -> bool {
        self.ns.0.recovery.is_some() && !self.volatile && payload.attachments.is_empty()
    }

    /// Whether `a` logs and delivers this broadcast (recovery shared by the nodes).
    fn logged_by(&self, a: &Arc<dyn Adapter>, payload: &Payload) -> bool {
        self.recoverable(payload) && a.shares_recovery()
    }

    /// Sends a broadcast that the shared recovery log holds at `offset`. Returns how many of
    /// this node's sockets it was queued for.
    pub fn emit_logged(&self, event: &str, args: &[serde_json::Value], offset: u64) -> usize {
        let data = event_data(event, args);
        let out = Outbound::Text(super::recovery::with_offset(self.ns.name(), &data, offset));
        self.send_to_targets(&out)
    }

    fn send_to_targets(&self, out: &Outbound) -> usize {
        let mut sent = 0;
        self.for_each_target(|socket| {
            if send_or_close(&socket.0.conn.session, out.clone(), self.volatile).is_ok() {
                sent += 1;
            }
        });
        if let Some(s) = &self.ns.0.stats {
            s.broadcasts.inc();
            s.broadcast_recipients.add(sent as u64);
        }
        sent
    }

    fn emit_here(&self, event: &str, payload: Payload) -> Result<usize, EmitError> {
        // With recovery shared by the nodes, what arrives here unlogged (from a Node server)
        // is delivered without an offset: offsets come from the shared log only.
        let local_log = self.ns.0.recovery.as_ref().filter(|_| {
            self.recoverable(&payload) && !self.ns.adapter().is_some_and(|a| a.shares_recovery())
        });
        let out = match local_log {
            Some(store) => {
                let data = event_data(event, &payload.args);
                let rooms = self.rooms.iter().map(|r| r.to_string()).collect();
                let except = self.except.iter().map(|r| r.to_string()).collect();
                let offset = store.log_recoverable(self.ns.name(), rooms, except, data.clone());
                Outbound::Text(super::recovery::with_offset(self.ns.name(), &data, offset))
            }
            None => super::message::outbound(payload, |args, n| {
                Packet::event(self.ns.name(), event, args, n)
            }),
        };
        Ok(self.send_to_targets(&out))
    }

    /// Sends `event` to every target, on every node, with an ack request and waits for each
    /// answer or the timeout.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        payload: Payload,
        default_timeout: Duration,
    ) -> Acks {
        let timeout = self.timeout.unwrap_or(default_timeout);
        let remote = self
            .adapter()
            .map(|a| a.broadcast_with_ack(self.remote(event, &payload), timeout));
        let (here, remote) = futures_util::join!(
            self.emit_with_ack_here(event, payload, timeout),
            or_default(remote)
        );
        let mut acks = remote;
        acks.recipients += here.len();
        for (sid, res) in here {
            if let Ok(p) = res {
                acks.answers.push((Some(sid), p));
            }
        }
        acks
    }

    /// Sends `event` to every target of this node with an ack request and waits for each
    /// answer or the timeout. Returns one result per target.
    pub async fn emit_with_ack_here(
        &self,
        event: &str,
        payload: Payload,
        timeout: Duration,
    ) -> Vec<(Sid, Result<Payload, AckError>)> {
        let waits: Vec<_> = self
            .sockets()
            .into_iter()
            .map(|s| (s.id().clone(), s.send_with_ack(event, payload.clone())))
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let answers = waits.into_iter().map(|(sid, wait)| async move {
            let res = match wait {
                Err(e) => Err(e),
                Ok(w) => match tokio::time::timeout_at(deadline, w).await {
                    Ok(Ok(p)) => Ok(p),
                    Ok(Err(_)) => Err(AckError::Disconnected),
                    Err(_) => {
                        if let Some(s) = self.ns.0.stats.as_deref() {
                            s.ack_timeouts.inc();
                        }
                        Err(AckError::Timeout)
                    }
                },
            };
            (sid, res)
        });
        futures_util::future::join_all(answers).await
    }

    /// Sends `event` to every target of this node with an ack request. Returns how many
    /// targets it was sent to and a stream of the answers that come before `timeout`, each as
    /// it comes (a cluster passes them on one by one).
    pub fn emit_with_ack_each(
        &self,
        event: &str,
        payload: Payload,
        timeout: Duration,
    ) -> (usize, BoxStream<'static, (Sid, Payload)>) {
        let waits: futures_util::stream::FuturesUnordered<_> = self
            .sockets()
            .into_iter()
            .filter_map(|s| {
                Some((
                    s.id().clone(),
                    s.send_with_ack(event, payload.clone()).ok()?,
                ))
            })
            .map(|(sid, wait)| async move { (sid, wait.await) })
            .collect();
        let n = waits.len();
        let deadline = tokio::time::Instant::now() + timeout;
        let answers = waits
            .filter_map(|(sid, res)| std::future::ready(res.ok().map(|p| (sid, p))))
            .take_until(tokio::time::sleep_until(deadline));
        (n, Box::pin(answers))
    }

    /// The targeted sockets of every node.
    pub async fn fetch_sockets(&self) -> Vec<SocketInfo> {
        let remote = self
            .adapter()
            .map(|a| a.fetch_sockets(self.ns.name(), &self.targets()));
        let mut list: Vec<SocketInfo> = self.sockets().iter().map(Socket::info).collect();
        list.extend(or_default(remote).await);
        list
    }

    /// Makes every target, on every node, join `room`.
    pub fn join(&self, room: impl Into<Room>) {
        let room = room.into();
        if let Some(a) = self.adapter() {
            a.change_rooms(
                self.ns.name(),
                &self.targets(),
                std::slice::from_ref(&room),
                true,
            );
        }
        for s in self.sockets() {
            s.join(room.clone());
        }
    }

    /// Makes every target, on every node, leave `room`.
    pub fn leave(&self, room: &str) {
        if let Some(a) = self.adapter() {
            a.change_rooms(self.ns.name(), &self.targets(), &[room.into()], false);
        }
        for s in self.sockets() {
            s.leave(room);
        }
    }

    /// Disconnects every target on every node: from the namespace only, or (`close`) closing
    /// its connection. Returns how many sockets were disconnected.
    pub async fn disconnect(&self, close: bool) -> usize {
        let remote = self
            .adapter()
            .map(|a| a.disconnect_sockets(self.ns.name(), &self.targets(), close));
        self.disconnect_here(close) + or_default(remote).await
    }

    /// Disconnects every target of this node; returns how many there were.
    pub fn disconnect_here(&self, close: bool) -> usize {
        let targets = self.sockets();
        for s in &targets {
            if close {
                s.close_connection();
            } else {
                s.disconnect();
            }
        }
        targets.len()
    }
}
