//! The delivery engine: joins durable streams to sockets.
//!
//! One runner task per active consumer (a consumer with at least one subscribed socket). It
//! reads entries from the store in order, sends each to a subscriber as an ordinary event with an
//! ack request (`(event, data, meta)`), and keeps the consumer's position: an entry stays pending
//! until its ack arrives, is sent again after `ack_wait` (backing off), and goes to the
//! dead-letter stream after `max_deliver` attempts. At most `max_ack_pending` entries are in
//! flight; the backlog of an offline or slow consumer stays on disk. Several sockets on one
//! consumer share its entries (a work queue); one socket per consumer is fan-out.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use courier_store::{
    Appended, ConsumerConfig, ConsumerRecord, ConsumerState, ConsumerSummary, Entry, NewEntry, Seq,
    Store, StoreError, StreamConfig, StreamInfo,
};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::message::{EmitError, Payload};
use super::socket::Socket;
use crate::auth::Access;
use crate::engine::{Outbound, Sid};

/// Entries read from the store at a time.
const READ_BATCH: usize = 256;
/// Most entries a runner sends before it lets other tasks run: a consumer catching up on a
/// backlog takes turns with every connection instead of holding a worker thread for a whole
/// window of `max_ack_pending` deliveries.
const DELIVER_TURN: usize = 16;
/// Bytes of deliveries one consumer may have out with its subscribers, besides `max_ack_pending`:
/// a socket that does not read holds at most this much of a consumer in its queue (a thousand
/// entries of 1 MB used to be a gigabyte per socket).
const MAX_BYTES_IN_FLIGHT: u64 = 8 << 20;
/// How long a runner waits before it reads the disk again after a failed read.
const READ_RETRY: Duration = Duration::from_secs(1);
/// Commands a runner may have waiting: room for an ack of every delivery in flight (at most
/// `max_ack_pending`, capped at 100,000) plus attaches and detaches. Tokio allocates channel
/// blocks as they fill, so the bound costs nothing while unused.
const COMMANDS: usize = 110_000;

type Key = (String, String);

/// Durable streams as the server offers them: publish, subscribe, acknowledge. Cheap to clone.
///
/// They live in this node's [`Store`], delivered by the runners below, or somewhere every
/// node of a cluster shares ([`SharedStreams`]): then this type only dispatches, and keeps
/// which socket is subscribed to what, as it does on one node.
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

struct Inner {
    home: Home,
    stats: Option<Arc<crate::stats::Stats>>,
}

enum Home {
    Local(Local),
    Shared(Arc<dyn SharedStreams>),
}

struct Local {
    store: Store,
    // A blocking mutex (parking_lot): held to look up or register a runner, never across an await.
    runners: Mutex<HashMap<Key, mpsc::Sender<Cmd>>>,
}

/// Every stream, and each consumer's numbers as (stream, consumer, numbers): what metrics and
/// the dashboard show.
pub type Overview = (Vec<StreamInfo>, Vec<(String, String, ConsumerSummary)>);

/// Durable streams kept where every node of a cluster reaches them (Redis): sequence numbers,
/// dedupe, retention and consumer positions are decided there, and deliveries go to the
/// sockets of whichever node they are on. Installed with [`crate::Io::set_shared_streams`].
///
/// Errors are the store's, so that clients and the HTTP API see the same codes as on one
/// node; a store that cannot be reached answers `StoreError::Unavailable` at once.
pub trait SharedStreams: Send + Sync + 'static {
    /// Appends `entry` to `stream` (created if the settings allow); calls `done` once it is
    /// stored (with one answer), with no task waiting per publish. Returns `Some(future)` when
    /// publishes waiting for the store hold `max_queued_bytes` already: the caller drives it to
    /// queue this one (the back-pressure, as [`Store::publish_then`]).
    fn publish(
        &self,
        stream: String,
        entry: NewEntry,
        done: courier_store::PublishCallback,
    ) -> Option<courier_store::SendLater>;
    /// Makes sure the consumer exists (created with `config` if new); answers the entries
    /// waiting for it.
    fn ensure_consumer(
        &self,
        stream: String,
        consumer: String,
        config: ConsumerConfig,
    ) -> BoxFuture<'static, Result<u64, StoreError>>;
    /// `socket` receives the consumer's deliveries from now on (with the consumer's other
    /// subscribers, on every node). A consumer that does not exist delivers nothing.
    fn attach(&self, socket: Socket, stream: &str, consumer: &str);
    /// `sid` no longer receives the consumer's deliveries; what it held unacknowledged goes to
    /// the consumer's other subscribers, on any node.
    fn detach(&self, sid: &Sid, stream: &str, consumer: &str);
    /// Deletes a consumer; true if it existed.
    fn delete_consumer(
        &self,
        stream: String,
        consumer: String,
    ) -> BoxFuture<'static, Result<bool, StoreError>>;
    /// Creates a stream, or changes its settings.
    fn create_stream(
        &self,
        name: String,
        config: StreamConfig,
    ) -> BoxFuture<'static, Result<StreamInfo, StoreError>>;
    /// Removes every entry of a stream; answers how many.
    fn purge(&self, name: String) -> BoxFuture<'static, Result<u64, StoreError>>;
    /// Every stream.
    fn streams(&self) -> BoxFuture<'static, Result<Vec<StreamInfo>, StoreError>>;
    /// One stream.
    fn stream(&self, name: String) -> BoxFuture<'static, Result<Option<StreamInfo>, StoreError>>;
    /// A stream's consumers with their positions.
    fn consumers(
        &self,
        stream: String,
    ) -> BoxFuture<'static, Result<Vec<(String, ConsumerRecord)>, StoreError>>;
    /// Every stream, and every consumer's numbers.
    fn overview(&self) -> BoxFuture<'static, Result<Overview, StoreError>>;
    /// Reads up to `limit` entries from `from` on.
    fn read(
        &self,
        stream: String,
        from: Seq,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Entry>, StoreError>>;
}

enum Cmd {
    Attach(Socket),
    /// The consumer was deleted: stop without saving, then answer.
    Stop(tokio::sync::oneshot::Sender<()>),
    Detach(Sid),
    Acked(Seq),
}

/// What a subscription answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// Entries waiting for this consumer: not yet delivered, or delivered and not acknowledged.
    pub pending: u64,
}

