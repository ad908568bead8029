//! The store: one writer task that commits in groups, and in-memory views for fast reads.
//!
//! Every change goes through the writer. It takes all requests that are waiting, turns them into
//! one batch of [`Op`]s (assigning sequence numbers and checking message ids on the way), commits
//! the batch in one transaction, and only then updates the in-memory view and answers. A publish
//! therefore waits for its group's commit, not for a commit of its own, and no reader ever sees an
//! entry that is not durable.
//!
//! Consumer positions, recovery sessions and recovery events are not requests: callers update
//! the in-memory view and mark it dirty, and the writer persists the latest version with its
//! next batch. Nothing queues without bound.

use std::collections::{BTreeMap, HashSet, VecDeque};

// Maps keyed by stream names and message ids are looked up several times per publish by the
// writer: foldhash (randomly seeded per process) costs a fraction of std's SipHash there.
use foldhash::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::backend::{Backend, Op, StreamId};
use crate::memory::MemoryBackend;
use crate::sqlite::{SqliteBackend, SyncPolicy};
use crate::stats::StoreStats;
use crate::types::*;

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Create a stream on its first publish or subscribe. Default true.
    pub auto_create: bool,
    /// Settings of auto-created streams.
    pub default_stream: StreamConfig,
    /// Largest entry accepted (event + data + id), in bytes. Default 1,000,000.
    pub max_entry_bytes: usize,
    /// How long sessions and broadcasts are kept for connection state recovery. Default 2 min.
    pub recovery_window: Duration,
    /// Most broadcasts kept for recovery; older ones are dropped first. Default 100,000.
    pub max_recovery_events: usize,
    /// Most bytes of broadcasts kept for recovery (on disk and in memory, as
    /// [`RecoveryEvent::size`] counts them); older ones are dropped first. Default 1 GiB.
    pub max_recovery_bytes: u64,
    /// Bytes of the newest recovery broadcasts kept in memory; older ones are read from disk
    /// when a client comes back for them. Default 64 MiB.
    pub recovery_memory_bytes: u64,
    /// Bytes of recent stream entries kept in memory across all streams for live delivery;
    /// older ones are read from disk. Default 64 MiB.
    pub tail_memory_bytes: u64,
    /// Most bytes of entries kept across all streams (as [`Entry::size`] counts them; 0 = no
    /// limit). A publish past it is refused with `storage_full`. Default 8 GiB.
    pub max_disk_bytes: u64,
    /// Most streams (0 = no limit); creating one more is refused with `too_many_streams`.
    /// Dead-letter streams are created whatever it says. Default 10,000.
    pub max_streams: usize,
    /// Most consumers across all streams (0 = no limit); creating one more is refused with
    /// `too_many_consumers`. Default 100,000.
    pub max_consumers: usize,
    /// Bytes of entries that publishes waiting for their commit may hold; past it a publisher
    /// waits (its connection stops reading) until earlier ones are committed. Default 64 MiB.
    pub max_queued_bytes: u64,
    /// With the `interval` sync policy, how often the store makes commits durable.
    pub sync_interval: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            auto_create: true,
            default_stream: StreamConfig::default(),
            max_entry_bytes: 1_000_000,
            recovery_window: Duration::from_secs(120),
            max_recovery_events: 100_000,
            max_recovery_bytes: 1 << 30,
            recovery_memory_bytes: 64 << 20,
            tail_memory_bytes: 64 << 20,
            max_disk_bytes: 8 << 30,
            max_streams: 10_000,
            max_consumers: 100_000,
            max_queued_bytes: 64 << 20,
            sync_interval: None,
        }
    }
}

/// Entries kept in memory per stream for live delivery, and their byte budget (all streams
/// together also stay within `tail_memory_bytes`).
const TAIL_ENTRIES: usize = 8192;
const TAIL_BYTES: u64 = 16 << 20;
/// What a tail entry costs in memory besides its event, data and id (the `Entry`, its
/// allocations, its place in the queues).
const TAIL_ENTRY_OVERHEAD: u64 = 160;
/// Requests turned into one batch at most.
const MAX_BATCH: usize = 8192;
/// How often retention and expiry run.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

/// What a store holds in memory for live delivery and recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryUse {
    /// Memory of the streams' tails, within `tail_memory_bytes`.
    pub tail_bytes: u64,
    /// Entries in the streams' tails.
    pub tail_entries: usize,
    /// Memory of the recovery broadcasts held, within `recovery_memory_bytes`.
    pub recovery_bytes: u64,
    /// Recovery broadcasts held in memory.
    pub recovery_events: usize,
    /// Recovery broadcasts kept, on disk and in memory.
    pub recovery_kept: usize,
    /// Recovery broadcasts not yet committed to disk.
    pub recovery_unpersisted: usize,
}

/// Durable streams, consumers and recovery state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    /// `max_queued_bytes`, in KiB: what publishes waiting for their commit may hold.
    queued: Arc<Semaphore>,
}

fn queue_capacity(options: &StoreOptions) -> u32 {
    (options.max_queued_bytes / 1024).clamp(1, u64::from(u32::MAX >> 4)) as u32
}

struct Shared {
    backend: Arc<dyn Backend>,
    options: StoreOptions,
    // Blocking locks (parking_lot: a panic elsewhere does not poison them): short critical sections, never held across an await.
    state: RwLock<State>,
    recovery: Mutex<RecoveryLog>,
    dirty: Mutex<Dirty>,
    wake: Notify,
    stats: StoreStats,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, StreamState>,
    next_stream_id: StreamId,
    consumers: BTreeMap<(String, String), ConsumerRecord>,
    sessions: HashMap<String, SessionRecord>,
    /// Bytes of entries kept across all streams (what `max_disk_bytes` bounds).
    disk_bytes: u64,
    /// The tails of all streams, oldest entry first, for the shared memory budget.
    tails: Tails,
}

/// The shared budget of the streams' in-memory tails: the oldest entry of any stream goes first.
#[derive(Default)]
struct Tails {
    /// Memory of every stream's tail, as [`tail_cost`] counts it.
    bytes: u64,
    /// Entries in all tails.
    entries: usize,
    /// (stream, seq) in the order entries joined a tail. Entries that left a tail another way
    /// (the per-stream bounds, a purge) stay here until they reach the front or a compaction.
    order: VecDeque<(Arc<str>, Seq)>,
}

fn tail_cost(e: &Entry) -> u64 {
    e.size() + TAIL_ENTRY_OVERHEAD
}

impl StreamState {
    fn tail_holds(&self, seq: Seq) -> bool {
        matches!((self.tail.front(), self.tail.back()), (Some(f), Some(b)) if f.seq <= seq && seq <= b.seq)
    }

    /// Removes the oldest tail entry; returns its memory cost.
    fn pop_tail(&mut self) -> u64 {
        let old = self.tail.pop_front().expect("a non-empty tail");
        let cost = tail_cost(&old);
        self.tail_bytes -= cost;
        cost
    }
}

struct StreamState {
    id: StreamId,
    config: StreamConfig,
    first_seq: Seq,
    last_seq: Seq,
    entries: u64,
    bytes: u64,
    tail: VecDeque<Entry>,
    tail_bytes: u64,
    ids: HashMap<String, (Seq, u64)>,
    id_order: VecDeque<(u64, String)>,
    watch: watch::Sender<Seq>,
}

