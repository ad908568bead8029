//! `courier listen`: prints what a socket receives, one JSON object per line on stdout, and
//! keeps listening across reconnections. With `--stream` it is also a durable consumer: each
//! delivery is acknowledged after its line is printed, so a crash before printing means it
//! comes again. Connection news go to stderr.
//!
//! Lines: `{"namespace","event","args"}` for events (binary arguments as `{"$binary": base64}`;
//! a broadcast's recovery offset, the last argument on the wire, as `"offset"` instead), and
//! `{"stream","seq","id","deliveries","event","data"}` for deliveries.

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use courier_client::{Client, Config, DisconnectReason, Event, StartAt, Status};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Common;

/// Events waiting to be printed; past that the listener is too slow and events are dropped
/// (deliveries are not lost: unacknowledged, they come again).
const BACKLOG: usize = 4096;

/// Arguments of `courier listen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The namespace.
    #[arg(long, default_value = "/")]
    pub namespace: String,
    /// Join this room (repeatable), again after every reconnection that did not recover the
    /// session.
    #[arg(long = "room", value_name = "ROOM")]
    pub rooms: Vec<String>,
    /// Consume this durable stream too.
    #[arg(long, requires = "consumer")]
    pub stream: Option<String>,
    /// The consumer name: its position is kept by the hub between runs.
    #[arg(long, requires = "stream")]
    pub consumer: Option<String>,
    /// Where a new consumer starts: new, all, or a sequence number.
    #[arg(long, default_value = "new", value_parser = parse_start)]
    pub from: StartAt,
    /// Exit after this many lines.
    #[arg(long)]
    pub count: Option<u64>,
    /// No connection news on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub common: Common,
}

fn parse_start(s: &str) -> Result<StartAt, String> {
    s.parse()
}

/// Runs `courier listen`.
pub fn run(args: Args) -> anyhow::Result<()> {
    super::block_on(listen(args))
}

async fn listen(args: Args) -> anyhow::Result<()> {
    let client = Client::connect_with(&args.common.url, Config::default()).await?;
    let socket = client.socket(&args.namespace);
    if let Some(t) = &args.common.token {
        socket.set_auth(json!({"token": t}));
    }
    let (tx, mut events) = mpsc::channel::<Event>(BACKLOG);
    socket.on_any(move |ev| {
        if tx.try_send(ev).is_err() {
            eprintln!("courier listen: output is too slow, an event was dropped");
        }
    });
    socket
        .connect()
        .await
        .with_context(|| format!("joining namespace {}", socket.namespace()))?;
    let rooms: Vec<&str> = args.rooms.iter().map(String::as_str).collect();
    if !rooms.is_empty() {
        socket.join(&rooms).await.context("joining the rooms")?;
    }
    let mut sub = match (&args.stream, &args.consumer) {
        (Some(stream), Some(consumer)) => Some(
            socket
                .subscribe(stream, consumer, args.from)
                .await
                .with_context(|| format!("subscribing to {stream}"))?,
        ),
        _ => None,
    };
    let note = |msg: String| {
        if !args.quiet {
            eprintln!("{msg}");
        }
    };
    note(format!(
        "listening on {} namespace {} as {}{}",
        args.common.url,
        socket.namespace(),
        socket.id().unwrap_or_default(),
        match &sub {
            Some(s) => format!(
                ", consuming {} as {} ({} pending)",
                s.stream(),
                s.consumer(),
                s.pending()
            ),
            None => String::new(),
        }
    ));

    let mut status = socket.status();
    status.mark_unchanged();
    let mut printed = 0u64;
    let namespace = socket.namespace().to_owned();
    let result = loop {
        if args.count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        tokio::select! {
            ev = events.recv() => {
                let Some(mut ev) = ev else { break Ok(()) };
                println!("{}", event_line(&namespace, &ev));
                printed += 1;
                if let Err(e) = ev.ack(()) {
                    note(format!("could not acknowledge {}: {e}", ev.name));
                }
            }
            d = async {
                match sub.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(d) = d else { break Err(anyhow::anyhow!("the subscription ended")) };
                let line = json!({
                    "stream": d.meta.stream,
                    "seq": d.meta.seq,
                    "id": d.meta.id,
                    "deliveries": d.meta.deliveries,
                    "event": d.event,
                    "data": d.data,
                });
                println!("{line}");
                printed += 1;
                let seq = d.meta.seq;
                if let Err(e) = d.ack() {
                    note(format!("could not acknowledge #{seq} ({e}); it will come again"));
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break Err(anyhow::anyhow!("the client stopped"));
                }
                let now = status.borrow_and_update().clone();
                match now {
                    Status::Connected { sid, recovered } => {
                        note(format!("connected again as {sid}{}", if recovered { " (session recovered)" } else { "" }));
                        if !recovered && !args.rooms.is_empty() {
                            let socket = socket.clone();
                            let rooms = args.rooms.clone();
                            tokio::spawn(async move {
                                let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();
                                if let Err(e) = socket.join(&rooms).await {
                                    eprintln!("courier listen: joining the rooms again failed: {e}");
                                }
                            });
                        }
                    }
                    Status::Disconnected(DisconnectReason::ServerDisconnect) => {
                        break Err(anyhow::anyhow!("the hub disconnected this client"));
                    }
                    Status::Disconnected(reason) if reason.reconnects() => {
                        note(format!("disconnected ({reason}); reconnecting"));
                    }
                    Status::Disconnected(reason) => {
                        break Err(anyhow::anyhow!("disconnected: {reason}"));
                    }
                    Status::Refused { message } => {
                        break Err(anyhow::anyhow!("the hub refused the connection: {message}"));
                    }
                    _ => {}
                }
            }
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    client.close().await;
    result
}

fn event_line(namespace: &str, ev: &Event) -> Value {
    let mut args = ev
        .payload
        .map_binary(|b| json!({"$binary": BASE64.encode(b)}));
    let mut line = json!({"namespace": namespace, "event": ev.name});
    if let Some(offset) = ev.offset() {
        args.pop();
        line["offset"] = json!(offset);
    }
    line["args"] = Value::Array(args);
    line
}