impl Streams {
    /// The engine over `store`.
    pub fn new(store: Store) -> Streams {
        Self::with_stats(store, None)
    }

    pub(crate) fn with_stats(store: Store, stats: Option<Arc<crate::stats::Stats>>) -> Streams {
        let local = Local {
            store,
            runners: Mutex::new(HashMap::new()),
        };
        Streams {
            inner: Arc::new(Inner {
                home: Home::Local(local),
                stats,
            }),
        }
    }

    /// Streams kept in `shared`.
    pub(crate) fn shared(
        shared: Arc<dyn SharedStreams>,
        stats: Option<Arc<crate::stats::Stats>>,
    ) -> Streams {
        Streams {
            inner: Arc::new(Inner {
                home: Home::Shared(shared),
                stats,
            }),
        }
    }

    /// The node's own streams; runners exist only for them.
    fn local(&self) -> &Local {
        match &self.inner.home {
            Home::Local(l) => l,
            Home::Shared(_) => unreachable!("runners exist only for a node's own streams"),
        }
    }

    /// Counts the outcome of a publish.
    fn count_publish(&self, r: Result<&Appended, &StoreError>) {
        let Some(s) = &self.inner.stats else { return };
        match r {
            Ok(a) if a.duplicate => s.publish_duplicates.inc(),
            Ok(_) => s.publishes.inc(),
            Err(e) => s.publish_refused(e.code()),
        }
    }

    fn stats(&self) -> Option<&crate::stats::Stats> {
        self.inner.stats.as_deref()
    }

    /// The node's store, when the streams are this node's own (not a cluster's).
    pub fn store(&self) -> Option<&Store> {
        match &self.inner.home {
            Home::Local(l) => Some(&l.store),
            Home::Shared(_) => None,
        }
    }

    /// Appends an event to `stream`; answers once it is durable.
    pub async fn publish(
        &self,
        stream: &str,
        event: &str,
        data: &Value,
        id: Option<String>,
    ) -> Result<Appended, StoreError> {
        let entry = new_entry(
            event.to_owned(),
            serde_json::to_vec(data).expect("JSON values serialize"),
            id,
        );
        let r = self.publish_entry(stream.to_owned(), entry).await;
        self.count_publish(r.as_ref());
        r
    }

    async fn publish_entry(&self, stream: String, entry: NewEntry) -> Result<Appended, StoreError> {
        match &self.inner.home {
            Home::Local(l) => l.store.publish_one(&stream, entry).await,
            Home::Shared(s) => {
                let (done, answer) = tokio::sync::oneshot::channel();
                let done = Box::new(move |r: Result<Vec<Appended>, StoreError>| {
                    let _ = done.send(r.map(|mut v| v.remove(0)));
                });
                if let Some(later) = s.publish(stream, entry, done) {
                    later.await;
                }
                answer.await.unwrap_or(Err(StoreError::Closed))
            }
        }
    }

    /// Creates a stream, or changes its settings.
    pub async fn create_stream(
        &self,
        name: &str,
        config: StreamConfig,
    ) -> Result<StreamInfo, StoreError> {
        match &self.inner.home {
            Home::Local(l) => l.store.create_stream(name, config).await,
            Home::Shared(s) => s.create_stream(name.to_owned(), config).await,
        }
    }

    /// Removes every entry of `name`; answers how many.
    pub async fn purge(&self, name: &str) -> Result<u64, StoreError> {
        match &self.inner.home {
            Home::Local(l) => l.store.purge(name).await,
            Home::Shared(s) => s.purge(name.to_owned()).await,
        }
    }

