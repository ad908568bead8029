//! The values the store keeps: stream entries, stream and consumer settings, consumer state,
//! recovery sessions.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A sequence number within a stream; the first entry of a stream is 1.
pub type Seq = u64;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a publisher hands in.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    /// The event name clients receive.
    pub event: String,
    /// The event's data, as JSON text.
    pub data: Bytes,
    /// A message id for deduplication.
    pub id: Option<String>,
}

impl NewEntry {
    /// Bytes it will count for once stored, as [`Entry::size`].
    pub fn size(&self) -> u64 {
        (self.event.len() + self.data.len() + self.id.as_ref().map_or(0, String::len)) as u64
    }
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its sequence number.
    pub seq: Seq,
    /// When it was stored (ms since the epoch).
    pub ts_ms: u64,
    /// The publisher's message id, if any.
    pub id: Option<String>,
    /// The event name.
    pub event: String,
    /// The data, as JSON text.
    pub data: Bytes,
}

impl Entry {
    /// Bytes the entry counts for in retention by size.
    pub fn size(&self) -> u64 {
        (self.event.len() + self.data.len() + self.id.as_ref().map_or(0, |i| i.len())) as u64
    }
}

/// The answer to a publish, given once the entry is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Appended {
    /// The entry's sequence number (the original one for a duplicate).
    pub seq: Seq,
    /// Whether the message id was seen within the dedupe window, so nothing new was stored.
    pub duplicate: bool,
}

/// Settings of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Entries older than this are removed (ms; 0 = no limit).
    pub max_age_ms: u64,
    /// At most this many entries are kept (0 = no limit).
    pub max_entries: u64,
    /// At most this many bytes of entries are kept (0 = no limit).
    pub max_bytes: u64,
    /// A message id seen within this window is a duplicate (ms). Default 2 minutes.
    pub dedupe_window_ms: u64,
    /// Where entries go after `max_deliver` failed deliveries; default `<stream>.dlq`.
    pub dead_letter: Option<String>,
    /// What happens at `max_entries` or `max_bytes`: `old` removes the oldest entries (with the
    /// next retention pass, within a second), `new` refuses the publish with `storage_full`.
    pub discard: Discard,
}

/// What a stream at its `max_entries` or `max_bytes` gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Its oldest entries: the limits are retention.
    #[default]
    Old,
    /// New publishes: the limits are a quota, and nothing confirmed is removed.
    New,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            max_age_ms: 0,
            max_entries: 0,
            max_bytes: 0,
            dedupe_window_ms: 120_000,
            dead_letter: None,
            discard: Discard::Old,
        }
    }
}

impl StreamConfig {
    /// The dead-letter stream of `stream`.
    pub fn dead_letter_of(&self, stream: &str) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{stream}.dlq"))
    }
}

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    /// Only entries published after the consumer is created.
    #[default]
    New,
    /// Every entry still in the stream.
    All,
    /// From this sequence number on.
    #[serde(untagged)]
    Seq(Seq),
}

/// Settings of one consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Time a delivery may stay unacknowledged before it is sent again (ms). Default 30 s.
    pub ack_wait_ms: u64,
    /// Deliveries of one entry before it goes to the dead-letter stream. Default 5.
    pub max_deliver: u32,
    /// Deliveries in flight at once. Default 1000.
    pub max_ack_pending: u32,
    /// Where the consumer starts when it is created.
    pub start: StartPosition,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            ack_wait_ms: 30_000,
            max_deliver: 5,
            max_ack_pending: 1000,
            start: StartPosition::New,
        }
    }
}

impl ConsumerConfig {
    /// The wait before redelivery number `deliveries + 1`: `ack_wait` doubled per earlier
    /// attempt, at most 16 times `ack_wait`.
    pub fn redelivery_wait(&self, deliveries: u32) -> Duration {
        let factor = 1u64 << deliveries.saturating_sub(1).min(4);
        Duration::from_millis(self.ack_wait_ms.saturating_mul(factor))
    }
}

