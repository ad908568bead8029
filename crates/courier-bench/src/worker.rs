//! Clients split over processes: one process holds at most [`MAX_PER_PROCESS`] connections (the
//! file descriptor limit is per process) and binds them to its own loopback address (ports are
//! per address). The parent drives its workers with JSON lines on their stdin and reads JSON
//! lines from their stdout:
//!
//! - worker -> `{"ready": ok, "failed": n, "secs": t}` once its clients are connected;
//! - `{"cmd": "measure", "secs": d}` -> `{"count": n, "secs": d, "cpu": s}` (fanout: deliveries
//!   in `d` seconds, and the CPU seconds the worker used meanwhile);
//! - fanout, unprompted: `{"done": seq}` when every live client has seen broadcast `seq`;
//! - `{"cmd": "report"}` -> `{"hist": [...], "latency_count": n}` (fanout's `L` phase);
//! - `{"cmd": "run", "warmup": w, "secs": d}` -> `{"count", "secs", "cpu", "hist"}` (echo);
//! - `{"cmd": "check"}` -> `{"alive": n}`; `{"cmd": "exit"}` or end of input ends it.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::client::{self, Incoming, Proto, Target, Ws};
use crate::hist::Hist;
use crate::procstat::CpuMeter;
use crate::say;

/// Most connections one worker process holds.
pub const MAX_PER_PROCESS: usize = 6000;
/// Handshakes one worker has in flight at once.
const CONNECTING: usize = 64;
/// How long one connection may take to open (TCP, WebSocket, Socket.IO, room) before it counts
/// as failed. A server out of file descriptors stops accepting: its accept queue fills, the
/// kernel drops SYNs and the client retries for minutes; without this, one such connection
/// would hold the whole worker, and the scenario, until the parent gives up on every result.
const HANDSHAKE: Duration = Duration::from_secs(20);
/// Broadcasts tracked at once by a fanout worker.
const RING: usize = 1 << 16;

/// What a worker's clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Receive broadcasts.
    Fanout,
    /// Emit with acks in a closed loop.
    Echo,
    /// Stay connected and answer pings.
    Idle,
}

/// `courier bench worker` (internal).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Server URL.
    #[arg(long)]
    url: String,
    /// What the clients do.
    #[arg(long, value_enum)]
    role: Role,
    /// Connections to open.
    #[arg(long)]
    clients: usize,
    /// Local address to bind the connections to.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Echo: emits in flight per client.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Echo: payload bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Join this room (`courier:join`) once connected, before counting as ready.
    #[arg(long)]
    room: Option<String>,
}

/// Echo clients' phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Wait,
    Run,
    Stop,
}

struct State {
    proto: Proto,
    measuring: Cell<bool>,
    count: Cell<u64>,
    hist: RefCell<Hist>,
    live: Cell<usize>,
    progress: RefCell<Progress>,
    phase: watch::Sender<Phase>,
    finished: Cell<usize>,
    all_finished: Notify,
}

/// Which broadcasts every live client has seen. Clients receive broadcasts in order, so a
/// client that sees `seq` has passed everything before it (a dropped broadcast included).
struct Progress {
    passed: Vec<u32>,
    /// The first broadcast not yet seen by every live client.
    frontier: u64,
    max_seen: u64,
}

impl State {
    /// A client saw broadcast `seq`; `last` is the last one it saw before.
    fn passed(&self, last: &mut u64, seq: u64) {
        if seq <= *last {
            return;
        }
        let mut p = self.progress.borrow_mut();
        let from = (*last + 1).max(p.frontier);
        for s in from..=seq {
            p.passed[s as usize % RING] += 1;
        }
        *last = seq;
        p.max_seen = p.max_seen.max(seq);
        self.advance(&mut p);
    }

    /// A client is gone: what it passed beyond the frontier no longer counts.
    fn gone(&self, last: u64) {
        self.live.set(self.live.get() - 1);
        let mut p = self.progress.borrow_mut();
        for s in p.frontier..=last {
            p.passed[s as usize % RING] -= 1;
        }
        self.advance(&mut p);
    }