    /// Every stream, in name order.
    pub async fn list(&self) -> Result<Vec<StreamInfo>, StoreError> {
        let mut list = match &self.inner.home {
            Home::Local(l) => l.store.streams(),
            Home::Shared(s) => s.streams().await?,
        };
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// One stream.
    pub async fn info(&self, name: &str) -> Result<Option<StreamInfo>, StoreError> {
        match &self.inner.home {
            Home::Local(l) => Ok(l.store.stream(name)),
            Home::Shared(s) => s.stream(name.to_owned()).await,
        }
    }

    /// A stream's consumers, in name order.
    pub async fn consumers(
        &self,
        stream: &str,
    ) -> Result<Vec<(String, ConsumerRecord)>, StoreError> {
        let mut list = match &self.inner.home {
            Home::Local(l) => l.store.consumers(stream),
            Home::Shared(s) => s.consumers(stream.to_owned()).await?,
        };
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(list)
    }

    /// Every stream and every consumer's numbers, in name order.
    pub async fn overview(&self) -> Result<Overview, StoreError> {
        let (mut list, mut consumers) = match &self.inner.home {
            Home::Local(l) => (l.store.streams(), l.store.consumer_summaries()),
            Home::Shared(s) => s.overview().await?,
        };
        list.sort_by(|a, b| a.name.cmp(&b.name));
        consumers.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok((list, consumers))
    }

    /// Up to `limit` entries of `stream` from `from` on.
    pub async fn read(
        &self,
        stream: &str,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        match &self.inner.home {
            Home::Local(l) => l.store.read(stream, from, limit).await,
            Home::Shared(s) => s.read(stream.to_owned(), from, limit).await,
        }
    }

    /// Creates consumer `consumer` of `stream` with `config` unless it exists; answers how many
    /// entries wait for it (not yet delivered, or delivered and not acknowledged).
    pub async fn create_consumer(
        &self,
        stream: &str,
        consumer: &str,
        config: ConsumerConfig,
    ) -> Result<u64, StoreError> {
        match &self.inner.home {
            Home::Local(l) => {
                let record = l.store.consumer_or_create(stream, consumer, config).await?;
                let last = l.store.stream(stream).map_or(0, |s| s.last_seq);
                Ok(last.saturating_sub(record.state.next.saturating_sub(1))
                    + record.state.pending.len() as u64)
            }
            Home::Shared(s) => {
                s.ensure_consumer(stream.to_owned(), consumer.to_owned(), config)
                    .await
            }
        }
    }

    /// Subscribes `socket` to consumer `consumer` of `stream`, creating the consumer with
    /// `config` if it is new. Deliveries start at once.
    pub async fn subscribe(
        &self,
        socket: &Socket,
        stream: &str,
        consumer: &str,
        config: ConsumerConfig,
    ) -> Result<Subscribed, StoreError> {
        let pending = self.create_consumer(stream, consumer, config).await?;
        {
            let mut subs = socket.0.subscriptions.lock();
            let key = (stream.to_owned(), consumer.to_owned());
            if !subs.contains(&key) {
                subs.push(key);
            }
        }
        self.attach(socket, stream, consumer);
        socket.session_changed();
        Ok(Subscribed { pending })
    }

    /// Ends `socket`'s subscriptions to `stream` (of one consumer, or all). Its unacknowledged
    /// deliveries go to the consumer's other subscribers, or wait for the next one.
    pub fn unsubscribe(&self, socket: &Socket, stream: &str, consumer: Option<&str>) -> usize {
        let removed: Vec<Key> = {
            let mut subs = socket.0.subscriptions.lock();
            let (gone, kept) = std::mem::take(&mut *subs)
                .into_iter()
                .partition(|(s, c)| s == stream && consumer.is_none_or(|x| x == c));
            *subs = kept;
            gone
        };
        for key in &removed {
            self.detach(socket, key);
        }
        socket.session_changed();
        removed.len()
    }

    /// Deletes a consumer: its runner stops first, so that nothing of the old position is saved
    /// over a consumer created again with the same name. True if it existed.
    pub async fn delete_consumer(&self, stream: &str, consumer: &str) -> Result<bool, StoreError> {
        let l = match &self.inner.home {
            Home::Local(l) => l,
            Home::Shared(s) => {
                return s
                    .delete_consumer(stream.to_owned(), consumer.to_owned())
                    .await;
            }
        };
        let key = (stream.to_owned(), consumer.to_owned());
        let runner = l.runners.lock().remove(&key);
        if let Some(tx) = runner {
            let (done, stopped) = tokio::sync::oneshot::channel();
            if tx.send(Cmd::Stop(done)).await.is_ok() {
                let _ = stopped.await;
            }
        }
        l.store.delete_consumer(stream, consumer).await
    }

    /// Detaches a leaving socket from every consumer.
    pub(crate) fn detach_all(&self, socket: &Socket) {
        let subs = socket.0.subscriptions.lock().clone();
        for key in subs {
            self.detach(socket, &key);
        }
    }

    fn detach(&self, socket: &Socket, (stream, consumer): &Key) {
        match &self.inner.home {
            Home::Local(_) => self.send(
                &(stream.clone(), consumer.clone()),
                Cmd::Detach(socket.id().clone()),
            ),
            Home::Shared(s) => s.detach(socket.id(), stream, consumer),
        }
    }

    /// Re-attaches a recovered socket to the subscriptions it had.
    pub(crate) fn restore(&self, socket: &Socket, subscriptions: Vec<(String, String)>) {
        for (stream, consumer) in subscriptions {
            let access = Access::Subscribe {
                stream: &stream,
                consumer: &consumer,
            };
            if socket.0.conn.io.authorize(socket, &access).is_err() {
                continue;
            }
            if let Home::Local(l) = &self.inner.home
                && l.store.consumer(&stream, &consumer).is_none()
            {
                continue;
            }
            socket
                .0
                .subscriptions
                .lock()
                .push((stream.clone(), consumer.clone()));
            self.attach(socket, &stream, &consumer);
        }
    }

    fn send(&self, key: &Key, cmd: Cmd) {
        let tx = self.local().runners.lock().get(key).cloned();
        if let Some(tx) = tx
            && tx.try_send(cmd).is_err()
        {
            tracing::warn!(
                stream = key.0,
                consumer = key.1,
                "consumer runner busy: command dropped"
            );
        }
    }

    fn attach(&self, socket: &Socket, stream: &str, consumer: &str) {
        let l = match &self.inner.home {
            Home::Local(l) => l,
            Home::Shared(s) => return s.attach(socket.clone(), stream, consumer),
        };
        let key = (stream.to_owned(), consumer.to_owned());
        let mut runners = l.runners.lock();
        if let Some(tx) = runners.get(&key)
            && tx.try_send(Cmd::Attach(socket.clone())).is_ok()
        {
            return;
        }
        let (tx, rx) = mpsc::channel(COMMANDS);
        tx.try_send(Cmd::Attach(socket.clone()))
            .expect("fresh channel has room");
        runners.insert(key.clone(), tx.clone());
        drop(runners);
        let runner = Runner {
            streams: self.clone(),
            key,
            tx,
            rx,
        };
        tokio::spawn(runner.run());
    }
}

/// One active consumer.
struct Runner {
    streams: Streams,
    key: Key,
    tx: mpsc::Sender<Cmd>,
    rx: mpsc::Receiver<Cmd>,
}

/// Entries out with subscribers, indexed by sequence number and by when they are due again.
#[derive(Default)]
struct Flights {
    by_seq: HashMap<Seq, Flight>,
    by_due: BTreeSet<(Instant, Seq)>,
    /// Sum of the flights' sizes: what the subscribers' queues may hold of this consumer.
    bytes: u64,
}

struct Flight {
    holder: Option<Sid>,
    due: Instant,
    /// Bytes of the entry as this runner sent it; 0 for one pending from an earlier life until
    /// it is sent again.
    size: u64,
}

impl Flights {
    /// Sends `seq` (again) to `holder`, due back by `due`.
    fn sent(&mut self, seq: Seq, holder: Sid, due: Instant, size: u64) {
        self.put(seq, Some(holder), due, Some(size));
    }

    /// Changes who holds `seq` and when it is due, keeping its size.
    fn insert(&mut self, seq: Seq, holder: Option<Sid>, due: Instant) {
        self.put(seq, holder, due, None);
    }

    fn put(&mut self, seq: Seq, holder: Option<Sid>, due: Instant, size: Option<u64>) {
        let old = self.by_seq.remove(&seq);
        let old_size = old.as_ref().map_or(0, |f| f.size);
        if let Some(old) = old {
            self.by_due.remove(&(old.due, seq));
        }
        let size = size.unwrap_or(old_size);
        self.bytes = self.bytes - old_size + size;
        self.by_seq.insert(seq, Flight { holder, due, size });
        self.by_due.insert((due, seq));
    }

    fn remove(&mut self, seq: Seq) {
        if let Some(f) = self.by_seq.remove(&seq) {
            self.by_due.remove(&(f.due, seq));
            self.bytes -= f.size;
        }
    }

