//! The client (socket.io-client's `Manager`): one connection shared by the sockets of several
//! namespaces, and the task that owns it, answers pings, dispatches packets and reconnects.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use courier_proto::engine::{Data, Packet as EnginePacket};
use courier_proto::socket::{Complete, PacketType, Reassembler};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Endpoint};
use crate::engine::{self, Frame, Incoming, Transport};
use crate::error::Result;
use crate::socket::{DisconnectReason, Socket, SocketInner};

/// Where the client's connection stands, as [`Client::status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientStatus {
    /// The connection is open.
    Connected,
    /// The connection was lost; waiting before attempt `attempt` (from 1), or making it.
    Reconnecting {
        /// Attempts since the connection was lost, this one included.
        attempt: u32,
    },
    /// Reconnection is off or used up its attempts: the client stopped.
    GaveUp,
    /// [`Client::close`] was called, or every handle was dropped.
    Closed,
}

/// What the connection task takes from its queue.
pub(crate) enum Out {
    /// A packet (and its attachments) to write.
    Frame(Frame),
    /// A socket asks to join its namespace on this connection.
    Connect(Arc<SocketInner>),
}

/// The current connection, as sockets see it.
#[derive(Clone)]
pub(crate) struct Link {
    tx: mpsc::Sender<Out>,
    max_payload: usize,
}

pub(crate) struct Shared {
    config: Config,
    endpoint: Endpoint,
    // Blocking mutexes (parking_lot): held for map and field access only, never across an await.
    sockets: Mutex<HashMap<String, Arc<SocketInner>>>,
    link: Mutex<Option<Link>>,
    generation: AtomicU64,
    closing: CancellationToken,
    status: watch::Sender<ClientStatus>,
}

struct Handle {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Last handle gone: nobody can use the connection any more.
        self.shared.closing.cancel();
    }
}

/// A connection to a Socket.IO server, shared by one [`Socket`] per namespace. Cheap to clone;
/// the connection closes when [`Client::close`] is called or the last clone (sockets and
/// subscriptions included) is dropped. A handler that holds a clone keeps the client alive: call
/// [`Client::close`] then.
///
/// ```no_run
/// # async fn run() -> courier_client::Result<()> {
/// use courier_client::{Client, Payload};
/// use serde_json::json;
/// use std::time::Duration;
///
/// let client = Client::connect("http://127.0.0.1:3000").await?;
/// let socket = client.socket("/");
/// socket.on("chat", |event| println!("{:?}", event.payload.args));
/// socket.connect().await?;
/// let answer = socket
///     .emit_with_ack("courier:join", Payload::from(json!("lobby")), Duration::from_secs(5))
///     .await?;
/// println!("{:?}", answer.args);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