    fn advance(&self, p: &mut Progress) {
        let live = self.live.get() as u32;
        let before = p.frontier;
        while p.frontier <= p.max_seen && p.passed[p.frontier as usize % RING] >= live {
            let slot = p.frontier as usize % RING;
            p.passed[slot] = 0;
            p.frontier += 1;
        }
        if p.frontier != before {
            line(&json!({"done": p.frontier - 1}));
        }
    }
}

fn line(v: &Value) {
    let mut out = std::io::stdout().lock();
    // The parent reads every line; if it is gone there is nobody left to tell.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Runs one worker process until its parent says `exit` or closes its stdin.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    let builder = Rc::new(target.builder()?);
    let st = Rc::new(State {
        proto: target.proto,
        measuring: Cell::new(false),
        count: Cell::new(0),
        hist: RefCell::new(Hist::default()),
        live: Cell::new(0),
        progress: RefCell::new(Progress {
            passed: vec![0; RING],
            frontier: 1,
            max_seen: 0,
        }),
        phase: watch::channel(Phase::Wait).0,
        finished: Cell::new(0),
        all_finished: Notify::new(),
    });

    let started = Instant::now();
    let gate = Rc::new(Semaphore::new(CONNECTING));
    let (tx, mut rx) = mpsc::channel::<Result<(), String>>(args.clients.max(1));
    for _ in 0..args.clients {
        let (target, builder, gate, tx, st) = (
            target.clone(),
            builder.clone(),
            gate.clone(),
            tx.clone(),
            st.clone(),
        );
        let args = args.clone();
        tokio::task::spawn_local(async move {
            let permit = gate.acquire().await.expect("semaphore open");
            let open = async {
                let mut ws = client::connect(&target, &builder, args.bind).await?;
                if let Some(room) = &args.room {
                    client::join(&mut ws, room).await?;
                }
                anyhow::Ok(ws)
            };
            let ws = match tokio::time::timeout(HANDSHAKE, open).await {
                Ok(ws) => ws,
                Err(_) => Err(anyhow::anyhow!("not open after {}s", HANDSHAKE.as_secs())),
            };
            drop(permit);
            let ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}"))).await;
                    return;
                }
            };
            st.live.set(st.live.get() + 1);
            let _ = tx.send(Ok(())).await;
            drop(tx);
            match args.role {
                Role::Fanout => fanout_client(ws, &st).await,
                Role::Echo => echo_client(ws, &st, args.depth, args.payload).await,
                Role::Idle => idle_client(ws, &st).await,
            }
        });
    }
    drop(tx);
    let (mut ok, mut failed) = (0, 0);
    while let Some(r) = rx.recv().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                if failed == 0 {
                    say!("worker: a connection failed: {e}");
                }
                failed += 1;
            }
        }
    }
    line(&json!({"ready": ok, "failed": failed, "secs": started.elapsed().as_secs_f64()}));

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(cmd) = stdin.next_line().await? {
        let cmd: Value = serde_json::from_str(&cmd).context("bad command")?;
        match cmd["cmd"].as_str().unwrap_or("") {
            "measure" => {
                let secs = cmd["secs"].as_f64().unwrap_or(1.0);
                let st = st.clone();
                tokio::task::spawn_local(async move {
                    let cpu = CpuMeter::start(Some(std::process::id()));
                    st.count.set(0);
                    st.measuring.set(true);
                    let t = Instant::now();
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    st.measuring.set(false);
                    let secs = t.elapsed().as_secs_f64();
                    line(&json!({"count": st.count.get(), "secs": secs, "cpu": cpu.used()}));
                });
            }
            "report" => {
                let h = st.hist.borrow();
                line(&json!({"hist": h.to_json(), "latency_count": h.len()}));
            }
            "run" => {
                let warmup = cmd["warmup"].as_f64().unwrap_or(0.0);
                let secs = cmd["secs"].as_f64().unwrap_or(1.0);
                let st = st.clone();
                tokio::task::spawn_local(async move {
                    let report = run_echo(&st, warmup, secs).await;
                    line(&report);
                });
            }
            "check" => line(&json!({"alive": st.live.get()})),
            "exit" => break,
            other => bail!("unknown command {other:?}"),
        }
    }
    Ok(())
}