    /// Whether sending `size` more bytes would pass [`MAX_BYTES_IN_FLIGHT`]; one entry always
    /// goes, whatever its size.
    fn full_for(&self, size: u64) -> bool {
        self.bytes > 0 && self.bytes + size > MAX_BYTES_IN_FLIGHT
    }

    fn next_due(&self) -> Option<Instant> {
        self.by_due.first().map(|(due, _)| *due)
    }

    /// Sequence numbers due by `now`, oldest deadline first.
    fn due(&self, now: Instant) -> Vec<Seq> {
        self.by_due
            .iter()
            .take_while(|(due, _)| *due <= now)
            .map(|(_, seq)| *seq)
            .collect()
    }

    /// Makes what `sid` held due at once, for the others.
    fn release(&mut self, sid: &Sid, now: Instant) {
        let held: Vec<Seq> = self
            .by_seq
            .iter()
            .filter(|(_, f)| f.holder.as_ref() == Some(sid))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in held {
            self.insert(seq, None, now);
        }
    }
}

/// Why a read of the disk was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// New entries from `next` on (or right after what `ahead` holds).
    Deliver,
    /// Pending entries that are due again and are no longer in the store's memory.
    Redeliver,
}

/// A finished read.
struct Read {
    purpose: Purpose,
    from: Seq,
    limit: usize,
    result: Result<Vec<Entry>, StoreError>,
}

/// A read in flight. The runner goes on taking acks, attaches and detaches meanwhile.
type Reading = Pin<Box<dyn Future<Output = Read> + Send>>;

/// A runner's reads of what is only on disk: at most one in flight.
#[derive(Default)]
struct Disk {
    /// Entries read from disk and not yet delivered, in order. They start at the runner's
    /// `next`, or after a gap that retention removed: everything the stream held from `next`
    /// to the last of them is here.
    ahead: VecDeque<Entry>,
    /// The last read for delivery was full: more may follow `ahead` on disk.
    more: bool,
    /// Pending entries read for redelivery; `None`: removed by retention.
    found: HashMap<Seq, Option<Entry>>,
    reading: Option<Reading>,
    /// Entries due again wait for the disk: new ones are not sent before them.
    redelivery_waits: bool,
    /// After a failed read, no new one before this.
    retry_at: Option<Instant>,
}

impl Disk {
    /// True while the runner waits for the disk: a read is in flight, or one failed recently.
    fn waiting(&self) -> bool {
        self.reading.is_some() || self.retry_at.is_some_and(|t| Instant::now() < t)
    }

    /// The read in flight; never ready when there is none.
    async fn finished(&mut self) -> Read {
        match self.reading.as_mut() {
            Some(r) => r.await,
            None => std::future::pending().await,
        }
    }
}

/// How often a busy consumer's position is handed to the store. A crash can lose at most this
/// much of its acks, which are then delivered again: at least once still holds.
const SAVE_EVERY: Duration = Duration::from_millis(50);

impl Runner {
    fn store(&self) -> &Store {
        &self.streams.local().store
    }

