//! One namespace over the client's connection: joining it, handlers, emits, acknowledgements and
//! the state connection state recovery needs (`pid`, last offset).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use bytes::Bytes;
use courier_proto::socket::{Packet, PacketType, is_event_name};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::Payload;
use crate::client::{Client, Out};
use crate::engine::Frame;
use crate::error::{Error, Result};
use crate::streams::{Delivery, DeliveryMeta, Sub};

/// Why a socket is not (or no longer) connected. [`DisconnectReason::as_str`] gives the names
/// socket.io-client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server made the socket leave the namespace. It is not reconnected.
    ServerDisconnect,
    /// The application called [`Socket::disconnect`] or [`Client::close`].
    ClientDisconnect,
    /// The connection was closed (server gone, restarted, or it closed the session).
    TransportClose,
    /// The connection failed.
    TransportError,
    /// The server stopped sending pings.
    PingTimeout,
    /// The server sent something that is not Engine.IO / Socket.IO.
    ParseError,
}

impl DisconnectReason {
    /// The reason as socket.io-client names it, e.g. `"transport close"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServerDisconnect => "io server disconnect",
            Self::ClientDisconnect => "io client disconnect",
            Self::TransportClose => "transport close",
            Self::TransportError => "transport error",
            Self::PingTimeout => "ping timeout",
            Self::ParseError => "parse error",
        }
    }

    /// Whether the client reconnects on its own after this.
    pub fn reconnects(self) -> bool {
        !matches!(self, Self::ServerDisconnect | Self::ClientDisconnect)
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a socket stands, as [`Socket::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// [`Socket::connect`] was never called.
    Idle,
    /// A CONNECT is on its way, or waits for the connection to come back.
    Connecting,
    /// In the namespace.
    Connected {
        /// The socket id the server gave.
        sid: String,
        /// Whether the server restored an earlier session (connection state recovery).
        recovered: bool,
    },
    /// Out of the namespace; with a reason that [reconnects](DisconnectReason::reconnects), only
    /// until the connection is back.
    Disconnected(DisconnectReason),
    /// The namespace refused the socket (CONNECT_ERROR); it is not retried.
    Refused {
        /// The server's message.
        message: String,
    },
}

type Handler = Arc<dyn Fn(Event) + Send + Sync>;

#[derive(Default)]
struct Handlers {
    by_name: HashMap<String, Handler>,
    any: Option<Handler>,
}

struct State {
    /// The application wants the socket in its namespace.
    wanted: bool,
    auth: Map<String, Value>,
    /// Set while connected: the connection generation and its outbound queue.
    conn: Option<(u64, mpsc::Sender<Out>)>,
    /// Generation of the connection the last CONNECT went out on (0: none).
    connect_sent: u64,
    sid: Option<String>,
    pid: Option<String>,
    offset: Option<String>,
    recovered: bool,
    /// Emits made while not connected, with their ack ids.
    buffer: VecDeque<(Frame, Option<u64>)>,
    waiters: Vec<oneshot::Sender<Result<()>>>,
}

/// The part of a socket the connection task also holds.
pub(crate) struct SocketInner {
    pub(crate) nsp: String,
    buffer_capacity: usize,
    pub(crate) subscription_capacity: usize,
    // Blocking mutexes (parking_lot) here and below: held for a few field updates, never across an await.
    state: Mutex<State>,
    handlers: Mutex<Handlers>,
    acks: Mutex<HashMap<u64, oneshot::Sender<Payload>>>,
    next_ack: AtomicU64,
    pub(crate) subs: Mutex<HashMap<String, Sub>>,
    status: watch::Sender<Status>,
}

/// One namespace of a [`Client`], like socket.io-client's `Socket`. Cheap to clone; every clone
/// is the same socket.
///
/// Register handlers with [`Socket::on`] before [`Socket::connect`], so that nothing the server
/// sends on connection is missed.
#[derive(Clone)]
pub struct Socket {
    pub(crate) inner: Arc<SocketInner>,
    pub(crate) client: Client,
}

/// An event from the server.
pub struct Event {
    /// The event name.
    pub name: String,
    /// Its arguments.
    pub payload: Payload,
    ack: Option<AckHandle>,
    offset: Option<String>,
}

/// The means to answer one acknowledgement request.
pub(crate) struct AckHandle {
    socket: Arc<SocketInner>,
    id: u64,
    generation: u64,
}

impl AckHandle {
    pub(crate) fn send(self, payload: Payload) -> Result<()> {
        let packet = Packet::ack(
            &self.socket.nsp,
            self.id,
            payload.args,
            payload.attachments.len(),
        );
        let frame = Frame {
            text: packet.encode_message(),
            attachments: payload.attachments,
        };
        let st = self.socket.state.lock();
        match &st.conn {
            Some((generation, tx)) if *generation == self.generation => {
                tx.try_send(Out::Frame(frame)).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => Error::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => Error::Disconnected,
                })
            }
            _ => Err(Error::StaleAck),
        }
    }
}

impl Event {
    /// The connection state recovery offset the event carries, if any: with a session id from
    /// the server, an event that asks no ack and has no binary argument has its offset as last
    /// argument. As in socket.io-client, that argument stays in `payload.args` too.
    pub fn offset(&self) -> Option<&str> {
        self.offset.as_deref()
    }

    /// Whether the server asked for an acknowledgement.
    pub fn wants_ack(&self) -> bool {
        self.ack.is_some()
    }

    /// Answers the server's acknowledgement request with `payload` (binary arguments included).
    /// Does nothing when no acknowledgement was asked for or it was already sent. Never waits:
    /// fails with [`Error::QueueFull`] when the outbound queue is full, and with
    /// [`Error::StaleAck`] when the event came on a connection that has since been lost.
    pub fn ack(&mut self, payload: impl Into<Payload>) -> Result<()> {
        match self.ack.take() {
            Some(h) => h.send(payload.into()),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.name)
            .field("payload", &self.payload)
            .field("wants_ack", &self.wants_ack())
            .finish()
    }
}

fn check_event_name(event: &str) -> Result<()> {
    if !is_event_name(event) {
        return Err(Error::InvalidEvent(event.to_owned()));
    }
    Ok(())
}

pub(crate) fn event_frame(nsp: &str, event: &str, payload: Payload, id: Option<u64>) -> Frame {
    let mut packet = Packet::event(nsp, event, payload.args, payload.attachments.len());
    packet.id = id;
    Frame {
        text: packet.encode_message(),
        attachments: payload.attachments,
    }
}

impl SocketInner {
    pub(crate) fn new(nsp: String, buffer_capacity: usize, subscription_capacity: usize) -> Self {
        SocketInner {
            nsp,
            buffer_capacity,
            subscription_capacity,
            state: Mutex::new(State {
                wanted: false,
                auth: Map::new(),
                conn: None,
                connect_sent: 0,
                sid: None,
                pid: None,
                offset: None,
                recovered: false,
                buffer: VecDeque::new(),
                waiters: Vec::new(),
            }),
            handlers: Mutex::new(Handlers::default()),
            acks: Mutex::new(HashMap::new()),
            next_ack: AtomicU64::new(0),
            subs: Mutex::new(HashMap::new()),
            status: watch::Sender::new(Status::Idle),
        }
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.state().conn.is_some()
    }

    /// The CONNECT to send on connection `generation`, if the socket wants one there.
    pub(crate) fn connect_frame(&self, generation: u64) -> Option<Frame> {
        let mut st = self.state();
        if !st.wanted || st.conn.is_some() || st.connect_sent == generation {
            return None;
        }
        st.connect_sent = generation;
        // socket.io-client's order: pid and offset first, the application's auth over them.
        let mut data = Map::new();
        if let Some(pid) = &st.pid {
            data.insert("pid".into(), Value::String(pid.clone()));
            if let Some(offset) = &st.offset {
                data.insert("offset".into(), Value::String(offset.clone()));
            }
        }
        for (k, v) in &st.auth {
            data.insert(k.clone(), v.clone());
        }
        let data = (!data.is_empty()).then_some(Value::Object(data));
        drop(st);
        self.status.send_if_modified(|s| {
            let changed = !matches!(s, Status::Connecting);
            *s = Status::Connecting;
            changed
        });
        let packet = Packet::new(PacketType::Connect, &self.nsp, data);
        Some(Frame::text(packet.encode_message()))
    }

    /// The namespace accepted the socket on connection `generation`. Returns what to send right
    /// away: subscriptions to renew, then the emits buffered while disconnected.
    pub(crate) fn on_connect(
        self: &Arc<Self>,
        generation: u64,
        tx: &mpsc::Sender<Out>,
        data: Option<Value>,
        writes: &mut Vec<Frame>,
    ) {
        let sid = data
            .as_ref()
            .and_then(|d| d.get("sid"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let pid = data
            .as_ref()
            .and_then(|d| d.get("pid"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let Some(sid) = sid else {
            tracing::warn!(nsp = self.nsp, "CONNECT answer without a sid: ignored");
            return;
        };
        let mut st = self.state();
        if !st.wanted {
            // disconnect() was called while the CONNECT was on its way.
            drop(st);
            let p = Packet::new(PacketType::Disconnect, &self.nsp, None);
            writes.push(Frame::text(p.encode_message()));
            return;
        }
        let recovered = pid.is_some() && pid == st.pid;
        if !recovered {
            // Offsets of an earlier session mean nothing to this one.
            st.offset = None;
        }
        st.pid = pid;
        st.sid = Some(sid.clone());
        st.recovered = recovered;
        st.conn = Some((generation, tx.clone()));
        if !recovered {
            // With recovery the server restored the subscriptions itself.
            for frame in self.resubscribe_frames() {
                writes.push(frame);
            }
        }
        writes.extend(st.buffer.drain(..).map(|(f, _)| f));
        let waiters = std::mem::take(&mut st.waiters);
        drop(st);
        for w in waiters {
            let _ = w.send(Ok(()));
        }
        tracing::debug!(nsp = self.nsp, sid, recovered, "socket connected");
        self.status
            .send_replace(Status::Connected { sid, recovered });
    }

    fn resubscribe_frames(self: &Arc<Self>) -> Vec<Frame> {
        let requests: Vec<(String, Value)> = self
            .subs
            .lock()
            .iter()
            .map(|(stream, s)| (stream.clone(), s.request.clone()))
            .collect();
        let mut frames = Vec::new();
        for (stream, request) in requests {
            let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.acks.lock().insert(id, tx);
            frames.push(event_frame(
                &self.nsp,
                "courier:subscribe",
                Payload::from(request),
                Some(id),
            ));
            let nsp = self.nsp.clone();
            tokio::spawn(async move {
                match rx.await {
                    Ok(p) => {
                        let answer = p.args.into_iter().next().unwrap_or(Value::Null);
                        match Error::from_answer(&answer) {
                            None => tracing::debug!(nsp, stream, "subscription renewed"),
                            Some(e) => {
                                tracing::warn!(nsp, stream, error = %e, "renewing a subscription failed");
                            }
                        }
                    }
                    Err(_) => tracing::debug!(nsp, stream, "connection lost while resubscribing"),
                }
            });
        }
        frames
    }

    /// The namespace refused the socket.
    pub(crate) fn on_refused(&self, data: Option<Value>) {
        let (message, extra) = match &data {
            Some(Value::String(s)) => (s.clone(), None),
            Some(Value::Object(o)) => (
                o.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("refused")
                    .to_owned(),
                o.get("data").cloned(),
            ),
            _ => ("refused".to_owned(), None),
        };
        let mut st = self.state();
        st.wanted = false;
        st.connect_sent = 0;
        let waiters = std::mem::take(&mut st.waiters);
        let buffered: Vec<Option<u64>> = st.buffer.drain(..).map(|(_, id)| id).collect();
        drop(st);
        {
            let mut acks = self.acks.lock();
            for id in buffered.into_iter().flatten() {
                acks.remove(&id);
            }
        }
        for w in waiters {
            let _ = w.send(Err(Error::Refused {
                namespace: self.nsp.clone(),
                message: message.clone(),
                data: extra.clone(),
            }));
        }
        tracing::debug!(nsp = self.nsp, message, "namespace refused the socket");
        self.status.send_replace(Status::Refused { message });
    }

    /// The socket is out of its namespace: the server said so, the application asked, or the
    /// connection is gone. Acknowledgements already sent can no longer come.
    pub(crate) fn on_disconnect(&self, reason: DisconnectReason) {
        let mut st = self.state();
        let was_in = st.conn.take().is_some() || st.connect_sent != 0;
        st.connect_sent = 0;
        if !reason.reconnects() {
            st.wanted = false;
        }
        let keep: Vec<u64> = if st.wanted {
            st.buffer.iter().filter_map(|(_, id)| *id).collect()
        } else {
            st.buffer.clear();
            Vec::new()
        };
        let waiters = if st.wanted {
            Vec::new()
        } else {
            std::mem::take(&mut st.waiters)
        };
        drop(st);
        self.acks.lock().retain(|id, _| keep.contains(id));
        for w in waiters {
            let err = if reason == DisconnectReason::ClientDisconnect {
                Error::Closed
            } else {
                Error::Disconnected
            };
            let _ = w.send(Err(err));
        }
        if was_in {
            tracing::debug!(
                nsp = self.nsp,
                reason = reason.as_str(),
                "socket disconnected"
            );
            self.status.send_replace(Status::Disconnected(reason));
        }
    }

    /// An EVENT: a delivery of a subscribed stream, or an event for the handlers.
    pub(crate) fn on_event(
        self: &Arc<Self>,
        generation: u64,
        packet: Packet,
        attachments: Vec<Bytes>,
    ) {
        let id = packet.id;
        let Some(Value::Array(mut args)) = packet.data else {
            return;
        };
        if args.is_empty() {
            return;
        }
        let Value::String(name) = args.remove(0) else {
            return;
        };
        // Offsets ride on broadcasts, which never ask for an ack nor carry binary arguments.
        let offset = match args.last() {
            Some(Value::String(o)) if id.is_none() && attachments.is_empty() => {
                let mut st = self.state();
                st.pid.is_some().then(|| {
                    st.offset = Some(o.clone());
                    o.clone()
                })
            }
            _ => None,
        };
        let ack = id.map(|id| AckHandle {
            socket: self.clone(),
            id,
            generation,
        });
        if let Some(ack) = ack.as_ref().filter(|_| args.len() == 2)
            && let Some(meta) = DeliveryMeta::parse(&args[1])
        {
            let tx = self.subs.lock().get(&meta.stream).map(|s| s.tx.clone());
            if let Some(tx) = tx {
                let data = args.swap_remove(0);
                let delivery = Delivery {
                    event: name,
                    data,
                    meta,
                    ack: AckHandle {
                        socket: ack.socket.clone(),
                        id: ack.id,
                        generation,
                    },
                };
                if let Err(e) = tx.try_send(delivery) {
                    let d = e.into_inner();
                    // Unacknowledged, it comes again after the consumer's ack_wait.
                    tracing::warn!(
                        stream = d.meta.stream,
                        seq = d.meta.seq,
                        "subscription full or dropped: delivery left for redelivery"
                    );
                }
                return;
            }
        }
        let handler = {
            let h = self.handlers.lock();
            h.by_name.get(&name).or(h.any.as_ref()).cloned()
        };
        let Some(handler) = handler else {
            tracing::trace!(nsp = self.nsp, event = name, "no handler");
            return;
        };
        let event = Event {
            name,
            payload: Payload { args, attachments },
            ack,
            offset,
        };
        // A panicking handler must not take the connection down with it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(event))).is_err() {
            tracing::error!(nsp = self.nsp, "an event handler panicked");
        }
    }

    /// An ACK for one of our emits.
    pub(crate) fn on_ack(&self, packet: Packet, attachments: Vec<Bytes>) {
        let Some(id) = packet.id else { return };
        let Some(tx) = self.acks.lock().remove(&id) else {
            tracing::debug!(nsp = self.nsp, id, "acknowledgement for no pending emit");
            return;
        };
        let args = match packet.data {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let _ = tx.send(Payload { args, attachments });
    }
}

impl Socket {
    /// The namespace, e.g. `/` or `/admin`.
    pub fn namespace(&self) -> &str {
        &self.inner.nsp
    }

    /// The client this socket belongs to.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The socket id the server gave last (still set after a disconnection).
    pub fn id(&self) -> Option<String> {
        self.inner.state().sid.clone()
    }

    /// Whether the socket is in its namespace now.
    pub fn connected(&self) -> bool {
        self.inner.state().conn.is_some()
    }

    /// Whether the last connection restored the previous session (connection state recovery):
    /// same socket id, rooms and subscriptions, and the missed broadcasts were replayed.
    pub fn recovered(&self) -> bool {
        self.inner.state().recovered
    }

    /// The private session id the server gave for connection state recovery, if it did.
    pub fn pid(&self) -> Option<String> {
        self.inner.state().pid.clone()
    }

    /// The offset of the last broadcast received, sent back on reconnection.
    pub fn last_offset(&self) -> Option<String> {
        self.inner.state().offset.clone()
    }

    /// Watches the socket's [`Status`].
    pub fn status(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// Sets the auth payload sent with every CONNECT of this socket (an object; anything else
    /// is sent as `{}`).
    pub fn set_auth(&self, auth: Value) -> &Self {
        self.inner.state().auth = match auth {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        self
    }

    /// Handles the event `event`: `f` runs on the connection's task, in arrival order, so it
    /// should not block (spawn a task for slow work; [`Event::ack`] never waits). Replaces an
    /// earlier handler of the same event.
    pub fn on<F>(&self, event: &str, f: F) -> &Self
    where
        F: Fn(Event) + Send + Sync + 'static,
    {
        self.inner
            .handlers
            .lock()
            .by_name
            .insert(event.to_owned(), Arc::new(f));
        self
    }

    /// Handles every event that has no handler of its own.
    pub fn on_any<F>(&self, f: F) -> &Self
    where
        F: Fn(Event) + Send + Sync + 'static,
    {
        self.inner.handlers.lock().any = Some(Arc::new(f));
        self
    }

    /// Removes the handler of `event`.
    pub fn off(&self, event: &str) -> &Self {
        self.inner.handlers.lock().by_name.remove(event);
        self
    }

    /// Joins the namespace and waits for the server's answer (at most the configured
    /// `connect_timeout`). Once joined, the socket rejoins by itself after every reconnection,
    /// until [`Socket::disconnect`] or a disconnection by the server.
    pub async fn connect(&self) -> Result<()> {
        let rx = {
            let mut st = self.inner.state();
            if st.conn.is_some() {
                return Ok(());
            }
            st.wanted = true;
            let (tx, rx) = oneshot::channel();
            st.waiters.push(tx);
            rx
        };
        self.client.request_connect(&self.inner);
        let timeout = self.client.config().connect_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout("the namespace to accept the socket")),
        }
    }

    /// Waits until the socket is connected (again), at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.status();
        let wait = rx.wait_for(|s| matches!(s, Status::Connected { .. }));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout("the socket to connect")),
        }
    }

    /// Leaves the namespace. The connection stays open for the client's other sockets.
    pub async fn disconnect(&self) {
        let conn = {
            let mut st = self.inner.state();
            st.wanted = false;
            st.conn.clone()
        };
        if let Some((_, tx)) = conn {
            let p = Packet::new(PacketType::Disconnect, &self.inner.nsp, None);
            let _ = tx.send(Out::Frame(Frame::text(p.encode_message()))).await;
        }
        self.inner.on_disconnect(DisconnectReason::ClientDisconnect);
    }

    /// Sends `event` with `payload`. While the socket is not connected (but wants to be), the
    /// emit is kept and sent once it is; with the outbound queue full, this waits for room.
    pub async fn emit(&self, event: &str, payload: impl Into<Payload>) -> Result<()> {
        check_event_name(event)?;
        let frame = event_frame(&self.inner.nsp, event, payload.into(), None);
        self.send(frame, None).await
    }

    /// Sends `event` and waits at most `timeout` for the server's acknowledgement, whose
    /// arguments it returns. Fails with [`Error::Disconnected`] when the connection is lost
    /// after the emit went out (the answer cannot come any more).
    pub async fn emit_with_ack(
        &self,
        event: &str,
        payload: impl Into<Payload>,
        timeout: Duration,
    ) -> Result<Payload> {
        check_event_name(event)?;
        self.request(event, payload.into(), timeout).await
    }

    /// An emit with an ack, reserved names allowed.
    pub(crate) async fn request(
        &self,
        event: &str,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Payload> {
        let id = self.inner.next_ack.fetch_add(1, Ordering::Relaxed);
        let frame = event_frame(&self.inner.nsp, event, payload, Some(id));
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.send(frame, Some((id, tx))).await {
            self.inner.acks.lock().remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => {
                self.inner.acks.lock().remove(&id);
                Err(Error::Timeout("an acknowledgement"))
            }
        }
    }

    /// Sends `frame` now, or keeps it for the next connection.
    async fn send(&self, frame: Frame, ack: Option<(u64, oneshot::Sender<Payload>)>) -> Result<()> {
        if let Some(limit) = self.client.max_payload() {
            let size = frame.largest();
            if size > limit {
                return Err(Error::TooLarge { size, limit });
            }
        }
        let tx = {
            let mut st = self.inner.state();
            // Registered under the state lock, so that a lost connection either sees the ack
            // as buffered or as sent and lost.
            let id = ack.map(|(id, tx)| {
                self.inner.acks.lock().insert(id, tx);
                id
            });
            match &st.conn {
                Some((_, tx)) => tx.clone(),
                None if st.wanted => {
                    if st.buffer.len() >= self.inner.buffer_capacity {
                        return Err(Error::BufferFull(st.buffer.len()));
                    }
                    st.buffer.push_back((frame, id));
                    return Ok(());
                }
                None => return Err(Error::Disconnected),
            }
        };
        tx.send(Out::Frame(frame))
            .await
            .map_err(|_| Error::Disconnected)
    }

    /// Joins rooms on a Courier hub (`courier:join`); returns every room the socket is in.
    pub async fn join(&self, rooms: &[&str]) -> Result<Vec<String>> {
        self.rooms_request("courier:join", rooms).await
    }

    /// Leaves rooms on a Courier hub (`courier:leave`); returns the rooms the socket is still in.
    pub async fn leave(&self, rooms: &[&str]) -> Result<Vec<String>> {
        self.rooms_request("courier:leave", rooms).await
    }

    async fn rooms_request(&self, event: &str, rooms: &[&str]) -> Result<Vec<String>> {
        let timeout = self.client.config().request_timeout;
        let answer = self
            .request(event, Payload::from(json!(rooms)), timeout)
            .await?;
        let answer = answer.args.into_iter().next().unwrap_or(Value::Null);
        if let Some(e) = Error::from_answer(&answer) {
            return Err(e);
        }
        serde_json::from_value(answer.get("rooms").cloned().unwrap_or(Value::Null))
            .map_err(|_| Error::BadAnswer(answer.to_string()))
    }
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("namespace", &self.inner.nsp)
            .field("id", &self.id())
            .field("connected", &self.connected())
            .finish()
    }
}
