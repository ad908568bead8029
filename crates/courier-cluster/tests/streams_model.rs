//! Durable streams on Redis against a model of what they promise, over random sequences of
//! operations with Redis killed and restarted in between (append-only file, fsynced on every
//! write), through the same `Streams` a node serves clients with.
//!
//! A redis-server of the test's own is started on a free loopback port (the test is skipped,
//! saying so, when `redis-server` is not installed). The model is the single node's: streams of
//! kept entries with their last seq, and consumers with their settings and start. One
//! difference, by design: a message id is a duplicate for the dedupe window whether or not its
//! entry is still kept (Redis keeps one key per id until the window ends), so here ids are
//! never forgotten (the runs are far shorter than the window).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier_cluster::{Cluster, Options, StreamOptions};
use courier_server::store::{
    Appended, ConsumerConfig, NewEntry, Seq, StartPosition, StoreError, StoreOptions,
};
use courier_server::{Config, Io, Streams};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

const STREAMS: [&str; 2] = ["alpha", "βe{ta}"];

/// Each run has streams of its own (a node remembers what it learned of a stream for a
/// moment, so runs do not wipe Redis under it).
static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn stream(i: usize) -> String {
    let run = RUN.load(std::sync::atomic::Ordering::Relaxed);
    format!("{}-{run}", STREAMS[i])
}
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
        NewEntry {
            event: EVENTS[self.event].to_owned(),
            data: format!("[{},\"ü\"]", self.data).into(),
            id: self.id.map(|i| format!("m{i}")),
        }
    }
}

#[derive(Debug, Clone)]
enum Action {
    /// Published at once, in this order.
    Publish(usize, Vec<Pub>),
    Purge(usize),
    CreateConsumer(usize, usize, StartPosition),
    DeleteConsumer(usize, usize),
    Read(usize, Seq, usize),
    /// redis-server killed with SIGKILL and started again on its port and files.
    RestartRedis,
    /// The action while redis-server is down: answered `unavailable`, nothing changes.
    RedisDown(Box<Action>),
}

