//! The store against a model of what it promises, over random sequences of operations with
//! restarts and failed commits in between, on both backends.
//!
//! The model is a map of streams, each a map of kept entries and of consumers. Message ids are
//! duplicates while their entry is kept (the runs are far shorter than the dedupe window). A
//! failed commit changes nothing in the model: the store must answer `Io` and keep no trace.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use common::*;
use courier_store::*;
use proptest::prelude::*;

const STREAMS: [&str; 2] = ["alpha", "βeta"];
const CONSUMERS: [&str; 3] = ["c0", "c1", "ç2"];
const EVENTS: [&str; 3] = ["tick", "tück", "e"];

#[derive(Debug, Clone)]
struct Pub {
    id: Option<u8>,
    event: usize,
    data: u8,
}

impl Pub {
    fn entry(&self) -> NewEntry {
        let id = self.id.map(|i| format!("m{i}"));
        new_entry(
            EVENTS[self.event],
            &format!("[{},\"ü\"]", self.data),
            id.as_deref(),
        )
    }
}

#[derive(Debug, Clone)]
enum Action {
    Publish(usize, Vec<Pub>),
    Purge(usize),
    CreateConsumer(usize, usize, StartPosition),
    /// Moves a consumer's `next` on by this much, with one entry pending or none.
    SaveConsumer(usize, usize, u64, bool),
    DeleteConsumer(usize, usize),
    Read(usize, Seq, usize),
    Restart,
    /// The action, with every commit failing until it is answered.
    Failing(Box<Action>),
}

fn changes() -> impl Strategy<Value = Action> {
    let publish = (0..2usize, 0..3usize, any::<u8>()).prop_map(|(id, event, data)| Pub {
        // Ids from a small set, so that some repeat.
        id: (id > 0).then_some(data % 5),
        event,
        data,
    });
    let start = prop_oneof![
        Just(StartPosition::New),
        Just(StartPosition::All),
        (0..12u64).prop_map(StartPosition::Seq),
    ];
    prop_oneof![
        6 => (0..2usize, prop::collection::vec(publish, 1..4)).prop_map(|(s, e)| Action::Publish(s, e)),
        1 => (0..2usize).prop_map(Action::Purge),
        2 => (0..2usize, 0..3usize, start).prop_map(|(s, c, p)| Action::CreateConsumer(s, c, p)),
        2 => (0..2usize, 0..3usize, 0..4u64, any::<bool>())
            .prop_map(|(s, c, n, p)| Action::SaveConsumer(s, c, n, p)),
        1 => (0..2usize, 0..3usize).prop_map(|(s, c)| Action::DeleteConsumer(s, c)),
    ]
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    let read = (0..2usize, 0..16u64, prop_oneof![0..4usize, Just(1000)])
        .prop_map(|(s, from, limit)| Action::Read(s, from, limit));
    let action = prop_oneof![
        10 => changes(),
        3 => read,
        1 => Just(Action::Restart),
        2 => changes().prop_map(|a| Action::Failing(Box::new(a))),
    ];
    prop::collection::vec(action, 1..40)
}

#[derive(Debug, Clone, PartialEq)]
struct Kept {
    id: Option<String>,
    event: String,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct MStream {
    last: Seq,
    entries: BTreeMap<Seq, Kept>,
    consumers: BTreeMap<String, ConsumerRecord>,
}

impl MStream {
    fn first(&self) -> Seq {
        self.entries.keys().next().copied().unwrap_or(self.last + 1)
    }

    fn bytes(&self) -> u64 {
        let size = |k: &Kept| k.event.len() + k.data.len() + k.id.as_ref().map_or(0, String::len);
        self.entries.values().map(|k| size(k) as u64).sum()
    }

