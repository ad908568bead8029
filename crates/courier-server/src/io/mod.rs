//! The Socket.IO layer: namespaces, sockets, rooms, events and acknowledgements, on top of the
//! engine.

mod adapter;
mod conn;
mod message;
mod namespace;
mod observer;
mod recovery;
mod socket;
mod streams;

use std::future::Future;
use std::sync::Arc;

use parking_lot::RwLock;
use std::task::{Context, Waker};
use std::time::{Duration, SystemTime};

use courier_proto::engine::Data;

pub use adapter::{Acks, Adapter, Broadcast, SocketInfo, Targets};
pub use message::{
    AckError, AckSender, ConnectError, DisconnectReason, EmitError, Message, Payload,
};
pub use namespace::{BroadcastOperator, Namespace, Room, Setup};
pub use observer::Observer;
pub use socket::{Handshake, Socket};
pub use streams::{Overview, SharedStreams, Streams, Subscribed, deliver, error_answer};

use crate::auth::{self, Access};
use crate::config::Config;
use crate::engine::{self, CloseReason, Engine, RemoteAddr, Session};
use conn::Conn;
use namespace::Handlers;

/// A Socket.IO server. Cheap to clone; every clone is the same server.
///
/// ```no_run
/// use courier_server::{Config, Io, Setup};
///
/// # async fn run() -> std::io::Result<()> {
/// let io = Io::new(Config::default());
/// io.of("/").on_connect(|socket| async move {
///     socket.on("ping", |_, mut msg| async move {
///         let _ = msg.ack(&"pong");
///     });
/// });
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// courier_server::serve(listener, io.service(), std::future::pending()).await
/// # }
/// ```
#[derive(Clone)]
pub struct Io {
    shared: Arc<Shared>,
    engine: Engine<IoHandler>,
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Where recovery sessions and recoverable broadcasts are kept, when recovery is on.
    pub(crate) recovery: Option<courier_store::Store>,
    /// This node's own streams from the start, or a cluster's once it sets them.
    pub(crate) streams: std::sync::OnceLock<Streams>,
    // A blocking lock (parking_lot): namespaces are looked up on CONNECT and by emits, never held across an await.
    namespaces: RwLock<std::collections::HashMap<String, Namespace>>,
    dynamic: RwLock<Vec<DynamicNamespace>>,
    /// Given to every namespace, once set.
    adapter: std::sync::OnceLock<Arc<dyn Adapter>>,
    /// What the server counts, unless `config.metrics` is off (shared with the engine).
    pub(crate) stats: Option<Arc<crate::stats::Stats>>,
    pub(crate) observer: std::sync::OnceLock<Arc<dyn Observer>>,
    /// Asked before a client joins, relays, publishes or subscribes; [`auth::check_grants`]
    /// when unset. A blocking lock (parking_lot): only cloned out of.
    authorizer: RwLock<Option<Authorizer>>,
    /// Sockets per identity subject, when `max_sockets_per_sub` is set.
    pub(crate) per_sub: dashmap::DashMap<String, usize>,
}

