//! What a persistence engine must do. The [`crate::Store`] decides everything (sequence numbers,
//! dedupe, retention points) and hands a backend batches of plain writes, each applied atomically.

use crate::types::{
    ConsumerRecord, Entry, RecoveryEvent, RecoveryMark, Seq, SessionRecord, StoreError,
    StreamConfig,
};

/// A stream's number inside a backend.
pub type StreamId = u64;

/// One write. A batch of them is applied all or nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Creates a stream or replaces its settings.
    PutStream {
        /// Its id.
        id: StreamId,
        /// Its name.
        name: String,
        /// Its settings.
        config: StreamConfig,
    },
    /// Appends an entry; `entry.seq` is the stream's new last sequence number.
    Append {
        /// The stream.
        stream: StreamId,
        /// The entry.
        entry: Entry,
    },
    /// Removes the entries below `below`.
    Trim {
        /// The stream.
        stream: StreamId,
        /// First sequence number kept.
        below: Seq,
    },
    /// Creates or updates a consumer.
    PutConsumer {
        /// The stream.
        stream: StreamId,
        /// The consumer's name.
        name: String,
        /// Settings and position.
        record: ConsumerRecord,
    },
    /// Removes a consumer.
    DeleteConsumer {
        /// The stream.
        stream: StreamId,
        /// The consumer's name.
        name: String,
    },
    /// Keeps a recovery session.
    PutSession {
        /// The private session id.
        pid: String,
        /// What to restore.
        record: SessionRecord,
    },
    /// Forgets a recovery session.
    DeleteSession {
        /// The private session id.
        pid: String,
    },
    /// Keeps a broadcast for recovery.
    AppendRecovery(RecoveryEvent),
    /// Forgets recovery events and sessions that ended before `now_ms`.
    ExpireRecovery {
        /// Events older than this are removed.
        events_before_ms: u64,
        /// Events at or below this offset are removed too (dropped for the count or byte bound).
        events_upto_offset: u64,
        /// Sessions that expire before this are removed.
        sessions_before_ms: u64,
    },
}

/// A stream as loaded at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSnapshot {
    /// Its id.
    pub id: StreamId,
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: StreamConfig,
    /// The oldest sequence number kept (`last_seq + 1` when empty).
    pub first_seq: Seq,
    /// The newest sequence number ever stored.
    pub last_seq: Seq,
    /// Entries kept.
    pub entries: u64,
    /// Bytes kept.
    pub bytes: u64,
}

/// Everything the store keeps in memory, as loaded at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Every stream.
    pub streams: Vec<StreamSnapshot>,
    /// Every consumer: (stream, name, record).
    pub consumers: Vec<(StreamId, String, ConsumerRecord)>,
    /// Message ids of entries stored at or after the asked time: (stream, id, seq, ts).
    pub recent_ids: Vec<(StreamId, String, Seq, u64)>,
    /// Where the recovery events are, oldest first; their data is read with
    /// [`Backend::recovery_between`].
    pub recovery: Vec<RecoveryMark>,
    /// Recovery sessions: (pid, record).
    pub sessions: Vec<(String, SessionRecord)>,
}

/// A persistence engine. Methods block: the store calls them from its writer thread or tokio's
/// blocking pool, never from an async thread (`commit` from the writer only).
pub trait Backend: Send + Sync + 'static {
    /// Loads what the store keeps in memory; ids of entries older than `ids_since_ms` may be
    /// left out.
    fn load(&self, ids_since_ms: u64) -> Result<Snapshot, StoreError>;

    /// Applies `ops` atomically. Readers see them once it returns; they are durable then too,
    /// unless [`Backend::make_durable`] does the backend's fsync.
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError>;

    /// Makes every commit so far durable under the backend's sync policy. The store calls it
    /// after each commit, on another thread while the next batch is built and committed, and
    /// answers a batch's requests only once it returned: so one fsync covers every batch
    /// committed meanwhile, and the disk's latency overlaps with the work of the next batch.
    /// Commits must be durable in order (a prefix of them survives a power loss), as a
    /// write-ahead log gives. Default: nothing to do, every commit is durable already.
    fn make_durable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Up to `limit` entries of `stream` with sequence numbers at or after `from`, in order.
    fn read(&self, stream: StreamId, from: Seq, limit: usize) -> Result<Vec<Entry>, StoreError>;

    /// The first sequence number of an entry stored at or after `ts_ms`.
    fn first_seq_since(&self, stream: StreamId, ts_ms: u64) -> Result<Option<Seq>, StoreError>;

    /// Where a cut of at least `bytes` from the oldest end leaves `stream`: removing the entries
    /// from `from` on, oldest first, until their sizes add up to `bytes` or more, the sequence
    /// number of the first entry left; `None` if none would be left. Reads only what it removes
    /// (and one entry more).
    fn first_seq_after_bytes(
        &self,
        stream: StreamId,
        from: Seq,
        bytes: u64,
    ) -> Result<Option<Seq>, StoreError>;

    /// Number and bytes of the entries with `from <= seq < below`.
    fn range_stats(
        &self,
        stream: StreamId,
        from: Seq,
        below: Seq,
    ) -> Result<(u64, u64), StoreError>;

    /// Recovery events with `after < offset < below`, oldest first.
    fn recovery_between(&self, after: u64, below: u64) -> Result<Vec<RecoveryEvent>, StoreError>;

    /// Makes everything committed so far durable (for the `interval` sync policy).
    fn sync(&self) -> Result<(), StoreError>;
}
