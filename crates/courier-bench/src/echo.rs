//! Echo: every client emits `echo` with an ack request and emits again as soon as the ack (the
//! same arguments) comes back, `depth` emits in flight per client.

use std::time::Duration;

use serde_json::json;

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
    w.send(&json!({"cmd": "run", "warmup": a.warmup, "secs": a.secs}))
        .await?;
    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    let cpu = CpuMeter::start(a.common.pid);
    let busy = BusyMeter::start();
    let reports = w
        .gather("count", Duration::from_secs_f64(a.secs + 60.0))
        .await?;
    let cpu = cpu.used();
    let busy = busy.percent();
    let clients = w.ready;
    w.stop().await;

    let mut hist = Hist::default();
    let (mut per_sec, mut total) = (0.0, 0.0);
    let client_cpu: f64 = reports.iter().filter_map(|r| r["cpu"].as_f64()).sum();
    for r in &reports {
        let count = r["count"].as_f64().unwrap_or(0.0);
        per_sec += count / r["secs"].as_f64().unwrap_or(1.0);
        total += count;
        hist.merge(&Hist::from_json(&r["hist"]));
    }
    say!("echo: {per_sec:.0} round trips/s");
    let mut m = Metrics::new();
    m.insert("round_trips_per_s".into(), round(per_sec, 0));
    m.insert("latency_p50_ms".into(), ms(hist.quantile(0.5)));
    m.insert("latency_p99_ms".into(), ms(hist.quantile(0.99)));
    cpu_metrics(&mut m, "round_trip", total, cpu, Some(client_cpu), busy);
    m.insert("clients".into(), json!(clients));
    Ok(m)
}
