//! Echo: every client emits `echo` with an ack request and emits again as soon as the ack (the
//! same arguments) comes back, `depth` emits in flight per client.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::hist::Hist;
use crate::procstat::{BusyMeter, CpuMeter};
use crate::worker::{Plan, Role, Workers};
use crate::{Common, Metrics, cpu_metrics, ms, round, say};

/// `courier bench echo`.
#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    #[command(flatten)]
    common: Common,
    /// Clients.
    #[arg(long, default_value_t = 500)]
    clients: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    procs: usize,
    /// Emits in flight per client.
    #[arg(long, default_value_t = 1)]
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

pub async fn run(a: EchoArgs) -> anyhow::Result<Metrics> {
    let plan = Plan {
        role: Role::Echo,
        clients: a.clients,
        procs: a.procs,
        depth: a.depth,
        payload: a.payload,
    };
    let mut w = Workers::start(&a.common.url, &plan).await?;
    say!(
        "echo: {} clients in {} processes ({} failed)",
        w.ready,
        w.len(),
        w.failed
    );
    anyhow::ensure!(w.ready > 0, "no client could connect");
    let r = echo_round(&mut w, a.common.pid, a.warmup, a.secs).await?;
    w.stop().await;

    say!("echo: {:.0} round trips/s", r.per_sec);
    let mut m = Metrics::new();
    m.insert("round_trips_per_s".into(), round(r.per_sec, 0));
    m.insert("latency_p50_ms".into(), ms(r.hist.quantile(0.5)));
    m.insert("latency_p99_ms".into(), ms(r.hist.quantile(0.99)));
    cpu_metrics(
        &mut m,
        "round_trip",
        r.total,
        r.server_cpu,
        Some(r.client_cpu),
        r.busy,
    );
    m.insert("clients".into(), json!(r.clients));
    Ok(m)
}

/// What one echo run measured.
pub struct EchoRound {
    pub per_sec: f64,
    pub total: f64,
    pub hist: Hist,
    pub server_cpu: Option<f64>,
    pub client_cpu: f64,
    pub busy: Option<f64>,
    pub clients: usize,
    /// When the measurement began (after the warm-up).
    pub measured_from: Instant,
}

/// Runs the echo clients of `w` once: `warmup` seconds, then `secs` measured. A worker's
/// clients run once; a second round needs new workers.
pub async fn echo_round(
    w: &mut Workers,
    pid: Option<u32>,
    warmup: f64,
    secs: f64,
) -> anyhow::Result<EchoRound> {
    w.send(&json!({"cmd": "run", "warmup": warmup, "secs": secs}))
        .await?;
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let measured_from = Instant::now();
    let cpu = CpuMeter::start(pid);
    let busy = BusyMeter::start();
    let reports = w
        .gather("count", Duration::from_secs_f64(secs + 60.0))
        .await?;
    let server_cpu = cpu.used();
    let busy = busy.percent();

    let mut hist = Hist::default();
    let (mut per_sec, mut total) = (0.0, 0.0);
    let client_cpu: f64 = reports.iter().filter_map(|r| r["cpu"].as_f64()).sum();
    for r in &reports {
        let count = r["count"].as_f64().unwrap_or(0.0);
        per_sec += count / r["secs"].as_f64().unwrap_or(1.0);
        total += count;
        hist.merge(&Hist::from_json(&r["hist"]));
    }
    Ok(EchoRound {
        per_sec,
        total,
        hist,
        server_cpu,
        client_cpu,
        busy,
        clients: w.ready,
        measured_from,
    })
}
