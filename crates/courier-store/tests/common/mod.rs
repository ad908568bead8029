//! Helpers shared by the store's integration tests: a store over either backend that can be
//! restarted, a backend wrapper that fails or holds commits (and their fsync) on demand, and
//! bounded polling.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_store::backend::{Backend, Op, Snapshot, StreamId};
use courier_store::{
    Entry, MemoryBackend, NewEntry, RecoveryEvent, Seq, SqliteBackend, Store, StoreError,
    StoreOptions, SyncPolicy,
};

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Sqlite,
}

/// Runs `$name(Kind)` once per backend, as `$name::memory` and `$name::sqlite`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn memory() {
                super::$name(Kind::Memory).await
            }

            #[tokio::test]
            async fn sqlite() {
                super::$name(Kind::Sqlite).await
            }
        }
    )*};
}

/// How long a bounded poll waits before it fails the test. Retention runs about every second;
/// this leaves room for a machine that is busy with other work.
const POLL_LIMIT: Duration = Duration::from_secs(10);

/// Polls `ok` every few milliseconds until it holds; fails the test after [`POLL_LIMIT`].
pub async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + POLL_LIMIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Picks ops: a commit is held if one of its ops is picked.
pub type OpFilter = fn(&Op) -> bool;

/// What a [`Faulty`] backend is told to do. Shared by the test and every backend it wraps.
#[derive(Default)]
pub struct Faults {
    /// Commits fail with `StoreError::Io` (before reaching the wrapped backend) while set.
    /// Checked before the gate, so a commit already held at the gate is not affected.
    pub fail: AtomicBool,
    /// Commits that failed on purpose.
    pub failed: AtomicUsize,
    /// Commits that reached the wrapped backend.
    pub committed: AtomicUsize,

    /// Calls of `sync`.
    pub synced: AtomicUsize,
    /// When set, the gate holds only commits with an op it accepts (say, not maintenance).
    pub hold_only: Mutex<Option<OpFilter>>,
    /// Where commits wait while held (see `hold_only`).
    pub commits: Gate,
    /// `make_durable` fails while set.
    pub fail_durable: AtomicBool,
    /// Where `make_durable` waits while held: commits are done but not durable.
    pub durable: Gate,
    /// Where reads (`read`, and retention's `first_seq_*` and `range_stats`) wait while held.
    pub reads: Gate,
}

/// Holds the calls that pass it while it is held.
#[derive(Default)]
pub struct Gate {
    /// Calls waiting.
    pub waiting: AtomicUsize,
    held: Mutex<bool>,
    released: Condvar,
}

