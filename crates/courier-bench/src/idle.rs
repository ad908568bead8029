//! Idle connections: how much the server's resident memory grows per connected, silent client,
//! and how many such clients a GiB of it holds.
//!
//! Every connection is a file descriptor in the server process, so one server holds at most its
//! `RLIMIT_NOFILE` of them, less the files it has open anyway: the count asked is cut to that
//! before connecting (and said so), and the server's limit is reported with the result.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::procstat::{fds, rss_bytes};
use crate::worker::{Plan, Role, Workers};
use crate::{Common, Metrics, round, say};

/// Bytes in a GiB: `connections_per_gb` is this over the bytes one connection costs.
const GIB: f64 = (1u64 << 30) as f64;

/// File descriptors left to the server beyond those it had open before the clients came (a
/// connection being accepted may open a file or two of its own).
const FD_SPARE: u64 = 16;

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
    // Past its limit a server's accept fails (EMFILE): the connections beyond it wait in the
    // listen queue or resend their SYN until the worker gives up on each, 20 s apiece, and the
    // run stalls for minutes; so ask only for what the server can take.
    let mut clients = a.clients;
    let fd_limit = fds(pid).map(|(open, limit)| {
        let room = limit.saturating_sub(open + FD_SPARE) as usize;
        if clients > room {
            say!(
                "idle: the server may open {limit} files and has {open} open: \
                 opening {room} connections, not {clients}"
            );
            clients = room;
        }
        limit
    });
    let plan = Plan {
        role: Role::Idle,
        clients,
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
    let failed = w.failed;
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
    if per_conn > 0.0 {
        m.insert("connections_per_gb".into(), round(GIB / per_conn, 0));
    }
    m.insert("connections_per_s".into(), round(connect_rate, 0));
    m.insert("connections".into(), json!(alive));
    m.insert("failed".into(), json!(failed));
    if let Some(limit) = fd_limit {
        m.insert("server_fd_limit".into(), json!(limit));
    }
    Ok(m)
}