fn changes() -> impl Strategy<Value = Action> {
    let publish = (0..2usize, 0..3usize, any::<u8>()).prop_map(|(id, event, data)| Pub {
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
        6 => (0..2usize, prop::collection::vec(publish, 1..5)).prop_map(|(s, e)| Action::Publish(s, e)),
        1 => (0..2usize).prop_map(Action::Purge),
        2 => (0..2usize, 0..3usize, start).prop_map(|(s, c, p)| Action::CreateConsumer(s, c, p)),
        1 => (0..2usize, 0..3usize).prop_map(|(s, c)| Action::DeleteConsumer(s, c)),
    ]
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    let read = (0..2usize, 0..16u64, prop_oneof![0..4usize, Just(1000)])
        .prop_map(|(s, from, limit)| Action::Read(s, from, limit));
    let action = prop_oneof![
        20 => changes(),
        6 => read,
        1 => Just(Action::RestartRedis),
        1 => changes().prop_map(|a| Action::RedisDown(Box::new(a))),
    ];
    prop::collection::vec(action, 1..30)
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
    /// Ids seen, with their seq: duplicates for the whole run.
    ids: BTreeMap<String, Seq>,
    /// Consumers: their settings, and where they started.
    consumers: BTreeMap<String, (ConsumerConfig, Seq)>,
}

impl MStream {
    fn first(&self) -> Seq {
        self.entries.keys().next().copied().unwrap_or(self.last + 1)
    }

    fn bytes(&self) -> u64 {
        let size = |k: &Kept| k.event.len() + k.data.len() + k.id.as_ref().map_or(0, String::len);
        self.entries.values().map(|k| size(k) as u64).sum()
    }

    fn publish(&mut self, e: &NewEntry) -> Appended {
        if let Some(&seq) = e.id.as_ref().and_then(|id| self.ids.get(id)) {
            return Appended {
                seq,
                duplicate: true,
            };
        }
        self.last += 1;
        if let Some(id) = &e.id {
            self.ids.insert(id.clone(), self.last);
        }
        let kept = Kept {
            id: e.id.clone(),
            event: e.event.clone(),
            data: e.data.to_vec(),
        };
        self.entries.insert(self.last, kept);
        Appended {
            seq: self.last,
            duplicate: false,
        }
    }
}

#[derive(Debug, Default)]
struct Model {
    streams: BTreeMap<String, MStream>,
}

/// One redis-server with its files, and one node on it, for the whole test binary.
struct World {
    rt: tokio::runtime::Runtime,
    redis: std::sync::Mutex<Redis>,
    io: Io,
    cluster: Cluster,
}

struct Redis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Redis {
    fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl World {
    /// redis-server and a node on it; `None` when redis-server is not installed. Dropping it
    /// stops them.
    fn start() -> Option<World> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("redis-server is not installed: the Redis model test is skipped");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("courier-model-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            port,
            dir,
            child: None,
        };
        redis.start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (io, cluster) = rt.block_on(async {
            let io = Io::new(Config::default());
            let cluster = Cluster::start(
                &io,
                Options {
                    url: format!("redis://127.0.0.1:{port}"),
                    key: "model".into(),
                    requests_timeout: Duration::from_secs(2),
                    advertise: None,
                    recovery: None,
                },
            )
            .unwrap();
            assert!(cluster.serve_streams(StreamOptions {
                // Room for two small publishes at a time: the others wait for their turn
                // (and must still be numbered in the order they came).
                store: StoreOptions {
                    max_queued_bytes: 2048,
                    ..StoreOptions::default()
                },
                declared: Vec::new(),
                wait_replicas: 0,
                wait_timeout: Duration::from_secs(1),
            }));
            (io, cluster)
        });
        let w = World {
            rt,
            redis: std::sync::Mutex::new(redis),
            io,
            cluster,
        };
        w.wait_up();
        Some(w)
    }

    fn streams(&self) -> &Streams {
        self.io.streams().expect("streams served")
    }

    fn wait_down(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.cluster.status().redis_up {
            assert!(
                Instant::now() < deadline,
                "the node did not notice Redis gone"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the node says Redis is up and a request goes through (the first one on a
    /// connection that Redis dropped fails, and is answered `unavailable`).
    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.cluster.status().redis_up || self.rt.block_on(self.streams().list()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the node did not reconnect to Redis"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn kept(entries: &[courier_server::store::Entry]) -> Vec<(Seq, Kept)> {
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

fn not_found(i: usize) -> StoreError {
    StoreError::StreamNotFound(stream(i))
}

async fn step(s: &Streams, model: &mut Model, action: &Action) {
    match action {
        Action::RestartRedis | Action::RedisDown(_) => unreachable!("handled by run"),
        Action::Publish(i, pubs) => {
            let entries: Vec<NewEntry> = pubs.iter().map(Pub::entry).collect();
            // Queued in this order (each future queues its publish when first polled), so one
            // group may carry them all.
            let got = futures_util::future::join_all(entries.iter().map(|e| {
                let data: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
                let (event, id) = (e.event.clone(), e.id.clone());
                async move { s.publish(&stream(*i), &event, &data, id).await.unwrap() }
            }))
            .await;
            let m = model.streams.entry(stream(*i)).or_default();
            let want: Vec<Appended> = entries.iter().map(|e| m.publish(e)).collect();
            assert_eq!(got, want, "publish {pubs:?}");
        }
        Action::Purge(i) => {
            let got = s.purge(&stream(*i)).await;
            match model.streams.get_mut(&stream(*i)) {
                Some(m) => {
                    assert_eq!(got, Ok(m.entries.len() as u64));
                    m.entries.clear();
                }
                None => assert_eq!(got, Err(not_found(*i))),
            }
        }
        Action::CreateConsumer(i, c, start) => {
            let config = ConsumerConfig {
                start: *start,
                ..Default::default()
            };
            let got = s
                .create_consumer(&stream(*i), CONSUMERS[*c], config.clone())
                .await
                .unwrap();
            let m = model.streams.entry(stream(*i)).or_default();
            let next = match config.start {
                StartPosition::New => m.last + 1,
                StartPosition::All => 1,
                StartPosition::Seq(n) => n,
            };
            let (_, next) = m
                .consumers
                .entry(CONSUMERS[*c].into())
                .or_insert((config, next));
            let next = (*next).max(m.first());
            assert_eq!(
                got,
                (m.last + 1).saturating_sub(next),
                "waiting for {}",
                CONSUMERS[*c]
            );
        }
        Action::DeleteConsumer(i, c) => {
            let got = s.delete_consumer(&stream(*i), CONSUMERS[*c]).await;
            let existed = model
                .streams
                .get_mut(&stream(*i))
                .is_some_and(|m| m.consumers.remove(CONSUMERS[*c]).is_some());
            assert_eq!(got, Ok(existed));
        }
        Action::Read(i, from, limit) => {
            let got = s.read(&stream(*i), *from, *limit).await;
            match model.streams.get(&stream(*i)) {
                Some(m) => assert_eq!(
                    kept(&got.unwrap()),
                    model_read(m, *from, *limit),
                    "read from {from} limit {limit}"
                ),
                None => assert_eq!(got, Err(not_found(*i))),
            }
        }
    }
}

/// Runs `action` while redis-server is down: everything answers `unavailable` at once.
async fn while_down(s: &Streams, action: &Action) {
    let started = Instant::now();
    let got: Result<(), StoreError> = match action {
        Action::Publish(i, pubs) => {
            let e = pubs[0].entry();
            let data: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
            s.publish(&stream(*i), &e.event, &data, e.id)
                .await
                .map(drop)
        }
        Action::Purge(i) => s.purge(&stream(*i)).await.map(drop),
        Action::CreateConsumer(i, c, start) => {
            let config = ConsumerConfig {
                start: *start,
                ..Default::default()
            };
            s.create_consumer(&stream(*i), CONSUMERS[*c], config)
                .await
                .map(drop)
        }
        Action::DeleteConsumer(i, c) => s
            .delete_consumer(&stream(*i), CONSUMERS[*c])
            .await
            .map(drop),
        _ => unreachable!("not generated"),
    };
    assert!(
        matches!(got, Err(StoreError::Unavailable(_))),
        "{action:?} while Redis is down: {got:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "answered at once"
    );
}

/// Checks everything the streams tell against the model.
async fn check(s: &Streams, model: &Model, after: &Action) {
    let list = s.list().await.unwrap();
    let ours = [stream(0), stream(1)];
    assert_eq!(
        list.iter()
            .map(|i| i.name.as_str())
            .filter(|n| ours.iter().any(|o| o == n))
            .collect::<Vec<_>>(),
        model.streams.keys().map(String::as_str).collect::<Vec<_>>(),
        "after {after:?}"
    );
    for (i, name) in ours.iter().enumerate() {
        let name = name.as_str();
        let Some(m) = model.streams.get(name) else {
            assert_eq!(s.info(name).await, Ok(None), "{name} after {after:?}");
            assert_eq!(s.read(name, 0, 10).await, Err(not_found(i)));
            continue;
        };
        let info = s.info(name).await.unwrap().expect("the stream");
        assert_eq!(
            (info.first_seq, info.last_seq, info.entries, info.bytes),
            (m.first(), m.last, m.entries.len() as u64, m.bytes()),
            "{name} after {after:?}"
        );
        assert_eq!(
            info.consumers,
            m.consumers.keys().cloned().collect::<Vec<_>>(),
            "{name} after {after:?}"
        );
        let consumers = s.consumers(name).await.unwrap();
        assert_eq!(consumers.len(), m.consumers.len());
        for ((cname, record), (mname, (config, next))) in consumers.iter().zip(&m.consumers) {
            assert_eq!((cname, &record.config), (mname, config));
            let next = (*next).max(m.first());
            assert_eq!(record.state.next, next, "{name}/{cname} after {after:?}");
            assert!(record.state.pending.is_empty());
        }
        assert_eq!(
            kept(&s.read(name, 0, usize::MAX).await.unwrap()),
            model_read(m, 0, usize::MAX),
            "{name} after {after:?}"
        );
    }
}

fn run(w: &World, actions: &[Action]) {
    RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut model = Model::default();
    for action in actions {
        match action {
            Action::RestartRedis => {
                let mut r = w.redis.lock().unwrap();
                r.kill();
                // The node has noticed (so that "up" below is the new Redis, not the old one).
                w.wait_down();
                r.start();
                drop(r);
                w.wait_up();
            }
            Action::RedisDown(inner) => {
                let mut r = w.redis.lock().unwrap();
                r.kill();
                w.wait_down();
                w.rt.block_on(while_down(w.streams(), inner));
                r.start();
                drop(r);
                w.wait_up();
            }
            _ => w.rt.block_on(step(w.streams(), &mut model, action)),
        }
        w.rt.block_on(check(w.streams(), &model, action));
    }
}

#[test]
fn redis_streams_follow_the_model() {
    let Some(w) = World::start() else {
        return;
    };
    // One redis-server for every case (each case has streams of its own), stopped when the
    // runner is done, failed or not.
    let mut runner = TestRunner::new(ProptestConfig::with_cases(12));
    let result = runner.run(&actions(), |actions| {
        run(&w, &actions);
        Ok(())
    });
    drop(w);
    if let Err(e) = result {
        panic!("{e}");
    }
}