/// The broadcasts kept for recovery. Every kept event is in `kept`; the newest ones are also
/// in `events`, in memory. An event older than the first one in memory and above `dropped_upto`
/// is on disk: it leaves memory only once it is persisted, or else it is dropped.
#[derive(Default)]
struct RecoveryLog {
    kept: VecDeque<RecoveryMark>,
    kept_bytes: u64,
    events: VecDeque<RecoveryEvent>,
    mem_bytes: u64,
    next_offset: u64,
    /// Events below this offset are committed.
    persisted: u64,
    /// The highest offset dropped from the log: a client that saw less cannot be recovered.
    dropped_upto: u64,
}

impl RecoveryLog {
    fn push(&mut self, event: RecoveryEvent) {
        let bytes = event.size();
        self.kept.push_back(RecoveryMark {
            offset: event.offset,
            ts_ms: event.ts_ms,
            bytes,
        });
        self.kept_bytes += bytes;
        self.mem_bytes += bytes;
        self.events.push_back(event);
    }

    /// Drops the oldest kept event.
    fn drop_oldest(&mut self) {
        let Some(mark) = self.kept.pop_front() else {
            return;
        };
        self.kept_bytes -= mark.bytes;
        self.dropped_upto = self.dropped_upto.max(mark.offset);
        if self.events.front().is_some_and(|e| e.offset == mark.offset) {
            let e = self.events.pop_front().expect("front checked");
            self.mem_bytes -= e.size();
        }
    }

    /// Applies the bounds: the window (events before `horizon_ms`), the count and bytes of what
    /// is kept, and the memory budget.
    fn enforce(&mut self, opts: &StoreOptions, horizon_ms: u64) {
        while let Some(front) = self.kept.front()
            && (front.ts_ms < horizon_ms
                || self.kept.len() > opts.max_recovery_events
                || self.kept_bytes > opts.max_recovery_bytes)
        {
            self.drop_oldest();
        }
        while self.mem_bytes > opts.recovery_memory_bytes
            && let Some(e) = self.events.front()
        {
            if e.offset >= self.persisted {
                // Not on disk yet: dropping it from memory loses it, and everything older
                // with it, since a client's missed events must come back whole.
                let upto = e.offset;
                while self.kept.front().is_some_and(|m| m.offset <= upto) {
                    self.drop_oldest();
                }
            } else {
                let e = self.events.pop_front().expect("front checked");
                self.mem_bytes -= e.size();
            }
        }
    }
}

#[derive(Default)]
struct Dirty {
    consumers: HashSet<(String, String)>,
    sessions: HashSet<String>,
}

/// A publish still to be queued; see [`Store::publish_then`].
pub type SendLater = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Called with the outcome of a publish, on the writer's thread, once its batch is committed.
pub type PublishCallback = Box<dyn FnOnce(Result<Vec<Appended>, StoreError>) + Send>;

