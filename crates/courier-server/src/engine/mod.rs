//! Engine.IO v4 server: the handshake, the two transports, the upgrade between them and the
//! heartbeat. It moves Engine.IO messages between clients and a [`Handler`] and knows nothing of
//! Socket.IO.
//!
//! Each session has one bounded outbound queue ([`Session::send`]). Exactly one writer drains it:
//! the pending long-polling GET, or the WebSocket task, which writes every ready frame with one
//! vectored write. WebSocket frames are Courier's own (`courier_proto::ws`): an idle connection
//! holds no read or write buffer. A per-session driver task sends pings, enforces the ping timeout and, when the session
//! closes, removes it and tells the handler.
//!
//! On a cluster ([`Engine::set_peers`]) sids name the node that made them, and a request for a
//! session another node owns is forwarded there (`forward`), so no sticky load balancing is needed.

mod forward;
mod http;
mod peers;
mod polling;
mod session;
mod websocket;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use courier_proto::engine::Data;
use dashmap::DashMap;
use parking_lot::RwLock;

pub use self::http::{EngineError, EngineService, RemoteAddr};
pub use peers::Peers;
pub use session::{CloseReason, Outbound, SendError, Session, Sid, Transport, new_id};

use forward::Cluster;

use crate::config::Config;
use crate::stats::Stats;

/// How long a long-polling session closed by the server waits for the GET that tells the client.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The layer above Engine.IO: told of each session's opening, messages and closing.
pub trait Handler: Send + Sync + 'static {
    /// Per-session state the handler keeps.
    type Conn: Send + Sync + 'static;

    /// A session was opened by a handshake; `parts` is the handshake request.
    fn on_open(&self, session: &Arc<Session>, parts: &::http::request::Parts) -> Arc<Self::Conn>;

    /// A message arrived. Called in arrival order, never concurrently for one session.
    fn on_message(&self, conn: &Arc<Self::Conn>, data: Data);

    /// The session closed; called once.
    fn on_close(&self, conn: &Arc<Self::Conn>, reason: CloseReason);

    /// `connect_timeout` has passed since the session opened (called once, while it is open).
    fn on_connect_timeout(&self, conn: &Arc<Self::Conn>) {
        let _ = conn;
    }

    /// The session moved from long-polling to WebSocket.
    fn on_upgrade(&self, conn: &Arc<Self::Conn>) {
        let _ = conn;
    }

    /// Back-pressure: `Some(future)` while the handler cannot take more messages from this
    /// session; the transport stops reading until it resolves (and keeps writing).
    fn ready(
        &self,
        conn: &Arc<Self::Conn>,
    ) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        let _ = conn;
        None
    }
}

/// An Engine.IO server. Cheap to clone.
pub struct Engine<H: Handler> {
    inner: Arc<Inner<H>>,
}

