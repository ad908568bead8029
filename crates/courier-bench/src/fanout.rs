//! Fan-out: one publisher asks the server to broadcast a payload to every connected client.
//!
//! Saturation: the publisher keeps `window` broadcasts in flight, a broadcast leaving the window
//! once every live receiver has seen it (the workers report that), so server queues stay short
//! and nobody is disconnected for being slow; deliveries are counted by the receivers over
//! `secs`. Latency: broadcasts at a fixed `rate` for `secs`; every receiver records how long
//! each took from the publisher's send.
//!
//! On a cluster (`--room`, `--receivers`): receivers and publisher join one room with
//! `courier:join`, the receivers' worker processes spread over the given nodes, and the publisher
//! emits `message`, which the hub relays to the other members of its rooms, across nodes.
//! `--cpu LABEL=PID` reports each node's (or Redis's) CPU time on its own.

use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{self, Incoming, Proto, Target};
use crate::hist::Hist;
use crate::procstat::{BusyMeter, CpuMeter};
use crate::worker::{Place, Plan, Role, Workers};
use crate::{Common, Metrics, cpu_metrics, ms, round, say};

/// `courier bench fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Receiving clients.
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Worker processes holding the receivers.
    #[arg(long, default_value_t = 2)]
    procs: usize,
    /// Payload bytes per broadcast.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Warm-up before the saturation window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Length of each measurement (saturation, then latency), in seconds.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Broadcasts in flight during saturation (well under socketioxide's 128-packet buffer).
    #[arg(long, default_value_t = 32)]
    window: u64,
    /// Broadcasts per second during the latency measurement (default: 100,000 deliveries/s).
    #[arg(long)]
    rate: Option<f64>,
    /// Servers for the receivers, one per worker process in turn (default: --url, which the
    /// publisher uses in any case).
    #[arg(long, value_delimiter = ',')]
    receivers: Vec<String>,
    /// Everyone joins this room, and the publisher emits `message` to it through the hub's relay
    /// instead of asking for a `broadcast`.
    #[arg(long)]
    room: Option<String>,
    /// Also report this process's CPU time, as `cpu_us_per_delivery_LABEL` and
    /// `cpu_us_per_broadcast_LABEL` (repeatable).
    #[arg(long, value_name = "LABEL=PID", value_parser = labelled_pid)]
    cpu: Vec<(String, u32)>,
}

fn labelled_pid(s: &str) -> Result<(String, u32), String> {
    let (label, pid) = s.split_once('=').ok_or("expected LABEL=PID")?;
    let pid = pid.parse().map_err(|e| format!("bad pid {pid:?}: {e}"))?;
    Ok((label.to_owned(), pid))
}

/// The publishing connection: frames to send go through a channel to a task that also reads
/// (and drops) the broadcasts the publisher receives itself, answering pings.
struct Publisher {
    tx: mpsc::Sender<tokio_websockets::Message>,
    proto: Proto,
    size: usize,
    seq: u64,
    /// The event to emit: `broadcast`, or `message` when relayed to a room.
    event: &'static str,
}

