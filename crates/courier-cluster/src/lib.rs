//! Courier nodes as one hub on Redis.
//!
//! [`Cluster`] is the [`Adapter`] of a node: broadcasts, room operations and socket listings go
//! to the other nodes over Redis pub/sub in the wire format of Node's
//! `@socket.io/redis-adapter` 8.x (classic mode), so Courier nodes and Node servers on one
//! Redis are one hub. A node subscribes to the channel of a room only while one of its sockets
//! is in it, so a broadcast to one room reaches only the nodes with members (the Node adapter
//! subscribes every node to every room's channel with one pattern).
//!
//! When Redis cannot be reached, each node keeps serving its own clients, says so in its log
//! and in [`Cluster::status`], and reconnects and subscribes again by itself.

mod link;
mod recovery;
mod streams;
mod wire;

pub use recovery::RecoveryOptions;
pub use streams::StreamOptions;

use courier_server::stats::Histogram;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use courier_proto::payload::Payload;
use courier_server::{
    Acks, Adapter, Broadcast, BroadcastOperator, Io, Namespace, Room, SocketInfo, Targets,
};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use link::{Link, Target};
use wire::{Channels, kind};

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every channel; `socket.io` is what Node's adapter uses by default.
    pub key: String,
    /// How long a request waits at most for the other nodes' answers.
    pub requests_timeout: Duration,
    /// Where the other nodes reach this one (`http://host:port`), to forward the requests of
    /// clients whose session is here; `None` forwards nothing to this node.
    pub advertise: Option<http::Uri>,
    /// Connection state recovery shared by the nodes (sessions and the log in Redis), so that
    /// a client is recovered by whichever node it comes back to; `None` when recovery is off.
    pub recovery: Option<RecoveryOptions>,
}

/// What [`Cluster::status`] reports.
#[derive(Debug, Clone)]
pub struct Status {
    /// Whether Redis answers.
    pub redis_up: bool,
    /// This node's id in the cluster.
    pub node: String,
}

/// Why a cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Redis URL is not one.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
}

/// Commands waiting to be sent to Redis; past this, new ones are dropped (Redis is too slow or
/// gone) and the drop is logged, at most once a second.
const PUBLISH_QUEUE: usize = 16_384;
/// How often each connection to Redis is checked, and this node's address renewed.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node whose address was not renewed for this long is gone.
const NODE_EXPIRY_MS: u64 = 5_000;

/// One node's link to the others. Cheap to clone.
#[derive(Clone)]
pub struct Cluster(Arc<Inner>);

struct Inner {
    uid: String,
    key: String,
    timeout: Duration,
    io: Io,
    /// Redis is a Redis Cluster: pub/sub goes through sharded channels, and what touches keys
    /// of several slots is sent as one command or pipeline per slot.
    sharded: bool,
    publisher: OnceLock<Link>,
    subscriber: OnceLock<Link>,
    /// Durable streams' commands: a connection of their own, so that a publish waits for no
    /// broadcast queued before it.
    streams: OnceLock<Link>,
    /// Durable streams in Redis, once served.
    shared_streams: OnceLock<streams::RedisStreams>,
    outgoing: mpsc::Sender<Outgoing>,
    changes: mpsc::UnboundedSender<Change>,
    /// What each subscribed channel carries.
    routes: Mutex<HashMap<String, Route>>,
    /// Channels Redis confirmed, and who waits for one to be.
    subscribed: Mutex<Subscribed>,
    /// Requests of this node waiting for answers, by request id.
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<Answer>>>,
    up: AtomicBool,
    /// When a full queue was last logged (ms since the epoch).
    full_logged_ms: AtomicU64,
    advertise: Option<http::Uri>,
    recovery: Option<RecoveryOptions>,
    /// Every node's address, by id, as last read from Redis.
    peers: Mutex<HashMap<String, http::Uri>>,
    /// The nodes that renewed their entry in the table of nodes lately, this one included.
    alive: Mutex<Vec<String>>,
    stats: ClusterStats,
}

/// Round trips to Redis, for metrics.
#[derive(Debug)]
pub struct ClusterStats {
    /// The heartbeat's PING on the publishing connection, once a second.
    pub ping_seconds: Histogram,
    /// Each pipeline of queued broadcasts and sessions, sent and answered.
    pub pipeline_seconds: Histogram,
    /// Pipelines that failed (Redis away or refusing).
    pub pipeline_failures: courier_server::stats::Counter,
}

/// A response from another node: the object and the binaries it carried.
type Answer = (Value, Vec<Bytes>);

#[derive(Default)]
struct Subscribed {
    confirmed: HashSet<String>,
    waiting: HashMap<String, Vec<oneshot::Sender<()>>>,
}

/// Longest wait for a room's subscription before a join is answered anyway.
const ROOM_READY_WAIT: Duration = Duration::from_secs(2);

/// A request sent and waiting for answers.
struct Asking {
    id: String,
    answers: mpsc::UnboundedReceiver<Answer>,
    listening: oneshot::Receiver<usize>,
}

#[derive(Debug, Clone)]
enum Route {
    Broadcast {
        nsp: String,
        room: Option<Room>,
    },
    Request {
        nsp: String,
    },
    Response,
    /// A node announcing its address (`<id> <url>`).
    Announce,
    /// Durable streams with new entries, or entries to look at again.
    Streams,
    /// This node's own channel: others see it is alive while it listens there.
    Node,
}

/// A command for the publisher task, which sends them in order. With a reply, the command
/// answers a count, given minus the second number.
struct Outgoing {
    cmd: redis::Cmd,
    reply: Option<Reply>,
}

type Reply = (oneshot::Sender<usize>, usize);

/// `PUBLISH`, and how many listen on the channel by name, at once.
const COUNTED_PUBLISH: &str = "redis.call('PUBLISH', KEYS[1], ARGV[1]) \
     return redis.call('PUBSUB', 'NUMSUB', KEYS[1])[2]";

