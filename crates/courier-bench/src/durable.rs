//! Durable publishes: `conns` connections each keep `depth` publishes in flight and count the
//! confirmations. Courier: `courier:publish` with an ack (answered once the entry is durable
//! under the hub's sync policy). Redis: `XADD` (answered after the AOF write, fsynced first with
//! `appendfsync always`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{self, Incoming, Proto, Target, Ws};
use crate::hist::Hist;
use crate::procstat::CpuMeter;
use crate::resp::{self, Reply};
use crate::{Common, Metrics, cpu_metrics, ms, round, say};

/// `courier bench durable`.
#[derive(Debug, clap::Args)]
pub struct DurableArgs {
    #[command(flatten)]
    common: Common,
    /// Publishing connections.
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Publishes in flight per connection.
    #[arg(long, default_value_t = 20)]
    depth: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Warm-up, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Measurement, in seconds.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
}

/// Shared by every publishing connection of one run.
pub struct Load {
    measuring: Cell<bool>,
    count: Cell<u64>,
    hist: RefCell<Hist>,
    issued: Cell<u64>,
    limit: u64,
    stop: Cell<bool>,
    failed: Cell<u64>,
    first_failure: RefCell<Option<String>>,
}

impl Load {
    /// A load of at most `limit` publishes (`u64::MAX`: until stopped).
    pub fn new(limit: u64) -> Rc<Load> {
        Rc::new(Load {
            measuring: Cell::new(false),
            count: Cell::new(0),
            hist: RefCell::new(Hist::default()),
            issued: Cell::new(0),
            limit,
            stop: Cell::new(false),
            failed: Cell::new(0),
            first_failure: RefCell::new(None),
        })
    }

    fn try_issue(&self) -> bool {
        if self.stop.get() || self.issued.get() >= self.limit {
            return false;
        }
        self.issued.set(self.issued.get() + 1);
        true
    }

    fn confirmed(&self, sent: Instant) {
        if self.measuring.get() {
            self.count.set(self.count.get() + 1);
            self.hist
                .borrow_mut()
                .record(sent.elapsed().as_nanos() as u64);
        }
    }

    fn failed(&self, why: impl FnOnce() -> String) {
        self.failed.set(self.failed.get() + 1);
        let mut first = self.first_failure.borrow_mut();
        if first.is_none() {
            *first = Some(why());
        }
    }
}

/// Opens `conns` publishing connections to `stream` and starts them; they run until `load`
/// says stop or its limit is confirmed.
pub async fn start(
    target: &Target,
    stream: &str,
    conns: usize,
    depth: usize,
    payload: usize,
    load: &Rc<Load>,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<()>>>> {
    let mut tasks = Vec::new();
    match target.proto {
        Proto::SocketIo => {
            let builder = target.builder()?;
            for _ in 0..conns {
                let ws = client::connect(target, &builder, None).await?;
                let (load, stream) = (load.clone(), stream.to_owned());
                tasks.push(tokio::task::spawn_local(sio_publisher(
                    ws, stream, depth, payload, load,
                )));
            }
        }
        Proto::Redis => {
            for _ in 0..conns {
                let conn = resp::Conn::open(target.addr).await?;
                let (load, stream) = (load.clone(), stream.to_owned());
                tasks.push(tokio::task::spawn_local(redis_publisher(
                    conn, stream, depth, payload, load,
                )));
            }
        }
        Proto::Raw => bail!("durable streams need Courier (http://) or Redis (redis://)"),
    }
    Ok(tasks)
}

/// Waits for the publishers to finish.
pub async fn join(tasks: Vec<JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .context("publishers did not finish")???;
    }
    Ok(())
}

fn publish_packet(stream: &str, seq: u64, size: usize) -> tokio_websockets::Message {
    let data = client::mark(b'P', seq, size);
    client::sio_event(
        "courier:publish",
        json!({"stream": stream, "event": "e", "data": data}),
        Some(seq),
    )
}

