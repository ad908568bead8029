//! Backlog: what one lagging consumer costs everyone else. Echo latency of `clients` clients is
//! measured twice on the same hub: once with nothing else going on, once while a consumer that
//! missed `entries` publishes catches up (its backlog mostly older than what the store keeps in
//! memory, so read from disk). The figure is the ratio of the two p99 latencies.
//!
//! Courier only: the consumer is `courier:subscribe`, each delivery acknowledged at once.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use futures_util::SinkExt;
use serde_json::json;
use tokio::time::Instant;

use crate::client::{self, Proto, Target};
use crate::echo::{EchoRound, echo_round};
use crate::worker::{Plan, Role, Workers};
use crate::{Common, Metrics, durable, ms, replay, round, say};

const STREAM: &str = "backlog";

/// `courier bench backlog`.
#[derive(Debug, clap::Args)]
pub struct BacklogArgs {
    #[command(flatten)]
    common: Common,
    /// Entries the consumer misses.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Echo clients.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Worker processes for the echo clients.
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Payload bytes, of echoes and entries.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Deliveries in flight for the consumer (`max_ack_pending`).
    #[arg(long, default_value_t = 1000)]
    max_ack_pending: u64,
    /// Echo warm-up, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Echo measurement, in seconds (each of the two).
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Give up on the replay after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

async fn echo_clients(a: &BacklogArgs) -> anyhow::Result<Workers> {
    let plan = Plan {
        role: Role::Echo,
        clients: a.clients,
        procs: a.procs,
        depth: 1,
        payload: a.payload,
    };
    let w = Workers::start(&a.common.url, &plan).await?;
    anyhow::ensure!(w.ready > 0, "no echo client could connect");
    Ok(w)
}

pub async fn run(a: BacklogArgs) -> anyhow::Result<Metrics> {
    let target = Target::parse(&a.common.url)?;
    anyhow::ensure!(
        target.proto == Proto::SocketIo,
        "backlog needs Courier (http://)"
    );
    let n = a.entries;
    // The consumer exists before the entries, so that it has missed all of them.
    let mut ws = client::connect(&target, &target.builder()?, None).await?;
    let pending = replay::subscribe(&mut ws, STREAM, a.max_ack_pending).await?;
    anyhow::ensure!(pending == 0, "the stream is not empty ({pending} pending)");
    let _ = ws.close().await;
    let fill_secs = durable::fill(&target, STREAM, n, 50, 20, a.payload).await?;
    say!(
        "backlog: {n} entries published in {fill_secs:.1}s ({:.0}/s)",
        n as f64 / fill_secs
    );

    let mut w = echo_clients(&a).await?;
    let quiet = echo_round(&mut w, a.common.pid, a.warmup, a.secs).await?;
    w.stop().await;
    say!(
        "backlog: echo p99 {:.2} ms with no replay",
        quiet.hist.quantile(0.99) as f64 / 1e6
    );

    let mut w = echo_clients(&a).await?;
    let got = Rc::new(Cell::new(0u64));
    let done_at: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
    let consumer = {
        let ws = client::connect(&target, &target.builder()?, None).await?;
        let (got, done_at, max) = (got.clone(), done_at.clone(), a.max_ack_pending);
        let limit = Duration::from_secs_f64(a.timeout);
        tokio::task::spawn_local(async move {
            let r = tokio::time::timeout(limit, replay::sio_consume(ws, STREAM, n, max, &got))
                .await
                .context("the consumer did not catch up in time");
            done_at.set(Some(Instant::now()));
            r
        })
    };
    let replay_from = Instant::now();
    let busy = echo_round(&mut w, a.common.pid, a.warmup, a.secs).await?;
    let measured_to = Instant::now();
    w.stop().await;
    let got_by_end = got.get();
    let replayed = consumer.await.context("the consumer task failed")???;
    anyhow::ensure!(replayed >= n, "only {replayed} of {n} entries came back");
    let replay_end = done_at.get().unwrap_or(measured_to);
    let replay_secs = (replay_end - replay_from).as_secs_f64();
    // How much of the measurement the replay was still running for.
    let window = (measured_to - busy.measured_from).as_secs_f64();
    let overlap = (replay_end.min(measured_to))
        .saturating_duration_since(busy.measured_from)
        .as_secs_f64();
    let covered = if window > 0.0 {
        100.0 * overlap / window
    } else {
        0.0
    };

    let p99 = |r: &EchoRound| r.hist.quantile(0.99);
    let ratio = p99(&busy) as f64 / p99(&quiet).max(1) as f64;
    say!(
        "backlog: echo p99 {:.2} ms while replaying ({ratio:.2}x); {n} entries replayed in \
         {replay_secs:.1}s, {got_by_end} by the end of the measurement ({covered:.0}% covered)",
        p99(&busy) as f64 / 1e6
    );
    let mut m = Metrics::new();
    m.insert("latency_p99_ratio".into(), round(ratio, 2));
    m.insert("latency_p99_ms".into(), ms(p99(&quiet)));
    m.insert("latency_p99_replaying_ms".into(), ms(p99(&busy)));
    m.insert("latency_p50_ms".into(), ms(quiet.hist.quantile(0.5)));
    m.insert(
        "latency_p50_replaying_ms".into(),
        ms(busy.hist.quantile(0.5)),
    );
    m.insert("round_trips_per_s".into(), round(quiet.per_sec, 0));
    m.insert("round_trips_per_s_replaying".into(), round(busy.per_sec, 0));
    m.insert(
        "replay_entries_per_s".into(),
        round(n as f64 / replay_secs.max(1e-9), 0),
    );
    m.insert("replay_covered_pct".into(), round(covered, 1));
    m.insert("entries".into(), json!(n));
    m.insert("clients".into(), json!(busy.clients));
    Ok(m)
}
