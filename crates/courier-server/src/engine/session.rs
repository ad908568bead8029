//! One Engine.IO session: its outbound queue, transport state and lifecycle.

use crate::stats::Stats;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use bytes::Bytes;
use std::collections::VecDeque;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A session id, as sent to clients.
pub type Sid = Arc<str>;

/// Makes a random 20-character URL-safe id.
pub fn new_id() -> Sid {
    prefixed_id("")
}

/// `prefix` followed by 20 random URL-safe characters (120 bits, as [`new_id`]).
pub(crate) fn prefixed_id(prefix: &str) -> Sid {
    use base64::Engine as _;
    let bytes: [u8; 15] = rand::random();
    let mut id = String::with_capacity(prefix.len() + 20);
    id.push_str(prefix);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut id);
    id.into()
}

/// What the writer of a connection sends. A binary Socket.IO packet and its attachments are one
/// item so that nothing can be queued between them.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An Engine.IO packet in text form (`42[...]`, `2`, `6`, ...).
    Text(Bytes),
    /// An Engine.IO binary message.
    Binary(Bytes),
    /// A text packet followed by its binary attachments.
    WithAttachments(Bytes, Arc<[Bytes]>),
}

impl Outbound {
    /// The number of frames this item becomes on a WebSocket.
    pub fn frames(&self) -> usize {
        match self {
            Outbound::WithAttachments(_, a) => 1 + a.len(),
            _ => 1,
        }
    }

    /// The bytes of this item's payloads.
    pub fn len(&self) -> usize {
        match self {
            Outbound::Text(b) | Outbound::Binary(b) => b.len(),
            Outbound::WithAttachments(t, a) => t.len() + a.iter().map(Bytes::len).sum::<usize>(),
        }
    }

    /// Whether every payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The transport a session currently uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP long-polling.
    Polling,
    /// WebSocket.
    WebSocket,
}

impl Transport {
    /// The name used in the `transport` query parameter.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::WebSocket => "websocket",
        }
    }
}

/// Why a session closed; mapped to Socket.IO's disconnect reasons by [`CloseReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed the transport (or sent a close packet).
    TransportClose,
    /// The transport failed, or the client broke a transport rule.
    TransportError,
    /// No pong within the ping timeout.
    PingTimeout,
    /// The server is shutting down.
    ServerShutdown,
    /// The server closed the connection on purpose.
    ForcedClose,
    /// The client sent bytes that are not valid packets.
    ParseError,
    /// The client read too slowly and its outbound queue filled up.
    SlowClient,
    /// No namespace was joined within the connect timeout.
    ConnectTimeout,
    /// The identity a socket of the connection authenticated with expired.
    TokenExpired,
    /// The client kept sending events past its rate limit.
    RateLimited,
}

impl CloseReason {
    /// The reason as Socket.IO names it to `disconnect` handlers.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError | CloseReason::SlowClient => "transport error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::ForcedClose | CloseReason::ConnectTimeout => "forced server close",
            CloseReason::ParseError => "parse error",
            CloseReason::TokenExpired => "token expired",
            CloseReason::RateLimited => "rate limited",
        }
    }
}

/// Why a packet could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The client is not reading fast enough.
    #[error("outbound queue full")]
    Full,
    /// The session is closed.
    #[error("session closed")]
    Closed,
}

