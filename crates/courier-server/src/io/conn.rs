//! One client connection as the Socket.IO layer sees it: its sockets (one per joined namespace)
//! and the reassembly of binary packets.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use tokio::sync::Notify;

use courier_proto::engine::Data;
use courier_proto::socket::{Complete, Packet, PacketType, Reassembler};
use serde_json::Value;

use super::Shared;
use super::message::{ConnectError, DisconnectReason, Payload};
use super::recovery;
use super::socket::{Handshake, Restore, Socket};
use crate::auth::Access;
use crate::engine::{CloseReason, Outbound, Session};
use crate::stats::{RecoveryRefusal, Refusal};

/// One client connection as the Socket.IO layer keeps it.
pub struct Conn {
    pub(crate) session: Arc<Session>,
    pub(crate) io: Arc<Shared>,
    pub(crate) handshake: Handshake,
    // Blocking mutexes (parking_lot): short critical sections, never held across an await.
    sockets: Mutex<HashMap<Arc<str>, Socket>>,
    reassembler: Mutex<Reassembler>,
    /// Handlers of this connection that are still running after their first poll.
    inflight: AtomicUsize,
    drained: Notify,
    /// Set once the first CONNECT is accepted; see [`Conn::has_joined`].
    joined: AtomicBool,
    /// The events-per-second limit, when set.
    limiter: Option<governor::DefaultDirectRateLimiter>,
    /// Events refused by the limiter since the window began (ms since the connection opened).
    refused: Mutex<(u64, u32)>,
    opened: std::time::Instant,
}

/// How long refused events are counted toward `rate_limit_disconnect`.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Handlers one connection may have running before its transport stops reading.
const MAX_INFLIGHT: usize = 256;

impl Conn {
    pub(crate) fn new(session: Arc<Session>, io: Arc<Shared>, handshake: Handshake) -> Self {
        Conn {
            session,
            handshake,
            sockets: Mutex::new(HashMap::new()),
            reassembler: Mutex::new(Reassembler::default()),
            inflight: AtomicUsize::new(0),
            drained: Notify::new(),
            joined: AtomicBool::new(false),
            limiter: NonZeroU32::new(io.config.events_per_second).map(|rate| {
                let burst = NonZeroU32::new(io.config.event_burst).unwrap_or(rate);
                governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
            }),
            refused: Mutex::new((0, 0)),
            opened: std::time::Instant::now(),
            io,
        }
    }