/// A recoverable broadcast: appended to the namespace's log (KEYS[1], at most ARGV[1] entries,
/// with its rooms, except and data), then published on KEYS[2] (with ARGV[7], `PUBLISH` or
/// on a Redis Cluster `SPUBLISH`) with the log's id for it as a fourth element of the
/// `[uid, packet, opts]` array (Node servers read the first three). With ARGV[6] = 1, answers
/// how many listen on the channel by name.
pub(crate) const LOGGED_PUBLISH: &str = "local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], \
     '*', 'r', ARGV[2], 'e', ARGV[3], 'd', ARGV[4]) \
     local n = redis.call(ARGV[7], KEYS[2], '\\148' .. string.sub(ARGV[5], 2) .. cmsgpack.pack(id)) \
     if ARGV[6] ~= '1' then return 0 end \
     if ARGV[7] == 'SPUBLISH' then return n end \
     return redis.call('PUBSUB', 'NUMSUB', KEYS[2])[2]";

enum Change {
    Namespace(String),
    Room(String, Room),
}

impl Cluster {
    /// Makes `io` a node of the cluster on `options.url`. Returns at once: the connection to
    /// Redis is made (and made again whenever it is lost) in the background, and until it is
    /// up the node serves its own clients alone.
    pub fn start(io: &Io, options: Options) -> Result<Cluster, Error> {
        // For rediss:// (a second install, by another part of the process, is as good).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let target = Target::parse(&options.url).map_err(Error::Url)?;
        let (outgoing, outgoing_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let uid: String = (0..6)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::random_range(0..36)]))
            .collect();
        let cluster = Cluster(Arc::new(Inner {
            uid,
            sharded: target.sharded(),
            key: options.key,
            timeout: options.requests_timeout,
            io: io.clone(),
            publisher: OnceLock::new(),
            subscriber: OnceLock::new(),
            streams: OnceLock::new(),
            shared_streams: OnceLock::new(),
            outgoing,
            changes,
            routes: Mutex::new(HashMap::new()),
            subscribed: Mutex::new(Subscribed::default()),
            pending: Mutex::new(HashMap::new()),
            up: AtomicBool::new(false),
            stats: ClusterStats {
                ping_seconds: Histogram::seconds(),
                pipeline_seconds: Histogram::seconds(),
                pipeline_failures: Default::default(),
            },
            full_logged_ms: AtomicU64::new(0),
            advertise: options.advertise,
            recovery: options.recovery,
            peers: Mutex::new(HashMap::new()),
            alive: Mutex::new(Vec::new()),
        }));
        io.set_adapter(Arc::new(cluster.clone()));
        io.set_peers(Arc::new(cluster.clone()));
        tokio::spawn(cluster.clone().run(target, outgoing_rx, changes_rx));
        Ok(cluster)
    }

    /// Serves the node's durable streams from Redis, shared with every node (docs/cluster.md):
    /// sequence numbers, dedupe, retention and consumers are the cluster's. False if the
    /// node has streams of its own already.
    pub fn serve_streams(&self, options: StreamOptions) -> bool {
        let (shared, publishes) = streams::RedisStreams::new(self.clone(), options);
        if !self.0.io.set_shared_streams(Arc::new(shared.clone())) {
            return false;
        }
        let _ = self.0.shared_streams.set(shared.clone());
        tokio::spawn(shared.clone().publish_loop(publishes));
        tokio::spawn(shared.maintain());
        true
    }

    /// Waits (at most `timeout`) until everything this node queued for Redis has been sent:
    /// at shutdown, so that the sessions of its clients are handed over before it exits.
    pub async fn flush(&self, timeout: Duration) {
        if !self.0.up.load(Ordering::Relaxed) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let mut cmd = redis::cmd("ECHO");
        cmd.arg(0);
        self.enqueue(cmd, Some((tx, 0)));
        let _ = tokio::time::timeout(timeout, rx).await;
    }

    /// Whether Redis answers, and this node's id.
    pub fn status(&self) -> Status {
        Status {
            redis_up: self.0.up.load(Ordering::Relaxed),
            node: self.0.uid.clone(),
        }
    }

    /// Round trips to Redis so far.
    pub fn stats(&self) -> &ClusterStats {
        &self.0.stats
    }

    /// Ids of the nodes this node knows of (itself included), as last read from Redis.
    pub fn nodes(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.0.alive.lock().clone();
        if !ids.contains(&self.0.uid) {
            ids.push(self.0.uid.clone());
        }
        ids.sort();
        ids
    }

    fn channels(&self, nsp: &str) -> Channels {
        Channels::new(&self.0.key, nsp, &self.0.uid)
    }

    /// Connects, then runs the publisher, the subscriptions, the receiver and the heartbeat.
    async fn run(
        self,
        target: Target,
        outgoing: mpsc::Receiver<Outgoing>,
        changes: mpsc::UnboundedReceiver<Change>,
    ) {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let mut warned = false;
        let (publisher, subscriber, streams) = loop {
            let (publisher, subscriber, streams) = tokio::join!(
                target.connect(None),
                target.connect(Some(push_tx.clone())),
                target.connect(None)
            );
            match (publisher, subscriber, streams) {
                (Ok(p), Ok(s), Ok(st)) => break (p, s, st),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    if !warned {
                        tracing::error!(error = %e, "cluster: Redis unreachable; serving this node's clients alone until it is back");
                        warned = true;
                    }
                    tokio::time::sleep(HEARTBEAT).await;
                }
            }
        };
        let _ = self.0.publisher.set(publisher);
        let _ = self.0.subscriber.set(subscriber);
        let _ = self.0.streams.set(streams);
        self.join_nodes().await;
        self.0.up.store(true, Ordering::Relaxed);
        tracing::info!(node = %self.0.uid, "cluster: connected to Redis");
        tokio::spawn(self.clone().publish_loop(outgoing));
        tokio::spawn(self.clone().receive_loop(push_rx));
        tokio::spawn(self.clone().heartbeat());
        self.subscription_loop(changes).await;
    }

    /// Sends the queued commands in order, as many as are waiting in one round trip (on a
    /// Redis Cluster, one pipeline per slot, and commands without keys after them).
    async fn publish_loop(self, mut rx: mpsc::Receiver<Outgoing>) {
        let conn = self.0.publisher.get().expect("connected").clone();
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 256).await > 0 {
            if !self.0.sharded {
                self.send_pipeline(conn.clone(), std::mem::take(&mut batch))
                    .await;
                continue;
            }
            let mut by_slot: Vec<(Option<u16>, Vec<Outgoing>)> = Vec::new();
            for out in batch.drain(..) {
                let slot = link::slot_of(&out.cmd);
                match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, list)) => list.push(out),
                    None => by_slot.push((slot, vec![out])),
                }
            }
            let keyless = by_slot
                .iter()
                .position(|(s, _)| s.is_none())
                .map(|i| by_slot.remove(i).1);
            futures_util::future::join_all(
                by_slot
                    .into_iter()
                    .map(|(_, list)| self.send_pipeline(conn.clone(), list)),
            )
            .await;
            if let Some(list) = keyless {
                self.send_pipeline(conn.clone(), list).await;
            }
        }
    }

    /// Sends `batch` as one pipeline and gives each reply that is waited for its count.
    async fn send_pipeline(&self, mut conn: Link, batch: Vec<Outgoing>) {
        let mut pipe = redis::pipe();
        let mut replies = Vec::new();
        for out in batch {
            pipe.add_command(out.cmd);
            match out.reply {
                Some(r) => replies.push(r),
                None => {
                    pipe.ignore();
                }
            }
        }
        let started = std::time::Instant::now();
        let result = pipe.query_async::<Vec<i64>>(&mut conn).await;
        self.0
            .stats
            .pipeline_seconds
            .observe_duration(started.elapsed());
        if result.is_err() {
            self.0.stats.pipeline_failures.inc();
        }
        match result {
            Ok(counts) => {
                for ((tx, minus), n) in replies.into_iter().zip(counts) {
                    let _ = tx.send((n.max(0) as usize).saturating_sub(minus));
                }
            }
            // While Redis is away the heartbeat has said so once; no line per batch.
            Err(e) if self.0.up.load(Ordering::Relaxed) => {
                tracing::warn!(error = %e, "cluster: broadcasts or sessions not sent to Redis");
            }
            Err(e) => tracing::debug!(error = %e, "cluster: not sent, Redis is away"),
        }
    }

    /// Queues `cmd` behind everything this node sent before.
    fn enqueue(&self, cmd: redis::Cmd, reply: Option<Reply>) {
        let out = Outgoing { cmd, reply };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.0.outgoing.try_send(out) {
            let now = courier_server::store::now_ms();
            let last = self.0.full_logged_ms.load(Ordering::Relaxed);
            if now >= last + 1000
                && self
                    .0
                    .full_logged_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    queued = PUBLISH_QUEUE,
                    "cluster: queue to Redis full, broadcasts and sessions dropped"
                );
            }
        }
    }

    /// `PUBLISH`, or on a Redis Cluster `SPUBLISH` (a sharded channel).
    pub(crate) fn publish_cmd(&self) -> redis::Cmd {
        redis::cmd(if self.0.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        })
    }

    fn publish(&self, channel: &str, message: Vec<u8>) {
        let mut cmd = self.publish_cmd();
        cmd.arg(channel).arg(message);
        self.enqueue(cmd, None);
    }

    /// Publishes, then answers how many other Courier nodes listen on the channel: they listen
    /// by name, which `PUBSUB NUMSUB` counts, and Node servers by pattern, which it does not.
    /// On a Redis Cluster, `SPUBLISH` counts them itself (sharded channels have no patterns).
    fn publish_counted(&self, channel: &str, message: Vec<u8>, tx: oneshot::Sender<usize>) {
        let mut cmd = if self.0.sharded {
            self.publish_cmd()
        } else {
            let mut eval = redis::cmd("EVAL");
            eval.arg(COUNTED_PUBLISH).arg(1);
            eval
        };
        cmd.arg(channel).arg(message);
        let own = usize::from(self.0.routes.lock().contains_key(channel));
        self.enqueue(cmd, Some((tx, own)));
    }

    /// Keeps the subscriptions in step with the namespaces and rooms this node has.
    async fn subscription_loop(self, mut rx: mpsc::UnboundedReceiver<Change>) {
        let mut conn = self.0.subscriber.get().expect("connected").clone();
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 4096).await > 0 {
            let mut add = Vec::new();
            let mut remove = Vec::new();
            let mut seen = HashSet::new();
            for change in batch.drain(..) {
                match change {
                    Change::Namespace(nsp) => {
                        let ch = self.channels(&nsp);
                        let mut routes = self.0.routes.lock();
                        for (name, route) in [
                            (
                                ch.broadcast,
                                Route::Broadcast {
                                    nsp: nsp.clone(),
                                    room: None,
                                },
                            ),
                            (ch.request, Route::Request { nsp: nsp.clone() }),
                            (ch.response, Route::Response),
                            (ch.own_response, Route::Response),
                        ] {
                            if routes.insert(name.clone(), route).is_none() {
                                add.push(name);
                            }
                        }
                    }
                    Change::Room(nsp, room) => {
                        if !seen.insert((nsp.clone(), room.clone())) {
                            continue;
                        }
                        let wanted = self.0.io.get(&nsp).is_some_and(|ns| ns.has_room(&room));
                        let name = self.channels(&nsp).room(&room);
                        let mut routes = self.0.routes.lock();
                        if wanted && !routes.contains_key(&name) {
                            routes.insert(
                                name.clone(),
                                Route::Broadcast {
                                    nsp,
                                    room: Some(room),
                                },
                            );
                            add.push(name);
                        } else if !wanted && routes.contains_key(&name) {
                            remove.push(name);
                        }
                    }
                }
            }
            if !add.is_empty() {
                match conn.subscribe(&add).await {
                    Ok(()) => {
                        let mut subs = self.0.subscribed.lock();
                        for name in add {
                            for tx in subs.waiting.remove(&name).unwrap_or_default() {
                                let _ = tx.send(());
                            }
                            subs.confirmed.insert(name);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, channels = add.len(), "cluster: subscribe failed; retried when Redis is back");
                        // Whoever waits is answered now rather than at the end of its wait.
                        let mut subs = self.0.subscribed.lock();
                        for name in &add {
                            subs.waiting.remove(name);
                        }
                    }
                }
            }
            if !remove.is_empty() {
                if let Err(e) = conn.unsubscribe(&remove).await {
                    tracing::debug!(error = %e, "cluster: unsubscribe failed");
                }
                // Only now: what arrived until the unsubscribe took effect was still routed
                // (and a count asked for was answered).
                let mut routes = self.0.routes.lock();
                let mut subs = self.0.subscribed.lock();
                for name in &remove {
                    routes.remove(name);
                    subs.confirmed.remove(name);
                    subs.waiting.remove(name);
                }
            }
        }
    }

    /// Checks both connections every second; logs when the link goes down or comes back, and
    /// then subscribes again to every channel this node needs.
    async fn heartbeat(self) {
        let mut publisher = self.0.publisher.get().expect("connected").clone();
        let mut subscriber = self.0.subscriber.get().expect("connected").clone();
        let mut ticks = tokio::time::interval(HEARTBEAT);
        loop {
            ticks.tick().await;
            let ping = |c: &mut Link| {
                let mut c = c.clone();
                async move { redis::cmd("PING").query_async::<String>(&mut c).await }
            };
            let started = std::time::Instant::now();
            let timed = async {
                let r = ping(&mut publisher).await;
                if r.is_ok() {
                    self.0
                        .stats
                        .ping_seconds
                        .observe_duration(started.elapsed());
                }
                r
            };
            // The streams' connection too: after a restart of Redis it is made again here, so
            // that "up" means every link works.
            let streams = async {
                match self.0.streams.get() {
                    Some(c) => ping(&mut c.clone()).await.map(drop),
                    None => Ok(()),
                }
            };
            let (a, b, c) = tokio::join!(timed, ping(&mut subscriber), streams);
            let up = a.is_ok() && b.is_ok() && c.is_ok();
            if up {
                self.renew_nodes(&mut publisher).await;
                if self.0.recovery.is_some() {
                    // Live sessions outlive a crash of this node by the recovery window.
                    let window =
                        self.window().as_millis() as u64 + 2 * HEARTBEAT.as_millis() as u64;
                    let _: redis::RedisResult<()> = redis::cmd("PEXPIRE")
                        .arg(self.live_key(&self.0.uid))
                        .arg(window)
                        .query_async(&mut publisher)
                        .await;
                }
            }
            if !up {
                if let Some(e) = a.err().or(b.err()).or(c.err()) {
                    self.lost_redis(&e);
                }
                continue;
            }
            let was = self.0.up.swap(true, Ordering::Relaxed);
            if !was {
                let channels: Vec<String> = self.0.routes.lock().keys().cloned().collect();
                if !channels.is_empty()
                    && let Err(e) = subscriber.subscribe(&channels).await
                {
                    tracing::warn!(error = %e, "cluster: subscribing again failed");
                }
                tracing::info!(channels = channels.len(), "cluster: Redis is back");
                if let Some(s) = self.0.shared_streams.get() {
                    s.wake_all();
                }
            }
        }
    }

    /// Redis is away: said once, then everything that needs it answers at once until the
    /// heartbeat sees it back.
    pub(crate) fn lost_redis(&self, e: &redis::RedisError) {
        if self.0.up.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %e, "cluster: lost Redis; serving this node's clients alone until it is back");
        }
    }

    fn nodes_channel(&self) -> String {
        format!("{}-courier-nodes", self.0.key)
    }

    fn node_channel(&self, node: &str) -> String {
        format!("{}-courier-node#{node}", self.0.key)
    }

    /// Listens on this node's channel and for announcements, writes this node's address and
    /// announces it, so that the other nodes count it and forward to it from now on, not from
    /// their next heartbeat.
    async fn join_nodes(&self) {
        let mut sub = self.0.subscriber.get().expect("connected").clone();
        let mut publisher = self.0.publisher.get().expect("connected").clone();
        let (own, all) = (self.node_channel(&self.0.uid), self.nodes_channel());
        let notices = streams::RedisStreams::channel(&self.0.key);
        {
            let mut routes = self.0.routes.lock();
            routes.insert(own.clone(), Route::Node);
            routes.insert(all.clone(), Route::Announce);
            routes.insert(notices.clone(), Route::Streams);
        }
        if let Err(e) = sub.subscribe(&[own, all.clone(), notices]).await {
            tracing::warn!(error = %e, "cluster: subscribe failed; retried when Redis is back");
        }
        self.renew_nodes(&mut publisher).await;
        let _: redis::RedisResult<()> = self
            .publish_cmd()
            .arg(&all)
            .arg(format!("{} {}", self.0.uid, self.advertised()))
            .query_async(&mut publisher)
            .await;
    }

    /// This node's address as the table of nodes and announcements carry it (`-` for none).
    fn advertised(&self) -> String {
        self.0
            .advertise
            .as_ref()
            .map_or("-".into(), |u| u.to_string())
    }

    fn on_announce(&self, message: &[u8]) {
        let Some((node, url)) = std::str::from_utf8(message)
            .ok()
            .and_then(|m| m.split_once(' '))
        else {
            return;
        };
        if let Ok(uri) = url.parse::<http::Uri>() {
            self.0.peers.lock().insert(node.to_owned(), uri);
        }
        let mut alive = self.0.alive.lock();
        if !alive.iter().any(|n| n == node) {
            alive.push(node.to_owned());
        }
    }

    /// Writes this node's address with the time, and reads every node's: the table of where
    /// sessions live, and of the nodes alive. An entry not renewed within `NODE_EXPIRY_MS` is
    /// dropped.
    async fn renew_nodes(&self, conn: &mut Link) {
        let table = format!("{}-courier-nodes", self.0.key);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.hset(&table, &self.0.uid, format!("{now} {}", self.advertised()))
            .ignore();
        pipe.hgetall(&table);
        let Ok((all,)) = pipe.query_async::<(HashMap<String, String>,)>(conn).await else {
            return;
        };
        let mut peers = HashMap::new();
        let mut alive = Vec::new();
        let mut expired = Vec::new();
        for (node, entry) in all {
            let Some((at, url)) = entry.split_once(' ') else {
                continue;
            };
            if at.parse::<u64>().is_ok_and(|at| at + NODE_EXPIRY_MS < now) {
                expired.push(node);
                continue;
            }
            if let Ok(uri) = url.parse::<http::Uri>() {
                peers.insert(node.clone(), uri);
            }
            alive.push(node);
        }
        *self.0.peers.lock() = peers;
        *self.0.alive.lock() = alive;
        if !expired.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("HDEL")
                .arg(&table)
                .arg(&expired)
                .query_async(conn)
                .await;
        }
    }

    /// Handles what arrives on the subscribed channels.
    async fn receive_loop(self, mut rx: mpsc::UnboundedReceiver<redis::PushInfo>) {
        while let Some(push) = rx.recv().await {
            if !matches!(
                push.kind,
                redis::PushKind::Message | redis::PushKind::SMessage
            ) {
                continue;
            }
            let mut data = push.data.into_iter();
            let (Some(channel), Some(message)) = (data.next(), data.next()) else {
                continue;
            };
            let (Ok(channel), Ok(message)) = (
                redis::from_redis_value::<String>(channel),
                redis::from_redis_value::<Vec<u8>>(message),
            ) else {
                continue;
            };
            let route = self.0.routes.lock().get(&channel).cloned();
            match route {
                Some(Route::Broadcast { nsp, room }) => self.on_broadcast(&nsp, room, &message),
                Some(Route::Request { nsp }) => self.on_request(&nsp, &message),
                Some(Route::Response) => self.on_response(&message),
                Some(Route::Announce) => self.on_announce(&message),
                Some(Route::Streams) => {
                    if let Some(s) = self.0.shared_streams.get() {
                        s.on_notice(&message);
                    }
                }
                Some(Route::Node) | None => {}
            }
        }
    }

    fn on_broadcast(&self, nsp: &str, room: Option<Room>, message: &[u8]) {
        let Some(mut b) = wire::decode_broadcast(message) else {
            tracing::debug!(nsp, "cluster: malformed broadcast ignored");
            return;
        };
        // A logged broadcast comes back to its sender too, which delivers it then: every node
        // delivers in the log's order.
        if b.uid == self.0.uid && b.offset.is_none() {
            return;
        }
        let count = b.count.take();
        let n = self.deliver(nsp, room, b);
        if let Some((id, uid)) = count {
            self.respond(
                nsp,
                Some(&uid),
                json!({"type": kind::COUNT, "requestId": id, "count": n}),
            );
        }
    }

    /// Delivers a broadcast from the channel of `room` (or the namespace's) to this node's
    /// targeted sockets; returns how many it reached.
    fn deliver(&self, nsp: &str, room: Option<Room>, b: wire::Incoming) -> usize {
        let Some(ns) = self.0.io.get(nsp).filter(|_| b.nsp == nsp) else {
            return 0;
        };
        if room.is_some_and(|r| !ns.has_room(&r)) {
            return 0;
        }
        let mut op = operator(&ns, &b.targets);
        if b.volatile {
            op = op.volatile();
        }
        match b.offset {
            Some(offset) => op.emit_logged(&b.event, &b.payload.args, offset),
            None => op.emit_payload(&b.event, b.payload).unwrap_or(0),
        }
    }

    fn on_request(&self, nsp: &str, message: &[u8]) {
        let Some((req, attachments)) = wire::decode_object(message) else {
            tracing::debug!(nsp, "cluster: malformed request ignored");
            return;
        };
        let uid = req.get("uid").and_then(Value::as_str);
        if uid == Some(self.0.uid.as_str()) {
            return;
        }
        let Some(ns) = self.0.io.get(nsp) else {
            return;
        };
        let id = req.get("requestId").cloned().unwrap_or(Value::Null);
        let targets = req.get("opts").map(wire::targets_from_json);
        let t = req.get("type").and_then(Value::as_u64);
        let answer = match t {
            Some(kind::SOCKETS) => {
                let op = operator(
                    &ns,
                    &Targets {
                        rooms: wire::rooms_in(&req, "rooms"),
                        except: Vec::new(),
                    },
                );
                let ids: Vec<_> = op.sockets().iter().map(|s| s.id().clone()).collect();
                Some(json!({"requestId": id, "sockets": ids}))
            }
            Some(kind::ALL_ROOMS) => {
                let mut rooms: Vec<Value> = ns.rooms().into_iter().map(|(r, _)| json!(r)).collect();
                rooms.extend(ns.sockets().iter().map(|s| json!(s.id())));
                Some(json!({"requestId": id, "rooms": rooms}))
            }
            Some(k @ (kind::REMOTE_JOIN | kind::REMOTE_LEAVE)) => {
                let join = k == kind::REMOTE_JOIN;
                if let Some(targets) = targets {
                    let op = operator(&ns, &targets);
                    for r in wire::rooms_in(&req, "rooms") {
                        if join {
                            op.join(r);
                        } else {
                            op.leave(&r);
                        }
                    }
                    None
                } else {
                    let socket = req
                        .get("sid")
                        .and_then(Value::as_str)
                        .and_then(|s| ns.socket(s));
                    let room = req.get("room").and_then(wire::room_of_json);
                    match (socket, room) {
                        (Some(s), Some(r)) => {
                            if join {
                                s.join(r);
                            } else {
                                s.leave(&r);
                            }
                            Some(json!({"requestId": id}))
                        }
                        _ => None,
                    }
                }
            }
            Some(kind::REMOTE_DISCONNECT) => {
                let close = req.get("close").and_then(Value::as_bool).unwrap_or(false);
                if let Some(targets) = targets {
                    let n = operator(&ns, &targets).disconnect_here(close);
                    // Only Courier asks with an id, to count.
                    (!id.is_null())
                        .then(|| json!({"type": kind::COUNT, "requestId": id, "count": n}))
                } else {
                    let socket = req
                        .get("sid")
                        .and_then(Value::as_str)
                        .and_then(|s| ns.socket(s));
                    socket.map(|s| {
                        if close {
                            s.close_connection();
                        } else {
                            s.disconnect();
                        }
                        json!({"requestId": id})
                    })
                }
            }
            Some(kind::REMOTE_FETCH) => {
                let op = operator(&ns, &targets.unwrap_or_default());
                let sockets: Vec<Value> = op.sockets().iter().map(fetched).collect();
                Some(json!({"requestId": id, "sockets": sockets}))
            }
            Some(kind::BROADCAST) => {
                self.on_broadcast_with_ack(&ns, uid, id, &req, attachments);
                None
            }
            // SERVER_SIDE_EMIT: Courier has no server-side event handlers; like a Node server
            // without listeners, it does not answer. Unknown types are ignored.
            _ => None,
        };
        if let Some(answer) = answer {
            self.respond(nsp, uid, answer);
        }
    }

    fn on_broadcast_with_ack(
        &self,
        ns: &Namespace,
        uid: Option<&str>,
        id: Value,
        req: &Value,
        attachments: Vec<Bytes>,
    ) {
        let Some((event, payload)) = req.get("packet").and_then(|p| event_of(p, attachments))
        else {
            return;
        };
        let opts = req.get("opts").cloned().unwrap_or(Value::Null);
        let timeout = opts
            .get("flags")
            .and_then(|f| f.get("timeout"))
            .and_then(Value::as_u64)
            .map_or(self.0.timeout, Duration::from_millis);
        let op = operator(ns, &wire::targets_from_json(&opts));
        let (n, mut answers) = op.emit_with_ack_each(&event, payload, timeout);
        let nsp = ns.name().to_owned();
        self.respond(
            &nsp,
            uid,
            json!({"type": kind::BROADCAST_CLIENT_COUNT, "requestId": id, "clientCount": n}),
        );
        let this = self.clone();
        let uid = uid.map(str::to_owned);
        tokio::spawn(async move {
            while let Some((sid, p)) = answers.next().await {
                let first = p
                    .args
                    .first()
                    .map_or(rmpv::Value::Nil, |a| wire::json_to_mp(a, &p.attachments));
                let all = rmpv::Value::Array(
                    p.args
                        .iter()
                        .map(|a| wire::json_to_mp(a, &p.attachments))
                        .collect(),
                );
                let msg = rmpv::Value::Map(vec![
                    ("type".into(), kind::BROADCAST_ACK.into()),
                    ("requestId".into(), json_scalar(&id)),
                    ("packet".into(), first),
                    ("sid".into(), (&*sid).into()),
                    ("args".into(), all),
                ]);
                this.publish_response(&nsp, uid.as_deref(), wire::encode(&msg));
            }
        });
    }

    fn on_response(&self, message: &[u8]) {
        let Some((resp, attachments)) = wire::decode_object(message) else {
            return;
        };
        let Some(id) = resp.get("requestId").and_then(Value::as_str) else {
            return;
        };
        if let Some(tx) = self.0.pending.lock().get(id) {
            let _ = tx.send((resp, attachments));
        }
    }

    fn respond(&self, nsp: &str, uid: Option<&str>, answer: Value) {
        let bytes = serde_json::to_vec(&answer).expect("JSON values serialize");
        self.publish_response(nsp, uid, bytes);
    }

    /// Resolves once Redis confirmed this node's subscription to `channel` (at once if it has,
    /// or if Redis is away), at most `ROOM_READY_WAIT` from now.
    fn channel_ready(&self, channel: &str) -> impl Future<Output = ()> + Send + 'static {
        let mut subs = self.0.subscribed.lock();
        let rx = if subs.confirmed.contains(channel) || !self.0.up.load(Ordering::Relaxed) {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            subs.waiting.entry(channel.to_owned()).or_default().push(tx);
            Some(rx)
        };
        async move {
            if let Some(rx) = rx {
                let _ = tokio::time::timeout(ROOM_READY_WAIT, rx).await;
            }
        }
    }

    /// Answers go to the asking node's own channel (every Node server listens on its own too).
    fn publish_response(&self, nsp: &str, uid: Option<&str>, bytes: Vec<u8>) {
        let ch = self.channels(nsp);
        let channel = uid.map_or(ch.response.clone(), |u| ch.response_to(u));
        self.publish(&channel, bytes);
    }

    /// Publishes a request on `channel` and collects answers until `done` says they are all
    /// in, or the timeout. `done` gets the answers so far and how many nodes should answer:
    /// `nodes`, or when that is `None` the other nodes listening on `channel`.
    ///
    /// The answers come on this node's own response channel of the namespace (`ch`), which
    /// it subscribes to when the namespace appears: a request waits (at most
    /// `ROOM_READY_WAIT`) until Redis confirmed that, or the first answers would be lost.
    #[allow(clippy::too_many_arguments)]
    async fn ask(
        &self,
        ch: &Channels,
        id: &str,
        channel: String,
        message: Vec<u8>,
        nodes: Option<usize>,
        done: impl Fn(&[Answer], usize) -> bool,
        timeout: Duration,
    ) -> Vec<Answer> {
        self.channel_ready(&ch.own_response).await;
        let asking = self.start_asking(id, |tx| self.publish_counted(&channel, message, tx));
        self.collect(asking, nodes, done, timeout).await
    }

    /// [`Cluster::ask`] with a JSON request and one answer from each node.
    async fn ask_json(
        &self,
        ch: &Channels,
        id: &str,
        channel: String,
        req: &Value,
        nodes: Option<usize>,
    ) -> Vec<Answer> {
        let message = serde_json::to_vec(req).expect("JSON values serialize");
        self.ask(ch, id, channel, message, nodes, one_each, self.0.timeout)
            .await
    }

    /// Registers request `id`, then sends it with `send`, which is given where to put the
    /// number of nodes listening.
    fn start_asking(&self, id: &str, send: impl FnOnce(oneshot::Sender<usize>)) -> Asking {
        let (tx, answers) = mpsc::unbounded_channel();
        self.0.pending.lock().insert(id.to_owned(), tx);
        let (count_tx, listening) = oneshot::channel();
        send(count_tx);
        Asking {
            id: id.to_owned(),
            answers,
            listening,
        }
    }

    /// Collects the answers to a request; see [`Cluster::ask`].
    async fn collect(
        &self,
        asking: Asking,
        nodes: Option<usize>,
        done: impl Fn(&[Answer], usize) -> bool,
        timeout: Duration,
    ) -> Vec<Answer> {
        let Asking {
            id,
            answers: mut rx,
            listening: count_rx,
        } = asking;
        let id = id.as_str();
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        if let Ok(Ok(listening)) = tokio::time::timeout_at(deadline, count_rx).await {
            let nodes = nodes.unwrap_or(listening);
            while !done(&answers, nodes) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(a)) => answers.push(a),
                    _ => {
                        tracing::debug!(
                            request = id,
                            nodes,
                            answers = answers.len(),
                            "cluster: request timed out"
                        );
                        break;
                    }
                }
            }
        }
        self.0.pending.lock().remove(id);
        answers
    }

    fn request_id() -> String {
        (0..12)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::random_range(0..36)]))
            .collect()
    }
}