impl Publisher {
    async fn open(target: &Target, size: usize, room: Option<&str>) -> anyhow::Result<Publisher> {
        let mut ws = client::connect(target, &target.builder()?, None)
            .await
            .context("connecting the publisher")?;
        if let Some(room) = room {
            client::join(&mut ws, room)
                .await
                .context("the publisher joining its room")?;
        }
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::channel::<tokio_websockets::Message>(1024);
        let proto = target.proto;
        let pings = tx.clone();
        tokio::task::spawn_local(async move {
            while let Some(Ok(m)) = stream.next().await {
                if client::classify(proto, m.as_payload()) == Incoming::Ping {
                    let _ = pings.send(client::pong()).await;
                }
            }
        });
        tokio::task::spawn_local(async move {
            while let Some(m) = rx.recv().await {
                if sink.feed(m).await.is_err() {
                    break;
                }
                while let Ok(m) = rx.try_recv() {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
        });
        Ok(Publisher {
            tx,
            proto,
            size,
            seq: 0,
            event: if room.is_some() {
                "message"
            } else {
                "broadcast"
            },
        })
    }

    async fn broadcast(&mut self, phase: u8) -> anyhow::Result<()> {
        self.seq += 1;
        let payload = client::mark(phase, self.seq, self.size);
        let msg = match self.proto {
            Proto::SocketIo => client::sio_event(self.event, Value::String(payload), None),
            _ => client::raw_frame(b'b', &payload),
        };
        self.tx
            .send(msg)
            .await
            .ok()
            .context("the publisher's connection closed")
    }
}

/// What every worker has reported seeing.
struct Seen {
    done: Vec<u64>,
}

impl Seen {
    fn min(&self) -> u64 {
        self.done.iter().copied().min().unwrap_or(0)
    }

    fn update(&mut self, (i, v): &(usize, Value)) {
        if let Some(d) = v["done"].as_u64() {
            self.done[*i] = self.done[*i].max(d);
        }
    }
}

/// Waits until every worker has seen everything sent, or `limit` passes. Returns whether all
/// was seen.
async fn drain(w: &mut Workers, seen: &mut Seen, last: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while seen.min() < last {
        match tokio::time::timeout_at(deadline, w.recv()).await {
            Ok(Ok(l)) => seen.update(&l),
            _ => return false,
        }
    }
    true
}

pub async fn run(a: FanoutArgs) -> anyhow::Result<Metrics> {
    let target = Target::parse(&a.common.url)?;
    let plan = Plan {
        role: Role::Fanout,
        clients: a.clients,
        procs: a.procs,
        depth: 1,
        payload: a.payload,
    };
    let urls = if a.receivers.is_empty() {
        vec![a.common.url.clone()]
    } else {
        a.receivers.clone()
    };
    let place = Place {
        urls: &urls,
        room: a.room.as_deref(),
    };
    let mut w = Workers::start_at(&place, &plan).await?;
    say!(
        "fanout: {} receivers in {} processes ({} failed) in {:.1}s",
        w.ready,
        w.len(),
        w.failed,
        w.connect_secs
    );
    anyhow::ensure!(w.ready > 0, "no receiver could connect");
    let receivers = w.ready as u64;
    let mut publisher = Publisher::open(&target, a.payload, a.room.as_deref()).await?;
    let mut seen = Seen {
        done: vec![0; w.len()],
    };

    // Saturation: a closed loop of `window` broadcasts in flight.
    let start = Instant::now();
    let mut measuring = false;
    let mut cpu = None;
    let mut labelled: Vec<(&str, CpuMeter)> = Vec::new();
    let mut counts = Vec::new();
    let mut stalls = 0u64;
    while counts.len() < w.len() {
        while publisher.seq < seen.min() + a.window {
            publisher.broadcast(b'S').await?;
        }
        if !measuring && start.elapsed().as_secs_f64() >= a.warmup {
            measuring = true;
            w.send(&json!({"cmd": "measure", "secs": a.secs})).await?;
            cpu = Some((CpuMeter::start(a.common.pid), BusyMeter::start()));
            labelled = a
                .cpu
                .iter()
                .map(|(l, pid)| (l.as_str(), CpuMeter::start(Some(*pid))))
                .collect();
        }
        match tokio::time::timeout(Duration::from_secs(1), w.recv()).await {
            Ok(l) => {
                let l = l?;
                if l.1.get("count").is_some() {
                    counts.push(l.1.clone());
                }
                seen.update(&l);
            }
            // Nothing came back for a second (a broadcast was lost): open the window by one.
            Err(_) => {
                stalls += 1;
                let i = (0..seen.done.len())
                    .min_by_key(|&i| seen.done[i])
                    .unwrap_or(0);
                seen.done[i] += 1;
            }
        }
    }
    let (cpu_used, busy) = match &cpu {
        Some((c, b)) => (c.used(), b.percent()),
        None => (None, None),
    };
    let labelled: Vec<(&str, Option<f64>)> = labelled.iter().map(|(l, c)| (*l, c.used())).collect();
    let client_cpu: f64 = counts.iter().filter_map(|c| c["cpu"].as_f64()).sum();
    let per_sec: f64 = counts
        .iter()
        .map(|c| c["count"].as_f64().unwrap_or(0.0) / c["secs"].as_f64().unwrap_or(1.0))
        .sum();
    let delivered_in_window: f64 = counts.iter().filter_map(|c| c["count"].as_f64()).sum();
    drain(&mut w, &mut seen, publisher.seq, Duration::from_secs(10)).await;
    say!("fanout: saturation {per_sec:.0} deliveries/s ({stalls} stalls)");

    // Latency at a fixed rate.
    let rate = a.rate.unwrap_or(100_000.0 / receivers as f64).max(0.1);
    let first = publisher.seq + 1;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs_f64(a.secs);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= end {
                    break;
                }
                publisher.broadcast(b'L').await?;
            }
            l = w.recv() => seen.update(&l?),
        }
    }
    let sent = publisher.seq + 1 - first;
    let complete = drain(&mut w, &mut seen, publisher.seq, Duration::from_secs(10)).await;
    w.send(&json!({"cmd": "report"})).await?;
    let mut hist = Hist::default();
    for r in w.gather("hist", Duration::from_secs(30)).await? {
        hist.merge(&Hist::from_json(&r["hist"]));
    }
    let expected = sent * receivers;
    say!(
        "fanout: {rate:.1} broadcasts/s, {} of {expected} delivered{}",
        hist.len(),
        if complete { "" } else { " (gave up waiting)" }
    );
    w.stop().await;

    let mut m = Metrics::new();
    m.insert("deliveries_per_s".into(), round(per_sec, 0));
    m.insert("latency_p50_ms".into(), ms(hist.quantile(0.5)));
    m.insert("latency_p99_ms".into(), ms(hist.quantile(0.99)));
    m.insert(
        "latency_delivered_pct".into(),
        round(100.0 * hist.len() as f64 / expected.max(1) as f64, 2),
    );
    cpu_metrics(
        &mut m,
        "delivery",
        delivered_in_window,
        cpu_used,
        Some(client_cpu),
        busy,
    );
    // Every receiver sees every broadcast, so this is how many were sent in the window.
    let broadcasts = delivered_in_window / receivers as f64;
    for (label, used) in labelled {
        if let (Some(cpu), true) = (used, broadcasts > 0.0) {
            let us = cpu * 1e6;
            m.insert(
                format!("cpu_us_per_delivery_{label}"),
                round(us / delivered_in_window, 3),
            );
            m.insert(
                format!("cpu_us_per_broadcast_{label}"),
                round(us / broadcasts, 3),
            );
        }
    }
    m.insert("clients".into(), json!(receivers));
    m.insert(
        "latency_rate_per_s".into(),
        round(rate * receivers as f64, 0),
    );
    Ok(m)
}
