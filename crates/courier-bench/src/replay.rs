//! Replay: a consumer is created, goes away, misses `entries` publishes, and comes back; the
//! clock runs from its subscribe until it has received and acknowledged every entry.
//!
//! Courier: `courier:subscribe` with a durable consumer; each delivery is an event with an ack
//! request, acknowledged at once. Redis: a consumer group read with `XREADGROUP ... COUNT`,
//! acknowledged with `XACK`, the next read pipelined behind each acknowledgement.

use std::cell::Cell;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{self, Incoming, Proto, Target, Ws};
use crate::durable;
use crate::resp::{self, Reply};
use crate::{Common, Metrics, round, say};

const STREAM: &str = "replay";
const CONSUMER: &str = "bench";

/// `courier bench replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    common: Common,
    /// Entries the consumer misses.
    #[arg(long, default_value_t = 100_000)]
    entries: u64,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Courier: deliveries in flight for the consumer (`max_ack_pending`).
    #[arg(long, default_value_t = 1000)]
    max_ack_pending: u64,
    /// Redis: entries per XREADGROUP.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Courier: where the consumer subscribes and comes back (another node of a cluster);
    /// the entries are published through `--url`.
    #[arg(long)]
    consume_url: Option<String>,
}

pub async fn run(a: ReplayArgs) -> anyhow::Result<Metrics> {
    let target = Target::parse(&a.common.url)?;
    let consumer = match &a.consume_url {
        Some(url) => Target::parse(url)?,
        None => target.clone(),
    };
    let n = a.entries;
    // Create the consumer before the entries exist, so that it has missed all of them.
    let mut redis = None;
    match target.proto {
        Proto::SocketIo => {
            let mut ws = client::connect(&consumer, &consumer.builder()?, None).await?;
            let pending = subscribe(&mut ws, STREAM, a.max_ack_pending).await?;
            anyhow::ensure!(pending == 0, "the stream is not empty ({pending} pending)");
            let _ = ws.close().await;
        }
        Proto::Redis => {
            let mut conn = resp::Conn::open(target.addr).await?;
            conn.call(&[b"DEL", STREAM.as_bytes()]).await?;
            conn.call(&[
                b"XGROUP",
                b"CREATE",
                STREAM.as_bytes(),
                b"g",
                b"$",
                b"MKSTREAM",
            ])
            .await?;
            redis = Some(conn);
        }
        Proto::Raw => bail!("replay needs Courier (http://) or Redis (redis://)"),
    }
    let fill_secs = durable::fill(&target, STREAM, n, 50, 20, a.payload).await?;
    say!(
        "replay: {n} entries published in {fill_secs:.1}s ({:.0}/s)",
        n as f64 / fill_secs
    );

    let limit = Duration::from_secs_f64(a.timeout);
    let t = Instant::now();
    let got = match redis {
        Some(conn) => tokio::time::timeout(limit, redis_consume(conn, n, a.batch)).await,
        None => {
            let ws = client::connect(&consumer, &consumer.builder()?, None).await?;
            let got = Cell::new(0);
            tokio::time::timeout(limit, sio_consume(ws, STREAM, n, a.max_ack_pending, &got)).await
        }
    };
    let got = got.context("the consumer did not catch up in time")??;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(got >= n, "only {got} of {n} entries came back");
    let per_sec = n as f64 / secs;
    say!("replay: {n} entries delivered and acked in {secs:.2}s ({per_sec:.0}/s)");
    let mut m = Metrics::new();
    m.insert("entries_per_s".into(), round(per_sec, 0));
    m.insert(
        "fill_publishes_per_s".into(),
        round(n as f64 / fill_secs, 0),
    );
    m.insert("entries".into(), json!(n));
    Ok(m)
}

fn subscribe_packet(stream: &str, max_ack_pending: u64) -> tokio_websockets::Message {
    let req = json!({"stream": stream, "consumer": CONSUMER, "from": "new",
        "max_ack_pending": max_ack_pending});
    client::sio_event("courier:subscribe", req, Some(0))
}