async fn run_echo(st: &State, warmup: f64, secs: f64) -> Value {
    let clients = st.live.get();
    let _ = st.phase.send(Phase::Run);
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let cpu = CpuMeter::start(Some(std::process::id()));
    st.count.set(0);
    *st.hist.borrow_mut() = Hist::default();
    st.measuring.set(true);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    st.measuring.set(false);
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu.used();
    let _ = st.phase.send(Phase::Stop);
    // Let the emits in flight come back, so the server is quiet when the next run starts.
    let wait = async {
        while st.finished.get() < clients {
            st.all_finished.notified().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    json!({"count": st.count.get(), "secs": secs, "cpu": cpu, "hist": st.hist.borrow().to_json()})
}

async fn fanout_client(mut ws: Ws, st: &State) {
    let mut last = 0;
    while let Some(Ok(msg)) = ws.next().await {
        let frame = msg.as_payload();
        let body = match client::classify(st.proto, frame) {
            Incoming::Ping => {
                if ws.send(client::pong()).await.is_err() {
                    break;
                }
                continue;
            }
            Incoming::Event(_, body) | Incoming::Raw(body) => body,
            _ => continue,
        };
        let Some(m) = client::find_mark(body) else {
            continue;
        };
        if st.measuring.get() {
            st.count.set(st.count.get() + 1);
        }
        if m.phase == b'L' {
            let lat = client::now_ns().saturating_sub(m.sent);
            st.hist.borrow_mut().record(lat);
        }
        st.passed(&mut last, m.seq);
    }
    st.gone(last);
}

async fn echo_client(mut ws: Ws, st: &State, depth: usize, size: usize) {
    let mut phase = st.phase.subscribe();
    let _ = phase.wait_for(|p| *p != Phase::Wait).await;
    let mut seq = 0u64;
    let mut in_flight = 0usize;
    let emit = |seq: u64| {
        let payload = client::mark(b'E', seq, size);
        match st.proto {
            Proto::SocketIo => client::sio_event("echo", Value::String(payload), Some(seq)),
            _ => client::raw_frame(b'e', &payload),
        }
    };
    'run: {
        for _ in 0..depth.max(1) {
            seq += 1;
            if ws.send(emit(seq)).await.is_err() {
                break 'run;
            }
            in_flight += 1;
        }
        while let Some(Ok(msg)) = ws.next().await {
            let body = match client::classify(st.proto, msg.as_payload()) {
                Incoming::Ping => {
                    if ws.send(client::pong()).await.is_err() {
                        break;
                    }
                    continue;
                }
                Incoming::Ack(_, body) | Incoming::Raw(body) => body,
                _ => continue,
            };
            let Some(m) = client::find_mark(body) else {
                continue;
            };
            in_flight -= 1;
            if st.measuring.get() {
                st.count.set(st.count.get() + 1);
                st.hist
                    .borrow_mut()
                    .record(client::now_ns().saturating_sub(m.sent));
            }
            if *phase.borrow() == Phase::Stop {
                if in_flight == 0 {
                    break;
                }
                continue;
            }
            seq += 1;
            if ws.send(emit(seq)).await.is_err() {
                break;
            }
            in_flight += 1;
        }
    }
    st.finished.set(st.finished.get() + 1);
    st.all_finished.notify_waiters();
    // Stay connected (and answer pings) until the process exits.
    idle_client(ws, st).await;
}

async fn idle_client(mut ws: Ws, st: &State) {
    while let Some(Ok(msg)) = ws.next().await {
        if client::classify(st.proto, msg.as_payload()) == Incoming::Ping
            && ws.send(client::pong()).await.is_err()
        {
            break;
        }
    }
}

/// The parent's side: child processes sharing a scenario's clients.
pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    lines: mpsc::UnboundedReceiver<(usize, Value)>,
    /// Connections each worker opened.
    pub ready: usize,
    /// Connections that failed.
    pub failed: usize,
    /// Seconds the slowest worker took to connect its clients.
    pub connect_secs: f64,
}

/// How a scenario's clients are shared out.
pub struct Plan {
    /// What the clients do.
    pub role: Role,
    /// Connections in all.
    pub clients: usize,
    /// Processes (at least enough for [`MAX_PER_PROCESS`]).
    pub procs: usize,
    /// Echo: emits in flight per client.
    pub depth: usize,
    /// Echo: payload bytes.
    pub payload: usize,
}

