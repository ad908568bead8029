//! The default backend: one SQLite database in WAL mode. The schema is described in
//! docs/storage.md.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::backend::{Backend, Op, Snapshot, StreamId, StreamSnapshot};
use crate::types::{Entry, RecoveryEvent, RecoveryMark, Seq, StoreError};

/// When a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every commit is fsynced before it is confirmed.
    Always,
    /// Commits reach the OS at once and the disk at the next [`Backend::sync`]; a power loss can
    /// lose what was confirmed since. A process crash loses nothing.
    Interval,
}

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS entries(
    stream INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    msg_id TEXT,
    event TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY(stream, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_ids ON entries(ts) WHERE msg_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS consumers(
    stream INTEGER NOT NULL,
    name TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY(stream, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions(
    pid TEXT PRIMARY KEY,
    expires INTEGER NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recovery(
    offset INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    record TEXT NOT NULL
);
";

/// Read connections kept open while not in use.
const IDLE_READERS: usize = 4;

/// A SQLite database file.
pub struct SqliteBackend {
    // Blocking mutexes (parking_lot: a panic elsewhere does not poison them): SQLite calls block and never run on an async task's stack across an await.
    writer: Mutex<Connection>,
    /// Under [`SyncPolicy::Always`], the WAL file, fsynced by `make_durable`; opened by its
    /// first call.
    wal: Option<Mutex<Option<std::fs::File>>>,
    /// Read connections not in use. Each read takes one (opening one when none is free), so
    /// reads on several blocking threads run side by side and beside the writer, as WAL allows.
    /// The lock is held only to take or give back a connection.
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
}

/// A read connection, given back to the idle ones when dropped.
struct Reader<'a> {
    backend: &'a SqliteBackend,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.backend.idle_readers();
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("store records serialize")
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::io_from("corrupt record", e))
}

impl SqliteBackend {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, sync: SyncPolicy) -> Result<Self, StoreError> {
        let writer = Connection::open(path)?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Everything below (the fsync of the `-wal` file, readers beside the writer)
            // needs WAL; a file system that cannot have it gets an error, not weaker promises.
            return Err(StoreError::io(format!(
                "{} cannot be opened in WAL mode (SQLite kept journal mode {mode:?})",
                path.display()
            )));
        }
        // A commit writes the WAL without waiting for the disk under both policies. Under
        // `Always` the store then calls `make_durable`, which fsyncs the WAL before anyone is
        // answered, on another thread while the next batch is committed: what SQLite's FULL
        // did inside the commit, with the next batch waiting behind it. The WAL's frames
        // carry cumulative checksums, so after a power loss SQLite keeps a prefix of the
        // commits, never a later one without an earlier one. Checkpoints fsync the WAL before
        // they copy it and the database after.
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints are run by `sync` and by SQLite past this many pages.
        writer.pragma_update(None, "wal_autocheckpoint", 4000)?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        // Room for every statement the writer uses (rusqlite keeps 16 by default).
        writer.set_prepared_statement_cache_capacity(32);
        writer.execute_batch(SCHEMA)?;
        let version: Option<i64> = writer
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match version {
            None => {
                writer.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema', ?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(StoreError::io(format!(
                    "database schema version {v} is not supported (expected {SCHEMA_VERSION})"
                )));
            }
        }
        let backend = SqliteBackend {
            writer: Mutex::new(writer),
            wal: (sync == SyncPolicy::Always).then(|| Mutex::new(None)),
            readers: Mutex::new(Vec::with_capacity(IDLE_READERS)),
            path: path.to_owned(),
        };
        // One reader at once, so that a database that cannot be read fails here.
        drop(backend.reader()?);
        Ok(backend)
    }

    fn idle_readers(&self) -> parking_lot::MutexGuard<'_, Vec<Connection>> {
        self.readers.lock()
    }

    fn reader(&self) -> Result<Reader<'_>, StoreError> {
        let idle = self.idle_readers().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&self.path)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn
            }
        };
        Ok(Reader {
            backend: self,
            conn: Some(conn),
        })
    }

    /// Inserts entries with as few statements as the cached multi-row INSERTs allow.
    fn append(
        tx: &rusqlite::Transaction<'_>,
        mut rows: &[(StreamId, &Entry)],
    ) -> rusqlite::Result<()> {
        while !rows.is_empty() {
            let (sql, n) = APPEND_SQL
                .iter()
                .find(|(_, n)| *n <= rows.len())
                .expect("a one-row statement comes last");
            let mut stmt = tx.prepare_cached(sql)?;
            for (i, (stream, e)) in rows[..*n].iter().enumerate() {
                let at = i * 6;
                stmt.raw_bind_parameter(at + 1, *stream as i64)?;
                stmt.raw_bind_parameter(at + 2, e.seq as i64)?;
                stmt.raw_bind_parameter(at + 3, e.ts_ms as i64)?;
                stmt.raw_bind_parameter(at + 4, e.id.as_deref())?;
                stmt.raw_bind_parameter(at + 5, e.event.as_str())?;
                stmt.raw_bind_parameter(at + 6, &e.data[..])?;
            }
            stmt.raw_execute()?;
            rows = &rows[*n..];
        }
        Ok(())
    }

    fn apply(tx: &rusqlite::Transaction<'_>, op: &Op) -> rusqlite::Result<()> {
        match op {
            Op::PutStream { id, name, config } => {
                tx.prepare_cached(
                    "INSERT INTO streams(id, name, config) VALUES (?1, ?2, ?3)
                     ON CONFLICT(id) DO UPDATE SET config = excluded.config",
                )?
                .execute(params![*id as i64, name, json(config)])?;
            }
            Op::Append { .. } => unreachable!("`commit` inserts appends itself"),
            Op::Trim { stream, below } => {
                tx.prepare_cached("DELETE FROM entries WHERE stream = ?1 AND seq < ?2")?
                    .execute(params![*stream as i64, *below as i64])?;
            }
            Op::PutConsumer {
                stream,
                name,
                record,
            } => {
                tx.prepare_cached(
                    "INSERT INTO consumers(stream, name, record) VALUES (?1, ?2, ?3)
                     ON CONFLICT(stream, name) DO UPDATE SET record = excluded.record",
                )?
                .execute(params![*stream as i64, name, json(record)])?;
            }
            Op::DeleteConsumer { stream, name } => {
                tx.prepare_cached("DELETE FROM consumers WHERE stream = ?1 AND name = ?2")?
                    .execute(params![*stream as i64, name])?;
            }
            Op::PutSession { pid, record } => {
                tx.prepare_cached(
                    "INSERT INTO sessions(pid, expires, record) VALUES (?1, ?2, ?3)
                     ON CONFLICT(pid) DO UPDATE SET expires = excluded.expires, record = excluded.record",
                )?
                .execute(params![pid, record.expires_ms.min(i64::MAX as u64) as i64, json(record)])?;
            }
            Op::DeleteSession { pid } => {
                tx.prepare_cached("DELETE FROM sessions WHERE pid = ?1")?
                    .execute([pid])?;
            }
            Op::AppendRecovery(ev) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO recovery(offset, ts, record) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![ev.offset as i64, ev.ts_ms as i64, json(ev)])?;
            }
            Op::ExpireRecovery {
                events_before_ms,
                events_upto_offset,
                sessions_before_ms,
            } => {
                tx.prepare_cached("DELETE FROM recovery WHERE ts < ?1 OR offset <= ?2")?
                    .execute(params![
                        *events_before_ms as i64,
                        (*events_upto_offset).min(i64::MAX as u64) as i64
                    ])?;
                tx.prepare_cached("DELETE FROM sessions WHERE expires < ?1")?
                    .execute([*sessions_before_ms as i64])?;
            }
        }
        Ok(())
    }
}

