//! The store's behaviour as its users rely on it, on both backends. A restart is a new `Store`
//! opened on what the old one left (the same `MemoryBackend`, or the same SQLite file).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use courier_store::backend::Op;
use courier_store::*;

fn seqs(appended: &[Appended]) -> Vec<(Seq, bool)> {
    appended.iter().map(|a| (a.seq, a.duplicate)).collect()
}

fn seq_list(entries: &[Entry]) -> Vec<Seq> {
    entries.iter().map(|e| e.seq).collect()
}

fn fresh(seq: Seq) -> Appended {
    Appended {
        seq,
        duplicate: false,
    }
}

fn duplicate_of(seq: Seq) -> Appended {
    Appended {
        seq,
        duplicate: true,
    }
}

both_backends!(
    publish_assigns_increasing_seqs_from_one,
    publish_is_confirmed_only_after_commit,
    entries_are_seen_only_once_durable,
    a_failed_fsync_is_answered_and_the_stream_goes_on,
    watch_sees_the_last_committed_seq,
    duplicate_ids_answer_the_original_seq,
    duplicate_ids_expire_with_the_dedupe_window,
    dedupe_after_restart_honours_a_stream_window_longer_than_ten_minutes,
    purged_message_ids_are_new_again_with_or_without_restart,
    auto_creation_on_uses_the_default_stream_config,
    auto_creation_off_answers_stream_not_found,
    create_stream_replaces_the_config,
    reads_from_tail_and_backend_agree,
    consumer_start_positions,
    save_consumer_is_persisted,
    delete_consumer_forgets_it,
    purge_empties_the_stream_and_seqs_go_on,
    retention_by_max_entries,
    retention_by_max_age,
    retention_by_max_bytes,
    entry_bytes_count_utf8_bytes_across_restart,
    sessions_are_taken_once_and_expire,
    recovery_log_is_bounded_by_max_events,
    recovery_offsets_keep_increasing_after_every_event_expired,
    too_large_entries_are_refused_whole,
    invalid_names_are_refused,
    stream_tails_share_one_memory_budget,
    recovery_events_past_the_memory_budget_are_read_from_disk,
    recovery_events_not_yet_on_disk_are_dropped_past_the_memory_budget,
    recovery_log_is_bounded_by_bytes,
    max_disk_bytes_refuses_publishes_whole,
    max_streams_refuses_new_streams_but_not_dead_letter_streams,
    discard_new_refuses_publishes_past_the_stream_limits,
    max_consumers_refuses_new_consumers_only,
);

async fn publish_assigns_increasing_seqs_from_one(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    for want in 1..=3 {
        let a = store
            .publish_one("orders", new_entry("created", "{\"n\":1}", None))
            .await
            .unwrap();
        assert_eq!(a, fresh(want));
    }
    let batch = store
        .publish(
            "orders",
            vec![
                new_entry("a", "1", None),
                new_entry("b", "2", None),
                new_entry("c", "3", Some("m-c")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(seqs(&batch), [(4, false), (5, false), (6, false)]);

    let info = store.stream("orders").unwrap();
    assert_eq!((info.first_seq, info.last_seq, info.entries), (1, 6, 6));
    let stored = store.read("orders", 1, 100).await.unwrap();
    assert_eq!(seq_list(&stored), [1, 2, 3, 4, 5, 6]);
    assert_eq!(info.bytes, stored.iter().map(Entry::size).sum::<u64>());
    let last = &stored[5];
    assert_eq!(
        (last.event.as_str(), &last.data[..], last.id.as_deref()),
        ("c", &b"3"[..], Some("m-c"))
    );
    assert!(stored.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));

    let store = h.restart(store).await;
    let a = store
        .publish_one("orders", new_entry("d", "4", None))
        .await
        .unwrap();
    assert_eq!(a, fresh(7), "a restart goes on from the last seq");
}

async fn publish_is_confirmed_only_after_commit(kind: Kind) {
    let h = Harness::faulty(kind, StoreOptions::default());
    let store = h.open();
    store
        .publish_one("s", new_entry("e", "1", None))
        .await
        .unwrap();
    h.faults.hold_only(|op| matches!(op, Op::Append { .. }));
    let publish = spawn_publish(&store, "2");
    eventually("the publish's commit is held", || {
        h.faults.commits.waiting.load(Ordering::SeqCst) == 1
    })
    .await;
    // Give an early answer every chance to arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!publish.is_finished(), "answered before its commit");
    assert_eq!(store.stream("s").unwrap().last_seq, 1);
    assert_eq!(seq_list(&store.read("s", 1, 10).await.unwrap()), [1]);

    h.faults.release();
    assert_eq!(publish.await.unwrap().unwrap(), fresh(2));
    assert!(h.faults.committed.load(Ordering::SeqCst) >= 2);
    assert_eq!(store.stream("s").unwrap().last_seq, 2);
    assert_eq!(seq_list(&store.read("s", 1, 10).await.unwrap()), [1, 2]);
}

/// Publishes one entry with `data` to stream `s` in a task of its own, to watch it wait.
fn spawn_publish(
    store: &Store,
    data: &str,
) -> tokio::task::JoinHandle<Result<Appended, StoreError>> {
    let (store, entry) = (store.clone(), new_entry("e", data, None));
    tokio::spawn(async move { store.publish_one("s", entry).await })
}

/// The next batch is committed while the one before waits for its fsync, and nobody sees or
/// hears of an entry before it is durable: not its publisher, not a reader of the tail or of the
/// disk, not a watch. Run with the default tail, and with no tail at all, where every read goes
/// to the backend, which holds the committed entries already.
async fn entries_are_seen_only_once_durable(kind: Kind) {
    seen_only_once_durable(kind, StoreOptions::default()).await;
    let no_tail = StoreOptions {
        tail_memory_bytes: 0,
        ..StoreOptions::default()
    };
    seen_only_once_durable(kind, no_tail).await;
}

async fn seen_only_once_durable(kind: Kind, options: StoreOptions) {
    let h = Harness::faulty(kind, options);
    let store = h.open();
    store
        .publish_one("s", new_entry("e", "1", None))
        .await
        .unwrap();
    let mut watch = store.watch("s").unwrap();
    assert_eq!(*watch.borrow_and_update(), 1);
    h.faults.durable.hold();
    let committed = h.faults.committed.load(Ordering::SeqCst);
    let first = spawn_publish(&store, "2");
    eventually("the first batch waits for its fsync", || {
        h.faults.durable.waiting.load(Ordering::SeqCst) == 1
    })
    .await;
    // The next batch is committed meanwhile: the fsync no longer holds up the writer.
    let second = spawn_publish(&store, "3");
    eventually(
        "the second batch is committed during the first fsync",
        || h.faults.committed.load(Ordering::SeqCst) >= committed + 2,
    )
    .await;
    // Give an early answer every chance to arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!first.is_finished(), "answered before its fsync");
    assert!(!second.is_finished(), "answered before its fsync");
    assert!(
        !watch.has_changed().unwrap(),
        "watch moved before the fsync"
    );
    assert_eq!(seq_list(&store.read("s", 1, 10).await.unwrap()), [1]);
    assert_eq!(
        seq_list(&store.read("s", 2, 10).await.unwrap()),
        Vec::<Seq>::new()
    );

    h.faults.durable.release();
    assert_eq!(first.await.unwrap().unwrap(), fresh(2));
    assert_eq!(second.await.unwrap().unwrap(), fresh(3));
    assert_eq!(*watch.borrow_and_update(), 3);
    assert_eq!(seq_list(&store.read("s", 1, 10).await.unwrap()), [1, 2, 3]);
}

/// An fsync that fails answers the publishes it covered with the error (their outcome is not
/// known), and the stream goes on: later publishes are answered, and readers get every entry in
/// order from the tail or the disk.
async fn a_failed_fsync_is_answered_and_the_stream_goes_on(kind: Kind) {
    let h = Harness::faulty(kind, StoreOptions::default());
    let store = h.open();
    store
        .publish_one("s", new_entry("e", "1", None))
        .await
        .unwrap();
    h.faults.fail_durable.store(true, Ordering::SeqCst);
    let refused = store.publish_one("s", new_entry("e", "2", None)).await;
    assert!(matches!(refused, Err(StoreError::Io(_))), "{refused:?}");
    h.faults.fail_durable.store(false, Ordering::SeqCst);
    assert_eq!(
        store
            .publish_one("s", new_entry("e", "3", None))
            .await
            .unwrap(),
        fresh(3)
    );
    let mut read = Vec::new();
    let mut from = 1;
    while let Some(last) = store.read("s", from, 1).await.unwrap().pop() {
        from = last.seq + 1;
        read.push(last.seq);
    }
    assert_eq!(read, [1, 2, 3], "every committed entry, in order");
}

async fn watch_sees_the_last_committed_seq(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    assert!(store.watch("w").is_none(), "no watch on a missing stream");
    store
        .create_stream("w", StreamConfig::default())
        .await
        .unwrap();
    let mut watch = store.watch("w").unwrap();
    assert_eq!(*watch.borrow_and_update(), 0);

    let three = (1..=3)
        .map(|i| new_entry("e", &i.to_string(), None))
        .collect();
    store.publish("w", three).await.unwrap();
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 3);

    let waiter = tokio::spawn(async move {
        watch.changed().await.unwrap();
        *watch.borrow_and_update()
    });
    store
        .publish_one("w", new_entry("e", "4", None))
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap(), 4);

    let store = h.restart(store).await;
    assert_eq!(*store.watch("w").unwrap().borrow(), 4);
}