impl Gate {
    /// From now on, calls wait here.
    pub fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }

    /// Lets waiting calls (and later ones) through.
    pub fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }

    fn pass(&self) {
        let mut held = self.held.lock().unwrap();
        if *held {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while *held {
                held = self.released.wait(held).unwrap();
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Faults {
    /// From now on, commits with an op that `which` accepts wait at the gate.
    pub fn hold_only(&self, which: OpFilter) {
        *self.hold_only.lock().unwrap() = Some(which);
        self.hold();
    }

    /// From now on, commits wait at the gate before they reach the wrapped backend.
    pub fn hold(&self) {
        self.commits.hold();
    }

    /// Lets held commits (and later ones) through.
    pub fn release(&self) {
        self.commits.release();
    }

    fn pass_gate(&self, ops: &[Op]) {
        if let Some(which) = *self.hold_only.lock().unwrap()
            && !ops.iter().any(which)
        {
            return;
        }
        self.commits.pass();
    }
}

/// A backend that fails or holds commits when its [`Faults`] say so, and otherwise passes
/// everything to the backend it wraps.
pub struct Faulty {
    pub inner: Arc<dyn Backend>,
    pub faults: Arc<Faults>,
}

impl Backend for Faulty {
    fn load(&self, ids_since_ms: u64) -> Result<Snapshot, StoreError> {
        self.inner.load(ids_since_ms)
    }

    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let fail = self.faults.fail.load(Ordering::SeqCst);
        self.faults.pass_gate(ops);
        if fail {
            self.faults.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::io("injected commit failure"));
        }
        self.inner.commit(ops)?;
        self.faults.committed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn make_durable(&self) -> Result<(), StoreError> {
        self.faults.durable.pass();
        if self.faults.fail_durable.load(Ordering::SeqCst) {
            return Err(StoreError::io("injected fsync failure"));
        }
        self.inner.make_durable()
    }

    fn read(&self, stream: StreamId, from: Seq, limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.faults.reads.pass();
        self.inner.read(stream, from, limit)
    }

    fn first_seq_since(&self, stream: StreamId, ts_ms: u64) -> Result<Option<Seq>, StoreError> {
        self.faults.reads.pass();
        self.inner.first_seq_since(stream, ts_ms)
    }

    fn first_seq_after_bytes(
        &self,
        stream: StreamId,
        from: Seq,
        bytes: u64,
    ) -> Result<Option<Seq>, StoreError> {
        self.faults.reads.pass();
        self.inner.first_seq_after_bytes(stream, from, bytes)
    }

    fn range_stats(
        &self,
        stream: StreamId,
        from: Seq,
        below: Seq,
    ) -> Result<(u64, u64), StoreError> {
        self.faults.reads.pass();
        self.inner.range_stats(stream, from, below)
    }

    fn recovery_between(&self, after: u64, below: u64) -> Result<Vec<RecoveryEvent>, StoreError> {
        self.inner.recovery_between(after, below)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()?;
        self.faults.synced.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A backend that outlives the stores opened on it, so a test can restart the store.
///
/// Memory: the same `MemoryBackend` is handed to every store. SQLite: each open gets a new
/// `SqliteBackend` on the same file in a temporary directory.
pub struct Harness {
    pub kind: Kind,
    pub options: StoreOptions,
    pub faults: Arc<Faults>,
    faulty: bool,
    dir: tempfile::TempDir,
    backend: Option<Arc<dyn Backend>>,
}

impl Harness {
    pub fn new(kind: Kind, options: StoreOptions) -> Harness {
        Self::build(kind, options, false)
    }

    /// A harness whose backend is wrapped in [`Faulty`], steered by `self.faults`.
    pub fn faulty(kind: Kind, options: StoreOptions) -> Harness {
        Self::build(kind, options, true)
    }

    fn build(kind: Kind, options: StoreOptions, faulty: bool) -> Harness {
        let mut h = Harness {
            kind,
            options,
            faults: Arc::default(),
            faulty,
            dir: tempfile::tempdir().expect("temporary directory"),
            backend: None,
        };
        h.backend = Some(h.new_backend());
        h
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("courier.db")
    }

    fn new_backend(&self) -> Arc<dyn Backend> {
        let inner: Arc<dyn Backend> = match self.kind {
            Kind::Memory => Arc::new(MemoryBackend::new()),
            Kind::Sqlite => Arc::new(
                SqliteBackend::open(&self.path(), SyncPolicy::Always).expect("open sqlite"),
            ),
        };
        if self.faulty {
            Arc::new(Faulty {
                inner,
                faults: self.faults.clone(),
            })
        } else {
            inner
        }
    }

    /// The backend the next store opens on. Borrowed: a clone kept by a test would stop
    /// [`Harness::restart`] from seeing the old store's writer end.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        self.backend.as_ref().expect("backend")
    }

    pub fn open(&self) -> Store {
        Store::open(self.backend().clone(), self.options.clone()).expect("open store")
    }

    /// Flushes `store`, drops it, waits for its writer to stop, and opens a new store on what
    /// the old one left behind: a process restart without a crash.
    pub async fn restart(&mut self, store: Store) -> Store {
        store.flush().await.expect("flush before restart");
        drop(store);
        self.wait_writer_stopped().await;
        if self.kind == Kind::Sqlite {
            self.backend = Some(self.new_backend());
        }
        self.open()
    }

    /// Waits until no store holds the backend any more (every clone dropped, writer ended).
    pub async fn wait_writer_stopped(&self) {
        let backend = self.backend();
        eventually("the old store's writer stops", || {
            Arc::strong_count(backend) == 1
        })
        .await;
    }
}

/// A test that fails while a gate holds the store's writer would otherwise hang: the runtime
/// waits for its blocking threads when it drops, and they wait at the gate.
impl Drop for Harness {
    fn drop(&mut self) {
        self.faults.commits.release();
        self.faults.reads.release();
        self.faults.durable.release();
    }
}

/// A new entry.
pub fn new_entry(event: &str, data: &str, id: Option<&str>) -> NewEntry {
    NewEntry {
        event: event.to_owned(),
        data: Bytes::from(data.to_owned()),
        id: id.map(str::to_owned),
    }
}

/// The id the backend gave stream `name`.
pub fn stream_id(backend: &Arc<dyn Backend>, name: &str) -> StreamId {
    backend
        .load(0)
        .expect("load")
        .streams
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("stream {name} in the backend"))
        .id
}
