//! `courier bench`: Courier's load generator, and the hub it measures.
//!
//! - [`client`]: benchmark connections (Socket.IO over a direct WebSocket, raw WebSocket) and
//!   the marked payloads whose send time every receiver reads back.
//! - `worker`: clients split over child processes (`courier bench worker`), each bound to its
//!   own loopback address, driven over stdin/stdout by JSON lines.
//! - `fanout`, `echo`, `idle`: Socket.IO (or raw WebSocket) scenarios; `durable`, `replay`:
//!   durable streams against Courier (`courier:publish`, `courier:subscribe`) or Redis Streams
//!   (`resp` is a minimal RESP client); `backlog`: echo latency while a consumer replays a
//!   backlog from disk (Courier only).
//! - `hub`: the bench protocol served by the Courier library: `echo` is acknowledged with its
//!   own arguments, `broadcast` sends `message` with the payload to every client; durable
//!   streams in SQLite.
//! - [`hist`], `procstat`: latency histograms; server memory and CPU from `/proc`.
//!
//! Each scenario prints one JSON object on stdout, `{"scenario": ..., "metrics": {...}}`, and
//! its progress on stderr; `bench/run` starts the servers and collects these.
#![warn(missing_docs)]

mod backlog;
pub mod client;
mod durable;
mod echo;
mod fanout;
pub mod hist;
mod hub;
mod idle;
mod procstat;
mod replay;
mod resp;
mod worker;

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};
use serde_json::{Map, Value, json};

/// `courier bench` arguments.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    mode: Mode,
}

/// Where the server is and how the load is shared out.
#[derive(Debug, Clone, ClapArgs)]
struct Common {
    /// Server: http://HOST:PORT (Socket.IO), ws://HOST:PORT/ (raw WebSocket),
    /// redis://HOST:PORT (durable and replay only).
    #[arg(long)]
    url: String,
    /// The server's process id, to read its memory and CPU time from /proc.
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Serve the bench protocol with the Courier library (prints `listening on http://ADDR`).
    Hub {
        /// Address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Directory for the SQLite store (default: a new directory under the system temp dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// When stream commits reach the disk: always (fsync per group) or interval.
        #[arg(long, default_value = "always")]
        sync: String,
        /// Tokio worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Count nothing (`Config::metrics` off), to measure what the counters cost.
        #[arg(long)]
        no_metrics: bool,
    },
    /// 100-byte broadcasts to N clients: deliveries/s at saturation, latency at a fixed rate.
    Fanout(fanout::FanoutArgs),
    /// N clients emitting with acks: round trips/s and latency.
    Echo(echo::EchoArgs),
    /// Server memory per idle connection.
    Idle(idle::IdleArgs),
    /// Confirmed durable publishes/s (Courier `courier:publish`, or Redis XADD).
    Durable(durable::DurableArgs),
    /// A consumer that missed many entries comes back: entries delivered and acked per second.
    Replay(replay::ReplayArgs),
    /// Echo latency with and without a consumer replaying a large backlog from disk.
    Backlog(backlog::BacklogArgs),
    /// One process's share of the clients of a scenario (started by the scenarios).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

/// Runs `courier bench`. Builds its own tokio runtime: a multi-threaded one for the hub, a
/// single-threaded one per load-generating process.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Mode::Hub {
        listen,
        data_dir,
        sync,
        threads,
        no_metrics,
    } = args.mode
    {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = threads {
            rt.worker_threads(n);
        }
        return rt
            .enable_all()
            .build()?
            .block_on(hub::run(listen, data_dir, sync, !no_metrics));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let (scenario, metrics) = match args.mode {
        Mode::Hub { .. } => unreachable!("handled above"),
        Mode::Worker(w) => return local.block_on(&rt, worker::run(w)),
        Mode::Fanout(a) => ("fanout", local.block_on(&rt, fanout::run(a))?),
        Mode::Echo(a) => ("echo", local.block_on(&rt, echo::run(a))?),
        Mode::Idle(a) => ("idle", local.block_on(&rt, idle::run(a))?),
        Mode::Durable(a) => ("durable", local.block_on(&rt, durable::run(a))?),
        Mode::Replay(a) => ("replay", local.block_on(&rt, replay::run(a))?),
        Mode::Backlog(a) => ("backlog", local.block_on(&rt, backlog::run(a))?),
    };
    println!("{}", json!({"scenario": scenario, "metrics": metrics}));
    Ok(())
}

/// Metrics in the order they were added.
type Metrics = Map<String, Value>;

fn round(v: f64, digits: i32) -> Value {
    let f = 10f64.powi(digits);
    json!((v * f).round() / f)
}

/// CPU cost per operation (`server_cpu_us_per_<unit>`, `client_cpu_us_per_<unit>`) and how busy
/// the machine was; nothing for a quantity that was not measured or a run with no operation.
fn cpu_metrics(
    m: &mut Metrics,
    unit: &str,
    ops: f64,
    server: Option<f64>,
    client: Option<f64>,
    busy: Option<f64>,
) {
    if ops > 0.0 {
        if let Some(cpu) = server {
            m.insert(
                format!("server_cpu_us_per_{unit}"),
                round(cpu * 1e6 / ops, 3),
            );
        }
        if let Some(cpu) = client {
            m.insert(
                format!("client_cpu_us_per_{unit}"),
                round(cpu * 1e6 / ops, 3),
            );
        }
    }
    if let Some(b) = busy {
        m.insert("machine_busy_pct".into(), round(b, 1));
    }
}

/// Milliseconds from nanoseconds, 3 decimals.
fn ms(ns: u64) -> Value {
    round(ns as f64 / 1e6, 3)
}

/// Progress for people, on stderr.
macro_rules! say {
    ($($t:tt)*) => { eprintln!("  [bench] {}", format_args!($($t)*)) };
}
pub(crate) use say;