    /// Whether an event may be handled under the rate limit. A refused event is answered with
    /// `rate_limited` when it asks for an ack; a client with `rate_limit_disconnect` events
    /// refused within `RATE_WINDOW` is disconnected.
    fn within_rate(&self, nsp: &str, ack: Option<u64>) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        if limiter.check().is_ok() {
            return true;
        }
        let refused = {
            let now = self.opened.elapsed().as_millis() as u64;
            let mut w = self.refused.lock();
            if w.1 == 0 || now.saturating_sub(w.0) > RATE_WINDOW.as_millis() as u64 {
                *w = (now, 0);
            }
            w.1 += 1;
            w.1
        };
        if refused == 1 {
            tracing::info!(sid = %self.session.sid(), nsp, "events refused: rate limit reached");
        }
        if let Some(s) = self.io.stats() {
            s.events_rate_limited.inc();
        }
        let cut = self.io.config.rate_limit_disconnect;
        if cut > 0 && refused >= cut {
            tracing::info!(sid = %self.session.sid(), refused, "closing connection: rate limited");
            self.session.close(CloseReason::RateLimited);
            return false;
        }
        if let Some(id) = ack {
            let rate = self.io.config.events_per_second;
            let answer = super::error_answer(
                "rate_limited",
                format!("more than {rate} events per second: slow down"),
            );
            let ack = super::AckSender {
                session: self.session.clone(),
                nsp: nsp.into(),
                id,
            };
            if let Ok(p) = Payload::new().arg(&answer) {
                let _ = ack.send(p);
            }
        }
        false
    }

    /// Runs a handler of this connection: polled at once, spawned if it has to wait, and
    /// counted while it runs so that a flooding client is slowed down rather than served with
    /// unbounded tasks.
    pub(crate) fn run<F>(self: &Arc<Self>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(fut) = super::poll_once(fut) else {
            return;
        };
        let held = self.hold();
        tokio::spawn(async move {
            fut.await;
            drop(held);
        });
    }

    /// Counts work of this connection that finishes elsewhere (a publish answered by the store)
    /// as a running handler until the guard is dropped.
    pub(crate) fn hold(self: &Arc<Self>) -> Inflight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        Inflight(self.clone())
    }

    /// Resolves once fewer than `MAX_INFLIGHT` handlers run; `None` if that is already so.
    pub(crate) fn ready(self: &Arc<Self>) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        if self.inflight.load(Ordering::Acquire) < MAX_INFLIGHT {
            return None;
        }
        let conn = self.clone();
        Some(Box::pin(async move {
            loop {
                let drained = conn.drained.notified();
                if conn.inflight.load(Ordering::Acquire) < MAX_INFLIGHT {
                    return;
                }
                drained.await;
            }
        }))
    }

    /// Whether a CONNECT of this connection has ever been accepted. The connect timeout applies
    /// until then only: a client that left every namespace keeps its connection.
    pub(crate) fn has_joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    fn socket(&self, nsp: &str) -> Option<Socket> {
        self.sockets.lock().get(nsp).cloned()
    }

    /// The connection's sockets, one per namespace joined.
    pub(crate) fn sockets(&self) -> Vec<Socket> {
        self.sockets.lock().values().cloned().collect()
    }

    fn refuse(&self, r: Refusal) {
        if let Some(s) = self.io.stats() {
            s.refuse(r);
        }
    }

    pub(crate) fn remove_socket(&self, nsp: &str) -> Option<Socket> {
        self.sockets.lock().remove(nsp)
    }

    pub(crate) fn on_message(self: &Arc<Self>, data: Data) {
        let result = {
            let mut r = self.reassembler.lock();
            match data {
                Data::Text(t) if !r.is_waiting() && self.reserved_fast(&t) => return,
                Data::Text(t) => r.text(&t),
                Data::Binary(b) => r.binary(b),
            }
        };
        match result {
            Ok(Some(complete)) => self.on_packet(complete),
            Ok(None) => {}
            Err(e) => {
                tracing::info!(sid = %self.session.sid(), error = %e, "closing connection: malformed Socket.IO packet");
                self.session.close(CloseReason::ParseError);
            }
        }
    }

    /// Handles a `courier:publish` to a joined namespace straight from its text (see
    /// [`super::streams::publish_fast`]); false when the packet takes the usual way. The
    /// admin UI's observer, when there is one, sees every event decoded.
    fn reserved_fast(&self, text: &[u8]) -> bool {
        let (Some(streams), None) = (self.io.streams.get(), self.io.observer()) else {
            return false;
        };
        let Ok(h) = courier_proto::socket::Header::split(text) else {
            return false;
        };
        // Every other event leaves here, before the socket is looked up.
        if h.kind != PacketType::Event || !super::streams::is_publish(h.json) {
            return false;
        }
        let Some(socket) = self.socket(h.nsp) else {
            return false;
        };
        super::streams::publish_fast(streams, &socket, h.id, h.json, || {
            let admitted = self.within_rate(h.nsp, h.id);
            if let (true, Some(s)) = (admitted, self.io.stats()) {
                s.events_received.inc();
            }
            admitted
        })
    }

    fn on_packet(
        self: &Arc<Self>,
        Complete {
            packet,
            attachments,
        }: Complete,
    ) {
        // A CONNECT is the only packet for a namespace not joined; the client may never send
        // CONNECT_ERROR. Anything else breaks the protocol and closes the connection, as the
        // reference server does. A CONNECT to a namespace joined already is ignored:
        // socket.io-client sends two when `connect()` is called on a socket that `io.socket()`
        // already connects (the reference, whose middlewares always defer, then opens two sockets).
        match (packet.kind, self.socket(&packet.nsp)) {
            (PacketType::Connect, None) => self.connect(packet),
            (PacketType::Connect, Some(_)) => {
                tracing::debug!(
                    nsp = packet.nsp,
                    "CONNECT to a namespace already joined: ignored"
                );
            }
            (PacketType::ConnectError, _) => {
                self.violation(&packet.nsp, Violation::ConnectErrorFromClient);
            }
            (kind, None) => self.violation(&packet.nsp, Violation::NotJoined(kind)),
            (PacketType::Disconnect, Some(_)) => {
                if let Some(s) = self.remove_socket(&packet.nsp) {
                    s.close(DisconnectReason::ClientNamespaceDisconnect);
                }
            }
            (PacketType::Event | PacketType::BinaryEvent, Some(s)) => {
                if self.within_rate(&packet.nsp, packet.id) {
                    s.dispatch(packet, attachments);
                }
            }
            (PacketType::Ack | PacketType::BinaryAck, Some(s)) => {
                // Without an id nothing waits for it; without a payload it answers with no
                // arguments (the reference server does both).
                if let Some(id) = packet.id {
                    let args = match packet.data {
                        Some(Value::Array(args)) => args,
                        _ => Vec::new(),
                    };
                    s.resolve_ack(id, Payload { args, attachments });
                }
            }
        }
    }

    /// Closes the connection of a client that broke the protocol.
    fn violation(&self, nsp: &str, violation: Violation) {
        tracing::info!(sid = %self.session.sid(), nsp, error = %violation, "closing connection: Socket.IO protocol violation");
        self.session.close(violation.close_reason());
    }

    fn send(&self, packet: Packet) {
        let _ = self.session.send(Outbound::Text(packet.encode_message()));
    }

    fn connect(self: &Arc<Self>, packet: Packet) {
        let nsp = packet.nsp;
        let max = self.io.config.max_namespaces_per_connection;
        if max > 0 && self.sockets.lock().len() >= max {
            tracing::debug!(
                nsp,
                max,
                "CONNECT refused: too many namespaces on one connection"
            );
            self.refuse(Refusal::TooManyNamespaces);
            let err = serde_json::json!({"message": "Too many namespaces"});
            self.send(Packet::new(PacketType::ConnectError, nsp, Some(err)));
            return;
        }
        let Some(ns) = self.io.namespace_for(&nsp) else {
            self.refuse(Refusal::InvalidNamespace);
            let err = serde_json::json!({"message": "Invalid namespace"});
            self.send(Packet::new(PacketType::ConnectError, nsp, Some(err)));
            return;
        };
        let mut auth = packet
            .data
            .unwrap_or_else(|| Value::Object(Default::default()));
        let attempt = self.recovery_attempt(&mut auth);
        let conn = self.clone();
        self.run(async move {
            let restored = match attempt {
                Some(attempt) => {
                    let result = conn.restore(&nsp, attempt).await;
                    if let Some(s) = conn.io.stats() {
                        s.recovery_attempts.inc();
                        if let Err(r) = &result {
                            s.recovery_refused(*r);
                        }
                    }
                    result.ok()
                }
                None => None,
            };
            let (restore, replay) = match restored {
                Some((r, replay)) => (Some(r), Some(replay)),
                None => (None, None),
            };
            let fresh_auth = restore.is_some().then(|| auth.clone());
            let position = match restore {
                None => conn.start_position(&nsp).await,
                Some(_) => None,
            };
            let mut socket = Socket::new(ns.clone(), conn.clone(), auth, restore, position);
            // Unlike the reference server's default, middlewares run for a recovered session
            // too: a session must not outlive the token it was opened with.
            if !conn.admit(&ns, &socket).await {
                return;
            }
            let mut replay = replay;
            if let Some(auth) = fresh_auth.filter(|_| socket.0.restored_sub != socket.sub()) {
                tracing::info!(sid = %socket.id(), nsp, sub = socket.sub(), "not recovered: the session belongs to another identity");
                if let Some(s) = conn.io.stats() {
                    s.recovery_refused(RecoveryRefusal::OtherIdentity);
                }
                replay = None;
                let position = conn.start_position(&nsp).await;
                socket = Socket::new(ns.clone(), conn.clone(), auth, None, position);
                if !conn.admit(&ns, &socket).await {
                    return;
                }
            }
            let recovered = socket.recovered();
            if conn.session.is_closed() {
                return;
            }
            if !socket.claim_identity_slot() {
                let max = conn.io.config.max_sockets_per_sub;
                tracing::info!(nsp, sub = socket.sub(), max, "CONNECT refused: max_sockets_per_sub");
                conn.refuse(Refusal::MaxSocketsPerSub);
                let err = ConnectError::new("too many connections")
                    .with_data(serde_json::json!({"code": "too_many_connections"}));
                conn.send(Packet::new(PacketType::ConnectError, &nsp, Some(err.to_json())));
                return;
            }
            conn.sockets.lock().insert(ns.name_arc(), socket.clone());
            conn.joined.store(true, Ordering::Release);
            socket.attach();
            let mut reply = serde_json::json!({"sid": socket.id().as_ref()});
            if let Some(pid) = &socket.0.pid {
                reply["pid"] = Value::String(pid.to_string());
            }
            conn.send(Packet::new(PacketType::Connect, &nsp, Some(reply)));
            if let Some(replay) = replay {
                // What the client may no longer touch is not restored.
                for room in replay.rooms {
                    if conn.io.authorize(&socket, &Access::Join(&room)).is_ok() {
                        socket.join(room);
                    }
                }
                for text in replay.missed {
                    let _ = conn.session.send(Outbound::Text(text));
                }
                if let Some(streams) = conn.io.streams.get() {
                    streams.restore(&socket, replay.subscriptions);
                }
            }
            socket.session_changed();
            if let Some(s) = conn.io.stats() {
                s.socket_connects.inc();
                if recovered {
                    s.recovered.inc();
                }
            }
            if let Some(o) = conn.io.observer() {
                o.socket_connected(&socket);
            }
            tracing::debug!(sid = %socket.id(), nsp, recovered, "socket connected");
            if let Some(h) = ns.connect_handler() {
                h(socket).await;
            }
        });
    }

    /// Where a new session's recovery begins in a cluster's shared log (`None`: the local one).
    async fn start_position(&self, nsp: &str) -> Option<u64> {
        match self.io.shared_recovery() {
            Some(a) => Some(a.recovery_position(nsp).await),
            None => None,
        }
    }

    /// Runs the namespace's middlewares on `socket`; a refusal is answered with CONNECT_ERROR.
    async fn admit(&self, ns: &super::Namespace, socket: &Socket) -> bool {
        for m in ns.middlewares() {
            if let Err(e) = m(socket.clone()).await {
                tracing::debug!(
                    nsp = ns.name(),
                    message = e.message,
                    "connection refused by middleware"
                );
                self.refuse(Refusal::Middleware);
                let p = Packet::new(PacketType::ConnectError, ns.name(), Some(e.to_json()));
                self.send(p);
                return false;
            }
        }
        true
    }

    /// With recovery on, takes `pid` and `offset` out of the auth payload.
    fn recovery_attempt(&self, auth: &mut Value) -> Option<RecoveryAttempt> {
        self.io.recovery.as_ref()?;
        let obj = auth.as_object_mut()?;
        let pid = obj.remove("pid");
        let offset = obj.remove("offset");
        Some(RecoveryAttempt {
            pid: pid?.as_str()?.to_owned(),
            offset: offset.as_ref().and_then(Value::as_str).map(str::to_owned),
        })
    }

    /// What to restore for `attempt`: if it names a session of this namespace whose connection
    /// is gone, every broadcast it missed is still kept (older ones are read from disk or from
    /// the cluster's shared log) and they fit in its outbound queue.
    async fn restore(
        &self,
        nsp: &str,
        attempt: RecoveryAttempt,
    ) -> Result<(Restore, Replay), RecoveryRefusal> {
        let store = self.io.recovery.as_ref().ok_or(RecoveryRefusal::Unknown)?;
        let shared = self.io.shared_recovery();
        let RecoveryAttempt { pid, offset } = attempt;
        let session = match shared {
            Some(a) => a.take_session(&pid).await,
            None => store.take_session(&pid),
        };
        let session = session.ok_or(RecoveryRefusal::Unknown)?;
        if session.nsp != nsp {
            return Err(RecoveryRefusal::WrongNamespace);
        }
        // The old connection is not known to be gone yet: no second socket with the same id.
        let ns = self.io.namespace_for(nsp);
        if ns.is_none_or(|ns| ns.socket(&session.sid).is_some()) {
            return Err(RecoveryRefusal::StillConnected);
        }
        // A client that received no recoverable broadcast has no offset: it missed everything
        // since its session began.
        let after = match offset {
            Some(o) => o.parse::<u64>().map_err(|_| RecoveryRefusal::BadOffset)?,
            None => session.since.saturating_sub(1),
        };
        let events = match shared {
            Some(a) => a.recoverable_after(nsp, after).await,
            None => store.recoverable_after(nsp, after).await,
        };
        let events = events.ok_or(RecoveryRefusal::Expired)?;
        let missed: Vec<bytes::Bytes> = events
            .iter()
            .filter(|e| recovery::was_for(e, &session.sid, &session.rooms))
            .map(|e| recovery::with_offset(nsp, &e.data, e.offset))
            .collect();
        // Queued all at once behind the CONNECT answer: more than half the queue would make
        // the client a slow client before it has read anything. It starts afresh instead, and
        // knows it (`socket.recovered` is false).
        let room = self.io.config.max_buffered_packets / 2;
        if missed.len() > room {
            tracing::info!(
                sid = session.sid,
                missed = missed.len(),
                room,
                "not recovered: too many missed broadcasts"
            );
            return Err(RecoveryRefusal::TooManyMissed);
        }
        let restore = Restore {
            sid: session.sid.as_str().into(),
            pid: pid.into(),
            since: session.since,
            data: session.data,
            sub: session.sub,
        };
        let replay = Replay {
            rooms: session.rooms,
            missed,
            subscriptions: session.subscriptions,
        };
        Ok((restore, replay))
    }

    pub(crate) fn on_close(&self, reason: CloseReason) {
        let sockets: Vec<Socket> = self.sockets.lock().drain().map(|(_, s)| s).collect();
        for s in sockets {
            s.close(DisconnectReason::Connection(reason));
        }
    }
}

/// A well-formed packet the client may not send in its connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Violation {
    /// A packet other than CONNECT for a namespace not joined (also before any CONNECT).
    #[error("{0:?} for a namespace not joined")]
    NotJoined(PacketType),
    /// CONNECT_ERROR is the server's answer; a client never sends it.
    #[error("client sent CONNECT_ERROR")]
    ConnectErrorFromClient,
}

impl Violation {
    /// What the connection's sockets are told: like a malformed packet, and not recoverable.
    fn close_reason(self) -> CloseReason {
        match self {
            Violation::NotJoined(_) | Violation::ConnectErrorFromClient => CloseReason::ParseError,
        }
    }
}

/// A CONNECT that names a recoverable session.
struct RecoveryAttempt {
    pid: String,
    offset: Option<String>,
}

/// What a recovered socket gets back after its CONNECT answer.
struct Replay {
    rooms: Vec<String>,
    missed: Vec<bytes::Bytes>,
    subscriptions: Vec<(String, String)>,
}

/// One unit of a connection's running work; see [`Conn::hold`].
pub(crate) struct Inflight(Arc<Conn>);

impl Drop for Inflight {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) <= MAX_INFLIGHT {
            self.0.drained.notify_waiters();
        }
    }
}