/// Shared state of one session. Cheap to reach from any task through an `Arc`.
#[derive(Debug)]
pub struct Session {
    sid: Sid,
    queue: Arc<Queue>,
    /// The outbound queue's receiver, held by whichever transport currently writes: a pending
    /// long-polling GET or the WebSocket task. An async mutex because it is held across the wait
    /// for the next packet.
    pub(crate) rx: tokio::sync::Mutex<Outq>,
    transport: AtomicU8,
    pub(crate) upgrading: AtomicBool,
    pub(crate) post_busy: AtomicBool,
    pub(crate) pong: Notify,
    /// Signalled when a long-polling GET has carried the close packet.
    pub(crate) close_delivered: Notify,
    /// Set once a long-polling GET has carried the close packet: the sid is unknown from then on.
    close_sent: AtomicBool,
    /// Set by [`Session::abort`], before `closed` is cancelled.
    aborted: AtomicBool,
    /// Signalled when the writer has taken items from the queue and someone asked for it
    /// (`want_drained`): most writes happen with nobody waiting, and skip the notify's lock.
    drained: Notify,
    drain_wanted: AtomicBool,
    closed: CancellationToken,
    /// Mirrors `closed` for the hot path: checking the token takes a lock.
    is_closed: AtomicBool,
    // A blocking mutex (parking_lot, which does not poison): written once, read once, never held across an await.
    reason: Mutex<Option<CloseReason>>,
    /// The server's counters, when it counts.
    pub(crate) stats: Option<Arc<Stats>>,
}

impl Session {
    pub(crate) fn new(
        sid: Sid,
        transport: Transport,
        queue: usize,
        stats: Option<Arc<Stats>>,
    ) -> Arc<Session> {
        let queue = Arc::new(Queue {
            items: Mutex::new(VecDeque::new()),
            cap: queue.max(1),
            ready: Notify::new(),
        });
        Arc::new(Session {
            sid,
            rx: tokio::sync::Mutex::new(Outq {
                queue: queue.clone(),
                held: None,
            }),
            queue,
            transport: AtomicU8::new(transport as u8),
            upgrading: AtomicBool::new(false),
            post_busy: AtomicBool::new(false),
            pong: Notify::new(),
            close_delivered: Notify::new(),
            close_sent: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            drained: Notify::new(),
            drain_wanted: AtomicBool::new(false),
            closed: CancellationToken::new(),
            is_closed: AtomicBool::new(false),
            reason: Mutex::new(None),
            stats,
        })
    }

    /// The session id.
    pub fn sid(&self) -> &Sid {
        &self.sid
    }

    /// The transport in use.
    pub fn transport(&self) -> Transport {
        if self.transport.load(Ordering::Acquire) == Transport::WebSocket as u8 {
            Transport::WebSocket
        } else {
            Transport::Polling
        }
    }

    pub(crate) fn set_transport(&self, t: Transport) {
        self.transport.store(t as u8, Ordering::Release);
    }

    /// Queues an item for the client without waiting.
    pub fn send(&self, item: Outbound) -> Result<(), SendError> {
        if self.is_closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        self.queue.push(item)
    }

    /// Resolves at the writer's next drain after this call.
    pub(crate) fn drained(&self) -> tokio::sync::futures::Notified<'_> {
        let notified = self.drained.notified();
        self.drain_wanted.store(true, Ordering::Release);
        notified
    }

    /// Called by the writer after it took items from the queue.
    pub(crate) fn note_drained(&self) {
        if self.drain_wanted.swap(false, Ordering::AcqRel) {
            self.drained.notify_waiters();
        }
    }

    /// Whether the outbound queue is more than half full: the session then stops reading input
    /// until its writer catches up, so that answers to its own requests never overflow it.
    pub fn is_backlogged(&self) -> bool {
        self.queue.items.lock().len() > self.queue.cap / 2
    }

    /// Closes the session. The first reason given wins; later calls do nothing.
    ///
    /// What is queued is still written, and a long-polling client that is between two GETs
    /// receives the close packet on its next one (see [`Session::lingers`]).
    pub fn close(&self, reason: CloseReason) {
        self.close_as(reason, false);
    }

    /// Ends the session at once, as a broken transport does: a long-polling GET pending at this
    /// moment receives the close packet, and from now on the sid is unknown. The engine uses it
    /// for everything the reference server treats as the transport's end (the client's close
    /// packet, a bad packet, a ping timeout, an aborted request).
    pub(crate) fn abort(&self, reason: CloseReason) {
        self.close_as(reason, true);
    }

    fn close_as(&self, reason: CloseReason, abort: bool) {
        {
            let mut r = self.reason.lock();
            if r.is_some() {
                return;
            }
            *r = Some(reason);
        }
        // Before `is_closed`: whoever sees the session closed also sees how.
        self.aborted.store(abort, Ordering::Release);
        self.is_closed.store(true, Ordering::Release);
        self.closed.cancel();
    }

    /// Whether a closed session still waits for a long-polling GET to carry its close packet:
    /// closed gracefully by the server, polling, and not yet told. Such a session answers a GET
    /// with the close packet; any other closed session is unknown to new requests.
    pub(crate) fn lingers(&self) -> bool {
        if !self.is_closed() {
            return false;
        }
        let graceful = !matches!(
            self.close_reason(),
            None | Some(
                CloseReason::TransportClose
                    | CloseReason::TransportError
                    | CloseReason::PingTimeout
            )
        );
        graceful
            && !self.aborted.load(Ordering::Acquire)
            && self.transport() == Transport::Polling
            && !self.close_sent.load(Ordering::Acquire)
    }

    /// Called by the long-polling GET that carried the close packet.
    pub(crate) fn note_close_sent(&self) {
        self.close_sent.store(true, Ordering::Release);
        self.close_delivered.notify_one();
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.reason.lock()
    }

    /// Resolves when the session closes.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }
}