enum Request {
    Publish {
        stream: String,
        entries: Vec<NewEntry>,
        reply: PublishCallback,
    },
    CreateStream {
        name: String,
        config: StreamConfig,
        /// `Capped` (within `max_streams`) or `Always` (dead-letter streams).
        create: Create,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Purge {
        stream: String,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    CreateConsumer {
        stream: String,
        name: String,
        config: ConsumerConfig,
        reply: oneshot::Sender<Result<ConsumerRecord, StoreError>>,
    },
    DeleteConsumer {
        stream: String,
        name: String,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Flush(oneshot::Sender<Result<(), StoreError>>),
    /// Flush, make durable, and stop the writer.
    Close(oneshot::Sender<Result<(), StoreError>>),
}

impl Store {
    /// A store over `backend`, loading what it holds. Must be called within a tokio runtime.
    pub fn open(backend: Arc<dyn Backend>, options: StoreOptions) -> Result<Store, StoreError> {
        let now = now_ms();
        let ids_window = options.default_stream.dedupe_window_ms.max(10 * 60 * 1000);
        let mut snap = backend.load(now.saturating_sub(ids_window))?;
        // A stream whose dedupe window is longer needs older ids too (they used to be left
        // out, so a retry after a restart was stored twice).
        let widest = snap.streams.iter().map(|s| s.config.dedupe_window_ms).max();
        if let Some(widest) = widest.filter(|w| *w > ids_window) {
            snap.recent_ids = backend.load(now.saturating_sub(widest))?.recent_ids;
        }
        let mut state = State::default();
        let mut names = HashMap::default();
        for s in snap.streams {
            state.disk_bytes += s.bytes;
            names.insert(s.id, s.name.clone());
            state.next_stream_id = state.next_stream_id.max(s.id + 1);
            state.streams.insert(
                s.name,
                StreamState {
                    id: s.id,
                    config: s.config,
                    first_seq: s.first_seq,
                    last_seq: s.last_seq,
                    entries: s.entries,
                    bytes: s.bytes,
                    tail: VecDeque::new(),
                    tail_bytes: 0,
                    ids: HashMap::default(),
                    id_order: VecDeque::new(),
                    watch: watch::Sender::new(s.last_seq),
                },
            );
        }
        let mut recent = snap.recent_ids;
        recent.sort_by_key(|r| r.3);
        for (sid, mid, seq, ts) in recent {
            if let Some(s) = names.get(&sid).and_then(|n| state.streams.get_mut(n)) {
                s.ids.insert(mid.clone(), (seq, ts));
                s.id_order.push_back((ts, mid));
            }
        }
        for (sid, name, record) in snap.consumers {
            if let Some(stream) = names.get(&sid) {
                state.consumers.insert((stream.clone(), name), record);
            }
        }
        // Sessions still live were cut off by a crash: they get a recovery window from now.
        let mut revived = HashSet::new();
        let window_end = now_ms() + options.recovery_window.as_millis() as u64;
        for (pid, mut record) in snap.sessions {
            if record.expires_ms == LIVE_SESSION {
                record.expires_ms = window_end;
                revived.insert(pid.clone());
            }
            state.sessions.insert(pid, record);
        }
        // Offsets keep growing across restarts, even when the last ones were never persisted
        // (a crash): a new run starts above any offset a client can hold.
        let last = snap.recovery.last().map_or(0, |e| e.offset);
        let next_offset = (last + 1).max(now_ms().saturating_mul(1000));
        let mut recovery = RecoveryLog {
            dropped_upto: snap.recovery.first().map_or(0, |e| e.offset - 1),
            kept_bytes: snap.recovery.iter().map(|m| m.bytes).sum(),
            kept: snap.recovery.into(),
            next_offset,
            persisted: next_offset,
            ..RecoveryLog::default()
        };
        // The bounds first (a restart used to load every event of the window), then the newest
        // events that fit in the memory budget are read back; the rest stay on disk.
        let horizon = now.saturating_sub(options.recovery_window.as_millis() as u64);
        recovery.enforce(&options, horizon);
        let mut fit = 0;
        let mut from = None;
        for m in recovery.kept.iter().rev() {
            fit += m.bytes;
            if fit > options.recovery_memory_bytes {
                break;
            }
            from = Some(m.offset);
        }
        if let Some(from) = from {
            for e in backend.recovery_between(from.saturating_sub(1), u64::MAX)? {
                recovery.mem_bytes += e.size();
                recovery.events.push_back(e);
            }
            recovery.enforce(&options, horizon);
        }
        let shared = Arc::new(Shared {
            backend,
            options,
            state: RwLock::new(state),
            recovery: Mutex::new(recovery),
            dirty: Mutex::new(Dirty {
                sessions: revived,
                ..Dirty::default()
            }),
            wake: Notify::new(),
            stats: StoreStats::default(),
        });
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        let queued = Arc::new(Semaphore::new(queue_capacity(&shared.options) as usize));
        tokio::spawn(writer(shared.clone(), rx));
        Ok(Store {
            inner: Arc::new(Inner { tx, shared, queued }),
        })
    }

    /// A store in memory only.
    pub fn memory(options: StoreOptions) -> Store {
        Store::open(Arc::new(MemoryBackend::new()), options).expect("an empty memory store loads")
    }

    /// A store in the SQLite database at `path`.
    pub fn sqlite(
        path: &std::path::Path,
        sync: SyncPolicy,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        Store::open(Arc::new(SqliteBackend::open(path, sync)?), options)
    }

    /// The settings in force.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.shared.options
    }

    /// Counters and histograms of the store's writer, for metrics.
    pub fn stats(&self) -> &StoreStats {
        &self.inner.shared.stats
    }

    /// What the store holds in memory now.
    pub fn memory_use(&self) -> MemoryUse {
        let (tail_bytes, tail_entries) = {
            let state = self.state();
            (state.tails.bytes, state.tails.entries)
        };
        let log = self.inner.shared.recovery.lock();
        MemoryUse {
            tail_bytes,
            tail_entries,
            recovery_bytes: log.mem_bytes,
            recovery_events: log.events.len(),
            recovery_kept: log.kept.len(),
            recovery_unpersisted: log
                .events
                .iter()
                .rev()
                .take_while(|e| e.offset >= log.persisted)
                .count(),
        }
    }

    fn state(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.inner.shared.state.read()
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Creates `name` (within `max_streams`) or replaces its settings.
    pub async fn create_stream(
        &self,
        name: &str,
        config: StreamConfig,
    ) -> Result<StreamInfo, StoreError> {
        self.create(name, config, Create::Capped).await
    }

    /// Creates a dead-letter stream, whatever `max_streams` says: an entry that failed every
    /// delivery must not be lost because other streams filled the quota.
    pub async fn create_dead_letter_stream(&self, name: &str) -> Result<StreamInfo, StoreError> {
        self.create(name, StreamConfig::default(), Create::Always)
            .await
    }

    async fn create(
        &self,
        name: &str,
        config: StreamConfig,
        create: Create,
    ) -> Result<StreamInfo, StoreError> {
        check_name(name)?;
        if let Some(dlq) = &config.dead_letter {
            check_name(dlq)?;
        }
        let name = name.to_owned();
        self.request(|reply| Request::CreateStream {
            name: name.clone(),
            config,
            create,
            reply,
        })
        .await?;
        self.stream(&name).ok_or(StoreError::StreamNotFound(name))
    }

    /// Appends entries to `stream` and answers once they are durable.
    pub async fn publish(
        &self,
        stream: &str,
        entries: Vec<NewEntry>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.check_publish(stream, &entries)?;
        let units = self.queue_units(&entries);
        let permit = self
            .inner
            .queued
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| StoreError::Closed)?;
        let stream = stream.to_owned();
        self.request(|tx| Request::Publish {
            stream,
            entries,
            reply: Box::new(move |r| {
                drop(permit);
                let _ = tx.send(r);
            }),
        })
        .await
    }

    /// The share of `max_queued_bytes` (in KiB) that `entries` take while queued; an entry
    /// larger than the whole budget takes all of it and goes alone.
    fn queue_units(&self, entries: &[NewEntry]) -> u32 {
        let bytes: u64 = entries.iter().map(NewEntry::size).sum();
        let units = bytes.div_ceil(1024).max(1);
        units.min(u64::from(queue_capacity(&self.inner.shared.options))) as u32
    }

    /// Appends entries to `stream` and calls `done` once they are durable, with no task waiting:
    /// the writer calls it right after the commit. Returns `Some(future)` when the request queue
    /// is full; the caller must drive that future to queue the publish (that is the back-pressure).
    pub fn publish_then(
        &self,
        stream: String,
        entries: Vec<NewEntry>,
        done: PublishCallback,
    ) -> Option<SendLater> {
        if let Err(e) = self.check_publish(&stream, &entries) {
            done(Err(e));
            return None;
        }
        let units = self.queue_units(&entries);
        let queued = self.inner.queued.clone();
        let hold = move |permit: OwnedSemaphorePermit| -> PublishCallback {
            Box::new(move |r| {
                drop(permit);
                done(r);
            })
        };
        let permit = match queued.clone().try_acquire_many_owned(units) {
            Ok(p) => p,
            Err(_) => {
                // Over the queue's byte budget: the caller waits (and its connection slows
                // down) until earlier publishes are committed.
                let tx = self.inner.tx.clone();
                return Some(Box::pin(async move {
                    let Ok(permit) = queued.acquire_many_owned(units).await else {
                        return;
                    };
                    let req = Request::Publish {
                        stream,
                        entries,
                        reply: hold(permit),
                    };
                    if let Err(mpsc::error::SendError(Request::Publish { reply, .. })) =
                        tx.send(req).await
                    {
                        reply(Err(StoreError::Closed));
                    }
                }));
            }
        };
        let req = Request::Publish {
            stream,
            entries,
            reply: hold(permit),
        };
        match self.inner.tx.try_send(req) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(req)) => {
                let tx = self.inner.tx.clone();
                Some(Box::pin(async move {
                    if let Err(mpsc::error::SendError(Request::Publish { reply, .. })) =
                        tx.send(req).await
                    {
                        reply(Err(StoreError::Closed));
                    }
                }))
            }
            Err(mpsc::error::TrySendError::Closed(Request::Publish { reply, .. })) => {
                reply(Err(StoreError::Closed));
                None
            }
            Err(mpsc::error::TrySendError::Closed(_)) => None,
        }
    }

    fn check_publish(&self, stream: &str, entries: &[NewEntry]) -> Result<(), StoreError> {
        check_name(stream)?;
        let max = self.options().max_entry_bytes;
        for e in entries {
            let size = e.size() as usize;
            if size > max {
                return Err(StoreError::TooLarge(size, max));
            }
        }
        Ok(())
    }

    /// Appends one entry; see [`Store::publish`].
    pub async fn publish_one(&self, stream: &str, entry: NewEntry) -> Result<Appended, StoreError> {
        let mut v = self.publish(stream, vec![entry]).await?;
        Ok(v.remove(0))
    }

    /// Removes every entry of `stream`; sequence numbers go on from where they were.
    pub async fn purge(&self, stream: &str) -> Result<u64, StoreError> {
        let stream = stream.to_owned();
        self.request(|reply| Request::Purge { stream, reply }).await
    }