/// Decides whether a socket may do what it asks: `Err` says why not, and the client gets a
/// `forbidden` error with that message (see [`Io::set_authorizer`]).
pub type Authorizer = Arc<dyn Fn(&Socket, &Access<'_>) -> Result<(), String> + Send + Sync>;

type Matcher = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A family of namespaces created on first use when a name matches. Its middlewares and
/// connection handler apply to every namespace it creates.
#[derive(Clone)]
pub struct DynamicNamespace {
    matcher: Matcher,
    handlers: Arc<RwLock<Handlers>>,
}

impl Setup for DynamicNamespace {
    fn handlers(&self) -> &RwLock<Handlers> {
        &self.handlers
    }
}

impl Shared {
    /// The counters, when the server counts.
    #[inline]
    pub(crate) fn stats(&self) -> Option<&crate::stats::Stats> {
        self.stats.as_deref()
    }

    /// The observer, once one is installed.
    #[inline]
    pub(crate) fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.observer.get()
    }

    /// Asks the authorizer whether `socket` may do `access`; a refusal is logged.
    pub(crate) fn authorize(&self, socket: &Socket, access: &Access<'_>) -> Result<(), String> {
        let f = self.authorizer.read().clone();
        let verdict = match f {
            Some(f) => f(socket, access),
            None => auth::check_grants(socket, access),
        };
        match &verdict {
            // A relay only skips the rooms the sender may not reach: not worth a line each.
            Err(why) if matches!(access, Access::Relay(_)) => {
                tracing::debug!(sid = %socket.id(), sub = socket.sub(), "not relayed: {why}");
            }
            Err(why) => {
                tracing::info!(sid = %socket.id(), nsp = socket.ns().name(), sub = socket.sub(), "denied: {why}");
            }
            Ok(()) => {}
        }
        verdict
    }

    /// A socket is leaving: its subscriptions end, and if the connection was lost (rather than
    /// closed on purpose) its session is kept for recovery.
    pub(crate) fn socket_closing(&self, socket: &Socket, reason: DisconnectReason) {
        if let Some(streams) = self.streams.get() {
            streams.detach_all(socket);
        }
        let recoverable = matches!(reason, DisconnectReason::Connection(r) if !matches!(r, CloseReason::ParseError | CloseReason::RateLimited));
        if let (Some(store), Some(pid)) = (&self.recovery, &socket.0.pid) {
            if recoverable {
                let window = store.options().recovery_window.as_millis() as u64;
                self.save_session(socket, courier_store::now_ms() + window);
            } else if let Some(a) = self.shared_recovery() {
                a.drop_session(pid);
            } else {
                store.take_session(pid);
            }
        }
    }

    /// The adapter, when recovery is on and shared by the nodes of a cluster.
    pub(crate) fn shared_recovery(&self) -> Option<&Arc<dyn Adapter>> {
        self.recovery.as_ref()?;
        self.adapter.get().filter(|a| a.shares_recovery())
    }

    /// Keeps what recovery would restore of `socket`. While the socket is connected this runs
    /// on every change with `LIVE_SESSION`, so that a client can also be recovered after the
    /// server crashed: the store turns live sessions into ordinary ones when it opens.
    pub(crate) fn save_session(&self, socket: &Socket, expires_ms: u64) {
        let (Some(store), Some(pid)) = (&self.recovery, &socket.0.pid) else {
            return;
        };
        let own = socket.id();
        let record = courier_store::SessionRecord {
            sid: own.to_string(),
            nsp: socket.ns().name().to_owned(),
            rooms: socket
                .rooms()
                .iter()
                .filter(|r| *r != own)
                .map(|r| r.to_string())
                .collect(),
            data: socket.data(),
            since: socket.0.since,
            subscriptions: socket.0.subscriptions.lock().clone(),
            expires_ms,
            sub: socket.sub(),
        };
        match self.shared_recovery() {
            Some(a) => a.save_session(pid, record),
            None => store.put_session(pid, record),
        }
    }

    /// The namespace a client asks for: an existing one, or a new one from a dynamic pattern.
    fn namespace_for(&self, name: &str) -> Option<Namespace> {
        if let Some(ns) = self.namespaces.read().get(name) {
            return Some(ns.clone());
        }
        let handlers = self
            .dynamic
            .read()
            .iter()
            .find(|d| (d.matcher)(name))
            .map(|d| d.handlers.clone())?;
        let mut map = self.namespaces.write();
        if let Some(ns) = map.get(name) {
            return Some(ns.clone());
        }
        // Dynamic namespaces are kept once created: their number is what bounds their memory.
        let max = self.config.max_namespaces;
        if max > 0 && map.len() >= max {
            tracing::warn!(
                nsp = name,
                max,
                "namespace not created: max_namespaces reached"
            );
            return None;
        }
        let ns = Namespace::new(name, handlers, self.recovery.clone(), self.stats.clone());
        self.adopt(&ns);
        map.insert(name.to_owned(), ns.clone());
        Some(ns)
    }

    /// Gives a new namespace the adapter, if there is one (the adapter must not call back
    /// into the server from `namespace_added`: the namespace map may be locked).
    fn adopt(&self, ns: &Namespace) {
        if let Some(a) = self.adapter.get() {
            ns.set_adapter(a.clone());
        }
    }
}

impl Io {
    /// A server with `config`, which should have passed [`Config::validate`]. With
    /// `config.recovery`, recovery state is kept in memory. Must be called within a tokio runtime.
    pub fn new(config: Config) -> Io {
        let store = config
            .recovery
            .then(|| courier_store::Store::memory(Default::default()));
        Self::build(config, store, false)
    }

    /// A server whose durable streams (and, with `config.recovery`, recovery state) live in
    /// `store`. Clients reach the streams with the reserved events `courier:subscribe`,
    /// `courier:unsubscribe` and `courier:publish`; Rust code through [`Io::streams`].
    pub fn with_store(config: Config, store: courier_store::Store) -> Io {
        Self::build(config, Some(store), true)
    }

    /// A server whose recovery state (with `config.recovery`) lives in `store`, without durable
    /// streams.
    pub fn with_recovery_store(config: Config, store: courier_store::Store) -> Io {
        Self::build(config, Some(store), false)
    }