    /// What publishing `entries` answers, storing the new ones.
    fn publish(&mut self, entries: &[NewEntry]) -> Vec<Appended> {
        let mut out = Vec::new();
        for e in entries {
            let seen = e.id.as_ref().and_then(|id| {
                self.entries
                    .iter()
                    .find(|(_, k)| k.id.as_ref() == Some(id))
                    .map(|(s, _)| *s)
            });
            if let Some(seq) = seen {
                out.push(Appended {
                    seq,
                    duplicate: true,
                });
                continue;
            }
            self.last += 1;
            let kept = Kept {
                id: e.id.clone(),
                event: e.event.clone(),
                data: e.data.to_vec(),
            };
            self.entries.insert(self.last, kept);
            out.push(Appended {
                seq: self.last,
                duplicate: false,
            });
        }
        out
    }
}

#[derive(Debug, Default)]
struct Model {
    streams: BTreeMap<String, MStream>,
}

fn kept(entries: &[Entry]) -> Vec<(Seq, Kept)> {
    entries
        .iter()
        .map(|e| {
            let k = Kept {
                id: e.id.clone(),
                event: e.event.clone(),
                data: e.data.to_vec(),
            };
            (e.seq, k)
        })
        .collect()
}

fn model_read(m: &MStream, from: Seq, limit: usize) -> Vec<(Seq, Kept)> {
    m.entries
        .range(from..)
        .take(limit)
        .map(|(s, k)| (*s, k.clone()))
        .collect()
}

fn is_io<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Io(_)))
}

/// Runs `action` on `store` and on `model`, checking that they answer alike.
async fn step(h: &mut Harness, store: Store, model: &mut Model, action: &Action) -> Store {
    match action {
        Action::Restart => return h.restart(store).await,
        Action::Failing(inner) => {
            // Nothing else waits to be written, so the failing batch holds only this action
            // (and perhaps a retention pass).
            store.flush().await.unwrap();
            h.faults.fail.store(true, Ordering::SeqCst);
            failing(h, &store, model, inner).await;
            h.faults.fail.store(false, Ordering::SeqCst);
        }
        Action::Publish(s, pubs) => {
            let entries: Vec<NewEntry> = pubs.iter().map(Pub::entry).collect();
            let got = store.publish(STREAMS[*s], entries.clone()).await.unwrap();
            let m = model.streams.entry(STREAMS[*s].into()).or_default();
            assert_eq!(got, m.publish(&entries), "publish {pubs:?}");
        }
        Action::Purge(s) => {
            let got = store.purge(STREAMS[*s]).await;
            match model.streams.get_mut(STREAMS[*s]) {
                Some(m) => {
                    assert_eq!(got, Ok(m.entries.len() as u64));
                    m.entries.clear();
                }
                None => assert_eq!(got, Err(StoreError::StreamNotFound(STREAMS[*s].into()))),
            }
        }
        Action::CreateConsumer(s, c, start) => {
            let config = ConsumerConfig {
                start: *start,
                ..Default::default()
            };
            let got = store
                .consumer_or_create(STREAMS[*s], CONSUMERS[*c], config.clone())
                .await
                .unwrap();
            let m = model.streams.entry(STREAMS[*s].into()).or_default();
            let next = match start {
                StartPosition::New => m.last + 1,
                StartPosition::All => m.first(),
                StartPosition::Seq(n) => (*n).max(m.first()),
            };
            let want = m
                .consumers
                .entry(CONSUMERS[*c].into())
                .or_insert(ConsumerRecord {
                    config,
                    state: ConsumerState {
                        next,
                        ..Default::default()
                    },
                });
            assert_eq!(&got, want);
        }
        Action::SaveConsumer(s, c, advance, pending) => {
            save(&store, model, *s, *c, *advance, *pending);
        }
        Action::DeleteConsumer(s, c) => {
            let got = store.delete_consumer(STREAMS[*s], CONSUMERS[*c]).await;
            let existed = model
                .streams
                .get_mut(STREAMS[*s])
                .is_some_and(|m| m.consumers.remove(CONSUMERS[*c]).is_some());
            assert_eq!(got, Ok(existed));
        }
        Action::Read(s, from, limit) => {
            let got = store.read(STREAMS[*s], *from, *limit).await;
            match model.streams.get(STREAMS[*s]) {
                Some(m) => assert_eq!(
                    kept(&got.unwrap()),
                    model_read(m, *from, *limit),
                    "read from {from} limit {limit}"
                ),
                None => assert_eq!(got, Err(StoreError::StreamNotFound(STREAMS[*s].into()))),
            }
        }
    }
    store
}

