//! The dashboard at `/dashboard/`: one page (HTML, CSS and a small script, built into the
//! binary, nothing fetched from elsewhere) and the JSON it polls every two seconds.
//!
//! - `GET /dashboard/api/summary`: connections, sockets per namespace and node, counters (the
//!   page turns them into rates), streams and their consumers (most behind first).
//! - `GET /dashboard/api/streams/{stream}/entries?from=SEQ&limit=N`: entries of a stream, for
//!   the dead-letter streams' table.
//! - `POST /dashboard/api/streams/{stream}/replay/{seq}`: publishes a dead letter again into the
//!   stream it came from (deduped, so a second click does not publish twice).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use courier_cluster::Cluster;
use courier_server::Io;
use courier_server::store::StoreError;
use serde::Deserialize;
use serde_json::{Value, json};

/// Consumers listed per stream; the others are counted.
const MAX_CONSUMERS_LISTED: usize = 200;

/// Most entries one request reads.
const MAX_ENTRIES: usize = 500;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The page and its files.
pub fn page() -> Router {
    fn file(body: &'static str, kind: &'static str) -> Response {
        let headers = [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ];
        (headers, body).into_response()
    }
    Router::new()
        .route(
            "/dashboard/",
            get(|| async { file(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { file(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { file(STYLE, "text/css; charset=utf-8") }),
        )
}

#[derive(Clone)]
struct Dash {
    io: Io,
    cluster: Option<Cluster>,
    started: Instant,
}

/// The JSON the page reads.
pub fn api(io: Io, cluster: Option<Cluster>) -> Router {
    let state = Dash {
        io,
        cluster,
        started: Instant::now(),
    };
    Router::new()
        .route("/dashboard/api/summary", get(summary))
        .route("/dashboard/api/streams/{stream}/entries", get(entries))
        .route("/dashboard/api/streams/{stream}/replay/{seq}", post(replay))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}

fn store_error(e: StoreError) -> Response {
    let status = match e {
        StoreError::StreamNotFound(_) | StoreError::ConsumerNotFound(..) => StatusCode::NOT_FOUND,
        StoreError::InvalidName(..) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.code(), e.to_string())
}

async fn summary(State(d): State<Dash>) -> Json<Value> {
    let node = d
        .cluster
        .as_ref()
        .map_or_else(|| "local".to_owned(), |c| c.status().node);
    let (polling, websocket) = d.io.transport_counts();
    let mut namespaces = Vec::new();
    let mut list = d.io.namespaces();
    list.sort_by(|a, b| a.name().cmp(b.name()));
    for ns in list {
        let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
        match &d.cluster {
            // A sid starts with the id of the node that holds it; ids have one length.
            Some(_) => {
                for s in ns.broadcast().fetch_sockets().await {
                    let owner = s.id.get(..node.len()).unwrap_or("?").to_owned();
                    *nodes.entry(owner).or_default() += 1;
                }
            }
            None => {
                nodes.insert(node.clone(), ns.len());
            }
        }
        let total: usize = nodes.values().sum();
        namespaces.push(json!({"name": ns.name(), "sockets": total, "nodes": nodes}));
    }
    let counters = d.io.stats().map(|s| {
        json!({
            "publishes": s.publishes.get() + s.publish_duplicates.get(),
            "deliveries": s.deliveries.get() + s.redeliveries.get(),
            "redeliveries": s.redeliveries.get(),
            "dead_lettered": s.dead_lettered.get(),
            "events_received": s.events_received.get(),
            "events_emitted": s.events_emitted.get(),
            "broadcast_recipients": s.broadcast_recipients.get(),
        })
    });
    let mut body = json!({
        "node": node,
        "uptime_s": d.started.elapsed().as_secs_f64(),
        "connections": {"polling": polling, "websocket": websocket},
        "namespaces": namespaces,
        "counters": counters,
        "streams": Value::Null,
    });
    if let Some(c) = &d.cluster {
        body["cluster"] = json!({"redis_up": c.status().redis_up, "nodes": c.nodes()});
    }
    // A node's own streams, or a cluster's read from Redis (left out if it does not answer).
    if let Some(streams) = d.io.streams()
        && let Ok((list, summaries)) = streams.overview().await
    {
        body["streams"] = streams_json(&list, &summaries);
    }
    Json(body)
}

fn streams_json(
    list: &[courier_server::store::StreamInfo],
    summaries: &[(String, String, courier_server::store::ConsumerSummary)],
) -> Value {
    let list: Vec<Value> = list
        .iter()
        .map(|s| {
            let mut consumers: Vec<Value> = summaries
                .iter()
                .filter(|(stream, _, _)| *stream == s.name)
                .map(|(_, name, c)| {
                    json!({
                        "name": name,
                        "delivered": c.delivered,
                        "pending": c.pending,
                        "waiting": s.last_seq.saturating_sub(c.delivered),
                        "redelivered": c.redelivered,
                        "dead_lettered": c.dead_lettered,
                    })
                })
                .collect();
            let lag =
                |v: &Value| v["waiting"].as_u64().unwrap_or(0) + v["pending"].as_u64().unwrap_or(0);
            consumers.sort_by_key(|v| std::cmp::Reverse(lag(v)));
            let more = consumers.len().saturating_sub(MAX_CONSUMERS_LISTED);
            consumers.truncate(MAX_CONSUMERS_LISTED);
            json!({
                "name": s.name,
                "entries": s.entries,
                "bytes": s.bytes,
                "first_seq": s.first_seq,
                "last_seq": s.last_seq,
                "dead_letter": s.config.dead_letter_of(&s.name),
                "consumers": consumers,
                "more_consumers": more,
            })
        })
        .collect();
    Value::Array(list)
}

#[derive(Deserialize)]
struct EntriesQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn entries(
    State(d): State<Dash>,
    Path(stream): Path<String>,
    Query(q): Query<EntriesQuery>,
) -> Response {
    let Some(streams) = d.io.streams() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this hub has no streams",
        );
    };
    let info = match streams.info(&stream).await {
        Ok(Some(info)) => info,
        Ok(None) => return store_error(StoreError::StreamNotFound(stream)),
        Err(e) => return store_error(e),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_ENTRIES);
    // By default the newest `limit` entries.
    let from = q.from.unwrap_or_else(|| {
        info.last_seq
            .saturating_sub(limit as u64 - 1)
            .max(info.first_seq)
    });
    match streams.read(&stream, from, limit).await {
        Ok(list) => {
            let list: Vec<Value> = list
                .iter()
                .map(|e| {
                    json!({
                        "seq": e.seq,
                        "ts_ms": e.ts_ms,
                        "id": e.id,
                        "event": e.event,
                        "data": serde_json::from_slice::<Value>(&e.data).unwrap_or(Value::Null),
                    })
                })
                .collect();
            Json(json!({"stream": stream, "entries": list})).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn replay(State(d): State<Dash>, Path((stream, seq)): Path<(String, u64)>) -> Response {
    let Some(streams) = d.io.streams() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this hub has no streams",
        );
    };
    let entry = match streams.read(&stream, seq, 1).await {
        Ok(list) => list.into_iter().find(|e| e.seq == seq),
        Err(e) => return store_error(e),
    };
    let Some(entry) = entry else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{stream:?} has no entry {seq}"),
        );
    };
    // A dead letter is {stream, consumer, seq, id, deliveries, data} (see docs/streams.md).
    let letter: Value = serde_json::from_slice(&entry.data).unwrap_or(Value::Null);
    let Some(target) = letter["stream"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("entry {seq} of {stream:?} is not a dead letter"),
        );
    };
    let id = format!("replay:{stream}:{seq}");
    match streams
        .publish(target, &entry.event, &letter["data"], Some(id))
        .await
    {
        Ok(a) => {
            tracing::info!(
                from = stream,
                seq,
                to = target,
                new_seq = a.seq,
                "dead letter replayed"
            );
            Json(json!({"stream": target, "seq": a.seq, "duplicate": a.duplicate})).into_response()
        }
        Err(e) => store_error(e),
    }
}