/// The sum of the nodes' `count` answers.
pub(crate) fn counted(answers: &[Answer]) -> usize {
    answers
        .iter()
        .filter_map(|(a, _)| a.get("count").and_then(Value::as_u64))
        .sum::<u64>() as usize
}

/// Whether every node asked has answered once.
pub(crate) fn one_each(answers: &[Answer], nodes: usize) -> bool {
    answers.len() >= nodes
}

/// The operator for `targets` on this node only.
fn operator(ns: &Namespace, targets: &Targets) -> BroadcastOperator {
    let mut op = ns.broadcast().local();
    for r in &targets.rooms {
        op = op.to(r.clone());
    }
    for r in &targets.except {
        op = op.except(r.clone());
    }
    op
}

/// The event and arguments of a request's packet (`{type, data, nsp}`).
fn event_of(packet: &Value, attachments: Vec<Bytes>) -> Option<(String, Payload)> {
    let data = packet.get("data")?.as_array()?;
    let (first, rest) = data.split_first()?;
    Some((
        first.as_str()?.to_owned(),
        Payload {
            args: rest.to_vec(),
            attachments,
        },
    ))
}

fn json_scalar(v: &Value) -> rmpv::Value {
    wire::json_to_mp(v, &[])
}

/// A socket as a REMOTE_FETCH answer lists it, with the handshake fields Node servers give.
fn fetched(s: &courier_server::Socket) -> Value {
    let h = s.handshake();
    let headers: serde_json::Map<String, Value> = h
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), json!(v.to_str().ok()?))))
        .collect();
    let issued = h
        .issued
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let query: serde_json::Map<String, Value> = h
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), json!(v))
        })
        .collect();
    let info = s.info();
    json!({
        "id": info.id,
        "handshake": {
            "headers": headers,
            "address": h.address.map(|a| a.ip().to_string()),
            "xdomain": false,
            "secure": false,
            "issued": issued,
            "query": query,
            "auth": s.auth(),
        },
        "rooms": info.rooms,
        "data": info.data,
        "transport": info.transport,
        "sub": info.sub,
    })
}

