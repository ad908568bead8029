//! Idle connections: how much the server's resident memory grows per connected, silent client.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::procstat::rss_bytes;
use crate::worker::{Plan, Role, Workers};
use crate::{Common, Metrics, round, say};

/// `courier bench idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    procs: usize,
    /// Seconds to wait after connecting before reading the server's memory.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
}

pub async fn run(a: IdleArgs) -> anyhow::Result<Metrics> {
    let pid = a.common.pid.context("idle needs --pid")?;
    let before = rss_bytes(pid).context("reading the server's memory")?;
    let plan = Plan {
        role: Role::Idle,
        clients: a.clients,
        procs: a.procs,
        depth: 1,
        payload: 0,
    };
    let mut w = Workers::start(&a.common.url, &plan).await?;
    let connect_rate = w.ready as f64 / w.connect_secs.max(1e-3);
    say!(
        "idle: {} connections ({} failed) in {:.1}s",
        w.ready,
        w.failed,
        w.connect_secs
    );
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let after = rss_bytes(pid).context("reading the server's memory")?;
    w.send(&json!({"cmd": "check"})).await?;
    let alive: u64 = w
        .gather("alive", Duration::from_secs(30))
        .await?
        .iter()
        .filter_map(|r| r["alive"].as_u64())
        .sum();
    w.stop().await;
    anyhow::ensure!(alive > 0, "no connection stayed open");
    let per_conn = after.saturating_sub(before) as f64 / alive as f64;
    say!(
        "idle: {alive} alive, RSS {:.1} -> {:.1} MB, {:.2} KB per connection",
        before as f64 / 1e6,
        after as f64 / 1e6,
        per_conn / 1024.0
    );
    let mut m = Metrics::new();
    m.insert("kb_per_connection".into(), round(per_conn / 1024.0, 2));
    m.insert("connections_per_s".into(), round(connect_rate, 0));
    m.insert("connections".into(), json!(alive));
    Ok(m)
}
