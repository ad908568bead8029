//! A backend that keeps everything in memory: for tests and ephemeral hubs. Reopening a
//! [`crate::Store`] on the same `MemoryBackend` behaves like a restart.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};

use crate::backend::{Backend, Op, Snapshot, StreamId, StreamSnapshot};
use crate::types::{
    ConsumerRecord, Entry, RecoveryEvent, RecoveryMark, Seq, SessionRecord, StoreError,
    StreamConfig,
};

/// Everything in memory.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    // A std mutex: each call holds it briefly and never across an await.
    data: Mutex<Data>,
}

#[derive(Debug, Default, Clone)]
struct Data {
    streams: BTreeMap<StreamId, MemStream>,
    consumers: BTreeMap<(StreamId, String), ConsumerRecord>,
    sessions: HashMap<String, SessionRecord>,
    recovery: Vec<RecoveryEvent>,
}

#[derive(Debug, Clone)]
struct MemStream {
    name: String,
    config: StreamConfig,
    last_seq: Seq,
    entries: BTreeMap<Seq, Entry>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> parking_lot::MutexGuard<'_, Data> {
        self.data.lock()
    }
}

impl Backend for MemoryBackend {
    fn load(&self, ids_since_ms: u64) -> Result<Snapshot, StoreError> {
        let d = self.data();
        let mut snap = Snapshot::default();
        for (&id, s) in &d.streams {
            snap.streams.push(StreamSnapshot {
                id,
                name: s.name.clone(),
                config: s.config.clone(),
                first_seq: s.entries.keys().next().copied().unwrap_or(s.last_seq + 1),
                last_seq: s.last_seq,
                entries: s.entries.len() as u64,
                bytes: s.entries.values().map(Entry::size).sum(),
            });
            for e in s.entries.values().filter(|e| e.ts_ms >= ids_since_ms) {
                if let Some(mid) = &e.id {
                    snap.recent_ids.push((id, mid.clone(), e.seq, e.ts_ms));
                }
            }
        }
        snap.consumers = d
            .consumers
            .iter()
            .map(|((s, n), r)| (*s, n.clone(), r.clone()))
            .collect();
        snap.recovery = d
            .recovery
            .iter()
            .map(|e| RecoveryMark {
                offset: e.offset,
                ts_ms: e.ts_ms,
                bytes: e.size(),
            })
            .collect();
        snap.sessions = d
            .sessions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(snap)
    }

    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut guard = self.data();
        let d = &mut *guard;
        // All or nothing: the only op that can fail is checked before anything changes.
        let mut known: std::collections::HashSet<StreamId> = d.streams.keys().copied().collect();
        for op in ops {
            match op {
                Op::PutStream { id, .. } => {
                    known.insert(*id);
                }
                Op::Append { stream, .. } if !known.contains(stream) => {
                    return Err(StoreError::io(format!(
                        "append to unknown stream id {stream}"
                    )));
                }
                _ => {}
            }
        }
        for op in ops {
            match op {
                Op::PutStream { id, name, config } => {
                    let s = d.streams.entry(*id).or_insert_with(|| MemStream {
                        name: name.clone(),
                        config: config.clone(),
                        last_seq: 0,
                        entries: BTreeMap::new(),
                    });
                    s.config = config.clone();
                }
                Op::Append { stream, entry } => {
                    let s = d.streams.get_mut(stream).expect("checked above");
                    s.last_seq = s.last_seq.max(entry.seq);
                    s.entries.insert(entry.seq, entry.clone());
                }
                Op::Trim { stream, below } => {
                    if let Some(s) = d.streams.get_mut(stream) {
                        s.entries = s.entries.split_off(below);
                    }
                }
                Op::PutConsumer {
                    stream,
                    name,
                    record,
                } => {
                    d.consumers.insert((*stream, name.clone()), record.clone());
                }
                Op::DeleteConsumer { stream, name } => {
                    d.consumers.remove(&(*stream, name.clone()));
                }
                Op::PutSession { pid, record } => {
                    d.sessions.insert(pid.clone(), record.clone());
                }
                Op::DeleteSession { pid } => {
                    d.sessions.remove(pid);
                }
                Op::AppendRecovery(ev) => d.recovery.push(ev.clone()),
                Op::ExpireRecovery {
                    events_before_ms,
                    events_upto_offset,
                    sessions_before_ms,
                } => {
                    d.recovery
                        .retain(|e| e.ts_ms >= *events_before_ms && e.offset > *events_upto_offset);
                    d.sessions
                        .retain(|_, s| s.expires_ms >= *sessions_before_ms);
                }
            }
        }
        Ok(())
    }

    fn recovery_between(&self, after: u64, below: u64) -> Result<Vec<RecoveryEvent>, StoreError> {
        let d = self.data();
        Ok(d.recovery
            .iter()
            .filter(|e| e.offset > after && e.offset < below)
            .cloned()
            .collect())
    }

    fn read(&self, stream: StreamId, from: Seq, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let d = self.data();
        Ok(d.streams.get(&stream).map_or_else(Vec::new, |s| {
            s.entries
                .range(from..)
                .take(limit)
                .map(|(_, e)| e.clone())
                .collect()
        }))
    }

    fn first_seq_since(&self, stream: StreamId, ts_ms: u64) -> Result<Option<Seq>, StoreError> {
        let d = self.data();
        Ok(d.streams
            .get(&stream)
            .and_then(|s| s.entries.values().find(|e| e.ts_ms >= ts_ms).map(|e| e.seq)))
    }

    fn first_seq_after_bytes(
        &self,
        stream: StreamId,
        from: Seq,
        bytes: u64,
    ) -> Result<Option<Seq>, StoreError> {
        let d = self.data();
        let Some(s) = d.streams.get(&stream) else {
            return Ok(None);
        };
        let mut removed = 0;
        for e in s.entries.range(from..).map(|(_, e)| e) {
            if removed >= bytes {
                return Ok(Some(e.seq));
            }
            removed += e.size();
        }
        Ok(None)
    }

    fn range_stats(
        &self,
        stream: StreamId,
        from: Seq,
        below: Seq,
    ) -> Result<(u64, u64), StoreError> {
        let d = self.data();
        Ok(d.streams.get(&stream).map_or((0, 0), |s| {
            s.entries
                .range(from..below)
                .fold((0, 0), |(n, b), (_, e)| (n + 1, b + e.size()))
        }))
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