impl courier_server::Peers for Cluster {
    fn node_id(&self) -> &str {
        &self.0.uid
    }

    fn address_of(&self, node: &str) -> Option<http::Uri> {
        if node == self.0.uid {
            return None;
        }
        self.0.peers.lock().get(node).cloned()
    }
}

impl Adapter for Cluster {
    fn namespace_added(&self, ns: &Namespace) {
        let _ = self.0.changes.send(Change::Namespace(ns.name().to_owned()));
    }

    fn room_changed(&self, ns: &Namespace, room: &Room) {
        let _ = self
            .0
            .changes
            .send(Change::Room(ns.name().to_owned(), room.clone()));
    }

    fn room_ready(&self, ns: &Namespace, room: &Room) -> BoxFuture<'static, ()> {
        Box::pin(self.channel_ready(&self.channels(ns.name()).room(room)))
    }

    fn broadcast(&self, b: Broadcast) {
        let channel = self.channels(&b.nsp).for_targets(&b.targets);
        self.publish(&channel, wire::encode_broadcast(&self.0.uid, &b, None));
    }

    fn broadcast_counted(&self, b: Broadcast) -> BoxFuture<'static, usize> {
        let this = self.clone();
        Box::pin(async move {
            let id = Self::request_id();
            let ch = this.channels(&b.nsp);
            let channel = ch.for_targets(&b.targets);
            let message = wire::encode_broadcast(&this.0.uid, &b, Some(&id));
            let answers = this
                .ask(&ch, &id, channel, message, None, one_each, this.0.timeout)
                .await;
            counted(&answers)
        })
    }

    fn broadcast_with_ack(&self, b: Broadcast, timeout: Duration) -> BoxFuture<'static, Acks> {
        let this = self.clone();
        Box::pin(async move {
            let id = Self::request_id();
            let ch = this.channels(&b.nsp);
            let mut opts = vec![
                (
                    "rooms".into(),
                    rmpv::Value::Array(b.targets.rooms.iter().map(|r| (&**r).into()).collect()),
                ),
                (
                    "except".into(),
                    rmpv::Value::Array(b.targets.except.iter().map(|r| (&**r).into()).collect()),
                ),
            ];
            opts.push((
                "flags".into(),
                rmpv::Value::Map(vec![(
                    "timeout".into(),
                    (timeout.as_millis() as u64).into(),
                )]),
            ));
            let msg = rmpv::Value::Map(vec![
                ("uid".into(), this.0.uid.as_str().into()),
                ("requestId".into(), id.as_str().into()),
                ("type".into(), kind::BROADCAST.into()),
                (
                    "packet".into(),
                    wire::packet_mp(&b.nsp, &b.event, &b.payload),
                ),
                ("opts".into(), rmpv::Value::Map(opts)),
            ]);
            // Every server in the namespace answers with its count, then once per ack.
            let done = |answers: &[Answer], nodes: usize| {
                let counts: Vec<u64> = answers
                    .iter()
                    .filter(|(a, _)| a["type"] == kind::BROADCAST_CLIENT_COUNT)
                    .filter_map(|(a, _)| a["clientCount"].as_u64())
                    .collect();
                let acks = answers.len() - counts.len();
                counts.len() >= nodes && acks as u64 >= counts.iter().sum::<u64>()
            };
            let answers = this
                .ask(
                    &ch,
                    &id,
                    ch.request.clone(),
                    wire::encode(&msg),
                    None,
                    done,
                    timeout,
                )
                .await;
            let mut acks = Acks::default();
            for (a, attachments) in answers {
                if a["type"] == kind::BROADCAST_CLIENT_COUNT {
                    acks.recipients += a["clientCount"].as_u64().unwrap_or(0) as usize;
                } else if a["type"] == kind::BROADCAST_ACK {
                    let sid = a.get("sid").and_then(Value::as_str).map(Into::into);
                    let args = match a.get("args") {
                        Some(Value::Array(all)) => all.clone(),
                        _ => vec![a.get("packet").cloned().unwrap_or(Value::Null)],
                    };
                    acks.answers.push((sid, Payload { args, attachments }));
                }
            }
            acks
        })
    }

    fn fetch_sockets(&self, nsp: &str, targets: &Targets) -> BoxFuture<'static, Vec<SocketInfo>> {
        let this = self.clone();
        let ch = self.channels(nsp);
        let targets = targets.clone();
        Box::pin(async move {
            let id = Self::request_id();
            let req = json!({
                "uid": this.0.uid, "requestId": id, "type": kind::REMOTE_FETCH,
                "opts": wire::targets_json(&targets),
            });
            let answers = this
                .ask_json(&ch, &id, ch.request.clone(), &req, None)
                .await;
            answers
                .iter()
                .filter_map(|(a, _)| a.get("sockets")?.as_array())
                .flatten()
                .filter_map(|s| {
                    Some(SocketInfo {
                        id: s.get("id")?.as_str()?.into(),
                        rooms: wire::rooms_in(s, "rooms"),
                        data: s.get("data").cloned().unwrap_or(Value::Null),
                        transport: s
                            .get("transport")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        sub: s.get("sub").and_then(Value::as_str).map(str::to_owned),
                    })
                })
                .collect()
        })
    }

    fn change_rooms(&self, nsp: &str, targets: &Targets, rooms: &[Room], join: bool) {
        let ch = self.channels(nsp);
        let req = json!({
            "uid": self.0.uid,
            "type": if join { kind::REMOTE_JOIN } else { kind::REMOTE_LEAVE },
            "opts": wire::targets_json(targets),
            "rooms": rooms,
        });
        self.publish(
            &ch.request,
            serde_json::to_vec(&req).expect("JSON values serialize"),
        );
    }

    fn shares_recovery(&self) -> bool {
        self.0.recovery.is_some()
    }

    fn node_id(&self) -> &str {
        &self.0.uid
    }

    fn broadcast_logged(
        &self,
        b: Broadcast,
        data: Bytes,
        count: bool,
    ) -> BoxFuture<'static, usize> {
        self.log_and_publish(b, data, count)
    }

    fn recovery_position(&self, nsp: &str) -> BoxFuture<'static, u64> {
        self.position(nsp)
    }

    fn save_session(&self, pid: &str, record: courier_server::store::SessionRecord) {
        self.keep_session(pid, record);
    }

    fn drop_session(&self, pid: &str) {
        self.forget_session(pid);
    }

    fn take_session(
        &self,
        pid: &str,
    ) -> BoxFuture<'static, Option<courier_server::store::SessionRecord>> {
        self.take(pid)
    }

    fn recoverable_after(
        &self,
        nsp: &str,
        after: u64,
    ) -> BoxFuture<'static, Option<Vec<courier_server::store::RecoveryEvent>>> {
        self.after(nsp, after)
    }

    fn disconnect_sockets(
        &self,
        nsp: &str,
        targets: &Targets,
        close: bool,
    ) -> BoxFuture<'static, usize> {
        let this = self.clone();
        let ch = self.channels(nsp);
        let targets = targets.clone();
        Box::pin(async move {
            let id = Self::request_id();
            let req = json!({
                "uid": this.0.uid, "requestId": id, "type": kind::REMOTE_DISCONNECT,
                "opts": wire::targets_json(&targets), "close": close,
            });
            // Node servers act on it without answering; the Courier nodes answer with counts.
            let courier = this.courier_nodes_of(&ch).await;
            let answers = this
                .ask_json(&ch, &id, ch.request.clone(), &req, Some(courier))
                .await;
            counted(&answers)
        })
    }
}