    async fn run(mut self) {
        let (stream, consumer) = self.key.clone();
        let Some(record) = self.store().consumer(&stream, &consumer) else {
            self.retire();
            return;
        };
        let config = record.config;
        let mut state = record.state;
        let Some(mut tail) = self.store().watch(&stream) else {
            self.retire();
            return;
        };
        let mut subscribers: Vec<Socket> = Vec::new();
        let mut turn = 0usize;
        // Entries pending from an earlier life are sent again as soon as someone is there.
        let mut flights = Flights::default();
        let now = Instant::now();
        for &seq in state.pending.keys() {
            flights.insert(seq, None, now);
        }
        let mut disk = Disk::default();
        let mut dirty = false;
        let mut saved_at = Instant::now() - SAVE_EVERY;
        loop {
            // Commands first: acks free room, attaches and detaches change who gets what.
            while let Ok(cmd) = self.rx.try_recv() {
                if let Cmd::Stop(done) = cmd {
                    let _ = done.send(());
                    return;
                }
                dirty |= on_command(cmd, &mut state, &mut flights, &mut subscribers);
            }
            subscribers.retain(Socket::connected);
            let mut more_ready = false;
            if !subscribers.is_empty() {
                dirty |= self
                    .redeliver(
                        &config,
                        &mut state,
                        &mut flights,
                        &subscribers,
                        &mut turn,
                        &mut disk,
                    )
                    .await;
                let last = *tail.borrow_and_update();
                let mut budget = DELIVER_TURN;
                dirty |= !disk.redelivery_waits
                    && self.deliver(
                        &config,
                        &mut state,
                        &mut flights,
                        &subscribers,
                        &mut turn,
                        &mut disk,
                        last,
                        &mut budget,
                    );
                more_ready = budget == 0;
            }
            let idle = subscribers.is_empty();
            // Saved at once when nothing else waits (so that the API shows it), at most every
            // SAVE_EVERY while acks pour in.
            if dirty && (idle || self.rx.is_empty() || saved_at.elapsed() >= SAVE_EVERY) {
                self.store()
                    .save_consumer(&stream, &consumer, state.clone());
                dirty = false;
                saved_at = Instant::now();
            }
            if more_ready {
                // Send the rest after the other tasks had a turn; acks are taken first on the
                // way round.
                tokio::task::yield_now().await;
                continue;
            }
            if idle && self.retire_if_idle() {
                return;
            }
            // While the disk is awaited, what is due waits for it too: the entries still due
            // after `redeliver` are the ones it reads (a timer would only spin).
            let next_due = if idle || disk.waiting() {
                None
            } else {
                flights.next_due()
            };
            let save_due = dirty.then_some(saved_at + SAVE_EVERY);
            let retry_due = disk.retry_at.filter(|t| *t > Instant::now());
            let wake = [next_due, save_due, retry_due].into_iter().flatten().min();
            let room = state.pending.len() < config.max_ack_pending as usize
                && flights.bytes < MAX_BYTES_IN_FLIGHT;
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Stop(done)) => {
                        let _ = done.send(());
                        return;
                    }
                    Some(cmd) => dirty |= on_command(cmd, &mut state, &mut flights, &mut subscribers),
                    None => return,
                },
                read = disk.finished() => {
                    disk.reading = None;
                    let last = *tail.borrow();
                    dirty |= self.on_read(read, &mut state, &mut disk, last);
                }
                changed = tail.changed(), if room && !idle => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {}
            }
        }
    }

    /// Starts reading `limit` entries from `from` on, unless a read is in flight or one failed
    /// a moment ago. Entries still in the store's memory come back without a thread hop.
    fn start_read(&self, disk: &mut Disk, purpose: Purpose, from: Seq, limit: usize) {
        if disk.waiting() {
            return;
        }
        let store = self.store().clone();
        let stream = self.key.0.clone();
        disk.reading = Some(Box::pin(async move {
            let result = store.read(&stream, from, limit).await;
            Read {
                purpose,
                from,
                limit,
                result,
            }
        }));
    }

    /// Takes in a finished read; true if the position moved.
    fn on_read(&self, read: Read, state: &mut ConsumerState, disk: &mut Disk, last: Seq) -> bool {
        let (stream, _) = &self.key;
        let entries = match read.result {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(stream, from = read.from, error = %e, "reading entries failed");
                disk.retry_at = Some(Instant::now() + READ_RETRY);
                return false;
            }
        };
        disk.retry_at = None;
        match read.purpose {
            Purpose::Redeliver => {
                // A pending entry in the range read that did not come back was removed.
                let full = entries.len() == read.limit;
                let covered = match entries.last() {
                    Some(e) if full => e.seq,
                    _ => Seq::MAX,
                };
                for e in entries {
                    if state.pending.contains_key(&e.seq) {
                        disk.found.insert(e.seq, Some(e));
                    }
                }
                for (&seq, _) in state.pending.range(read.from..=covered) {
                    disk.found.entry(seq).or_insert(None);
                }
                false
            }
            Purpose::Deliver => {
                disk.more = entries.len() == read.limit;
                if entries.is_empty() && disk.ahead.is_empty() && read.from == state.next {
                    if state.next > last {
                        return false;
                    }
                    // Everything from `next` on was removed by retention.
                    let first = self
                        .store()
                        .stream(stream)
                        .map_or(last + 1, |s| s.first_seq);
                    let next = state.next.max(first.min(last + 1));
                    let moved = next != state.next;
                    state.next = next;
                    return moved;
                }
                // What was delivered from memory while the read was out is dropped, and so is
                // what `ahead` holds already (entries from memory put back there when the
                // consumer had too many bytes in flight). The rest follows on.
                let after = disk.ahead.back().map_or(state.next, |e| e.seq + 1);
                disk.ahead
                    .extend(entries.into_iter().filter(|e| e.seq >= after));
                false
            }
        }
    }

    /// Sends new entries while there is room; true if the position moved. Entries come from
    /// what was read ahead from disk, then from the store's memory; when only the disk has
    /// them, a read starts and delivery goes on once it is back.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &self,
        config: &ConsumerConfig,
        state: &mut ConsumerState,
        flights: &mut Flights,
        subscribers: &[Socket],
        turn: &mut usize,
        disk: &mut Disk,
        last: Seq,
        budget: &mut usize,
    ) -> bool {
        let (stream, _) = &self.key;
        let mut moved = false;
        while state.next <= last && *budget > 0 {
            let room = (config.max_ack_pending as usize)
                .saturating_sub(state.pending.len())
                .min(*budget);
            if room == 0 {
                break;
            }
            let mut entries: VecDeque<Entry> = if disk.ahead.is_empty() {
                match self
                    .store()
                    .read_cached(stream, state.next, room.min(READ_BATCH))
                {
                    Ok(Some(e)) => e.into(),
                    Ok(None) => {
                        self.start_read(disk, Purpose::Deliver, state.next, READ_BATCH);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(stream, error = %e, "reading entries failed");
                        break;
                    }
                }
            } else {
                let n = room.min(disk.ahead.len());
                disk.ahead.drain(..n).collect()
            };
            if entries.is_empty() {
                break;
            }
            while let Some(entry) = entries.pop_front() {
                let full = flights.full_for(entry.size());
                let socket = if full { None } else { pick(subscribers, turn) };
                let Some(socket) = socket else {
                    // Kept for the next round, in order.
                    entries.push_front(entry);
                    while let Some(e) = entries.pop_back() {
                        disk.ahead.push_front(e);
                    }
                    return moved;
                };
                let due = Instant::now() + Duration::from_millis(config.ack_wait_ms);
                self.send_entry(&socket, &entry, 1);
                if let Some(s) = self.streams.stats() {
                    s.deliveries.inc();
                }
                state.pending.insert(entry.seq, 1);
                flights.sent(entry.seq, socket.id().clone(), due, entry.size());
                state.next = entry.seq + 1;
                *budget -= 1;
                moved = true;
            }
        }
        // Read ahead while the entries already read are being delivered, so that a backlog
        // keeps flowing instead of waiting for each read in turn.
        let from = disk.ahead.back().map_or(state.next, |e| e.seq + 1);
        if disk.more && disk.ahead.len() < READ_BATCH && from <= last {
            self.start_read(disk, Purpose::Deliver, from, READ_BATCH);
        }
        moved
    }

    /// Sends again what waited too long, or dead-letters it; true if the state changed. An
    /// entry no longer in the store's memory is read from disk first and sent once it is back.
    #[allow(clippy::too_many_arguments)]
    async fn redeliver(
        &self,
        config: &ConsumerConfig,
        state: &mut ConsumerState,
        flights: &mut Flights,
        subscribers: &[Socket],
        turn: &mut usize,
        disk: &mut Disk,
    ) -> bool {
        disk.found.retain(|seq, _| state.pending.contains_key(seq));
        let due = flights.due(Instant::now());
        let mut changed = false;
        // The lowest and highest due entries that only the disk has.
        let mut missing: Option<(Seq, Seq)> = None;
        let (stream, consumer) = &self.key;
        for seq in due {
            let entry = match disk.found.remove(&seq) {
                Some(found) => found,
                None => match self.store().read_cached(stream, seq, 1) {
                    Ok(Some(v)) => v.into_iter().next().filter(|e| e.seq == seq),
                    Ok(None) => {
                        missing =
                            Some(missing.map_or((seq, seq), |(lo, hi)| (lo.min(seq), hi.max(seq))));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(stream, seq, error = %e, "reading a pending entry failed");
                        continue;
                    }
                },
            };
            let deliveries = state.pending.get(&seq).copied().unwrap_or(0);
            let Some(entry) = entry else {
                // Removed by retention while pending: nothing left to deliver.
                flights.remove(seq);
                state.pending.remove(&seq);
                changed = true;
                continue;
            };
            if deliveries >= config.max_deliver {
                if !self.dead_letter(&entry, deliveries).await {
                    // Kept pending (not lost, not sent again) and tried again later.
                    let later = Instant::now() + Duration::from_millis(config.ack_wait_ms);
                    flights.insert(seq, None, later);
                    continue;
                }
                flights.remove(seq);
                state.pending.remove(&seq);
                state.dead_lettered += 1;
                if let Some(s) = self.streams.stats() {
                    s.dead_lettered.inc();
                }
                changed = true;
                tracing::info!(
                    stream,
                    consumer,
                    seq,
                    deliveries,
                    "entry moved to the dead-letter stream"
                );
                continue;
            }
            let Some(socket) = pick(subscribers, turn) else {
                break;
            };
            let attempt = deliveries + 1;
            self.send_entry(&socket, &entry, attempt);
            state.pending.insert(seq, attempt);
            state.redelivered += 1;
            if let Some(s) = self.streams.stats() {
                s.redeliveries.inc();
            }
            let due = Instant::now() + config.redelivery_wait(attempt);
            flights.sent(seq, socket.id().clone(), due, entry.size());
            changed = true;
        }
        disk.redelivery_waits = missing.is_some();
        if let Some((lo, hi)) = missing {
            let span = (hi - lo).saturating_add(1).min(READ_BATCH as u64) as usize;
            self.start_read(disk, Purpose::Redeliver, lo, span);
        }
        changed
    }

    /// Moves `entry` to the dead-letter stream; false if it could not be stored there.
    async fn dead_letter(&self, entry: &Entry, deliveries: u32) -> bool {
        let (stream, consumer) = &self.key;
        let target = self.store().stream(stream).map_or_else(
            || format!("{stream}.dlq"),
            |s| s.config.dead_letter_of(stream),
        );
        let data = json!({
            "stream": stream,
            "consumer": consumer,
            "seq": entry.seq,
            "id": entry.id,
            "deliveries": deliveries,
            "data": serde_json::from_slice::<Value>(&entry.data).unwrap_or(Value::Null),
        });
        // The dead-letter stream exists whatever `auto_create` and `max_streams` say: losing
        // the entry is worse.
        if self.store().stream(&target).is_none()
            && let Err(e) = self.store().create_dead_letter_stream(&target).await
        {
            tracing::error!(stream = target, error = %e, "creating the dead-letter stream failed");
        }
        let dead = NewEntry {
            event: entry.event.clone(),
            data: Bytes::from(data.to_string()),
            // Dedupe makes a repeated dead-lettering (after a crash) harmless.
            id: Some(format!("{stream}:{consumer}:{}", entry.seq)),
        };
        match self.store().publish_one(&target, dead).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(stream, seq = entry.seq, error = %e, "dead-lettering failed; the entry stays pending");
                false
            }
        }
    }

    /// Sends `entry` to `socket` as `(event, data, meta)` with an ack request.
    fn send_entry(&self, socket: &Socket, entry: &Entry, deliveries: u32) {
        let tx = self.tx.clone();
        let seq = entry.seq;
        deliver(socket, &self.key.0, entry, deliveries, move || {
            if tx.try_send(Cmd::Acked(seq)).is_err() {
                tracing::warn!(seq, "ack dropped: consumer runner busy");
            }
        });
    }

    /// Leaves the registry if nothing is waiting; true if the runner should stop.
    fn retire_if_idle(&mut self) -> bool {
        let mut runners = self.streams.local().runners.lock();
        // Under the registry lock no new command can arrive through it.
        if !self.rx.is_empty() {
            return false;
        }
        if runners
            .get(&self.key)
            .is_some_and(|tx| tx.same_channel(&self.tx))
        {
            runners.remove(&self.key);
        }
        true
    }

    fn retire(&mut self) {
        let mut runners = self.streams.local().runners.lock();
        if runners
            .get(&self.key)
            .is_some_and(|tx| tx.same_channel(&self.tx))
        {
            runners.remove(&self.key);
        }
    }
}