/// Subscribes consumer `bench` of `stream` (`from: "new"` when it is created) and returns what
/// the ack says is pending.
pub async fn subscribe(ws: &mut Ws, stream: &str, max_ack_pending: u64) -> anyhow::Result<u64> {
    ws.send(subscribe_packet(stream, max_ack_pending)).await?;
    while let Some(m) = ws.next().await {
        let m = m?;
        match client::classify(Proto::SocketIo, m.as_payload()) {
            Incoming::Ack(0, body) => return pending_of(body),
            Incoming::Ping => ws.send(client::pong()).await?,
            _ => {}
        }
    }
    bail!("the connection closed before the subscription was confirmed")
}

fn pending_of(ack_body: &[u8]) -> anyhow::Result<u64> {
    let v: Value = serde_json::from_slice(ack_body).context("bad subscribe answer")?;
    if v[0]["ok"] != json!(true) {
        bail!("subscribe refused: {}", v[0]);
    }
    v[0]["pending"].as_u64().context("no pending count")
}

/// Subscribes consumer `bench` of `stream` and acknowledges each delivery until `n` came;
/// `got` counts them as they come.
pub async fn sio_consume(
    mut ws: Ws,
    stream: &str,
    n: u64,
    max_ack_pending: u64,
    got: &Cell<u64>,
) -> anyhow::Result<u64> {
    ws.send(subscribe_packet(stream, max_ack_pending)).await?;
    while got.get() < n {
        let mut msg = ws.next().await;
        loop {
            let m = match msg {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the server closed the consumer's connection"),
            };
            match client::classify(Proto::SocketIo, m.as_payload()) {
                Incoming::Event(Some(id), _) => {
                    got.set(got.get() + 1);
                    ws.feed(client::sio_empty_ack(id)).await?;
                }
                Incoming::Ack(0, body) => {
                    let pending = pending_of(body)?;
                    anyhow::ensure!(pending >= n, "only {pending} entries pending");
                }
                Incoming::Ping => ws.feed(client::pong()).await?,
                _ => {}
            }
            // Acknowledge everything already received with one write.
            match ws.next().now_or_never() {
                Some(more) => msg = more,
                None => break,
            }
        }
        ws.flush().await?;
    }
    Ok(got.get())
}

fn xreadgroup(conn: &mut resp::Conn, batch: usize) {
    let count = batch.to_string();
    conn.queue(&[
        b"XREADGROUP",
        b"GROUP",
        b"g",
        CONSUMER.as_bytes(),
        b"COUNT",
        count.as_bytes(),
        b"STREAMS",
        STREAM.as_bytes(),
        b">",
    ]);
}

/// Entry ids in an XREADGROUP answer: `[[stream, [[id, [field, value]], ...]]]`.
fn entry_ids(r: Reply) -> anyhow::Result<Vec<bytes::Bytes>> {
    let streams = match r {
        Reply::Array(Some(s)) => s,
        Reply::Array(None) | Reply::Bulk(None) => return Ok(Vec::new()),
        Reply::Error(e) => bail!("redis: {}", String::from_utf8_lossy(&e)),
        other => bail!("unexpected XREADGROUP answer {other:?}"),
    };
    let mut ids = Vec::new();
    for s in streams {
        let Reply::Array(Some(mut parts)) = s else {
            continue;
        };
        let Some(Reply::Array(Some(entries))) = parts.pop() else {
            continue;
        };
        for e in entries {
            if let Reply::Array(Some(mut fields)) = e
                && !fields.is_empty()
                && let Reply::Bulk(Some(id)) = fields.swap_remove(0)
            {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

async fn redis_consume(mut conn: resp::Conn, n: u64, batch: usize) -> anyhow::Result<u64> {
    let (mut delivered, mut acked) = (0u64, 0u64);
    xreadgroup(&mut conn, batch);
    conn.flush().await?;
    loop {
        let ids = entry_ids(conn.reply().await?)?;
        if ids.is_empty() {
            bail!("the group ran dry after {delivered} entries");
        }
        delivered += ids.len() as u64;
        let mut xack: Vec<&[u8]> = vec![b"XACK", STREAM.as_bytes(), b"g"];
        xack.extend(ids.iter().map(|b| &b[..]));
        conn.queue(&xack);
        let more = delivered < n;
        if more {
            xreadgroup(&mut conn, batch);
        }
        conn.flush().await?;
        match conn.reply().await? {
            Reply::Int(k) => acked += k as u64,
            other => bail!("unexpected XACK answer {other:?}"),
        }
        if !more {
            return Ok(acked);
        }
    }
}