/// Records a consumer position in the store and the model alike; false if there is no such
/// consumer (the store then ignores it).
fn save(store: &Store, model: &mut Model, s: usize, c: usize, advance: u64, pending: bool) -> bool {
    let Some(record) = model
        .streams
        .get_mut(STREAMS[s])
        .and_then(|m| m.consumers.get_mut(CONSUMERS[c]))
    else {
        store.save_consumer(STREAMS[s], CONSUMERS[c], ConsumerState::default());
        return false;
    };
    let next = record.state.next + advance;
    let mut state = ConsumerState {
        next,
        redelivered: record.state.redelivered + 1,
        ..Default::default()
    };
    if pending && next > 1 {
        state.pending.insert(next - 1, 2);
    }
    store.save_consumer(STREAMS[s], CONSUMERS[c], state.clone());
    record.state = state;
    true
}

/// Runs `action` while every commit fails: a request that needs a commit answers `Io` and the
/// model does not change; one answered from memory answers as usual.
async fn failing(h: &Harness, store: &Store, model: &mut Model, action: &Action) {
    match action {
        Action::Publish(s, pubs) => {
            let entries: Vec<NewEntry> = pubs.iter().map(Pub::entry).collect();
            let got = store.publish(STREAMS[*s], entries.clone()).await;
            // Only duplicates of a stream that exists need no commit; the batch may still hold
            // a retention pass, so both answers are right then.
            let mut scratch = MStream::default();
            let want = model.streams.get(STREAMS[*s]).map(|m| {
                scratch.last = m.last;
                scratch.entries = m.entries.clone();
                scratch.publish(&entries)
            });
            match want {
                Some(want) if want.iter().all(|a| a.duplicate) => {
                    assert!(is_io(&got) || got == Ok(want), "{got:?}");
                }
                _ => assert!(is_io(&got), "{got:?}"),
            }
        }
        Action::Purge(s) => {
            let got = store.purge(STREAMS[*s]).await;
            if model.streams.contains_key(STREAMS[*s]) {
                assert!(is_io(&got), "{got:?}");
            } else {
                assert_eq!(got, Err(StoreError::StreamNotFound(STREAMS[*s].into())));
            }
        }
        Action::CreateConsumer(s, c, start) => {
            let config = ConsumerConfig {
                start: *start,
                ..Default::default()
            };
            let got = store
                .consumer_or_create(STREAMS[*s], CONSUMERS[*c], config)
                .await;
            match model
                .streams
                .get(STREAMS[*s])
                .and_then(|m| m.consumers.get(CONSUMERS[*c]))
            {
                Some(existing) => assert_eq!(got.as_ref(), Ok(existing)),
                None => assert!(is_io(&got), "{got:?}"),
            }
        }
        Action::DeleteConsumer(s, c) => {
            let got = store.delete_consumer(STREAMS[*s], CONSUMERS[*c]).await;
            let exists = model
                .streams
                .get(STREAMS[*s])
                .is_some_and(|m| m.consumers.contains_key(CONSUMERS[*c]));
            if exists {
                assert!(is_io(&got), "{got:?}");
            } else {
                assert_eq!(got, Ok(false));
            }
        }
        Action::SaveConsumer(s, c, advance, pending) => {
            // The position is kept in memory at once; its failed write must be retried by a
            // later batch, which the model checks after the next restart.
            let failed = h.faults.failed.load(Ordering::SeqCst);
            if save(store, model, *s, *c, *advance, *pending) {
                let flushed = store.flush().await;
                assert!(is_io(&flushed), "{flushed:?}");
                assert!(h.faults.failed.load(Ordering::SeqCst) > failed);
            }
        }
        Action::Read(..) | Action::Restart | Action::Failing(_) => unreachable!("not generated"),
    }
}