/// A session's outbound queue: bounded, many senders, one writer at a time.
///
/// Not a tokio channel: that allocates a block of 32 slots (about 1.8 KB) when it is made and
/// keeps it, which was a fifth of what an idle connection cost. This one holds nothing while
/// empty and gives its memory back once drained, beyond a few slots.
#[derive(Debug)]
struct Queue {
    // A blocking mutex (parking_lot): held to push or take items, never across an await.
    items: Mutex<VecDeque<Outbound>>,
    cap: usize,
    /// Signalled when an item goes into the empty queue; a permit waits if the writer does not.
    ready: Notify,
}

/// Slots an emptied queue keeps for the next burst; a larger one is given back.
const KEEP_SLOTS: usize = 8;

impl Queue {
    fn push(&self, item: Outbound) -> Result<(), SendError> {
        let was_empty = {
            let mut items = self.items.lock();
            if items.len() >= self.cap {
                return Err(SendError::Full);
            }
            items.push_back(item);
            items.len() == 1
        };
        // The writer looks at the queue before it waits: only the first item needs to wake it.
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Moves up to `limit - buf.len()` items into `buf`.
    fn take(&self, buf: &mut Vec<Outbound>, limit: usize) {
        let mut items = self.items.lock();
        let n = items.len().min(limit.saturating_sub(buf.len()));
        buf.extend(items.drain(..n));
        if items.is_empty() && items.capacity() > KEEP_SLOTS {
            *items = VecDeque::new();
        }
    }
}

/// The receiving end of a session's outbound queue, with room to put one item back.
#[derive(Debug)]
pub(crate) struct Outq {
    queue: Arc<Queue>,
    held: Option<Outbound>,
}

impl Outq {
    /// The next item, waiting for one. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Outbound> {
        if let Some(item) = self.held.take() {
            return Some(item);
        }
        loop {
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            self.queue.ready.notified().await;
        }
    }

    /// The next item if one is ready.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        if let Some(item) = self.held.take() {
            return Some(item);
        }
        let mut items = self.queue.items.lock();
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > KEEP_SLOTS {
            *items = VecDeque::new();
        }
        item
    }

    /// Puts back an item taken too many: it is the next one out.
    pub fn hold(&mut self, item: Outbound) {
        debug_assert!(self.held.is_none());
        self.held = Some(item);
    }

    /// Waits for at least one item and appends up to `limit` ready ones to `buf`; returns how
    /// many `buf` holds (never 0: the session owns the queue, so it never closes under its
    /// writer). Cancel-safe.
    pub async fn recv_many(&mut self, buf: &mut Vec<Outbound>, limit: usize) -> usize {
        if let Some(item) = self.held.take() {
            buf.push(item);
        }
        loop {
            self.queue.take(buf, limit);
            if !buf.is_empty() {
                return buf.len();
            }
            self.queue.ready.notified().await;
        }
    }
}