/// Where a consumer is: what it has yet to receive and what waits for an ack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerState {
    /// The next sequence number to deliver for the first time.
    pub next: Seq,
    /// Delivered and not acknowledged: sequence number -> deliveries so far.
    pub pending: BTreeMap<Seq, u32>,
    /// Deliveries that were repeats, over the consumer's life.
    pub redelivered: u64,
    /// Entries moved to the dead-letter stream, over the consumer's life.
    pub dead_lettered: u64,
}

/// A consumer's numbers, as metrics report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerSummary {
    /// The highest sequence number delivered so far.
    pub delivered: Seq,
    /// Delivered and not yet acknowledged.
    pub pending: u64,
    /// Deliveries that were repeats, over the consumer's life.
    pub redelivered: u64,
    /// Entries moved to the dead-letter stream, over the consumer's life.
    pub dead_lettered: u64,
}

impl ConsumerState {
    /// Every entry up to this one is acknowledged (or was never delivered for retention).
    pub fn ack_floor(&self) -> Seq {
        match self.pending.keys().next() {
            Some(&first) => first - 1,
            None => self.next.saturating_sub(1),
        }
    }

    /// The highest sequence number delivered so far.
    pub fn delivered(&self) -> Seq {
        self.next.saturating_sub(1)
    }
}

/// A consumer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRecord {
    /// Its settings.
    pub config: ConsumerConfig,
    /// Its position.
    pub state: ConsumerState,
}

/// A stream's vital numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamInfo {
    /// The stream name.
    pub name: String,
    /// Its settings.
    pub config: StreamConfig,
    /// Sequence number of the oldest entry kept (last + 1 when empty).
    pub first_seq: Seq,
    /// Sequence number of the newest entry ever stored (0 when none).
    pub last_seq: Seq,
    /// Entries kept.
    pub entries: u64,
    /// Bytes of entries kept.
    pub bytes: u64,
    /// Consumer names.
    pub consumers: Vec<String>,
}

/// `expires_ms` of the session of a socket that is still connected. A store that opens finds
/// such sessions only after a crash, and gives them a recovery window from then.
pub const LIVE_SESSION: u64 = u64::MAX;

/// What connection state recovery needs to restore a socket (stored as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The socket id the client had.
    pub sid: String,
    /// Its namespace.
    pub nsp: String,
    /// Rooms it had joined (its own id excluded).
    pub rooms: Vec<String>,
    /// Its application data.
    pub data: serde_json::Value,
    /// Recovery-log offset when the socket first connected: replay starts there for a client
    /// that received nothing recoverable.
    pub since: u64,
    /// Stream subscriptions to restore: (stream, consumer).
    pub subscriptions: Vec<(String, String)>,
    /// When the session stops being recoverable (ms since the epoch).
    pub expires_ms: u64,
    /// The subject of the identity it had: only the same subject may recover it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// Where a kept recovery event is, without its data: what the store indexes at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryMark {
    /// The event's offset.
    pub offset: u64,
    /// When it was emitted (ms since the epoch).
    pub ts_ms: u64,
    /// Bytes it takes as stored.
    pub bytes: u64,
}

/// A broadcast kept for connection state recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryEvent {
    /// Its offset: increasing across restarts.
    pub offset: u64,
    /// When it was emitted (ms since the epoch).
    pub ts_ms: u64,
    /// Namespace.
    pub nsp: String,
    /// Target rooms (empty: the whole namespace).
    pub rooms: Vec<String>,
    /// Excluded rooms.
    pub except: Vec<String>,
    /// The event's `[name, ...args]` array as JSON text, offset not included.
    #[serde(with = "utf8_bytes")]
    pub data: Bytes,
}

impl RecoveryEvent {
    /// Bytes the event counts for against the recovery log's bounds: its data and names, and
    /// what keeping it costs besides.
    pub fn size(&self) -> u64 {
        let names: usize = self.rooms.iter().chain(&self.except).map(String::len).sum();
        (self.data.len() + self.nsp.len() + names + RECOVERY_EVENT_OVERHEAD) as u64
    }
}

/// What a kept recovery event costs besides its data and names (the struct, its allocations).
const RECOVERY_EVENT_OVERHEAD: usize = 128;