/// Sends `entry` of `stream` to `socket` as `(event, data, meta)` with an ack request;
/// `acked` runs when the client acknowledges it. False if the socket's queue did not take it
/// (the delivery is then retried as an unacknowledged one).
pub fn deliver(
    socket: &Socket,
    stream: &str,
    entry: &Entry,
    deliveries: u32,
    acked: impl FnOnce() + Send + 'static,
) -> bool {
    let nsp = socket.ns().name();
    if let Some(o) = socket.0.conn.io.observer() {
        let meta =
            json!({"stream": stream, "seq": entry.seq, "id": entry.id, "deliveries": deliveries});
        let data = serde_json::from_slice(&entry.data).unwrap_or(Value::Null);
        o.event_sent(socket, &entry.event, &[data, meta]);
    }
    let sent = socket.send_with_callback(
        |ack_id| Outbound::Text(delivery_packet(nsp, ack_id, stream, entry, deliveries)),
        Box::new(move |_: Payload| acked()),
    );
    if !sent {
        tracing::debug!(sid = %socket.id(), seq = entry.seq, "delivery not queued; it will be retried");
    }
    sent
}

fn on_command(
    cmd: Cmd,
    state: &mut ConsumerState,
    flights: &mut Flights,
    subscribers: &mut Vec<Socket>,
) -> bool {
    match cmd {
        Cmd::Attach(socket) => {
            if !subscribers.iter().any(|s| s.id() == socket.id()) {
                subscribers.push(socket);
            }
            false
        }
        Cmd::Detach(sid) => {
            subscribers.retain(|s| *s.id() != sid);
            // What it held goes to the others (or the next subscriber) now.
            flights.release(&sid, Instant::now());
            false
        }
        Cmd::Stop(_) => unreachable!("handled by the run loop"),
        Cmd::Acked(seq) => {
            // An ack from a socket that no longer holds the entry (it was sent again elsewhere)
            // still counts: the client handled it.
            flights.remove(seq);
            state.pending.remove(&seq).is_some()
        }
    }
}