/// Checks everything the store tells about its streams and consumers against the model.
async fn check(store: &Store, model: &Model, after: &Action) {
    for name in STREAMS {
        let Some(m) = model.streams.get(name) else {
            assert!(store.stream(name).is_none(), "{name} after {after:?}");
            continue;
        };
        let info = store
            .stream(name)
            .unwrap_or_else(|| panic!("{name} after {after:?}"));
        assert_eq!(
            (info.first_seq, info.last_seq, info.entries, info.bytes),
            (m.first(), m.last, m.entries.len() as u64, m.bytes()),
            "{name} after {after:?}"
        );
        assert_eq!(*store.watch(name).unwrap().borrow(), m.last);
        let consumers: Vec<(String, ConsumerRecord)> = m
            .consumers
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        assert_eq!(store.consumers(name), consumers, "{name} after {after:?}");
        assert_eq!(
            kept(&store.read(name, 0, usize::MAX).await.unwrap()),
            model_read(m, 0, usize::MAX),
            "{name} after {after:?}"
        );
    }
    assert_eq!(store.streams().len(), model.streams.len());
}

fn run(kind: Kind, actions: &[Action]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut h = Harness::faulty(kind, StoreOptions::default());
        let mut store = h.open();
        let mut model = Model::default();
        for action in actions {
            store = step(&mut h, store, &mut model, action).await;
            check(&store, &model, action).await;
        }
        // Whatever happened, a final restart keeps exactly the model.
        let store = h.restart(store).await;
        check(&store, &model, &Action::Restart).await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memory_store_follows_the_model(actions in actions()) {
        run(Kind::Memory, &actions);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn sqlite_store_follows_the_model(actions in actions()) {
        run(Kind::Sqlite, &actions);
    }
}

/// Where a size cut from the oldest end leaves a stream, by the definition: remove entries from
/// `from` on, oldest first, until `bytes` are removed; the first entry left.
fn model_cut(entries: &[Entry], from: Seq, bytes: u64) -> Option<Seq> {
    let mut removed = 0;
    for e in entries.iter().filter(|e| e.seq >= from) {
        if removed >= bytes {
            return Some(e.seq);
        }
        removed += e.size();
    }
    None
}

/// `Backend::first_seq_after_bytes` on both backends against [`model_cut`], after appends and
/// a trim, from anywhere in (and around) the stream.
fn check_cut(kind: Kind, sizes: &[usize], trim: Seq, cuts: &[(Seq, u64)]) {
    let h = Harness::new(kind, StoreOptions::default());
    let backend = h.backend();
    let mut ops = vec![backend::Op::PutStream {
        id: 1,
        name: "s".into(),
        config: StreamConfig::default(),
    }];
    let mut entries = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let e = Entry {
            seq: i as Seq + 1,
            ts_ms: 1,
            id: (n % 3 == 0).then(|| format!("ïd{n}")),
            event: "é".into(),
            data: vec![b'x'; n].into(),
        };
        ops.push(backend::Op::Append {
            stream: 1,
            entry: e.clone(),
        });
        entries.push(e);
    }
    ops.push(backend::Op::Trim {
        stream: 1,
        below: trim,
    });
    backend.commit(&ops).unwrap();
    entries.retain(|e| e.seq >= trim);
    for &(from, bytes) in cuts {
        assert_eq!(
            backend.first_seq_after_bytes(1, from, bytes).unwrap(),
            model_cut(&entries, from, bytes),
            "{kind:?}: cut of {bytes} bytes from {from}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn size_cuts_follow_the_model(
        sizes in prop::collection::vec(0..40usize, 0..30),
        trim in 0..12u64,
        cuts in prop::collection::vec((0..34u64, 0..600u64), 1..8),
    ) {
        check_cut(Kind::Memory, &sizes, trim, &cuts);
        check_cut(Kind::Sqlite, &sizes, trim, &cuts);
    }
}