impl<H: Handler> Clone for Engine<H> {
    fn clone(&self) -> Self {
        Engine {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<H: Handler> {
    config: Config,
    handler: H,
    sessions: DashMap<Sid, Entry<H::Conn>>,
    /// The other nodes, once installed. Read at a handshake and for a sid not known here, never
    /// for a session found locally. A blocking lock (parking_lot): only cloned out of, at once.
    cluster: RwLock<Option<Arc<Cluster>>>,
    stats: Option<Arc<Stats>>,
    /// Open sessions per client address, when `max_sessions_per_ip` is set.
    per_ip: DashMap<IpAddr, usize>,
    /// Handshakes per client address, when `handshakes_per_ip_per_second` is set.
    handshakes: Option<governor::DefaultKeyedRateLimiter<IpAddr>>,
    /// Handshakes counted, to prune `handshakes` now and then.
    handshake_count: AtomicU64,
}

struct Entry<C> {
    session: Arc<Session>,
    conn: Arc<C>,
}

impl<C> Clone for Entry<C> {
    fn clone(&self) -> Self {
        Entry {
            session: self.session.clone(),
            conn: self.conn.clone(),
        }
    }
}

impl<H: Handler> Engine<H> {
    /// An engine with `config` that hands messages to `handler`.
    pub fn new(config: Config, handler: H) -> Self {
        let stats = config.metrics.then(Arc::default);
        Self::with_stats(config, handler, stats)
    }

    /// An engine that counts into `stats` (none: counts nothing).
    pub(crate) fn with_stats(config: Config, handler: H, stats: Option<Arc<Stats>>) -> Self {
        Engine {
            inner: Arc::new(Inner {
                handler,
                sessions: DashMap::new(),
                cluster: RwLock::new(None),
                stats,
                per_ip: DashMap::new(),
                handshakes: NonZeroU32::new(config.handshakes_per_ip_per_second)
                    .map(|n| governor::RateLimiter::keyed(governor::Quota::per_second(n))),
                handshake_count: AtomicU64::new(0),
                config,
            }),
        }
    }

    /// The counters, when the engine counts.
    pub(crate) fn stats(&self) -> Option<&Stats> {
        self.inner.stats.as_deref()
    }

    /// Open sessions by transport: `(polling, websocket)`. Walks the session table.
    pub fn transport_counts(&self) -> (usize, usize) {
        let mut ws = 0;
        let mut all = 0;
        for e in self.inner.sessions.iter() {
            if e.session.is_closed() {
                continue;
            }
            all += 1;
            ws += usize::from(e.session.transport() == Transport::WebSocket);
        }
        (all - ws, ws)
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Makes this engine one node of a cluster, replacing any peers installed before: from now
    /// on every sid it makes starts with `peers.node_id()`, and a request for a sid it does not
    /// know is forwarded to the node that sid names (see [`Peers`]).
    ///
    /// # Panics
    ///
    /// If the node id is empty, longer than 32 characters, or has a character other than ASCII
    /// letters, digits, `-` and `_`.
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        if let Err(e) = peers::check_node_id(peers.node_id()) {
            panic!("invalid node id {:?}: {e}", peers.node_id());
        }
        *self.inner.cluster.write() = Some(Arc::new(Cluster::new(peers)));
    }

    /// The installed cluster, if any.
    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.inner.cluster.read().clone()
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.inner.handler
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Closes every session with `reason` and waits, up to `grace`, for them to be gone.
    pub async fn close_all(&self, reason: CloseReason, grace: Duration) {
        for entry in self.inner.sessions.iter() {
            entry.session.close(reason);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.inner.sessions.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The session a request names. A closed session stays in the map until its driver removes
    /// it, but only one still owing a long-polling client its close packet is found: as with the
    /// reference server, a session that ended is unknown at once.
    fn entry(&self, sid: &str) -> Option<Entry<H::Conn>> {
        let entry = self.inner.sessions.get(sid).map(|e| e.clone())?;
        let s = &entry.session;
        (!s.is_closed() || s.lingers()).then_some(entry)
    }

    /// The address of a handshake's client, if the per-address limits apply to it.
    fn limited_address(&self, extensions: &::http::Extensions) -> Option<IpAddr> {
        let ip = extensions.get::<RemoteAddr>()?.0.ip();
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        (!(self.inner.config.exempt_loopback && ip.is_loopback())).then_some(ip)
    }

    /// Refuses a handshake past the per-address limits.
    fn admit_address<B>(&self, req: &::http::Request<B>) -> Result<(), EngineError> {
        let Some(ip) = self.limited_address(req.extensions()) else {
            return Ok(());
        };
        if let Some(limiter) = &self.inner.handshakes {
            // Addresses not seen for a while are forgotten, so the table stays small.
            if self.inner.handshake_count.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
                limiter.retain_recent();
            }
            if limiter.check_key(&ip).is_err() {
                tracing::info!(%ip, "handshake refused: handshakes_per_ip_per_second");
                return Err(EngineError::TooManyHandshakes);
            }
        }
        let max = self.inner.config.max_sessions_per_ip;
        if max > 0 && self.inner.per_ip.get(&ip).is_some_and(|n| *n >= max) {
            tracing::info!(%ip, max, "handshake refused: max_sessions_per_ip");
            return Err(EngineError::TooManyFromAddress);
        }
        Ok(())
    }

    /// Opens a session and starts its driver.
    fn open(&self, transport: Transport, parts: &::http::request::Parts) -> Entry<H::Conn> {
        let sid = match &*self.inner.cluster.read() {
            Some(cluster) => session::prefixed_id(&cluster.node),
            None => new_id(),
        };
        if let Some(s) = self.stats() {
            s.opened(transport);
        }
        let session = Session::new(
            sid,
            transport,
            self.inner.config.max_buffered_packets,
            self.inner.stats.clone(),
        );
        let conn = self.inner.handler.on_open(&session, parts);
        let entry = Entry { session, conn };
        self.inner
            .sessions
            .insert(entry.session.sid().clone(), entry.clone());
        let ip = self
            .limited_address(&parts.extensions)
            .filter(|_| self.inner.config.max_sessions_per_ip > 0);
        if let Some(ip) = ip {
            *self.inner.per_ip.entry(ip).or_insert(0) += 1;
        }
        tokio::spawn(self.clone().drive(entry.clone(), ip));
        entry
    }

    /// The open packet's JSON for a new session.
    fn handshake(&self, sid: &str, transport: Transport) -> Bytes {
        let c = &self.inner.config;
        let upgrades: &[&str] = if transport == Transport::Polling && c.websocket {
            &["websocket"]
        } else {
            &[]
        };
        let open = serde_json::json!({
            "sid": sid,
            "upgrades": upgrades,
            "pingInterval": c.ping_interval.as_millis() as u64,
            "pingTimeout": c.ping_timeout.as_millis() as u64,
            "maxPayload": c.max_payload,
        });
        let mut text = b"0".to_vec();
        serde_json::to_writer(&mut text, &open).expect("JSON of plain values");
        text.into()
    }

    /// Heartbeat and cleanup of one session.
    async fn drive(self, entry: Entry<H::Conn>, ip: Option<IpAddr>) {
        let session = &entry.session;
        let (interval, timeout) = (
            self.inner.config.ping_interval,
            self.inner.config.ping_timeout,
        );
        // One task per session keeps every timer of it: no extra task for the connect timeout.
        let mut connect_deadline =
            Some(tokio::time::Instant::now() + self.inner.config.connect_timeout);
        loop {
            let next_ping = tokio::time::Instant::now() + interval;
            loop {
                let wake = connect_deadline.map_or(next_ping, |d| d.min(next_ping));
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = session.closed() => break,
                }
                if connect_deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                    connect_deadline = None;
                    self.inner.handler.on_connect_timeout(&entry.conn);
                }
                if tokio::time::Instant::now() >= next_ping || session.is_closed() {
                    break;
                }
            }
            if session.is_closed() {
                break;
            }
            match session.send(Outbound::Text(Bytes::from_static(b"2"))) {
                Ok(()) => {}
                Err(SendError::Full) => session.close(CloseReason::SlowClient),
                Err(SendError::Closed) => break,
            }
            tokio::select! {
                _ = session.pong.notified() => {}
                _ = tokio::time::sleep(timeout) => session.abort(CloseReason::PingTimeout),
                _ = session.closed() => break,
            }
        }
        let reason = session
            .close_reason()
            .unwrap_or(CloseReason::TransportClose);
        tracing::debug!(sid = %session.sid(), reason = reason.as_str(), "engine session closed");
        if let Some(s) = self.stats() {
            s.closed(reason);
        }
        self.inner.handler.on_close(&entry.conn, reason);
        // A long-polling client closed gracefully by the server learns it from the close packet
        // its next GET receives, so the session stays findable until then (its GET comes right
        // away).
        if session.lingers() {
            let _ = tokio::time::timeout(CLOSE_LINGER, session.close_delivered.notified()).await;
        }
        self.inner.sessions.remove(session.sid());
        if let Some(ip) = ip {
            self.inner.per_ip.remove_if_mut(&ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }

    /// `Some(future)` while the session must not read more input: its outbound queue is backlogged
    /// or the handler asks for a pause.
    fn wait_ready(
        &self,
        entry: &Entry<H::Conn>,
    ) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        let handler = self.inner.handler.ready(&entry.conn);
        let session = entry.session.clone();
        if !session.is_backlogged() {
            return handler;
        }
        Some(Box::pin(async move {
            loop {
                let drained = session.drained();
                if !session.is_backlogged() {
                    break;
                }
                tokio::select! {
                    _ = drained => {}
                    _ = session.closed() => return,
                }
            }
            if let Some(h) = handler {
                h.await;
            }
        }))
    }

    /// Dispatches one decoded packet from the client.
    fn on_packet(&self, entry: &Entry<H::Conn>, packet: courier_proto::engine::Packet) {
        use courier_proto::engine::Packet;
        if let Some(s) = self.stats() {
            s.packets_in.inc();
            s.bytes_in.add(packet_len(&packet));
        }
        match packet {
            Packet::Message(data) => self.inner.handler.on_message(&entry.conn, data),
            // Any payload is allowed: a pong answers the last ping whatever it carries.
            Packet::Pong(_) => entry.session.pong.notify_one(),
            Packet::Close => entry.session.abort(CloseReason::TransportClose),
            // In v4 only the server pings (`2probe` belongs to the upgrade, which reads it itself):
            // the reference server ends the session on a ping from the client.
            Packet::Ping(_) => entry.session.abort(CloseReason::TransportError),
            // Meaningless from a client, and ignored by the reference server.
            Packet::Open(_) | Packet::Noop | Packet::Upgrade => {}
        }
    }
}

/// The length of a packet as the client sent it, near enough for byte counts: the type digit
/// and the payload (binary payloads as their raw length).
fn packet_len(p: &courier_proto::engine::Packet) -> u64 {
    use courier_proto::engine::Packet;
    let payload = match p {
        Packet::Message(Data::Text(b) | Data::Binary(b)) => b.len(),
        Packet::Ping(d) | Packet::Pong(d) | Packet::Open(d) => d.len(),
        _ => 0,
    };
    1 + payload as u64
}