    /// Waits until everything changed so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.request(Request::Flush).await
    }

    /// A stream's numbers.
    pub fn stream(&self, name: &str) -> Option<StreamInfo> {
        let state = self.state();
        state.streams.get(name).map(|s| info(&state, name, s))
    }

    /// Every stream, by name.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let state = self.state();
        let mut v: Vec<_> = state
            .streams
            .iter()
            .map(|(n, s)| info(&state, n, s))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The last durable sequence number of `stream`, watched.
    pub fn watch(&self, stream: &str) -> Option<watch::Receiver<Seq>> {
        self.state()
            .streams
            .get(stream)
            .map(|s| s.watch.subscribe())
    }

    /// Up to `limit` committed entries of `stream` from `from` on, if the in-memory tail holds
    /// `from`; `None` when they are only on disk (then see [`Store::read`]). Never blocks on
    /// the backend.
    pub fn read_cached(
        &self,
        stream: &str,
        from: Seq,
        limit: usize,
    ) -> Result<Option<Vec<Entry>>, StoreError> {
        Ok(self.cached_or_id(stream, from, limit)?.ok())
    }

    /// Up to `limit` committed entries of `stream` from `from` on. Served from the in-memory
    /// tail when it holds `from` (no thread hop); otherwise the backend is read on tokio's
    /// blocking pool, so a backlog on disk never stalls the async threads.
    pub async fn read(
        &self,
        stream: &str,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let (id, visible) = match self.cached_or_id(stream, from, limit)? {
            Ok(entries) => return Ok(entries),
            Err(at) => at,
        };
        let backend = self.inner.shared.backend.clone();
        let mut entries = tokio::task::spawn_blocking(move || backend.read(id, from, limit))
            .await
            .map_err(|e| {
                StoreError::io_from(format!("reading stream {stream:?} from disk"), e)
            })??;
        // The disk may hold a batch that is committed but not durable yet: not shown until it is.
        entries.retain(|e| e.seq <= visible);
        Ok(entries)
    }

    /// The tail's entries from `from` on, or, when the tail does not hold `from`, the stream's
    /// backend id and its last durable sequence number.
    fn cached_or_id(
        &self,
        stream: &str,
        from: Seq,
        limit: usize,
    ) -> Result<Result<Vec<Entry>, (StreamId, Seq)>, StoreError> {
        let state = self.state();
        let s = state
            .streams
            .get(stream)
            .ok_or_else(|| StoreError::StreamNotFound(stream.to_owned()))?;
        if let Some(front) = s.tail.front()
            && from >= front.seq
        {
            let skip = (from - front.seq) as usize;
            return Ok(Ok(s.tail.iter().skip(skip).take(limit).cloned().collect()));
        }
        Ok(Err((s.id, *s.watch.borrow())))
    }

    /// Gets consumer `name` of `stream`, creating it (and, if allowed, the stream) first.
    pub async fn consumer_or_create(
        &self,
        stream: &str,
        name: &str,
        config: ConsumerConfig,
    ) -> Result<ConsumerRecord, StoreError> {
        check_name(stream)?;
        check_name(name)?;
        if let Some(r) = self.consumer(stream, name) {
            return Ok(r);
        }
        let (stream, name) = (stream.to_owned(), name.to_owned());
        self.request(|reply| Request::CreateConsumer {
            stream,
            name,
            config,
            reply,
        })
        .await
    }

    /// A consumer's settings and position.
    pub fn consumer(&self, stream: &str, name: &str) -> Option<ConsumerRecord> {
        self.state()
            .consumers
            .get(&(stream.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The consumers of `stream`.
    pub fn consumers(&self, stream: &str) -> Vec<(String, ConsumerRecord)> {
        self.state()
            .consumers
            .iter()
            .filter(|((s, _), _)| s == stream)
            .map(|((_, n), r)| (n.clone(), r.clone()))
            .collect()
    }

    /// Every consumer's numbers, without copying their pending sets: `(stream, consumer,
    /// summary)` in stream and consumer order. One read lock for the whole walk, which a scrape
    /// of 100,000 consumers holds for a few milliseconds.
    pub fn consumer_summaries(&self) -> Vec<(String, String, ConsumerSummary)> {
        self.state()
            .consumers
            .iter()
            .map(|((s, n), r)| {
                let st = &r.state;
                let summary = ConsumerSummary {
                    delivered: st.delivered(),
                    pending: st.pending.len() as u64,
                    redelivered: st.redelivered,
                    dead_lettered: st.dead_lettered,
                };
                (s.clone(), n.clone(), summary)
            })
            .collect()
    }

    /// Records a consumer's new position; persisted with the writer's next batch.
    pub fn save_consumer(&self, stream: &str, name: &str, state: ConsumerState) {
        let key = (stream.to_owned(), name.to_owned());
        {
            let mut st = self.inner.shared.state.write();
            let Some(r) = st.consumers.get_mut(&key) else {
                return;
            };
            r.state = state;
        }
        self.inner.shared.dirty.lock().consumers.insert(key);
        self.inner.shared.wake.notify_one();
    }

    /// Removes a consumer; true if it existed.
    pub async fn delete_consumer(&self, stream: &str, name: &str) -> Result<bool, StoreError> {
        let (stream, name) = (stream.to_owned(), name.to_owned());
        self.request(|reply| Request::DeleteConsumer {
            stream,
            name,
            reply,
        })
        .await
    }

    /// Keeps a session for connection state recovery until `record.expires_ms`.
    pub fn put_session(&self, pid: &str, record: SessionRecord) {
        self.inner
            .shared
            .state
            .write()
            .sessions
            .insert(pid.to_owned(), record);
        self.mark_session(pid);
    }

    /// Takes (and forgets) a session that has not expired.
    pub fn take_session(&self, pid: &str) -> Option<SessionRecord> {
        let record = self.inner.shared.state.write().sessions.remove(pid)?;
        self.mark_session(pid);
        (record.expires_ms >= now_ms()).then_some(record)
    }

    fn mark_session(&self, pid: &str) {
        self.inner
            .shared
            .dirty
            .lock()
            .sessions
            .insert(pid.to_owned());
        self.inner.shared.wake.notify_one();
    }

    /// Logs a broadcast for recovery and returns its offset. Never waits: persisted by the
    /// writer's next batch; the oldest events are dropped past `max_recovery_events` or
    /// `max_recovery_bytes`, and leave memory (for disk) past `recovery_memory_bytes`.
    pub fn log_recoverable(
        &self,
        nsp: &str,
        rooms: Vec<String>,
        except: Vec<String>,
        data: bytes::Bytes,
    ) -> u64 {
        let mut log = self.inner.shared.recovery.lock();
        let offset = log.next_offset;
        log.next_offset += 1;
        log.push(RecoveryEvent {
            offset,
            ts_ms: now_ms(),
            nsp: nsp.to_owned(),
            rooms,
            except,
            data,
        });
        log.enforce(self.options(), 0);
        drop(log);
        self.inner.shared.wake.notify_one();
        offset
    }

    /// The offset the next recoverable broadcast will get.
    pub fn recovery_offset(&self) -> u64 {
        self.inner.shared.recovery.lock().next_offset
    }

    /// Broadcasts of `nsp` after `offset`, oldest first, or `None` if some were already dropped
    /// (the client then cannot be recovered). Those no longer in memory are read from disk, off
    /// the async threads.
    pub async fn recoverable_after(&self, nsp: &str, offset: u64) -> Option<Vec<RecoveryEvent>> {
        let shared = &self.inner.shared;
        let (in_memory, on_disk_below) = {
            let log = shared.recovery.lock();
            if offset < log.dropped_upto {
                return None;
            }
            let mem_from = log.events.front().map_or(log.next_offset, |e| e.offset);
            let in_memory: Vec<RecoveryEvent> = log
                .events
                .iter()
                .filter(|e| e.offset > offset && e.nsp == nsp)
                .cloned()
                .collect();
            (in_memory, (offset + 1 < mem_from).then_some(mem_from))
        };
        let Some(below) = on_disk_below else {
            return Some(in_memory);
        };
        let backend = shared.backend.clone();
        let read = tokio::task::spawn_blocking(move || backend.recovery_between(offset, below));
        let mut events: Vec<RecoveryEvent> = match read.await {
            Ok(Ok(events)) => events.into_iter().filter(|e| e.nsp == nsp).collect(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading recovery events failed");
                return None;
            }
            Err(_) => return None,
        };
        // Dropped while they were read: what was read may have gaps.
        if offset < shared.recovery.lock().dropped_upto {
            return None;
        }
        events.extend(in_memory);
        Some(events)
    }

    /// Persists everything pending and stops the writer.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.request(Request::Close).await
    }
}

fn info(state: &State, name: &str, s: &StreamState) -> StreamInfo {
    StreamInfo {
        name: name.to_owned(),
        config: s.config.clone(),
        first_seq: s.first_seq,
        last_seq: s.last_seq,
        entries: s.entries,
        bytes: s.bytes,
        consumers: state
            .consumers
            .keys()
            .filter(|(st, _)| st == name)
            .map(|(_, n)| n.clone())
            .collect(),
    }
}

/// Whether a batch may create a missing stream.
#[derive(Clone, Copy)]
enum Create {
    No,
    /// Within `max_streams`.
    Capped,
    /// Whatever `max_streams` says (dead-letter streams).
    Always,
}

impl Create {
    fn auto(opts: &StoreOptions) -> Create {
        if opts.auto_create {
            Create::Capped
        } else {
            Create::No
        }
    }
}

/// What one batch appends to one stream. The entries themselves are in the batch's ops (moved
/// there, not copied), and taken back out of them once committed.
struct Appending {
    /// The next sequence number.
    next: Seq,
    /// Entries appended.
    count: u64,
    bytes: u64,
    /// Message ids of the entries appended, for duplicates within the batch.
    ids: HashMap<String, Seq>,
}

/// Answers one request with the batch's outcome.
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// What one batch will change once committed.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    /// Streams created in this batch: name -> (id, config).
    created: HashMap<String, (StreamId, StreamConfig)>,
    /// Per stream: what this batch appends.
    appended: HashMap<String, Appending>,
    /// Per stream: the entries appended, shown to readers once the batch is durable.
    visible: Vec<(String, Vec<Entry>)>,
    /// Bytes of every entry this batch appends.
    appended_bytes: u64,
    trims: Vec<(String, Seq, u64, u64)>,
    consumers: Vec<((String, String), Option<ConsumerRecord>)>,
    replies: Vec<Reply>,
    recovery_upto: Option<u64>,
    next_stream_id: StreamId,
    /// The dirty marks this batch took, given back if its commit fails.
    dirty: Dirty,
    /// The store is closing: the batch is made durable before anyone is answered.
    close: bool,
}