async fn sio_publisher(
    mut ws: Ws,
    stream: String,
    depth: usize,
    size: usize,
    load: Rc<Load>,
) -> anyhow::Result<()> {
    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    let mut next = 0u64;
    for _ in 0..depth {
        if !load.try_issue() {
            break;
        }
        next += 1;
        in_flight.insert(next, Instant::now());
        ws.feed(publish_packet(&stream, next, size)).await?;
    }
    ws.flush().await?;
    while !in_flight.is_empty() {
        let mut msg = ws.next().await;
        loop {
            let m = match msg {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the server closed a publishing connection"),
            };
            match client::classify(Proto::SocketIo, m.as_payload()) {
                Incoming::Ping => ws.feed(client::pong()).await?,
                Incoming::Ack(id, body) => {
                    match in_flight.remove(&id) {
                        Some(sent) if contains(body, br#""ok":true"#) => load.confirmed(sent),
                        Some(_) => load.failed(|| String::from_utf8_lossy(body).into_owned()),
                        None => {}
                    }
                    if in_flight.len() < depth && load.try_issue() {
                        next += 1;
                        in_flight.insert(next, Instant::now());
                        ws.feed(publish_packet(&stream, next, size)).await?;
                    }
                }
                _ => {}
            }
            // Answer everything already received with one write.
            match ws.next().now_or_never() {
                Some(more) => msg = more,
                None => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

async fn redis_publisher(
    mut conn: resp::Conn,
    stream: String,
    depth: usize,
    size: usize,
    load: Rc<Load>,
) -> anyhow::Result<()> {
    let mut in_flight = VecDeque::new();
    let mut seq = 0u64;
    let mut xadd = |conn: &mut resp::Conn, in_flight: &mut VecDeque<Instant>| {
        seq += 1;
        let data = client::mark(b'P', seq, size);
        conn.queue(&[b"XADD", stream.as_bytes(), b"*", b"d", data.as_bytes()]);
        in_flight.push_back(Instant::now());
    };
    for _ in 0..depth {
        if !load.try_issue() {
            break;
        }
        xadd(&mut conn, &mut in_flight);
    }
    conn.flush().await?;
    while !in_flight.is_empty() {
        conn.fill().await?;
        while let Some(r) = conn.try_reply()? {
            let sent = in_flight.pop_front().context("a reply nobody asked for")?;
            match r {
                Reply::Bulk(Some(_)) => load.confirmed(sent),
                other => load.failed(|| format!("{other:?}")),
            }
            if load.try_issue() {
                xadd(&mut conn, &mut in_flight);
            }
        }
        conn.flush().await?;
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub async fn run(a: DurableArgs) -> anyhow::Result<Metrics> {
    let target = Target::parse(&a.common.url)?;
    let load = Load::new(u64::MAX);
    let tasks = start(&target, "bench", a.conns, a.depth, a.payload, &load).await?;
    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    let cpu = CpuMeter::start(a.common.pid);
    load.measuring.set(true);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.secs)).await;
    load.measuring.set(false);
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu.used();
    load.stop.set(true);
    join(tasks).await?;
    if let Some(f) = load.first_failure.borrow().as_ref() {
        say!(
            "durable: {} publishes failed, first: {f}",
            load.failed.get()
        );
    }
    let count = load.count.get();
    let per_sec = count as f64 / secs;
    say!("durable: {per_sec:.0} confirmed publishes/s");
    let hist = load.hist.borrow();
    let mut m = Metrics::new();
    m.insert("publishes_per_s".into(), round(per_sec, 0));
    m.insert("latency_p50_ms".into(), ms(hist.quantile(0.5)));
    m.insert("latency_p99_ms".into(), ms(hist.quantile(0.99)));
    cpu_metrics(&mut m, "publish", count as f64, cpu, None, None);
    m.insert("failed".into(), json!(load.failed.get()));
    m.insert("in_flight".into(), json!(a.conns * a.depth));
    Ok(m)
}

/// Publishes exactly `n` entries to `stream` as fast as the server confirms them; returns the
/// seconds it took.
pub async fn fill(
    target: &Target,
    stream: &str,
    n: u64,
    conns: usize,
    depth: usize,
    payload: usize,
) -> anyhow::Result<f64> {
    let load = Load::new(n);
    load.measuring.set(true);
    let t = Instant::now();
    let tasks = start(target, stream, conns, depth, payload, &load).await?;
    join(tasks).await?;
    if let Some(f) = load.first_failure.borrow().as_ref() {
        bail!("{} publishes failed, first: {f}", load.failed.get());
    }
    anyhow::ensure!(
        load.count.get() == n,
        "{} of {n} publishes confirmed",
        load.count.get()
    );
    Ok(t.elapsed().as_secs_f64())
}