/// Rows of the largest multi-row INSERT of entries (6 parameters each, within SQLite's 32,766).
const APPEND_ROWS: usize = 64;

/// `INSERT INTO entries ... VALUES (?,?,?,?,?,?), ...` for 64, 16, 4 and 1 rows, largest first:
/// a run of appends is cut into as few of them as fit, each a cached statement.
static APPEND_SQL: std::sync::LazyLock<[(String, usize); 4]> = std::sync::LazyLock::new(|| {
    [APPEND_ROWS, 16, 4, 1].map(|rows| {
        let values = vec!["(?,?,?,?,?,?)"; rows].join(",");
        let sql =
            format!("INSERT INTO entries(stream, seq, ts, msg_id, event, data) VALUES {values}");
        (sql, rows)
    })
});

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        seq: r.get::<_, i64>(0)? as u64,
        ts_ms: r.get::<_, i64>(1)? as u64,
        id: r.get(2)?,
        event: r.get(3)?,
        data: r.get::<_, Vec<u8>>(4)?.into(),
    })
}

impl Backend for SqliteBackend {
    fn load(&self, ids_since_ms: u64) -> Result<Snapshot, StoreError> {
        // Sizes here and below are bytes, as in `Entry::size`: `length()` of TEXT counts
        // characters, which made non-ASCII event names and ids count less after a restart.
        let db = self.reader()?;
        let mut snap = Snapshot::default();
        let mut stmt = db.prepare(
            "SELECT s.id, s.name, s.config, s.last_seq,
                    (SELECT min(seq) FROM entries e WHERE e.stream = s.id),
                    (SELECT count(*) FROM entries e WHERE e.stream = s.id),
                    (SELECT coalesce(sum(octet_length(event) + length(data) + coalesce(octet_length(msg_id), 0)), 0)
                       FROM entries e WHERE e.stream = s.id)
             FROM streams s ORDER BY s.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        for row in rows {
            let (id, name, config, last, first, entries, bytes) = row?;
            snap.streams.push(StreamSnapshot {
                id: id as u64,
                name,
                config: from_json(&config)?,
                first_seq: first.map_or(last as u64 + 1, |f| f as u64),
                last_seq: last as u64,
                entries: entries as u64,
                bytes: bytes as u64,
            });
        }
        let mut stmt = db.prepare("SELECT stream, name, record FROM consumers")?;
        for row in stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })? {
            let (stream, name, record) = row?;
            snap.consumers
                .push((stream as u64, name, from_json(&record)?));
        }
        let mut stmt = db.prepare(
            "SELECT stream, msg_id, seq, ts FROM entries WHERE msg_id IS NOT NULL AND ts >= ?1",
        )?;
        for row in stmt.query_map([ids_since_ms as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        })? {
            snap.recent_ids.push(row?);
        }
        // Only where the events are: their data is read when a client needs it, so a restart
        // does not bring the whole log into memory.
        let mut stmt =
            db.prepare("SELECT offset, ts, length(record) FROM recovery ORDER BY offset")?;
        for row in stmt.query_map([], |r| {
            Ok(RecoveryMark {
                offset: r.get::<_, i64>(0)? as u64,
                ts_ms: r.get::<_, i64>(1)? as u64,
                bytes: r.get::<_, i64>(2)? as u64,
            })
        })? {
            snap.recovery.push(row?);
        }
        let mut stmt = db.prepare("SELECT pid, record FROM sessions")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (pid, record) = row?;
            snap.sessions.push((pid, from_json(&record)?));
        }
        Ok(snap)
    }

    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut db = self.writer.lock();
        let tx = db.transaction()?;
        // Appends go in as multi-row INSERTs, and each stream's `last_seq` is set once per
        // batch: a statement per entry, and an UPDATE per entry, were most of a commit's time.
        let mut last_seqs: Vec<(StreamId, Seq)> = Vec::new();
        let mut run: Vec<(StreamId, &Entry)> = Vec::with_capacity(APPEND_ROWS);
        for op in ops {
            if let Op::Append { stream, entry } = op {
                match last_seqs.iter_mut().find(|(s, _)| s == stream) {
                    Some((_, last)) => *last = (*last).max(entry.seq),
                    None => last_seqs.push((*stream, entry.seq)),
                }
                run.push((*stream, entry));
                if run.len() == APPEND_ROWS {
                    Self::append(&tx, &run)?;
                    run.clear();
                }
                continue;
            }
            // Ops apply in order: appends waiting to be inserted go first.
            Self::append(&tx, &run)?;
            run.clear();
            Self::apply(&tx, op)?;
        }
        Self::append(&tx, &run)?;
        for (stream, last) in last_seqs {
            tx.prepare_cached("UPDATE streams SET last_seq = max(last_seq, ?2) WHERE id = ?1")?
                .execute(params![stream as i64, last as i64])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn read(&self, stream: StreamId, from: Seq, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let db = self.reader()?;
        let mut stmt = db.prepare_cached(
            "SELECT seq, ts, msg_id, event, data FROM entries
             WHERE stream = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![stream as i64, from as i64, limit as i64],
            entry_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn first_seq_since(&self, stream: StreamId, ts_ms: u64) -> Result<Option<Seq>, StoreError> {
        let db = self.reader()?;
        let seq: Option<i64> = db
            .prepare_cached(
                "SELECT seq FROM entries WHERE stream = ?1 AND ts >= ?2 ORDER BY seq LIMIT 1",
            )?
            .query_row(params![stream as i64, ts_ms as i64], |r| r.get(0))
            .optional()?;
        Ok(seq.map(|s| s as u64))
    }

    fn first_seq_after_bytes(
        &self,
        stream: StreamId,
        from: Seq,
        bytes: u64,
    ) -> Result<Option<Seq>, StoreError> {
        let db = self.reader()?;
        let mut stmt = db.prepare_cached(
            "SELECT seq, octet_length(event) + length(data) + coalesce(octet_length(msg_id), 0)
             FROM entries WHERE stream = ?1 AND seq >= ?2 ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![stream as i64, from as i64])?;
        let mut removed = 0u64;
        while let Some(r) = rows.next()? {
            if removed >= bytes {
                return Ok(Some(r.get::<_, i64>(0)? as u64));
            }
            removed += r.get::<_, i64>(1)? as u64;
        }
        Ok(None)
    }

    fn range_stats(
        &self,
        stream: StreamId,
        from: Seq,
        below: Seq,
    ) -> Result<(u64, u64), StoreError> {
        let db = self.reader()?;
        let (n, b): (i64, i64) = db
            .prepare_cached(
                "SELECT count(*), coalesce(sum(octet_length(event) + length(data) + coalesce(octet_length(msg_id), 0)), 0)
                 FROM entries WHERE stream = ?1 AND seq >= ?2 AND seq < ?3",
            )?
            .query_row(params![stream as i64, from as i64, below as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok((n as u64, b as u64))
    }

    fn recovery_between(&self, after: u64, below: u64) -> Result<Vec<RecoveryEvent>, StoreError> {
        let db = self.reader()?;
        let mut stmt = db.prepare_cached(
            "SELECT record FROM recovery WHERE offset > ?1 AND offset < ?2 ORDER BY offset",
        )?;
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        let rows = stmt.query_map(params![clamp(after), clamp(below)], |r| {
            r.get::<_, String>(0)
        })?;
        rows.map(|r| from_json::<RecoveryEvent>(&r?)).collect()
    }

    fn make_durable(&self) -> Result<(), StoreError> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        let mut wal = wal.lock();
        if wal.is_none() {
            let mut name = self.path.clone().into_os_string();
            name.push("-wal");
            // The writer's first transaction (the schema, at open) created it, and SQLite
            // keeps it while a connection is open.
            let file = std::fs::File::open(&name)
                .map_err(|e| StoreError::io_from("opening the WAL to fsync it", e))?;
            // The WAL's directory entry is new: it must survive a power loss too.
            let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty());
            std::fs::File::open(dir.unwrap_or(Path::new(".")))
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io_from("fsyncing the database's directory", e))?;
            *wal = Some(file);
        }
        wal.as_ref()
            .expect("opened above")
            .sync_data()
            .map_err(|e| StoreError::io_from("fsyncing the WAL", e))
    }

    fn sync(&self) -> Result<(), StoreError> {
        let db = self.writer.lock();
        db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }
}