/// Where a scenario's clients connect.
pub struct Place<'a> {
    /// Servers, one per worker process in turn (a cluster's nodes).
    pub urls: &'a [String],
    /// A room every client joins (`courier:join`) before it counts as ready.
    pub room: Option<&'a str>,
}

impl Workers {
    /// Starts the workers and waits until each has connected its clients.
    pub async fn start(url: &str, plan: &Plan) -> anyhow::Result<Workers> {
        let urls = [url.to_owned()];
        Workers::start_at(
            &Place {
                urls: &urls,
                room: None,
            },
            plan,
        )
        .await
    }

    /// Starts the workers, worker `i` on `place.urls[i % len]`, and waits until each has
    /// connected its clients.
    pub async fn start_at(place: &Place<'_>, plan: &Plan) -> anyhow::Result<Workers> {
        anyhow::ensure!(!place.urls.is_empty(), "no server to connect to");
        let procs = plan
            .procs
            .max(plan.clients.div_ceil(MAX_PER_PROCESS))
            .clamp(1, plan.clients.max(1));
        let exe = std::env::current_exe().context("finding the courier binary")?;
        // A different block of loopback addresses each run, so that ports a previous run left in
        // use cannot run out.
        let base = 2 + (client::now_ns() / 1000 % 200) as usize;
        let (tx, lines) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for i in 0..procs {
            let n = plan.clients / procs + usize::from(i < plan.clients % procs);
            let ip = Ipv4Addr::new(
                127,
                0,
                ((base + i) / 250) as u8,
                (1 + (base + i) % 250) as u8,
            );
            let url = &place.urls[i % place.urls.len()];
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", "worker", "--url", url, "--role"])
                .arg(format!("{:?}", plan.role).to_lowercase())
                .args(["--clients", &n.to_string(), "--bind", &ip.to_string()])
                .args(["--depth", &plan.depth.to_string()])
                .args(["--payload", &plan.payload.to_string()]);
            if let Some(room) = place.room {
                cmd.args(["--room", room]);
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            stdins.push(child.stdin.take().expect("piped"));
            let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                while let Ok(Some(l)) = out.next_line().await {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        let _ = tx.send((i, v));
                    }
                }
            });
            children.push(child);
        }
        let mut w = Workers {
            children,
            stdins,
            lines,
            ready: 0,
            failed: 0,
            connect_secs: 0.0,
        };
        for r in w.gather("ready", Duration::from_secs(300)).await? {
            w.ready += r["ready"].as_u64().unwrap_or(0) as usize;
            w.failed += r["failed"].as_u64().unwrap_or(0) as usize;
            w.connect_secs = w.connect_secs.max(r["secs"].as_f64().unwrap_or(0.0));
        }
        Ok(w)
    }

    /// How many worker processes there are.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Sends a command to every worker.
    pub async fn send(&mut self, cmd: &Value) -> anyhow::Result<()> {
        let mut text = cmd.to_string();
        text.push('\n');
        for s in &mut self.stdins {
            s.write_all(text.as_bytes()).await?;
            s.flush().await?;
        }
        Ok(())
    }

    /// The next line from any worker, with the worker's index.
    pub async fn recv(&mut self) -> anyhow::Result<(usize, Value)> {
        self.lines.recv().await.context("every worker has exited")
    }

    /// Waits for one line holding `key` from every worker; lines without it are dropped.
    pub async fn gather(&mut self, key: &str, limit: Duration) -> anyhow::Result<Vec<Value>> {
        let mut got: Vec<Option<Value>> = vec![None; self.len()];
        let wait = async {
            while got.iter().any(Option::is_none) {
                let (i, v) = self.recv().await?;
                if v.get(key).is_some() {
                    got[i] = Some(v);
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(limit, wait)
            .await
            .with_context(|| format!("workers did not answer {key:?} in time"))??;
        Ok(got.into_iter().flatten().collect())
    }

    /// Tells the workers to exit and waits for them (killing those that linger).
    pub async fn stop(mut self) {
        let _ = self.send(&json!({"cmd": "exit"})).await;
        self.stdins.clear();
        for c in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}