impl Batch {
    fn reply<T: Send + 'static>(&mut self, tx: oneshot::Sender<Result<T, StoreError>>, value: T) {
        self.replies.push(Box::new(move |r| {
            let _ = tx.send(r.map(|()| value));
        }));
    }

    /// The stream's id, creating it in this batch if allowed.
    fn stream_id(
        &mut self,
        state: &State,
        opts: &StoreOptions,
        name: &str,
        create: Create,
    ) -> Result<StreamId, StoreError> {
        if let Some(s) = state.streams.get(name) {
            return Ok(s.id);
        }
        if let Some((id, _)) = self.created.get(name) {
            return Ok(*id);
        }
        let capped = match create {
            Create::No => return Err(StoreError::StreamNotFound(name.to_owned())),
            Create::Capped => true,
            Create::Always => false,
        };
        check_name(name)?;
        if capped
            && opts.max_streams > 0
            && state.streams.len() + self.created.len() >= opts.max_streams
        {
            return Err(StoreError::TooManyStreams(opts.max_streams));
        }
        let id = self.next_stream_id.max(state.next_stream_id);
        self.next_stream_id = id + 1;
        let config = opts.default_stream.clone();
        self.ops.push(Op::PutStream {
            id,
            name: name.to_owned(),
            config: config.clone(),
        });
        self.created.insert(name.to_owned(), (id, config));
        Ok(id)
    }

    fn next_seq(&mut self, state: &State, name: &str) -> Seq {
        if let Some(a) = self.appended.get(name) {
            return a.next;
        }
        let last = state.streams.get(name).map_or(0, |s| s.last_seq);
        self.appended.insert(
            name.to_owned(),
            Appending {
                next: last + 1,
                count: 0,
                bytes: 0,
                ids: HashMap::default(),
            },
        );
        last + 1
    }

    /// Refuses a publish of `incoming` bytes in `count` entries that a quota has no room for.
    fn check_quotas(
        &self,
        state: &State,
        opts: &StoreOptions,
        name: &str,
        count: u64,
        incoming: u64,
    ) -> Result<(), StoreError> {
        let held = state.disk_bytes + self.appended_bytes;
        if opts.max_disk_bytes > 0 && held + incoming > opts.max_disk_bytes {
            return Err(StoreError::StorageFull(format!(
                "the store holds {held} bytes of entries and its max_disk_bytes is {}",
                opts.max_disk_bytes
            )));
        }
        let stream = state.streams.get(name);
        let Some(config) = stream
            .map(|s| &s.config)
            .or_else(|| self.created.get(name).map(|c| &c.1))
            .or(Some(&opts.default_stream))
            .filter(|c| c.discard == Discard::New)
        else {
            return Ok(());
        };
        let batch = self.appended.get(name);
        let entries = stream.map_or(0, |s| s.entries) + batch.map_or(0, |a| a.count);
        let bytes = stream.map_or(0, |s| s.bytes) + batch.map_or(0, |a| a.bytes);
        if config.max_entries > 0 && entries + count > config.max_entries {
            return Err(StoreError::StorageFull(format!(
                "stream {name:?} holds {entries} entries and its max_entries is {}",
                config.max_entries
            )));
        }
        if config.max_bytes > 0 && bytes + incoming > config.max_bytes {
            return Err(StoreError::StorageFull(format!(
                "stream {name:?} holds {bytes} bytes and its max_bytes is {}",
                config.max_bytes
            )));
        }
        Ok(())
    }

    fn publish(
        &mut self,
        state: &State,
        opts: &StoreOptions,
        name: &str,
        entries: Vec<NewEntry>,
    ) -> Result<Vec<Appended>, StoreError> {
        if !opts.auto_create
            && !state.streams.contains_key(name)
            && !self.created.contains_key(name)
        {
            return Err(StoreError::StreamNotFound(name.to_owned()));
        }
        // Before the stream is created (a refused publish creates nothing), and counted as if
        // none were a duplicate: a publish is refused or taken whole.
        let incoming = entries.iter().map(NewEntry::size).sum();
        self.check_quotas(state, opts, name, entries.len() as u64, incoming)?;
        let id = self.stream_id(state, opts, name, Create::auto(opts))?;
        let window = state
            .streams
            .get(name)
            .map(|s| &s.config)
            .or_else(|| self.created.get(name).map(|c| &c.1))
            .map_or(0, |c| c.dedupe_window_ms);
        let now = now_ms();
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(mid) = &e.id
                && let Some(seq) = self.seen(state, name, mid, now.saturating_sub(window))
            {
                out.push(Appended {
                    seq,
                    duplicate: true,
                });
                continue;
            }
            let seq = self.next_seq(state, name);
            let entry = Entry {
                seq,
                ts_ms: now,
                id: e.id,
                event: e.event,
                data: e.data,
            };
            let slot = self.appended.get_mut(name).expect("created by next_seq");
            slot.next += 1;
            slot.count += 1;
            slot.bytes += entry.size();
            self.appended_bytes += entry.size();
            if let Some(mid) = &entry.id {
                slot.ids.insert(mid.clone(), seq);
            }
            self.ops.push(Op::Append { stream: id, entry });
            out.push(Appended {
                seq,
                duplicate: false,
            });
        }
        Ok(out)
    }

    /// The sequence number of an entry with message id `mid` stored since `since`.
    fn seen(&self, state: &State, name: &str, mid: &str, since: u64) -> Option<Seq> {
        if let Some(seq) = self.appended.get(name).and_then(|a| a.ids.get(mid)) {
            return Some(*seq);
        }
        let s = state.streams.get(name)?;
        let (seq, ts) = *s.ids.get(mid)?;
        // An id is a duplicate only while its entry is kept: ids are rebuilt from the kept
        // entries at start-up, and an id of a purged entry used to stay a duplicate only until
        // the next restart.
        (ts >= since && seq >= s.first_seq).then_some(seq)
    }
}