async fn duplicate_ids_answer_the_original_seq(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let publish = |e| {
        let store = store.clone();
        async move { store.publish_one("d", e).await.unwrap() }
    };
    assert_eq!(publish(new_entry("e", "first", Some("m1"))).await, fresh(1));
    assert_eq!(publish(new_entry("e", "no id", None)).await, fresh(2));
    assert_eq!(
        publish(new_entry("e", "retry", Some("m1"))).await,
        duplicate_of(1)
    );
    assert_eq!(store.stream("d").unwrap().entries, 2);

    // Within one batch: the first occurrence is stored, the others answer its seq.
    let batch = store
        .publish(
            "d",
            vec![
                new_entry("e", "x1", Some("x")),
                new_entry("e", "x2", Some("x")),
                new_entry("e", "y1", Some("y")),
                new_entry("e", "x3", Some("x")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(seqs(&batch), [(3, false), (3, true), (4, false), (3, true)]);

    let stored = store.read("d", 1, 100).await.unwrap();
    assert_eq!(seq_list(&stored), [1, 2, 3, 4]);
    assert_eq!(&stored[0].data[..], b"first", "the original is kept");
    assert_eq!(&stored[2].data[..], b"x1");
    let info = store.stream("d").unwrap();
    assert_eq!((info.entries, info.last_seq), (4, 4));

    let store = h.restart(store).await;
    let publish = |e| {
        let store = store.clone();
        async move { store.publish_one("d", e).await.unwrap() }
    };
    assert_eq!(
        publish(new_entry("e", "again", Some("m1"))).await,
        duplicate_of(1)
    );
    assert_eq!(
        publish(new_entry("e", "again", Some("y"))).await,
        duplicate_of(4)
    );
    assert_eq!(publish(new_entry("e", "new", Some("z"))).await, fresh(5));
    assert_eq!(store.stream("d").unwrap().entries, 5);
}

async fn duplicate_ids_expire_with_the_dedupe_window(kind: Kind) {
    let h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let config = StreamConfig {
        dedupe_window_ms: 100,
        ..Default::default()
    };
    store.create_stream("short", config).await.unwrap();
    let stored_at = now_ms();
    let first = store
        .publish_one("short", new_entry("e", "1", Some("w")))
        .await
        .unwrap();
    assert_eq!(first, fresh(1));
    eventually("the dedupe window has passed", || {
        now_ms() > stored_at + 150
    })
    .await;
    let again = store
        .publish_one("short", new_entry("e", "2", Some("w")))
        .await
        .unwrap();
    assert_eq!(again, fresh(2), "an id older than the window is new");
    let retry = store
        .publish_one("short", new_entry("e", "3", Some("w")))
        .await
        .unwrap();
    assert_eq!(
        retry,
        duplicate_of(2),
        "and is remembered from its new entry on"
    );
}

/// Regression: ids were loaded at start-up only from the last ten minutes (or the default
/// stream's window), so after a restart a stream with a longer window stored a retry twice.
async fn dedupe_after_restart_honours_a_stream_window_longer_than_ten_minutes(kind: Kind) {
    let h = Harness::new(kind, StoreOptions::default());
    let config = StreamConfig {
        dedupe_window_ms: 3_600_000,
        ..Default::default()
    };
    let twenty_minutes_ago = now_ms() - 20 * 60 * 1000;
    h.backend()
        .commit(&[
            Op::PutStream {
                id: 3,
                name: "hourly".into(),
                config,
            },
            Op::Append {
                stream: 3,
                entry: Entry {
                    seq: 1,
                    ts_ms: twenty_minutes_ago,
                    id: Some("old".into()),
                    event: "e".into(),
                    data: Bytes::from_static(b"1"),
                },
            },
        ])
        .unwrap();
    let store = h.open();
    let retry = store
        .publish_one("hourly", new_entry("e", "1", Some("old")))
        .await
        .unwrap();
    assert_eq!(retry, duplicate_of(1));
    assert_eq!(store.stream("hourly").unwrap().entries, 1);
}

/// Regression: an id stayed a duplicate of its purged entry until the process restarted, and
/// was new after it (ids are rebuilt from the entries kept). It is now new in both cases.
async fn purged_message_ids_are_new_again_with_or_without_restart(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let e = || new_entry("e", "1", Some("p"));
    assert_eq!(store.publish_one("s", e()).await.unwrap(), fresh(1));
    store.purge("s").await.unwrap();
    assert_eq!(store.publish_one("s", e()).await.unwrap(), fresh(2));
    store.purge("s").await.unwrap();
    let store = h.restart(store).await;
    assert_eq!(store.publish_one("s", e()).await.unwrap(), fresh(3));
    assert_eq!(store.publish_one("s", e()).await.unwrap(), duplicate_of(3));
}

async fn auto_creation_on_uses_the_default_stream_config(kind: Kind) {
    let default_stream = StreamConfig {
        max_entries: 50,
        dedupe_window_ms: 5000,
        ..Default::default()
    };
    let options = StoreOptions {
        default_stream: default_stream.clone(),
        ..Default::default()
    };
    let mut h = Harness::new(kind, options);
    let store = h.open();
    assert!(store.stream("auto").is_none());
    store
        .publish_one("auto", new_entry("e", "1", None))
        .await
        .unwrap();
    assert_eq!(store.stream("auto").unwrap().config, default_stream);
    let c = store
        .consumer_or_create("by-consumer", "c", ConsumerConfig::default())
        .await
        .unwrap();
    assert_eq!(c.state.next, 1);
    let info = store.stream("by-consumer").unwrap();
    assert_eq!(
        (info.config, info.consumers),
        (default_stream, vec!["c".into()])
    );

    let store = h.restart(store).await;
    let names: Vec<String> = store.streams().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["auto", "by-consumer"]);
}

async fn auto_creation_off_answers_stream_not_found(kind: Kind) {
    let options = StoreOptions {
        auto_create: false,
        ..Default::default()
    };
    let mut h = Harness::new(kind, options);
    let store = h.open();
    let err = store
        .publish_one("nope", new_entry("e", "1", None))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::StreamNotFound("nope".into()));
    assert_eq!(err.code(), "stream_not_found");
    let err = store
        .consumer_or_create("nope", "c", ConsumerConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::StreamNotFound("nope".into()));
    assert_eq!(
        store.purge("nope").await.unwrap_err(),
        StoreError::StreamNotFound("nope".into())
    );
    assert_eq!(
        store.read("nope", 1, 10).await.unwrap_err(),
        StoreError::StreamNotFound("nope".into())
    );
    assert!(store.stream("nope").is_none());
    assert!(store.streams().is_empty());

    store
        .create_stream("made", StreamConfig::default())
        .await
        .unwrap();
    assert_eq!(
        store
            .publish_one("made", new_entry("e", "1", None))
            .await
            .unwrap(),
        fresh(1)
    );
    let store = h.restart(store).await;
    assert!(store.stream("nope").is_none());
    assert_eq!(store.stream("made").unwrap().last_seq, 1);
}

async fn create_stream_replaces_the_config(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let a = StreamConfig {
        max_entries: 10,
        ..Default::default()
    };
    let info = store.create_stream("c", a.clone()).await.unwrap();
    assert_eq!(info.config, a);
    assert_eq!((info.first_seq, info.last_seq, info.entries), (1, 0, 0));
    store
        .publish(
            "c",
            vec![new_entry("e", "1", None), new_entry("e", "2", None)],
        )
        .await
        .unwrap();

    let b = StreamConfig {
        max_age_ms: 60_000,
        dedupe_window_ms: 1000,
        dead_letter: Some("c.dead".into()),
        ..Default::default()
    };
    let info = store.create_stream("c", b.clone()).await.unwrap();
    assert_eq!(info.config, b);
    assert_eq!((info.last_seq, info.entries), (2, 2), "entries are kept");
    assert_eq!(store.streams().len(), 1);

    let store = h.restart(store).await;
    let info = store.stream("c").unwrap();
    assert_eq!((info.config, info.entries), (b, 2));
}

async fn reads_from_tail_and_backend_agree(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    for batch in 0..3 {
        let entries = (0..4)
            .map(|i| {
                let n = batch * 4 + i;
                let id = (n % 2 == 0).then(|| format!("id-{n}"));
                new_entry(
                    if n % 3 == 0 { "tick" } else { "tück" },
                    &format!("[{n}]"),
                    id.as_deref(),
                )
            })
            .collect();
        store.publish("r", entries).await.unwrap();
    }
    let id = stream_id(h.backend(), "r");
    let direct = h.backend().read(id, 1, 100).unwrap();
    assert_eq!(seq_list(&direct), (1..=12).collect::<Vec<_>>());
    // From 1 on the store answers from its tail; from 0 (before the tail) from the backend.
    assert_eq!(store.read("r", 1, 100).await.unwrap(), direct);
    assert_eq!(store.read("r", 0, 100).await.unwrap(), direct);
    for from in 0..=14 {
        for limit in [0, 1, 3, 100] {
            let want: Vec<Entry> = direct
                .iter()
                .filter(|e| e.seq >= from)
                .take(limit)
                .cloned()
                .collect();
            assert_eq!(
                store.read("r", from, limit).await.unwrap(),
                want,
                "from {from} limit {limit}"
            );
        }
    }

    let store = h.restart(store).await;
    assert_eq!(
        store.read("r", 1, 100).await.unwrap(),
        direct,
        "after a restart, from the backend"
    );
    store
        .publish_one("r", new_entry("e", "13", None))
        .await
        .unwrap();
    let tail = store.read("r", 13, 10).await.unwrap();
    let id = stream_id(h.backend(), "r");
    assert_eq!(tail, h.backend().read(id, 13, 10).unwrap());
    assert_eq!(
        seq_list(&store.read("r", 11, 10).await.unwrap()),
        [11, 12, 13]
    );
}

async fn consumer_start_positions(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let five = (1..=5)
        .map(|i| new_entry("e", &i.to_string(), None))
        .collect();
    store.publish("c", five).await.unwrap();
    store.purge("c").await.unwrap();
    let three = (6..=8)
        .map(|i| new_entry("e", &i.to_string(), None))
        .collect();
    store.publish("c", three).await.unwrap();
    assert_eq!(store.stream("c").unwrap().first_seq, 6);

    let start = |start| ConsumerConfig {
        start,
        ..Default::default()
    };
    let next = |name: &'static str, config: ConsumerConfig| {
        let store = store.clone();
        async move {
            store
                .consumer_or_create("c", name, config)
                .await
                .unwrap()
                .state
                .next
        }
    };
    assert_eq!(next("new", start(StartPosition::New)).await, 9);
    assert_eq!(next("all", start(StartPosition::All)).await, 6);
    assert_eq!(next("seq7", start(StartPosition::Seq(7))).await, 7);
    assert_eq!(
        next("seq2", start(StartPosition::Seq(2))).await,
        6,
        "not before the first kept"
    );

    // An existing consumer is returned as it is, whatever config is asked for.
    let again = store
        .consumer_or_create(
            "c",
            "new",
            ConsumerConfig {
                ack_wait_ms: 1,
                start: StartPosition::All,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(again, store.consumer("c", "new").unwrap());
    assert_eq!(
        (again.state.next, again.config),
        (9, start(StartPosition::New))
    );

    let created = store
        .consumer_or_create("fresh", "c", start(StartPosition::All))
        .await
        .unwrap();
    assert_eq!(
        created.state,
        ConsumerState {
            next: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        store.stream("c").unwrap().consumers,
        ["all", "new", "seq2", "seq7"]
    );

    let store = h.restart(store).await;
    let all = store.consumer("c", "all").unwrap();
    assert_eq!((all.state.next, all.config), (6, start(StartPosition::All)));
    assert_eq!(store.consumer("c", "new").unwrap().state.next, 9);
}

async fn save_consumer_is_persisted(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let config = ConsumerConfig {
        ack_wait_ms: 1500,
        max_deliver: 3,
        max_ack_pending: 10,
        start: StartPosition::All,
    };
    store
        .consumer_or_create("s", "c", config.clone())
        .await
        .unwrap();
    let state = ConsumerState {
        next: 5,
        pending: BTreeMap::from([(3, 2), (4, 1)]),
        redelivered: 1,
        dead_lettered: 2,
    };
    store.save_consumer("s", "c", state.clone());
    let want = ConsumerRecord {
        config,
        state: state.clone(),
    };
    assert_eq!(store.consumer("s", "c").unwrap(), want, "visible at once");

    // Persisted by the writer on its own, without a flush.
    let id = stream_id(h.backend(), "s");
    eventually("the position reaches the backend", || {
        h.backend()
            .load(0)
            .unwrap()
            .consumers
            .contains(&(id, "c".into(), want.clone()))
    })
    .await;

    store.save_consumer("s", "ghost", state);
    assert!(
        store.consumer("s", "ghost").is_none(),
        "saving does not create"
    );

    let store = h.restart(store).await;
    assert_eq!(store.consumer("s", "c").unwrap(), want);
    assert!(store.consumer("s", "ghost").is_none());
    assert_eq!(store.consumers("s"), [("c".to_owned(), want)]);
}

async fn delete_consumer_forgets_it(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    for name in ["a", "b"] {
        store
            .consumer_or_create("s", name, ConsumerConfig::default())
            .await
            .unwrap();
    }
    store.save_consumer(
        "s",
        "a",
        ConsumerState {
            next: 9,
            ..Default::default()
        },
    );
    assert!(store.delete_consumer("s", "a").await.unwrap());
    assert!(!store.delete_consumer("s", "a").await.unwrap());
    assert!(!store.delete_consumer("missing", "a").await.unwrap());
    assert!(store.consumer("s", "a").is_none());
    assert_eq!(store.stream("s").unwrap().consumers, ["b"]);

    let store = h.restart(store).await;
    assert!(store.consumer("s", "a").is_none());
    let names: Vec<String> = store.consumers("s").into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["b"]);
    let again = store
        .consumer_or_create("s", "a", ConsumerConfig::default())
        .await
        .unwrap();
    assert_eq!(
        again.state.next, 1,
        "a new consumer, not the deleted one's position"
    );
}

async fn purge_empties_the_stream_and_seqs_go_on(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let five = (1..=5)
        .map(|i| new_entry("e", &i.to_string(), None))
        .collect();
    store.publish("p", five).await.unwrap();
    assert_eq!(store.purge("p").await.unwrap(), 5);
    let info = store.stream("p").unwrap();
    assert_eq!(
        (info.entries, info.bytes, info.first_seq, info.last_seq),
        (0, 0, 6, 5)
    );
    assert!(store.read("p", 1, 10).await.unwrap().is_empty());
    assert!(store.read("p", 0, 10).await.unwrap().is_empty());
    assert_eq!(*store.watch("p").unwrap().borrow(), 5);

    let a = store
        .publish_one("p", new_entry("e", "6", None))
        .await
        .unwrap();
    assert_eq!(a, fresh(6));
    assert_eq!(store.purge("p").await.unwrap(), 1);
    assert_eq!(store.purge("p").await.unwrap(), 0);

    let store = h.restart(store).await;
    let info = store.stream("p").unwrap();
    assert_eq!((info.entries, info.first_seq, info.last_seq), (0, 7, 6));
    let a = store
        .publish_one("p", new_entry("e", "7", None))
        .await
        .unwrap();
    assert_eq!(a, fresh(7));
    let info = store.stream("p").unwrap();
    assert_eq!((info.entries, info.first_seq, info.last_seq), (1, 7, 7));
    assert_eq!(seq_list(&store.read("p", 0, 10).await.unwrap()), [7]);
    assert_eq!(
        store.purge("missing").await.unwrap_err(),
        StoreError::StreamNotFound("missing".into())
    );
}

async fn retention_by_max_entries(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let config = StreamConfig {
        max_entries: 3,
        ..Default::default()
    };
    store.create_stream("r", config).await.unwrap();
    let ten = (1..=10)
        .map(|i| new_entry("e", &i.to_string(), None))
        .collect();
    store.publish("r", ten).await.unwrap();
    eventually("retention keeps 3 entries", || {
        store.stream("r").unwrap().entries == 3
    })
    .await;
    let kept = store.read("r", 0, 100).await.unwrap();
    assert_eq!(seq_list(&kept), [8, 9, 10]);
    let info = store.stream("r").unwrap();
    assert_eq!((info.first_seq, info.last_seq), (8, 10));
    assert_eq!(info.bytes, kept.iter().map(Entry::size).sum::<u64>());

    let store = h.restart(store).await;
    let after = store.stream("r").unwrap();
    assert_eq!(after, info);
    assert_eq!(store.read("r", 0, 100).await.unwrap(), kept);
}

async fn retention_by_max_age(kind: Kind) {
    let h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let config = StreamConfig {
        max_age_ms: 300,
        ..Default::default()
    };
    store.create_stream("age", config).await.unwrap();
    let three = (1..=3)
        .map(|i| new_entry("e", &i.to_string(), None))
        .collect();
    store.publish("age", three).await.unwrap();
    eventually("old entries are removed", || {
        store.stream("age").unwrap().entries == 0
    })
    .await;
    let info = store.stream("age").unwrap();
    assert_eq!((info.first_seq, info.last_seq, info.bytes), (4, 3, 0));
    assert!(store.read("age", 0, 10).await.unwrap().is_empty());
    let a = store
        .publish_one("age", new_entry("e", "4", None))
        .await
        .unwrap();
    assert_eq!(a, fresh(4));
    assert_eq!(seq_list(&store.read("age", 0, 10).await.unwrap()), [4]);
}

async fn retention_by_max_bytes(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let config = StreamConfig {
        max_bytes: 35,
        ..Default::default()
    };
    store.create_stream("size", config).await.unwrap();
    // Each entry counts 10 bytes: event 1, data 9.
    let ten = (1..=10)
        .map(|_| new_entry("e", "123456789", None))
        .collect();
    store.publish("size", ten).await.unwrap();
    eventually("retention keeps 35 bytes at most", || {
        store.stream("size").unwrap().bytes <= 35
    })
    .await;
    let info = store.stream("size").unwrap();
    assert_eq!((info.entries, info.bytes, info.first_seq), (3, 30, 8));
    let store = h.restart(store).await;
    assert_eq!(store.stream("size").unwrap(), info);
}

/// Regression: SQLite counted event names and message ids in characters (`length()` of TEXT),
/// the store in bytes, so a stream's byte count changed across a restart and retention by size
/// kept more than `max_bytes` of non-ASCII entries.
async fn entry_bytes_count_utf8_bytes_across_restart(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    // 10 bytes (5 characters) of event, 1 of data, 3 (2 characters) of id: 14 bytes.
    let entry = |i: usize| new_entry("üüüüü", "1", Some(&format!("ï{i}")));
    let four = (0..4).map(entry).collect();
    store.publish("u", four).await.unwrap();
    let info = store.stream("u").unwrap();
    assert_eq!(info.bytes, 4 * 14);

    let store = h.restart(store).await;
    assert_eq!(store.stream("u").unwrap().bytes, 4 * 14);

    let config = StreamConfig {
        max_bytes: 2 * 14,
        ..Default::default()
    };
    store.create_stream("u", config).await.unwrap();
    eventually("retention keeps 28 bytes at most", || {
        store.stream("u").unwrap().bytes <= 28
    })
    .await;
    let info = store.stream("u").unwrap();
    assert_eq!((info.entries, info.first_seq), (2, 3));
    let store = h.restart(store).await;
    assert_eq!(store.stream("u").unwrap(), info);
}

fn session(sid: &str, expires_ms: u64) -> SessionRecord {
    SessionRecord {
        sid: sid.into(),
        nsp: "/chat".into(),
        rooms: vec!["r1".into(), "r2".into()],
        data: serde_json::json!({"user": {"id": 7, "name": "ünï"}}),
        since: 3,
        subscriptions: vec![("orders".into(), "c".into())],
        expires_ms,
        sub: None,
    }
}

async fn sessions_are_taken_once_and_expire(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let later = now_ms() + 60_000;
    store.put_session("p1", session("s1", later));
    store.put_session("p2", session("s2", now_ms() - 1000));
    assert_eq!(store.take_session("p2"), None, "expired");
    assert_eq!(store.take_session("p1"), Some(session("s1", later)));
    assert_eq!(store.take_session("p1"), None, "taken once");
    assert_eq!(store.take_session("unknown"), None);

    store.put_session("p3", session("s3", later));
    store.put_session("p4", session("s4", later));
    assert_eq!(store.take_session("p4"), Some(session("s4", later)));
    let soon = now_ms() + 150;
    store.put_session("p5", session("s5", soon));

    let store = h.restart(store).await;
    assert_eq!(store.take_session("p1"), None);
    assert_eq!(store.take_session("p4"), None, "taken before the restart");
    assert_eq!(store.take_session("p3"), Some(session("s3", later)));
    eventually("p5 expires", || now_ms() > soon).await;
    assert_eq!(store.take_session("p5"), None);

    let store = h.restart(store).await;
    assert_eq!(store.take_session("p3"), None);
}

fn log(store: &Store, nsp: &str, n: usize) -> u64 {
    store.log_recoverable(
        nsp,
        vec![format!("room{n}")],
        vec!["muted".into()],
        Bytes::from(format!("[\"ev\",{n}]")),
    )
}

fn offsets(events: Option<Vec<RecoveryEvent>>) -> Option<Vec<u64>> {
    events.map(|v| v.iter().map(|e| e.offset).collect())
}

/// Regression (the restart half): a restart loaded every event still within the recovery
/// window, past `max_recovery_events`, so memory held more than the bound and a client that
/// was refused recovery before the restart was accepted after it.
async fn recovery_log_is_bounded_by_max_events(kind: Kind) {
    let options = StoreOptions {
        max_recovery_events: 3,
        ..Default::default()
    };
    let mut h = Harness::new(kind, options);
    let store = h.open();
    let b = store.recovery_offset();
    assert_eq!(log(&store, "/", 1), b);
    assert_eq!(log(&store, "/chat", 2), b + 1);
    assert_eq!(log(&store, "/", 3), b + 2);
    store.flush().await.unwrap();
    assert_eq!(store.recovery_offset(), b + 3);
    assert_eq!(
        offsets(store.recoverable_after("/", b - 1).await),
        Some(vec![b, b + 2])
    );
    assert_eq!(
        offsets(store.recoverable_after("/chat", b - 1).await),
        Some(vec![b + 1])
    );
    assert_eq!(
        offsets(store.recoverable_after("/", b).await),
        Some(vec![b + 2])
    );
    assert_eq!(
        offsets(store.recoverable_after("/", b + 2).await),
        Some(vec![])
    );
    let third = store.recoverable_after("/", b + 1).await.unwrap().remove(0);
    assert_eq!(
        (third.rooms, third.except, &third.data[..]),
        (
            vec!["room3".to_owned()],
            vec!["muted".to_owned()],
            &b"[\"ev\",3]"[..]
        )
    );

    assert_eq!(log(&store, "/", 4), b + 3);
    assert_eq!(log(&store, "/", 5), b + 4);
    store.flush().await.unwrap();
    assert_eq!(
        store.recoverable_after("/", b - 1).await,
        None,
        "the first two were dropped"
    );
    assert_eq!(
        store.recoverable_after("/", b).await,
        None,
        "the second was dropped"
    );
    let kept = store.recoverable_after("/", b + 1).await;
    assert_eq!(offsets(kept.clone()), Some(vec![b + 2, b + 3, b + 4]));

    let store = h.restart(store).await;
    assert!(store.recovery_offset() > b + 4);
    assert_eq!(store.recoverable_after("/", b - 1).await, None);
    assert_eq!(store.recoverable_after("/", b).await, None);
    assert_eq!(store.recoverable_after("/", b + 1).await, kept);
}

/// Offsets must grow across restarts even when every event has expired from the disk: a
/// client holding an old offset must not be handed (or skip) new events under reused numbers.
async fn recovery_offsets_keep_increasing_after_every_event_expired(kind: Kind) {
    let options = StoreOptions {
        recovery_window: Duration::from_millis(100),
        ..Default::default()
    };
    let mut h = Harness::new(kind, options);
    let store = h.open();
    let first = log(&store, "/", 1);
    let second = log(&store, "/", 2);
    assert_eq!(second, first + 1);
    store.flush().await.unwrap();
    eventually("the events expire on disk", || {
        h.backend().load(0).unwrap().recovery.is_empty()
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.recoverable_after("/", first).await.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store forgets expired events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let store = h.restart(store).await;
    assert!(store.recovery_offset() > second);
    let third = log(&store, "/", 3);
    assert!(third > second);
    assert_eq!(
        offsets(store.recoverable_after("/", second).await),
        Some(vec![third])
    );
}

async fn too_large_entries_are_refused_whole(kind: Kind) {
    let options = StoreOptions {
        max_entry_bytes: 10,
        ..Default::default()
    };
    let h = Harness::new(kind, options);
    let store = h.open();
    let fits = new_entry("ev", "12345678", None);
    assert_eq!(
        store.publish_one("t", fits.clone()).await.unwrap(),
        fresh(1)
    );
    let err = store
        .publish_one("t", new_entry("ev", "123456789", None))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::TooLarge(11, 10));
    assert_eq!(err.code(), "too_large");
    let err = store
        .publish_one("t", new_entry("ev", "1234567", Some("ab")))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::TooLarge(11, 10), "the id counts");
    let err = store
        .publish("t", vec![fits.clone(), new_entry("ev", "123456789", None)])
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::TooLarge(11, 10));
    assert_eq!(
        store.stream("t").unwrap().last_seq,
        1,
        "nothing of the batch is kept"
    );
    store
        .publish_one("t2", new_entry("ev", "123456789", None))
        .await
        .unwrap_err();
    assert!(
        store.stream("t2").is_none(),
        "a refused publish creates nothing"
    );
}

async fn invalid_names_are_refused(kind: Kind) {
    let mut h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let long = "x".repeat(129);
    for bad in ["", "a/b", "line\nbreak", "del\u{7f}", long.as_str()] {
        let invalid = |r: Result<_, StoreError>| {
            assert!(
                matches!(&r, Err(StoreError::InvalidName(n, _)) if n == bad),
                "{bad:?} gave {r:?}"
            );
        };
        invalid(
            store
                .publish_one(bad, new_entry("e", "1", None))
                .await
                .map(|_| ()),
        );
        invalid(
            store
                .create_stream(bad, StreamConfig::default())
                .await
                .map(|_| ()),
        );
        invalid(
            store
                .consumer_or_create(bad, "c", ConsumerConfig::default())
                .await
                .map(|_| ()),
        );
        invalid(
            store
                .consumer_or_create("ok", bad, ConsumerConfig::default())
                .await
                .map(|_| ()),
        );
        assert!(store.stream(bad).is_none());
        assert_eq!(
            StoreError::InvalidName(bad.into(), "").code(),
            "invalid_name"
        );
    }
    assert!(store.streams().is_empty(), "nothing was created");

    let longest = "x".repeat(128);
    for good in [longest.as_str(), "ünï.code-ok", "with space"] {
        store
            .publish_one(good, new_entry("e", "1", None))
            .await
            .unwrap();
    }
    let store = h.restart(store).await;
    assert_eq!(store.streams().len(), 3);
    assert_eq!(store.stream(&longest).unwrap().last_seq, 1);
}

/// Regression: each stream kept up to 16 MB of recent entries in memory with no bound across
/// streams, so a client publishing to many auto-created streams grew the hub without limit.
async fn stream_tails_share_one_memory_budget(kind: Kind) {
    let data = "x".repeat(1000);
    let options = StoreOptions {
        tail_memory_bytes: 20_000,
        ..Default::default()
    };
    let mut h = Harness::new(kind, options);
    let store = h.open();
    for round in 0..10 {
        for s in 0..5 {
            let id = format!("m{round}-{s}");
            store
                .publish_one(&format!("s{s}"), new_entry("ev", &data, Some(&id)))
                .await
                .unwrap();
            let used = store.memory_use();
            assert!(used.tail_bytes <= 20_000, "tails hold {used:?}");
        }
    }
    let used = store.memory_use();
    assert!(used.tail_entries > 0 && used.tail_entries < 50, "{used:?}");
    // Whatever left memory is read from disk: nothing is lost, order is kept.
    for s in 0..5 {
        let entries = store.read(&format!("s{s}"), 1, 100).await.unwrap();
        assert_eq!(seq_list(&entries), (1..=10).collect::<Vec<_>>());
        assert!(entries.iter().all(|e| e.data.len() == 1000));
        assert_eq!(entries[9].id.as_deref(), Some(format!("m9-{s}").as_str()));
    }
    let store = h.restart(store).await;
    assert_eq!(store.memory_use().tail_entries, 0, "tails start empty");
    store
        .publish_one("s0", new_entry("ev", &data, None))
        .await
        .unwrap();
    assert_eq!(seq_list(&store.read("s0", 1, 100).await.unwrap()).len(), 11);
}

fn logged_size(store: &Store) -> u64 {
    let before = store.memory_use().recovery_bytes;
    log(store, "/probe", 0);
    store.memory_use().recovery_bytes - before
}

/// A memory budget below the recovery window's events: the older ones are read back from disk
/// when a client returns for them, also after a restart.
async fn recovery_events_past_the_memory_budget_are_read_from_disk(kind: Kind) {
    let probe = Harness::new(kind, StoreOptions::default()).open();
    let size = logged_size(&probe);
    let options = StoreOptions {
        recovery_memory_bytes: 3 * size,
        ..Default::default()
    };
    let mut h = Harness::new(kind, options);
    let store = h.open();
    let b = store.recovery_offset();
    // Committed as they come (events not yet on disk cannot leave memory; see the next test).
    for n in 0..10 {
        log(&store, "/", n);
        store.flush().await.unwrap();
    }
    let used = store.memory_use();
    assert!(used.recovery_events <= 3, "{used:?}");
    assert_eq!(used.recovery_kept, 10);
    let all: Vec<u64> = (b..b + 10).collect();
    assert_eq!(
        offsets(store.recoverable_after("/", b - 1).await),
        Some(all.clone())
    );
    assert_eq!(
        offsets(store.recoverable_after("/", b + 4).await),
        Some(all[5..].to_vec())
    );
    let from_disk = store.recoverable_after("/", b - 1).await.unwrap();
    assert_eq!(&from_disk[0].data[..], b"[\"ev\",0]");
    assert_eq!(from_disk[0].rooms, vec!["room0".to_owned()]);

    let store = h.restart(store).await;
    assert!(store.memory_use().recovery_events <= 3);
    assert_eq!(
        offsets(store.recoverable_after("/", b - 1).await),
        Some(all)
    );
}

/// Events the writer has not committed yet cannot leave memory for disk: past the budget they
/// are dropped, oldest first, and a client that missed them is not recovered (never given a
/// replay with a gap).
async fn recovery_events_not_yet_on_disk_are_dropped_past_the_memory_budget(kind: Kind) {
    let probe = Harness::new(kind, StoreOptions::default()).open();
    let size = logged_size(&probe);
    let options = StoreOptions {
        recovery_memory_bytes: 3 * size,
        ..Default::default()
    };
    let h = Harness::faulty(kind, options);
    h.faults.fail.store(true, Ordering::SeqCst);
    let store = h.open();
    let b = store.recovery_offset();
    for n in 0..10 {
        log(&store, "/", n);
    }
    assert!(store.memory_use().recovery_bytes <= 3 * size);
    assert_eq!(store.recoverable_after("/", b - 1).await, None);
    assert_eq!(store.recoverable_after("/", b + 5).await, None);
    assert_eq!(
        offsets(store.recoverable_after("/", b + 6).await),
        Some(vec![b + 7, b + 8, b + 9])
    );
}

async fn recovery_log_is_bounded_by_bytes(kind: Kind) {
    let probe = Harness::new(kind, StoreOptions::default()).open();
    let size = logged_size(&probe);
    let options = StoreOptions {
        max_recovery_bytes: 3 * size,
        ..Default::default()
    };
    let mut h = Harness::new(kind, options);
    let store = h.open();
    let b = store.recovery_offset();
    for n in 0..5 {
        log(&store, "/", n);
    }
    store.flush().await.unwrap();
    assert_eq!(store.recoverable_after("/", b).await, None);
    let kept = Some(vec![b + 2, b + 3, b + 4]);
    assert_eq!(offsets(store.recoverable_after("/", b + 1).await), kept);
    let store = h.restart(store).await;
    assert_eq!(store.recoverable_after("/", b).await, None);
    assert_eq!(offsets(store.recoverable_after("/", b + 1).await), kept);
}

async fn max_disk_bytes_refuses_publishes_whole(kind: Kind) {
    let options = StoreOptions {
        max_disk_bytes: 1000,
        ..Default::default()
    };
    let mut h = Harness::new(kind, options);
    let store = h.open();
    let big = "x".repeat(448);
    // 2 + 448 bytes each.
    store
        .publish_one("a", new_entry("ev", &big, None))
        .await
        .unwrap();
    store
        .publish_one("b", new_entry("ev", &big, None))
        .await
        .unwrap();
    let err = store
        .publish_one("a", new_entry("ev", &big, None))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StorageFull(_)), "{err:?}");
    assert_eq!(err.code(), "storage_full");
    let err = store
        .publish(
            "b",
            vec![new_entry("ev", "1", None), new_entry("ev", &big, None)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_full");
    assert_eq!(store.stream("b").unwrap().last_seq, 1, "refused whole");
    let err = store
        .publish_one("c", new_entry("ev", &big, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_full");
    assert!(
        store.stream("c").is_none(),
        "a refused publish creates nothing"
    );
    // What fits still goes in, and what was confirmed is all there.
    store
        .publish_one("a", new_entry("ev", "small", None))
        .await
        .unwrap();
    assert_eq!(seq_list(&store.read("a", 1, 10).await.unwrap()), [1, 2]);

    let store = h.restart(store).await;
    let err = store
        .publish_one("b", new_entry("ev", &big, None))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        "storage_full",
        "the quota counts what was there before"
    );
    store.purge("b").await.unwrap();
    store
        .publish_one("b", new_entry("ev", &big, None))
        .await
        .unwrap();
}

async fn max_streams_refuses_new_streams_but_not_dead_letter_streams(kind: Kind) {
    let options = StoreOptions {
        max_streams: 2,
        ..Default::default()
    };
    let mut h = Harness::new(kind, options);
    let store = h.open();
    store
        .publish_one("a", new_entry("ev", "1", None))
        .await
        .unwrap();
    store
        .create_stream("b", StreamConfig::default())
        .await
        .unwrap();
    let err = store
        .publish_one("c", new_entry("ev", "1", None))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::TooManyStreams(2));
    assert_eq!(err.code(), "too_many_streams");
    let err = store
        .create_stream("d", StreamConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "too_many_streams");
    let err = store
        .consumer_or_create("e", "c1", ConsumerConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "too_many_streams");
    store.create_dead_letter_stream("a.dlq").await.unwrap();
    store
        .publish_one("a.dlq", new_entry("ev", "1", None))
        .await
        .unwrap();
    // Existing streams keep working, and settings can still be changed.
    store
        .publish_one("b", new_entry("ev", "1", None))
        .await
        .unwrap();
    let config = StreamConfig {
        max_entries: 5,
        ..Default::default()
    };
    store.create_stream("a", config).await.unwrap();
    let store = h.restart(store).await;
    let err = store
        .publish_one("c", new_entry("ev", "1", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "too_many_streams");
    assert_eq!(store.streams().len(), 3);
}

async fn discard_new_refuses_publishes_past_the_stream_limits(kind: Kind) {
    let h = Harness::new(kind, StoreOptions::default());
    let store = h.open();
    let quota = StreamConfig {
        max_entries: 2,
        discard: Discard::New,
        ..Default::default()
    };
    store.create_stream("q", quota).await.unwrap();
    store
        .publish_one("q", new_entry("ev", "1", None))
        .await
        .unwrap();
    store
        .publish_one("q", new_entry("ev", "2", None))
        .await
        .unwrap();
    let err = store
        .publish_one("q", new_entry("ev", "3", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_full");
    let bytes = StreamConfig {
        max_bytes: 10,
        discard: Discard::New,
        ..Default::default()
    };
    store.create_stream("r", bytes).await.unwrap();
    store
        .publish_one("r", new_entry("ev", "123456", None))
        .await
        .unwrap();
    let err = store
        .publish_one("r", new_entry("ev", "123", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_full");
    // Retention runs every second: with discard = new it removes nothing confirmed.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    store.flush().await.unwrap();
    assert_eq!(seq_list(&store.read("q", 1, 10).await.unwrap()), [1, 2]);
    assert_eq!(seq_list(&store.read("r", 1, 10).await.unwrap()), [1]);
    // Lowering the limit of a discard = new stream removes nothing either.
    let lowered = StreamConfig {
        max_entries: 1,
        discard: Discard::New,
        ..Default::default()
    };
    store.create_stream("q", lowered).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    store.flush().await.unwrap();
    assert_eq!(seq_list(&store.read("q", 1, 10).await.unwrap()), [1, 2]);
}

async fn max_consumers_refuses_new_consumers_only(kind: Kind) {
    let options = StoreOptions {
        max_consumers: 2,
        ..Default::default()
    };
    let mut h = Harness::new(kind, options);
    let store = h.open();
    let c = ConsumerConfig::default();
    store.consumer_or_create("s", "a", c.clone()).await.unwrap();
    store.consumer_or_create("s", "b", c.clone()).await.unwrap();
    let err = store
        .consumer_or_create("s", "c", c.clone())
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::TooManyConsumers(2));
    assert_eq!(err.code(), "too_many_consumers");
    store.consumer_or_create("s", "a", c.clone()).await.unwrap();
    assert!(store.delete_consumer("s", "b").await.unwrap());
    store.consumer_or_create("s", "c", c.clone()).await.unwrap();
    let store = h.restart(store).await;
    let err = store.consumer_or_create("t", "d", c).await.unwrap_err();
    assert_eq!(err.code(), "too_many_consumers");
}
