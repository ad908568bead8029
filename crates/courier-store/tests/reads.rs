//! Reads that go to disk: a backlog read through the async `Store::read` while the writer
//! commits, and the state lock left free while retention asks the backend.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use courier_store::*;

/// More than the store keeps in memory per stream, so that the oldest entries are on disk only.
const BACKLOG: u64 = 20_000;
const MORE: u64 = 5_000;

fn entry(i: u64) -> NewEntry {
    new_entry("e", &format!("[{i},\"backlog\"]"), None)
}

async fn publish_range(store: &Store, from: u64, to: u64, batch: u64) {
    let mut i = from;
    while i <= to {
        let end = (i + batch - 1).min(to);
        store
            .publish("b", (i..=end).map(entry).collect())
            .await
            .unwrap();
        i = end + 1;
    }
}

/// Reads every entry from `from` to `to` in batches of `limit`, checking order and content.
async fn read_all(store: &Store, from: Seq, to: Seq, limit: usize) {
    let mut next = from;
    while next <= to {
        let got = store.read("b", next, limit).await.unwrap();
        assert!(!got.is_empty(), "nothing read from {next}");
        for e in got {
            if e.seq > to {
                return;
            }
            assert_eq!(e.seq, next);
            assert_eq!(e.data, entry(next).data);
            next += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_read_from_sqlite_while_the_writer_commits() {
    let h = Harness::new(Kind::Sqlite, StoreOptions::default());
    let store = h.open();
    publish_range(&store, 1, BACKLOG, 500).await;
    // The oldest entries are no longer in memory: the reads below go to the database.
    assert_eq!(store.read_cached("b", 1, 10).unwrap(), None);
    assert!(store.read_cached("b", BACKLOG, 10).unwrap().is_some());

    let writer = {
        let store = store.clone();
        tokio::spawn(async move { publish_range(&store, BACKLOG + 1, BACKLOG + MORE, 50).await })
    };
    // Two readers at once, on separate read connections.
    let (a, b) = tokio::join!(read_all(&store, 1, BACKLOG, 256), async {
        read_all(&store, BACKLOG / 2, BACKLOG, 1000).await;
    });
    let ((), ()) = (a, b);
    writer.await.unwrap();
    read_all(&store, 1, BACKLOG + MORE, 4096).await;
    assert_eq!(store.stream("b").unwrap().last_seq, BACKLOG + MORE);
}

#[tokio::test]
async fn a_read_of_a_missing_stream_answers_not_found_without_the_disk() {
    let h = Harness::new(Kind::Sqlite, StoreOptions::default());
    let store = h.open();
    assert_eq!(
        store.read("nope", 1, 10).await,
        Err(StoreError::StreamNotFound("nope".into()))
    );
    assert_eq!(
        store.read_cached("nope", 1, 10),
        Err(StoreError::StreamNotFound("nope".into()))
    );
}

both_backends!(consumer_saves_and_sessions_do_not_wait_for_retention_reads);

/// Regression: retention asked the backend (a scan of the whole stream for `max_bytes`) while
/// the writer held the state lock, so `save_consumer` and `put_session`, called on async
/// threads for every ack and every room change, waited for the disk.
async fn consumer_saves_and_sessions_do_not_wait_for_retention_reads(kind: Kind) {
    let h = Harness::faulty(kind, StoreOptions::default());
    let store = h.open();
    let config = StreamConfig {
        max_bytes: 200,
        ..Default::default()
    };
    store.create_stream("b", config).await.unwrap();
    store
        .consumer_or_create("b", "c", ConsumerConfig::default())
        .await
        .unwrap();
    h.faults.reads.hold();
    publish_range(&store, 1, 50, 10).await;
    eventually("retention reads the backend", || {
        h.faults.reads.waiting.load(Ordering::SeqCst) > 0
    })
    .await;

    let done = Arc::new(AtomicBool::new(false));
    let saver = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            store.save_consumer("b", "c", ConsumerState::default());
            store.put_session(
                "pid",
                SessionRecord {
                    sid: "sid".into(),
                    nsp: "/".into(),
                    rooms: Vec::new(),
                    data: serde_json::Value::Null,
                    since: 0,
                    subscriptions: Vec::new(),
                    expires_ms: LIVE_SESSION,
                    sub: None,
                },
            );
            done.store(true, Ordering::SeqCst);
        })
    };
    let saved = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !done.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    // Retention goes on either way, so that a failure leaves no thread stuck at the gate.
    h.faults.reads.release();
    saver.join().unwrap();
    assert!(
        saved.is_ok(),
        "the consumer and the session waited for retention's reads"
    );

    eventually("retention keeps at most 200 bytes", || {
        store.stream("b").unwrap().bytes <= 200
    })
    .await;
    let info = store.stream("b").unwrap();
    let kept = store.read("b", 0, 100).await.unwrap();
    assert_eq!(info.bytes, kept.iter().map(Entry::size).sum::<u64>());
    assert_eq!(kept.last().map(|e| e.seq), Some(50));
    // The cut is the smallest: the newest entry removed would not have fit.
    let size = |i: u64| {
        let e = entry(i);
        (e.event.len() + e.data.len()) as u64
    };
    assert!(info.bytes + size(kept[0].seq - 1) > 200);
}