/// A committed batch on its way to being durable and answered.
struct Committed {
    batch: Batch,
    /// The commit's outcome: a failed batch is answered with its error, in its turn.
    result: Result<(), StoreError>,
}

async fn writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<Request>) {
    let mut last_maintenance = Instant::now();
    let mut last_sync = Instant::now();
    let mut buf = Vec::with_capacity(256);
    // An idle writer wakes at least once per sync interval: it used to sleep a whole
    // maintenance period, leaving the last commits unsynced for up to a second.
    let tick = shared
        .options
        .sync_interval
        .map_or(MAINTENANCE_EVERY, |every| every.min(MAINTENANCE_EVERY));
    // Committed batches go to the finisher, which makes them durable and answers them while
    // the next batch is built and committed. One waits there at most besides the one being
    // made durable, so at most three batches are ever unanswered.
    let (committed, finishing) = mpsc::channel::<Committed>(1);
    let finisher = tokio::spawn(finish(shared.clone(), finishing));
    loop {
        let closed = tokio::select! {
            n = rx.recv_many(&mut buf, MAX_BATCH) => n == 0,
            _ = shared.wake.notified() => false,
            _ = tokio::time::sleep(tick) => false,
        };
        let maintenance = last_maintenance.elapsed() >= MAINTENANCE_EVERY;
        if maintenance {
            last_maintenance = Instant::now();
        }
        let shared2 = shared.clone();
        let mut requests = std::mem::take(&mut buf);
        let closing = requests.iter().any(|r| matches!(r, Request::Close(_)));
        // Building a batch may read the backend (retention), so it runs off the async threads too.
        // The request buffer comes back empty for the next round instead of being reallocated.
        let done = tokio::task::spawn_blocking(move || {
            let mut batch = build(&shared2, &mut requests, maintenance);
            let result = if batch.ops.is_empty() {
                Ok(())
            } else {
                let started = Instant::now();
                let result = shared2.backend.commit(&batch.ops);
                let stats = &shared2.stats;
                stats.commit_seconds.observe_duration(started.elapsed());
                stats.group_size.observe(batch.replies.len() as u64);
                result
            };
            if let Err(e) = &result {
                shared2.stats.commit_failures.inc();
                tracing::error!(error = %e, "store commit failed");
                // The positions and sessions taken into the failed batch are still only in
                // memory: the next batch writes them (they used to be dropped with the batch).
                let mut dirty = shared2.dirty.lock();
                dirty.consumers.extend(batch.dirty.consumers.drain());
                dirty.sessions.extend(batch.dirty.sessions.drain());
            } else {
                apply_committed(&shared2, &mut batch);
            }
            (Committed { batch, result }, requests)
        })
        .await;
        match done {
            Err(e) if e.is_panic() => tracing::error!("store writer batch panicked"),
            // Cancelled: the runtime is shutting down without closing the store.
            Err(_) => return,
            Ok((done, requests)) => {
                buf = requests;
                if committed.send(done).await.is_err() {
                    tracing::error!("store finisher stopped");
                    return;
                }
            }
        }
        if let Some(every) = shared.options.sync_interval
            && (closing || last_sync.elapsed() >= every)
        {
            last_sync = Instant::now();
            let shared2 = shared.clone();
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || timed_sync(&shared2, |b| b.sync())).await
            {
                tracing::error!(error = %e, "store sync failed");
            }
        }
        if closed || closing {
            drop(committed);
            let _ = finisher.await;
            return;
        }
    }
}

/// Makes committed batches durable, shows what they appended, and answers them, in order. One
/// fsync covers every batch waiting when it starts.
async fn finish(shared: Arc<Shared>, mut rx: mpsc::Receiver<Committed>) {
    let mut waiting = Vec::with_capacity(4);
    while rx.recv_many(&mut waiting, 16).await > 0 {
        let shared2 = shared.clone();
        let mut batches = std::mem::take(&mut waiting);
        let done = tokio::task::spawn_blocking(move || {
            let durable = if batches.iter().any(|c| c.result.is_ok()) {
                timed_sync(&shared2, |b| b.make_durable())
            } else {
                Ok(())
            };
            if let Err(e) = &durable {
                shared2.stats.commit_failures.inc();
                tracing::error!(error = %e, "store fsync failed: the batches it covers are answered with the error");
            }
            for Committed { mut batch, result } in batches.drain(..) {
                let result = result.and_then(|()| durable.clone());
                if result.is_ok() {
                    apply_durable(&shared2, &mut batch);
                }
                let result = match result {
                    Ok(()) if batch.close => timed_sync(&shared2, |b| b.sync()),
                    other => other,
                };
                for reply in batch.replies.drain(..) {
                    reply(result.clone());
                }
            }
            batches
        })
        .await;
        match done {
            Ok(batches) => waiting = batches,
            Err(e) if e.is_panic() => tracing::error!("store finisher batch panicked"),
            Err(_) => return,
        }
    }
}

/// Runs one of the backend's syncs (`Backend::sync` or `Backend::make_durable`), and times it.
fn timed_sync(
    shared: &Shared,
    sync: impl FnOnce(&dyn Backend) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let result = sync(&*shared.backend);
    shared
        .stats
        .sync_seconds
        .observe_duration(started.elapsed());
    result
}