    fn build(config: Config, store: Option<courier_store::Store>, streams: bool) -> Io {
        let stats: Option<Arc<crate::stats::Stats>> = config.metrics.then(Arc::default);
        let shared = Arc::new(Shared {
            recovery: store.clone().filter(|_| config.recovery),
            streams: match store.filter(|_| streams) {
                Some(s) => Streams::with_stats(s, stats.clone()).into(),
                None => Default::default(),
            },
            config: config.clone(),
            namespaces: RwLock::new(Default::default()),
            dynamic: RwLock::new(Vec::new()),
            adapter: Default::default(),
            stats,
            observer: Default::default(),
            authorizer: RwLock::new(None),
            per_sub: Default::default(),
        });
        let stats = shared.stats.clone();
        let engine = Engine::with_stats(config, IoHandler(shared.clone()), stats);
        Io { shared, engine }
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Replaces the check made before a client joins a room (`courier:join` of a hub, or a
    /// room restored by recovery), relays to one, publishes or subscribes. The default,
    /// [`auth::check_grants`], holds sockets with an identity to its grants; a replacement can
    /// call it and add its own rules.
    pub fn set_authorizer<F>(&self, f: F)
    where
        F: Fn(&Socket, &Access<'_>) -> Result<(), String> + Send + Sync + 'static,
    {
        *self.shared.authorizer.write() = Some(Arc::new(f));
    }

    /// Asks the authorizer whether `socket` may do `access` (refusals are logged with the
    /// socket's subject).
    pub fn authorize(&self, socket: &Socket, access: &Access<'_>) -> Result<(), String> {
        self.shared.authorize(socket, access)
    }

    /// The namespace `name`, created if it does not exist.
    pub fn of(&self, name: &str) -> Namespace {
        let mut map = self.shared.namespaces.write();
        if let Some(ns) = map.get(name) {
            return ns.clone();
        }
        let ns = Namespace::new(
            name,
            Default::default(),
            self.shared.recovery.clone(),
            self.shared.stats.clone(),
        );
        self.shared.adopt(&ns);
        map.insert(name.to_owned(), ns.clone());
        ns
    }

    /// Makes this server one node of a cluster: what goes beyond this node (broadcasts,
    /// operations on the sockets of other nodes) goes to `adapter`. Call it once, before
    /// serving; a second adapter is ignored.
    pub fn set_adapter(&self, adapter: Arc<dyn Adapter>) {
        if self.shared.adapter.set(adapter).is_err() {
            return;
        }
        let existing: Vec<Namespace> = self.shared.namespaces.read().values().cloned().collect();
        for ns in existing {
            self.shared.adopt(&ns);
        }
    }

    /// Installs the observer told of sockets, rooms and events (see [`Observer`]). Call it
    /// once, before serving; a second one is ignored.
    pub fn set_observer(&self, observer: Arc<dyn Observer>) {
        let _ = self.shared.observer.set(observer);
    }

    /// What the server counted so far; `None` when `config.metrics` is off.
    pub fn stats(&self) -> Option<&crate::stats::Stats> {
        self.shared.stats()
    }

    /// The counters, shared, for [`crate::ServeOptions::stats`].
    pub fn stats_handle(&self) -> Option<Arc<crate::stats::Stats>> {
        self.shared.stats.clone()
    }

    /// Open connections by transport: `(polling, websocket)`.
    pub fn transport_counts(&self) -> (usize, usize) {
        self.engine.transport_counts()
    }

    /// Every namespace that exists now.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.shared.namespaces.read().values().cloned().collect()
    }

    /// The namespace `name`, if it exists (statically or created from a pattern).
    pub fn get(&self, name: &str) -> Option<Namespace> {
        self.shared.namespaces.read().get(name).cloned()
    }

    /// The namespace `name`: an existing one, or a new one if a dynamic pattern accepts the
    /// name (as a client's CONNECT would create it). On a cluster node, an operation on a
    /// namespace whose sockets are on other nodes needs it here too.
    pub fn get_or_create(&self, name: &str) -> Option<Namespace> {
        self.shared.namespace_for(name)
    }

    /// Namespaces created on first use for every name `matcher` accepts.
    pub fn dynamic<F>(&self, matcher: F) -> DynamicNamespace
    where
        F: Fn(&str) -> bool + Send + Sync + 'static,
    {
        let d = DynamicNamespace {
            matcher: Arc::new(matcher),
            handlers: Default::default(),
        };
        self.shared.dynamic.write().push(d.clone());
        d
    }

    /// Namespaces created on first use for every name matching the regular expression.
    pub fn dynamic_regex(&self, pattern: regex::Regex) -> DynamicNamespace {
        self.dynamic(move |name| pattern.is_match(name))
    }

    /// The durable streams, when the server has a store.
    pub fn streams(&self) -> Option<&Streams> {
        self.shared.streams.get()
    }

    /// Serves durable streams from `shared` (a cluster's Redis) instead of a store of this
    /// node's. Set once, before clients connect; false if the server has streams already.
    pub fn set_shared_streams(&self, shared: Arc<dyn SharedStreams>) -> bool {
        let streams = Streams::shared(shared, self.shared.stats.clone());
        self.shared.streams.set(streams).is_ok()
    }

    /// Number of open connections (Engine.IO sessions).
    pub fn connection_count(&self) -> usize {
        self.engine.session_count()
    }

    /// Makes this server one node of a cluster behind any load balancer, sticky or not: every
    /// Engine.IO sid starts with `peers.node_id()`, and a polling request or WebSocket upgrade
    /// for a session another node owns is forwarded to it (see [`crate::Peers`]). Replaces any
    /// peers installed before; sessions opened before keep their sids.
    ///
    /// # Panics
    ///
    /// If the node id is empty, longer than 32 characters, or has a character other than ASCII
    /// letters, digits, `-` and `_`.
    pub fn set_peers(&self, peers: Arc<dyn engine::Peers>) {
        self.engine.set_peers(peers);
    }

    /// The HTTP service that answers the Engine.IO endpoint; mount it in any tower/hyper/axum
    /// server. Requests to other paths get 404.
    pub fn service(&self) -> IoService {
        self.engine.service()
    }

    /// Disconnects every socket with the reason `server shutting down` and closes every
    /// connection, waiting up to `grace` for them to be gone. Clients reconnect on their own.
    pub async fn shutdown(&self, grace: Duration) {
        self.engine
            .close_all(CloseReason::ServerShutdown, grace)
            .await;
    }
}

/// The engine handler behind [`Io`]: it turns Engine.IO messages into Socket.IO packets.
pub struct IoHandler(Arc<Shared>);

impl engine::Handler for IoHandler {
    type Conn = Conn;

    fn on_open(&self, session: &Arc<Session>, parts: &http::request::Parts) -> Arc<Conn> {
        let handshake = Handshake {
            headers: own_headers(&parts.headers),
            query: parts.uri.query().unwrap_or("").to_owned(),
            address: parts.extensions.get::<RemoteAddr>().map(|a| a.0),
            issued: SystemTime::now(),
        };
        Arc::new(Conn::new(session.clone(), self.0.clone(), handshake))
    }

    fn on_connect_timeout(&self, conn: &Arc<Conn>) {
        if !conn.has_joined() {
            conn.session.close(CloseReason::ConnectTimeout);
        }
    }

    fn on_message(&self, conn: &Arc<Conn>, data: Data) {
        conn.on_message(data);
    }

    fn on_close(&self, conn: &Arc<Conn>, reason: CloseReason) {
        conn.on_close(reason);
    }

    fn on_upgrade(&self, conn: &Arc<Conn>) {
        if let Some(o) = self.0.observer() {
            for s in conn.sockets() {
                o.transport_upgraded(&s);
            }
        }
    }

    fn ready(&self, conn: &Arc<Conn>) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        conn.ready()
    }
}

/// [`Io`] as a tower `Service`.
pub type IoService = engine::EngineService<IoHandler>;

/// A copy of `headers` that owns its bytes: header values are slices of the connection's read
/// buffer, which a plain clone would keep alive for as long as the socket lives.
fn own_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_str().as_bytes())
            .expect("a valid name stays valid");
        let mut copy =
            http::HeaderValue::from_bytes(value.as_bytes()).expect("a valid value stays valid");
        copy.set_sensitive(value.is_sensitive());
        out.append(name, copy);
    }
    out
}

/// Polls `fut` once right away; gives it back if it has to wait. A handler that does not await
/// then costs no task, and handlers of one connection start in arrival order. Whoever gets it
/// back must spawn it: the task polls it again with a real waker, so no wake-up is lost.
pub(crate) fn poll_once<F>(fut: F) -> Option<std::pin::Pin<Box<F>>>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut fut = Box::pin(fut);
    let mut cx = Context::from_waker(Waker::noop());
    fut.as_mut().poll(&mut cx).is_pending().then_some(fut)
}

/// Runs `fut` at once, spawning it only if it has to wait; see [`poll_once`].
pub(crate) fn run_now_or_spawn<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Some(fut) = poll_once(fut) {
        tokio::spawn(fut);
    }
}