impl Client {
    /// Connects to `url` (`http://host:port`) with the default [`Config`].
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with(url, Config::default()).await
    }

    /// Connects to `url` with `config`. The first connection is made before this returns, so
    /// an unreachable server is an error here; later losses are handled by reconnection.
    pub async fn connect_with(url: &str, config: Config) -> Result<Client> {
        let endpoint = Endpoint::parse(url, &config)?;
        let transport = Transport::open(&endpoint, config.connect_timeout).await?;
        let shared = Arc::new(Shared {
            config,
            endpoint,
            sockets: Mutex::new(HashMap::new()),
            link: Mutex::new(None),
            generation: AtomicU64::new(0),
            closing: CancellationToken::new(),
            status: watch::Sender::new(ClientStatus::Connected),
        });
        let task = tokio::spawn(run(shared.clone(), transport));
        Ok(Client {
            handle: Arc::new(Handle {
                shared,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The URL given to [`Client::connect`].
    pub fn url(&self) -> &str {
        &self.shared().endpoint.url
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.shared().config
    }

    /// The socket of namespace `nsp` (`"/"`, `"/admin"`; a missing leading slash is added).
    /// Always the same socket for the same namespace; it joins on [`Socket::connect`].
    pub fn socket(&self, nsp: &str) -> Socket {
        let nsp = if nsp.starts_with('/') {
            nsp.to_owned()
        } else {
            format!("/{nsp}")
        };
        let config = &self.shared().config;
        let inner = self
            .shared()
            .sockets
            .lock()
            .entry(nsp.clone())
            .or_insert_with(|| {
                Arc::new(SocketInner::new(
                    nsp,
                    config.buffer_capacity,
                    config.subscription_capacity,
                ))
            })
            .clone();
        Socket {
            inner,
            client: self.clone(),
        }
    }

    /// Watches the connection's [`ClientStatus`].
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.shared().status.subscribe()
    }

    /// Leaves every namespace, closes the connection and stops reconnecting.
    pub async fn close(&self) {
        self.shared().closing.cancel();
        let task = self.handle.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    pub(crate) fn max_payload(&self) -> Option<usize> {
        self.link().map(|l| l.max_payload)
    }

    fn link(&self) -> Option<Link> {
        self.shared().link.lock().clone()
    }

    /// Asks the connection task to send a socket's CONNECT, if there is a connection; otherwise
    /// the next connection sends it.
    pub(crate) fn request_connect(&self, socket: &Arc<SocketInner>) {
        if let Some(link) = self.link() {
            // Full queue: the CONNECT goes out with the next connection instead... unless this
            // one stays up, so wait for room in the background.
            if let Err(mpsc::error::TrySendError::Full(out)) =
                link.tx.try_send(Out::Connect(socket.clone()))
            {
                tokio::spawn(async move {
                    let _ = link.tx.send(out).await;
                });
            }
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url())
            .field("status", &*self.shared().status.borrow())
            .finish()
    }
}

impl Shared {
    fn sockets(&self) -> Vec<Arc<SocketInner>> {
        self.sockets.lock().values().cloned().collect()
    }

    fn socket(&self, nsp: &str) -> Option<Arc<SocketInner>> {
        self.sockets.lock().get(nsp).cloned()
    }

    /// The connection is gone: every socket learns why.
    fn lost(&self, reason: DisconnectReason) {
        *self.link.lock() = None;
        for s in self.sockets() {
            s.on_disconnect(reason);
        }
    }
}

/// The connection task: drives connections one after the other until the client closes or
/// reconnection gives up.
async fn run(shared: Arc<Shared>, first: Transport) {
    let mut next = Some(first);
    let mut attempt = 0u32;
    loop {
        let transport = match next.take() {
            Some(t) => t,
            None => {
                let rc = &shared.config.reconnect;
                if !rc.enabled || rc.max_attempts.is_some_and(|max| attempt >= max) {
                    tracing::warn!(
                        url = shared.endpoint.url,
                        attempts = attempt,
                        "giving up reconnecting"
                    );
                    shared.status.send_replace(ClientStatus::GaveUp);
                    shared.lost(DisconnectReason::ClientDisconnect);
                    return;
                }
                let delay = rc.delay(attempt);
                attempt += 1;
                shared
                    .status
                    .send_replace(ClientStatus::Reconnecting { attempt });
                tracing::debug!(attempt, ?delay, "reconnecting");
                let opened = tokio::select! {
                    _ = shared.closing.cancelled() => break,
                    opened = async {
                        tokio::time::sleep(delay).await;
                        Transport::open(&shared.endpoint, shared.config.connect_timeout).await
                    } => opened,
                };
                match opened {
                    Ok(t) => {
                        tracing::info!(url = shared.endpoint.url, attempt, "reconnected");
                        attempt = 0;
                        shared.status.send_replace(ClientStatus::Connected);
                        t
                    }
                    Err(e) => {
                        tracing::debug!(attempt, error = %e, "reconnection attempt failed");
                        continue;
                    }
                }
            }
        };
        let reason = drive(&shared, transport).await;
        shared.lost(reason);
        if reason == DisconnectReason::ClientDisconnect {
            break;
        }
        tracing::info!(
            url = shared.endpoint.url,
            reason = reason.as_str(),
            "connection lost"
        );
    }
    shared.lost(DisconnectReason::ClientDisconnect);
    shared.status.send_replace(ClientStatus::Closed);
}

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 128;

/// Runs one connection until it ends; returns why.
async fn drive(shared: &Arc<Shared>, mut t: Transport) -> DisconnectReason {
    let generation = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
    let (tx, mut rx) = mpsc::channel(shared.config.queue_capacity.max(1));
    *shared.link.lock() = Some(Link {
        tx: tx.clone(),
        max_payload: t.handshake.max_payload,
    });
    tracing::debug!(sid = t.handshake.sid, generation, "connection open");
    let mut writes: Vec<Frame> = shared
        .sockets()
        .iter()
        .filter_map(|s| s.connect_frame(generation))
        .collect();
    let mut reassembler = Reassembler::default();
    let heartbeat = t.heartbeat_timeout();
    let mut deadline = Instant::now() + heartbeat;
    loop {
        if !writes.is_empty() {
            for frame in writes.drain(..) {
                if t.feed(frame).await.is_err() {
                    return DisconnectReason::TransportError;
                }
            }
            if t.ws.flush().await.is_err() {
                return DisconnectReason::TransportError;
            }
        }
        tokio::select! {
            biased;
            _ = shared.closing.cancelled() => {
                // What was queued before the close (acks, last emits) still goes out.
                while let Ok(out) = rx.try_recv() {
                    if let Out::Frame(f) = out {
                        let _ = t.feed(f).await;
                    }
                }
                goodbye(shared, &mut t).await;
                return DisconnectReason::ClientDisconnect;
            }
            msg = t.ws.next() => {
                let msg = match msg {
                    None => return DisconnectReason::TransportClose,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket error");
                        return DisconnectReason::TransportError;
                    }
                    Some(Ok(m)) => m,
                };
                let packet = match engine::decode(msg) {
                    Ok(Incoming::Packet(p)) => p,
                    Ok(Incoming::Nothing) => continue,
                    Ok(Incoming::Closed) => return DisconnectReason::TransportClose,
                    Err(e) => {
                        tracing::warn!(error = %e, "bad Engine.IO packet from the server");
                        return DisconnectReason::ParseError;
                    }
                };
                let complete = match packet {
                    EnginePacket::Ping(data) => {
                        deadline = Instant::now() + heartbeat;
                        writes.push(Frame::text(EnginePacket::Pong(data).to_text()));
                        continue;
                    }
                    EnginePacket::Close => return DisconnectReason::TransportClose,
                    EnginePacket::Message(Data::Text(text)) => reassembler.text(&text),
                    EnginePacket::Message(Data::Binary(bin)) => reassembler.binary(bin),
                    _ => continue,
                };
                match complete {
                    Ok(Some(c)) => dispatch(shared, generation, &tx, c, &mut writes),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "bad Socket.IO packet from the server");
                        return DisconnectReason::ParseError;
                    }
                }
            }
            out = rx.recv() => {
                let mut next = out;
                while let Some(out) = next.take() {
                    match out {
                        Out::Frame(f) => writes.push(f),
                        Out::Connect(s) => writes.extend(s.connect_frame(generation)),
                    }
                    if writes.len() < WRITE_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => return DisconnectReason::PingTimeout,
        }
    }
}

/// Hands a whole Socket.IO packet to its socket.
fn dispatch(
    shared: &Shared,
    generation: u64,
    tx: &mpsc::Sender<Out>,
    c: Complete,
    writes: &mut Vec<Frame>,
) {
    let Complete {
        packet,
        attachments,
    } = c;
    let Some(socket) = shared.socket(&packet.nsp) else {
        tracing::debug!(nsp = packet.nsp, "packet for a namespace with no socket");
        return;
    };
    match packet.kind {
        PacketType::Connect => socket.on_connect(generation, tx, packet.data, writes),
        PacketType::ConnectError => socket.on_refused(packet.data),
        PacketType::Disconnect => socket.on_disconnect(DisconnectReason::ServerDisconnect),
        PacketType::Event | PacketType::BinaryEvent => {
            socket.on_event(generation, packet, attachments);
        }
        PacketType::Ack | PacketType::BinaryAck => socket.on_ack(packet, attachments),
    }
}

/// Leaves every joined namespace and closes the WebSocket, best effort.
async fn goodbye(shared: &Shared, t: &mut Transport) {
    for s in shared.sockets().iter().filter(|s| s.is_connected()) {
        let p = courier_proto::socket::Packet::new(PacketType::Disconnect, &s.nsp, None);
        let _ = t.feed(Frame::text(p.encode_message())).await;
    }
    let _ = t.feed_packet(&EnginePacket::Close).await;
    let _ = t.ws.close().await;
}