/// Turns waiting requests and dirty state into one batch.
fn build(shared: &Shared, requests: &mut Vec<Request>, maintenance: bool) -> Batch {
    let opts = &shared.options;
    let state = shared.state.read();
    let mut b = Batch {
        ops: Vec::with_capacity(requests.len() + 8),
        ..Batch::default()
    };
    for req in requests.drain(..) {
        match req {
            Request::Publish {
                stream,
                entries,
                reply,
            } => match b.publish(&state, opts, &stream, entries) {
                Ok(appended) => b
                    .replies
                    .push(Box::new(move |r| reply(r.map(|()| appended)))),
                Err(e) => reply(Err(e)),
            },
            Request::CreateStream {
                name,
                config,
                create,
                reply,
            } => {
                let id = match b.stream_id(&state, opts, &name, create) {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                };
                b.ops.push(Op::PutStream {
                    id,
                    name: name.clone(),
                    config: config.clone(),
                });
                b.created.insert(name, (id, config));
                b.reply(reply, ());
            }
            Request::Purge { stream, reply } => {
                let Some(s) = state.streams.get(&stream) else {
                    let _ = reply.send(Err(StoreError::StreamNotFound(stream)));
                    continue;
                };
                let below = b.next_seq(&state, &stream);
                b.ops.push(Op::Trim {
                    stream: s.id,
                    below,
                });
                // Entries appended earlier in this batch are purged too.
                let (extra, extra_bytes) = b
                    .appended
                    .get(&stream)
                    .map_or((0, 0), |a| (a.count, a.bytes));
                let (n, bytes) = (s.entries + extra, s.bytes + extra_bytes);
                b.trims.push((stream, below, n, bytes));
                b.reply(reply, n);
            }
            Request::CreateConsumer {
                stream,
                name,
                config,
                reply,
            } => {
                let key = (stream.clone(), name.clone());
                if let Some(r) = state.consumers.get(&key) {
                    let _ = reply.send(Ok(r.clone()));
                    continue;
                }
                if let Some((_, Some(r))) = b.consumers.iter().find(|(k, _)| *k == key) {
                    let _ = reply.send(Ok(r.clone()));
                    continue;
                }
                let creating = b.consumers.iter().filter(|(_, r)| r.is_some()).count();
                if opts.max_consumers > 0 && state.consumers.len() + creating >= opts.max_consumers
                {
                    let _ = reply.send(Err(StoreError::TooManyConsumers(opts.max_consumers)));
                    continue;
                }
                let id = match b.stream_id(&state, opts, &stream, Create::auto(opts)) {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                };
                let next_new = b.next_seq(&state, &stream);
                let first = state.streams.get(&stream).map_or(1, |s| s.first_seq);
                let next = match config.start {
                    StartPosition::New => next_new,
                    StartPosition::All => first,
                    StartPosition::Seq(n) => n.max(first),
                };
                let record = ConsumerRecord {
                    config,
                    state: ConsumerState {
                        next,
                        ..Default::default()
                    },
                };
                b.ops.push(Op::PutConsumer {
                    stream: id,
                    name,
                    record: record.clone(),
                });
                b.consumers.push((key, Some(record.clone())));
                b.reply(reply, record);
            }
            Request::DeleteConsumer {
                stream,
                name,
                reply,
            } => {
                let key = (stream.clone(), name.clone());
                let (Some(s), true) = (
                    state.streams.get(&stream),
                    state.consumers.contains_key(&key),
                ) else {
                    let _ = reply.send(Ok(false));
                    continue;
                };
                b.ops.push(Op::DeleteConsumer { stream: s.id, name });
                b.consumers.push((key, None));
                b.reply(reply, true);
            }
            Request::Flush(reply) => b.reply(reply, ()),
            Request::Close(reply) => {
                b.close = true;
                b.reply(reply, ());
            }
        }
    }
    persist_dirty(shared, &state, &mut b);
    // Retention asks the backend, so it works on a copy of the numbers it needs: the state
    // lock used to be held across those scans, and every `save_consumer` or `put_session` on
    // an async thread waited behind them.
    let streams = maintenance.then(|| retention_view(&state));
    drop(state);
    if let Some(streams) = streams {
        retention(shared, &streams, &mut b);
    }
    b
}

fn persist_dirty(shared: &Shared, state: &State, b: &mut Batch) {
    b.dirty = std::mem::take(&mut *shared.dirty.lock());
    for key in &b.dirty.consumers {
        if b.consumers.iter().any(|(k, _)| k == key) {
            continue;
        }
        if let (Some(r), Some(s)) = (state.consumers.get(key), state.streams.get(&key.0)) {
            b.ops.push(Op::PutConsumer {
                stream: s.id,
                name: key.1.clone(),
                record: r.clone(),
            });
        }
    }
    for pid in &b.dirty.sessions {
        b.ops.push(match state.sessions.get(pid) {
            Some(record) => Op::PutSession {
                pid: pid.clone(),
                record: record.clone(),
            },
            None => Op::DeleteSession { pid: pid.clone() },
        });
    }
    let log = shared.recovery.lock();
    let mut upto = log.persisted;
    for e in log
        .events
        .iter()
        .filter(|e| e.offset >= log.persisted)
        .take(MAX_BATCH)
    {
        b.ops.push(Op::AppendRecovery(e.clone()));
        upto = e.offset + 1;
    }
    if upto > log.persisted {
        b.recovery_upto = Some(upto);
    }
}

/// What retention needs to know of one stream, copied out of the state.
struct RetentionView {
    name: String,
    id: StreamId,
    config: StreamConfig,
    first_seq: Seq,
    last_seq: Seq,
    entries: u64,
    bytes: u64,
}

/// The streams that have a retention limit and entries. Only the writer changes these numbers,
/// so the copy stays true while the writer builds its batch.
fn retention_view(state: &State) -> Vec<RetentionView> {
    state
        .streams
        .iter()
        .filter(|(_, s)| {
            let c = &s.config;
            s.entries > 0 && (c.max_entries > 0 || c.max_age_ms > 0 || c.max_bytes > 0)
        })
        .map(|(name, s)| RetentionView {
            name: name.clone(),
            id: s.id,
            config: s.config.clone(),
            first_seq: s.first_seq,
            last_seq: s.last_seq,
            entries: s.entries,
            bytes: s.bytes,
        })
        .collect()
}