impl Cluster {
    /// How many other Courier nodes have the namespace of `ch`: they listen on its broadcast
    /// channel by name, which Node servers (listening by pattern) do not.
    async fn courier_nodes_of(&self, ch: &Channels) -> usize {
        let Some(conn) = self.0.publisher.get() else {
            return 0;
        };
        self.listeners(&mut conn.clone(), &ch.broadcast)
            .await
            .unwrap_or(0)
            .saturating_sub(1)
    }

    /// How many listen on `channel` by name (`PUBSUB NUMSUB`, or `SHARDNUMSUB` on a Redis
    /// Cluster, summed over its nodes); `None` if Redis did not answer.
    pub(crate) async fn listeners(&self, conn: &mut Link, channel: &str) -> Option<usize> {
        let counts = self.listeners_of(conn, &[channel.to_owned()]).await?;
        Some(counts.get(channel).copied().unwrap_or(0))
    }

    /// [`Cluster::listeners`] of several channels at once.
    pub(crate) async fn listeners_of(
        &self,
        conn: &mut Link,
        channels: &[String],
    ) -> Option<HashMap<String, usize>> {
        let which = if self.0.sharded {
            "SHARDNUMSUB"
        } else {
            "NUMSUB"
        };
        redis::cmd("PUBSUB")
            .arg(which)
            .arg(channels)
            .query_async(conn)
            .await
            .ok()
    }
}