/// Serializes JSON text held in `Bytes` as a string.
mod utf8_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        // Lossy rather than failing: a record that cannot be written would stall the writer.
        s.serialize_str(&String::from_utf8_lossy(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        Ok(Bytes::from(String::deserialize(d)?))
    }
}

/// Errors of the store, each meaning one thing to a client.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// No stream of that name (and auto-creation is off).
    #[error("stream {0:?} not found")]
    StreamNotFound(String),
    /// No consumer of that name.
    #[error("consumer {1:?} of stream {0:?} not found")]
    ConsumerNotFound(String, String),
    /// A name that cannot be used.
    #[error("invalid name {0:?}: {1}")]
    InvalidName(String, &'static str),
    /// An entry over the size limit.
    #[error("entry of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    /// A disk quota (`max_disk_bytes`, or a `discard = "new"` stream's `max_entries` or
    /// `max_bytes`) would be exceeded; nothing of the publish was kept.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// `max_streams` streams exist already.
    #[error("too many streams: the limit is {0}")]
    TooManyStreams(usize),
    /// `max_consumers` consumers exist already.
    #[error("too many consumers: the limit is {0}")]
    TooManyConsumers(usize),
    /// The disk (or the database) failed; nothing of the operation was kept.
    #[error("storage failure: {0}")]
    Io(#[source] IoError),
    /// The store is shut down.
    #[error("store closed")]
    Closed,
    /// The store cannot be reached now (a cluster's Redis is away); nothing was done, and
    /// the same request may succeed once it is back.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// A short code for wire answers.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::StreamNotFound(_) => "stream_not_found",
            StoreError::ConsumerNotFound(..) => "consumer_not_found",
            StoreError::InvalidName(..) => "invalid_name",
            StoreError::TooLarge(..) => "too_large",
            StoreError::StorageFull(_) => "storage_full",
            StoreError::TooManyStreams(_) => "too_many_streams",
            StoreError::TooManyConsumers(_) => "too_many_consumers",
            StoreError::Io(_) => "storage_failure",
            StoreError::Closed | StoreError::Unavailable(_) => "unavailable",
        }
    }
}

impl StoreError {
    /// A storage failure described by `message` alone.
    pub fn io(message: impl Into<String>) -> Self {
        StoreError::Io(IoError {
            message: message.into(),
            source: None,
        })
    }

    /// A storage failure caused by `source`, described as `context`.
    pub fn io_from(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let context = context.into();
        StoreError::Io(IoError {
            message: format!("{context}: {source}"),
            source: Some(std::sync::Arc::new(source)),
        })
    }
}

/// What failed in the disk or the database, with the error that caused it. Errors are compared by
/// their message (a store error is answered to every waiter of a batch, so it is cloned).
#[derive(Debug, Clone)]
pub struct IoError {
    message: String,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for IoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for IoError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for IoError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::io_from("sqlite", e)
    }
}

/// Checks a stream or consumer name: 1 to 128 characters, no control characters, no `/`.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let bad = |why| Err(StoreError::InvalidName(name.to_owned(), why));
    if name.is_empty() || name.len() > 128 {
        return bad("must be 1 to 128 bytes");
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return bad("must not contain control characters or /");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_position_json() {
        let p: StartPosition = serde_json::from_str("\"all\"").unwrap();
        assert_eq!(p, StartPosition::All);
        let p: StartPosition = serde_json::from_str("42").unwrap();
        assert_eq!(p, StartPosition::Seq(42));
        assert!(serde_json::from_str::<StartPosition>("\"later\"").is_err());
    }

    #[test]
    fn ack_floor_follows_pending() {
        let mut s = ConsumerState {
            next: 11,
            ..Default::default()
        };
        assert_eq!(s.ack_floor(), 10);
        s.pending.insert(7, 1);
        s.pending.insert(9, 2);
        assert_eq!(s.ack_floor(), 6);
    }

    #[test]
    fn redelivery_backs_off_up_to_sixteen_times() {
        let c = ConsumerConfig {
            ack_wait_ms: 100,
            ..Default::default()
        };
        let waits: Vec<u64> = (1..8)
            .map(|d| c.redelivery_wait(d).as_millis() as u64)
            .collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1600, 1600, 1600]);
    }
}