fn new_entry(event: String, mut data: Vec<u8>, id: Option<String>) -> NewEntry {
    // The entry may stay in memory (queued, then in the tail): the spare capacity that growing
    // the buffer left would be kept with it, up to as much again as the data.
    data.shrink_to_fit();
    NewEntry {
        event,
        data: Bytes::from(data),
        id,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

fn pick(subscribers: &[Socket], turn: &mut usize) -> Option<Socket> {
    if subscribers.is_empty() {
        return None;
    }
    *turn = turn.wrapping_add(1);
    Some(subscribers[*turn % subscribers.len()].clone())
}

/// `42<nsp>,<id>["event",<data>,<meta>]` with `meta = {"stream","seq","id","deliveries"}`,
/// written as text: the stored data is not parsed, and no `Value` is built per delivery.
fn delivery_packet(nsp: &str, ack_id: u64, stream: &str, entry: &Entry, deliveries: u32) -> Bytes {
    let id_len = entry.id.as_ref().map_or(4, String::len);
    let mut out = BytesMut::with_capacity(
        entry.data.len() + entry.event.len() + stream.len() + id_len + nsp.len() + 96,
    );
    let mut n = itoa::Buffer::new();
    out.put_slice(b"42");
    if nsp != "/" {
        out.put_slice(nsp.as_bytes());
        out.put_u8(b',');
    }
    out.put_slice(n.format(ack_id).as_bytes());
    out.put_u8(b'[');
    let json = |out: &mut BytesMut, s: &str| {
        serde_json::to_writer(out.writer(), s).expect("strings serialize");
    };
    json(&mut out, &entry.event);
    out.put_u8(b',');
    out.put_slice(&entry.data);
    out.put_slice(br#",{"stream":"#);
    json(&mut out, stream);
    out.put_slice(br#","seq":"#);
    out.put_slice(n.format(entry.seq).as_bytes());
    out.put_slice(br#","id":"#);
    match &entry.id {
        Some(id) => json(&mut out, id),
        None => out.put_slice(b"null"),
    }
    out.put_slice(br#","deliveries":"#);
    out.put_slice(n.format(deliveries).as_bytes());
    out.put_slice(b"}]");
    out.freeze()
}

/// What a client asks with `courier:subscribe`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeRequest {
    stream: String,
    consumer: String,
    #[serde(default)]
    from: Option<courier_store::StartPosition>,
    ack_wait_ms: Option<u64>,
    max_deliver: Option<u32>,
    max_ack_pending: Option<u32>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeRequest {
    stream: String,
    consumer: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    stream: String,
    event: String,
    #[serde(default)]
    data: Value,
    id: Option<String>,
}

/// The ack answer for a failure: `{ok: false, error: {code, message}}`, the shape every
/// reserved event of Courier answers errors with.
pub fn error_answer(code: &str, message: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": {"code": code, "message": message.to_string()}})
}

fn store_error(e: &StoreError) -> Value {
    error_answer(e.code(), e)
}

/// Handles `courier:subscribe`, `courier:unsubscribe` and `courier:publish`; gives any other
/// message back.
pub(crate) fn handle_reserved(
    streams: &Streams,
    socket: &Socket,
    mut msg: super::Message,
) -> Option<super::Message> {
    fn parse<T: serde::de::DeserializeOwned>(msg: &super::Message) -> Result<T, Value> {
        match msg.payload.args.first() {
            Some(v @ Value::Object(_)) => {
                T::deserialize(v).map_err(|e| error_answer("bad_request", e))
            }
            _ => Err(error_answer(
                "bad_request",
                "expected an object as the first argument",
            )),
        }
    }
    let event = msg.event.as_str();
    if !matches!(
        event,
        "courier:subscribe" | "courier:unsubscribe" | "courier:publish"
    ) {
        return Some(msg);
    }
    let io = &socket.0.conn.io;
    match event {
        "courier:subscribe" => {
            let req: SubscribeRequest = match parse(&msg) {
                Ok(r) => r,
                Err(e) => {
                    let _ = msg.ack(&e);
                    return None;
                }
            };
            let access = Access::Subscribe {
                stream: &req.stream,
                consumer: &req.consumer,
            };
            if let Err(why) = io.authorize(socket, &access) {
                let _ = msg.ack(&error_answer("forbidden", why));
                return None;
            }
            let max = io.config.max_subscriptions_per_socket;
            let key = (req.stream.clone(), req.consumer.clone());
            let count = socket
                .0
                .subscriptions
                .lock()
                .iter()
                .filter(|k| **k != key)
                .count();
            if max > 0 && count >= max {
                let why = format!("a socket may have at most {max} subscriptions");
                let _ = msg.ack(&error_answer("too_many_subscriptions", why));
                return None;
            }
            let defaults = ConsumerConfig::default();
            let config = ConsumerConfig {
                ack_wait_ms: req.ack_wait_ms.unwrap_or(defaults.ack_wait_ms).max(1),
                max_deliver: req.max_deliver.unwrap_or(defaults.max_deliver).max(1),
                max_ack_pending: req
                    .max_ack_pending
                    .unwrap_or(defaults.max_ack_pending)
                    .clamp(1, 100_000),
                start: req.from.unwrap_or_default(),
            };
            let (streams, sock) = (streams.clone(), socket.clone());
            socket.0.conn.run(async move {
                let socket = sock;
                let answer = match streams
                    .subscribe(&socket, &req.stream, &req.consumer, config)
                    .await
                {
                    Ok(s) => {
                        json!({"ok": true, "stream": req.stream, "consumer": req.consumer, "pending": s.pending})
                    }
                    Err(e) => store_error(&e),
                };
                let _ = msg.ack(&answer);
            });
        }
        "courier:unsubscribe" => {
            let answer = match parse::<UnsubscribeRequest>(&msg) {
                Ok(r) => {
                    let n = streams.unsubscribe(socket, &r.stream, r.consumer.as_deref());
                    json!({"ok": true, "removed": n})
                }
                Err(e) => e,
            };
            let _ = msg.ack(&answer);
        }
        _ => {
            if !msg.payload.attachments.is_empty() {
                let why = "binary data cannot be stored in a stream entry; send it as base64 text";
                let _ = msg.ack(&error_answer("bad_request", why));
                return None;
            }
            // Taken by value: the payload is not cloned, and nothing of it stays with the
            // publish while it waits for its commit (the ack below keeps only the ack id).
            let req: Result<PublishRequest, Value> = match msg.payload.args.first_mut() {
                Some(v @ Value::Object(_)) => {
                    serde_json::from_value(v.take()).map_err(|e| error_answer("bad_request", e))
                }
                _ => Err(error_answer(
                    "bad_request",
                    "expected an object as the first argument",
                )),
            };
            let ack = msg.take_ack();
            drop(msg);
            match req {
                Ok(r) => {
                    let data = serde_json::to_vec(&r.data).expect("JSON values serialize");
                    publish(streams, socket, r.stream, r.event, data, r.id, ack);
                }
                Err(e) => {
                    if let Some(ack) = ack {
                        let _ = Payload::new().arg(&e).map(|p| ack.send(p));
                    }
                }
            }
        }
    }
    None
}

/// The start of a `courier:publish` event's JSON as clients write it.
const PUBLISH_ARGS: &[u8] = br#"["courier:publish","#;

/// Whether an event's JSON starts as clients write a `courier:publish`: the only events
/// [`publish_fast`] takes.
pub(crate) fn is_publish(json: &[u8]) -> bool {
    json.starts_with(PUBLISH_ARGS)
}

/// A `courier:publish` request read straight from the packet's text: the entry's data stays
/// the JSON the client sent, never parsed into a tree and written again.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish<'a> {
    stream: String,
    event: String,
    #[serde(default, borrow)]
    data: Option<&'a serde_json::value::RawValue>,
    id: Option<String>,
}

/// Handles a packet whose JSON is `["courier:publish",{...}]` without building a `Value`: the
/// common case of the durable path. False when the payload is anything else (extra
/// arguments, an unknown field, a request that does not parse): the caller then decodes the
/// packet as usual and [`handle_reserved`] answers it, errors included.
pub(crate) fn publish_fast(
    streams: &Streams,
    socket: &Socket,
    ack: Option<u64>,
    json: &[u8],
    admit: impl FnOnce() -> bool,
) -> bool {
    #[derive(serde::Deserialize)]
    struct Args<'a>(#[allow(dead_code)] &'a str, #[serde(borrow)] RawPublish<'a>);
    if !is_publish(json) {
        return false;
    }
    let Ok(Args(_, req)) = serde_json::from_slice::<Args<'_>>(json) else {
        return false;
    };
    // Counted and rate-limited as every event is (`admit` answers a refused one itself).
    if !admit() {
        return true;
    }
    let data = req
        .data
        .map_or(b"null".to_vec(), |d| d.get().as_bytes().to_vec());
    let ack = ack.map(|id| socket.ack_sender(id));
    publish(streams, socket, req.stream, req.event, data, req.id, ack);
    true
}

/// Publishes what a client sent with `courier:publish`, answering its ack once the entry is
/// durable (or refused).
fn publish(
    streams: &Streams,
    socket: &Socket,
    stream: String,
    event: String,
    data: Vec<u8>,
    id: Option<String>,
    ack: Option<super::message::AckSender>,
) {
    let refuse = |ack: Option<super::message::AckSender>, answer: Value| {
        if let Some(ack) = ack {
            let _ = Payload::new().arg(&answer).map(|p| ack.send(p));
        }
    };
    let io = &socket.0.conn.io;
    if let Err(why) = io.authorize(socket, &Access::Publish(&stream)) {
        return refuse(ack, error_answer("forbidden", why));
    }
    if !courier_proto::socket::is_event_name(&event) {
        let why = format!("{event:?} cannot be an event name");
        return refuse(ack, error_answer("bad_request", why));
    }
    let entry = new_entry(event, data, id);
    // Answered from the store's commit, with no task waiting per publish; only a full store
    // queue costs a task, which also slows this connection down.
    let held = socket.0.conn.hold();
    let counter = streams.clone();
    let done: courier_store::PublishCallback = Box::new(move |r| {
        let _held = held;
        let r = r.map(|mut v| v.remove(0));
        counter.count_publish(r.as_ref());
        let Some(ack) = ack else { return };
        // Runs on the store's thread, once per publish: the answer is written as text, not
        // built as a `Value` and serialized.
        let _ = match r {
            Ok(a) => {
                let mut seq = itoa::Buffer::new();
                let parts: [&[u8]; 3] = [
                    br#"[{"ok":true,"seq":"#,
                    seq.format(a.seq).as_bytes(),
                    if a.duplicate {
                        br#","duplicate":true}]"#
                    } else {
                        br#","duplicate":false}]"#
                    },
                ];
                ack.send_json(&parts)
            }
            Err(e) => Payload::new()
                .arg(&store_error(&e))
                .map_err(EmitError::from)
                .and_then(|payload| ack.send(payload)),
        };
    });
    match &streams.inner.home {
        Home::Local(l) => {
            if let Some(later) = l.store.publish_then(stream, vec![entry], done) {
                socket.0.conn.run(later);
            }
        }
        Home::Shared(s) => {
            if let Some(later) = s.publish(stream, entry, done) {
                socket.0.conn.run(later);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text written by hand is the packet the codec would encode from values.
    #[test]
    fn delivery_packet_is_the_event_the_codec_would_write() {
        for (nsp, id) in [("/", None), ("/admin", Some("m-\"1\"".to_owned()))] {
            let entry = Entry {
                seq: 42,
                ts_ms: 1,
                id: id.clone(),
                event: "order \u{e9}".to_owned(),
                data: Bytes::from_static(br#"{"n":[1,2]}"#),
            };
            let got = delivery_packet(nsp, 7, "orders.eu", &entry, 3);
            let meta = json!({"stream": "orders.eu", "seq": 42, "id": id, "deliveries": 3});
            let args = vec![json!({"n": [1, 2]}), meta];
            let mut want = courier_proto::socket::Packet::event(nsp, "order \u{e9}", args, 0);
            want.id = Some(7);
            let want = want.encode_message();
            let (got, want) = (&got[1..], &want[1..]);
            let parse = |t: &[u8]| courier_proto::socket::Packet::decode(t).unwrap();
            assert_eq!(parse(got), parse(want));
        }
    }
}