fn retention(shared: &Shared, streams: &[RetentionView], b: &mut Batch) {
    let now = now_ms();
    let window = shared.options.recovery_window.as_millis() as u64;
    let dropped_upto = shared.recovery.lock().dropped_upto;
    b.ops.push(Op::ExpireRecovery {
        events_before_ms: now.saturating_sub(window),
        events_upto_offset: dropped_upto,
        sessions_before_ms: now,
    });
    for s in streams {
        let (name, c) = (&s.name, &s.config);
        // A purge earlier in this batch already removed what retention sees here; counting
        // both left the stream with fewer entries (often none) than it kept.
        if b.trims.iter().any(|(n, ..)| n == name) {
            continue;
        }
        let mut below = s.first_seq;
        // With `discard = "new"` the limits refuse publishes instead: nothing confirmed is
        // removed for them, also after they were lowered.
        let limits = c.discard == Discard::Old;
        if limits && c.max_entries > 0 && s.entries > c.max_entries {
            below = below.max(s.last_seq + 1 - c.max_entries);
        }
        let backend = &shared.backend;
        if c.max_age_ms > 0 {
            match backend.first_seq_since(s.id, now.saturating_sub(c.max_age_ms)) {
                Ok(first) => below = below.max(first.unwrap_or(s.last_seq + 1)),
                Err(e) => tracing::warn!(stream = name, error = %e, "retention by age skipped"),
            }
        }
        // Cut from the oldest end: the work is what is removed, not the whole stream (it used
        // to walk every kept entry newest first, every second, once over the limit).
        if limits && c.max_bytes > 0 && s.bytes > c.max_bytes {
            match backend.first_seq_after_bytes(s.id, s.first_seq, s.bytes - c.max_bytes) {
                Ok(first) => below = below.max(first.unwrap_or(s.last_seq + 1)),
                Err(e) => tracing::warn!(stream = name, error = %e, "retention by size skipped"),
            }
        }
        if below > s.first_seq {
            match backend.range_stats(s.id, s.first_seq, below) {
                Ok((n, bytes)) => {
                    b.ops.push(Op::Trim {
                        stream: s.id,
                        below,
                    });
                    b.trims.push((name.clone(), below, n, bytes));
                }
                Err(e) => tracing::warn!(stream = name, error = %e, "retention skipped"),
            }
        }
    }
}

/// Takes a committed batch into the state, except what readers see of new entries: numbers
/// (sequences, counts, message ids), streams and consumers created, purges. The next batch is
/// built on these; readers see the entries once the batch is durable ([`apply_durable`]).
fn apply_committed(shared: &Shared, b: &mut Batch) {
    let mut guard = shared.state.write();
    let state = &mut *guard;
    state.next_stream_id = state.next_stream_id.max(b.next_stream_id);
    for (name, (id, config)) in b.created.drain() {
        match state.streams.get_mut(&name) {
            Some(s) => s.config = config,
            None => {
                state.streams.insert(
                    name,
                    StreamState {
                        id,
                        config,
                        first_seq: 1,
                        last_seq: 0,
                        entries: 0,
                        bytes: 0,
                        tail: VecDeque::new(),
                        tail_bytes: 0,
                        ids: HashMap::default(),
                        id_order: VecDeque::new(),
                        watch: watch::Sender::new(0),
                    },
                );
            }
        }
    }
    let now = now_ms();
    // The committed entries, taken back out of the ops, per stream.
    let mut streams: Vec<(StreamId, String, Vec<Entry>)> = b
        .appended
        .drain()
        .filter_map(|(name, a)| {
            let id = state.streams.get(&name)?.id;
            state.disk_bytes += a.bytes;
            Some((id, name, Vec::with_capacity(a.count as usize)))
        })
        .collect();
    for op in b.ops.drain(..) {
        if let Op::Append { stream, entry } = op
            && let Some((_, _, entries)) = streams.iter_mut().find(|(id, ..)| *id == stream)
        {
            entries.push(entry);
        }
    }
    for (_, name, entries) in streams {
        let Some(s) = state.streams.get_mut(&name) else {
            continue;
        };
        for e in &entries {
            s.last_seq = e.seq;
            s.entries += 1;
            s.bytes += e.size();
            if let Some(mid) = &e.id {
                s.ids.insert(mid.clone(), (e.seq, e.ts_ms));
                s.id_order.push_back((e.ts_ms, mid.clone()));
            }
        }
        let horizon = now.saturating_sub(s.config.dedupe_window_ms);
        while let Some((ts, _)) = s.id_order.front()
            && *ts < horizon
        {
            let (_, mid) = s.id_order.pop_front().expect("front checked");
            if s.ids.get(&mid).is_some_and(|(_, t)| *t < horizon) {
                s.ids.remove(&mid);
            }
        }
        if !entries.is_empty() {
            b.visible.push((name, entries));
        }
    }
    let tails = &mut state.tails;
    for (name, below, n, bytes) in b.trims.drain(..) {
        let Some(s) = state.streams.get_mut(&name) else {
            continue;
        };
        s.first_seq = s.first_seq.max(below);
        s.entries = s.entries.saturating_sub(n);
        state.disk_bytes = state.disk_bytes.saturating_sub(bytes.min(s.bytes));
        s.bytes = s.bytes.saturating_sub(bytes);
        while s.tail.front().is_some_and(|e| e.seq < below) {
            tails.bytes -= s.pop_tail();
            tails.entries -= 1;
        }
    }
    for (key, record) in b.consumers.drain(..) {
        match record {
            Some(r) => {
                state.consumers.entry(key).or_insert(r);
            }
            None => {
                state.consumers.remove(&key);
            }
        }
    }
    let now = now_ms();
    state.sessions.retain(|_, s| s.expires_ms >= now);
    drop(guard);
    let mut log = shared.recovery.lock();
    if let Some(upto) = b.recovery_upto {
        log.persisted = log.persisted.max(upto);
    }
    let horizon = now.saturating_sub(shared.options.recovery_window.as_millis() as u64);
    log.enforce(&shared.options, horizon);
}

/// Shows a durable batch's entries to readers: the streams' in-memory tails, and the watch
/// that wakes their consumers.
fn apply_durable(shared: &Shared, b: &mut Batch) {
    let mut guard = shared.state.write();
    let state = &mut *guard;
    let tails = &mut state.tails;
    for (name, entries) in b.visible.drain(..) {
        let Some(s) = state.streams.get_mut(&name) else {
            continue;
        };
        let key: Arc<str> = Arc::from(name);
        let mut last = None;
        for e in entries {
            last = Some(e.seq);
            // Purged by a later batch already.
            if e.seq < s.first_seq {
                continue;
            }
            // The tail holds consecutive entries only: after a batch that never became
            // durable (its fsync failed), it starts again.
            if s.tail.back().is_some_and(|back| back.seq + 1 != e.seq) {
                while !s.tail.is_empty() {
                    tails.bytes -= s.pop_tail();
                    tails.entries -= 1;
                }
            }
            let cost = tail_cost(&e);
            s.tail_bytes += cost;
            tails.bytes += cost;
            tails.entries += 1;
            tails.order.push_back((key.clone(), e.seq));
            s.tail.push_back(e);
        }
        while s.tail.len() > TAIL_ENTRIES || s.tail_bytes > TAIL_BYTES {
            tails.bytes -= s.pop_tail();
            tails.entries -= 1;
        }
        if let Some(last) = last {
            s.watch.send_if_modified(|v| {
                let newer = last > *v;
                *v = (*v).max(last);
                newer
            });
        }
    }
    // The shared budget: the oldest entries of any stream leave memory first (they are read
    // from disk if a consumer still needs them).
    while tails.bytes > shared.options.tail_memory_bytes
        && let Some((name, seq)) = tails.order.pop_front()
    {
        if let Some(s) = state.streams.get_mut(&*name)
            && s.tail.front().is_some_and(|e| e.seq == seq)
        {
            tails.bytes -= s.pop_tail();
            tails.entries -= 1;
        }
    }
    // Markers of entries that left their tail another way: dropped once they outnumber the
    // entries still held, so the queue stays within twice the tails.
    if tails.order.len() > 2 * tails.entries + 1024 {
        let streams = &state.streams;
        tails
            .order
            .retain(|(name, seq)| streams.get(&**name).is_some_and(|s| s.tail_holds(*seq)));
    }
}
