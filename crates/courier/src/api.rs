//! The HTTP API of `courier serve`, for backends: health, emit (optionally waiting for acks),
//! disconnect, and a listing of sockets. JSON in, JSON out; every error is
//! `{"error":{"code","message"}}` with a 4xx status.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use courier_cluster::Cluster;
use courier_proto::socket::is_event_name;
use courier_server::auth::{JwtVerifier, Scope};
use courier_server::engine::RemoteAddr;
use courier_server::store::{ConsumerRecord, Seq, StoreError, StreamConfig, StreamInfo};
use courier_server::{BroadcastOperator, Io, Payload, Streams};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Longest a request may wait for acknowledgements.
const MAX_ACK_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Api {
    io: Io,
    cluster: Option<Cluster>,
    auth: Arc<ApiAuth>,
}

/// Who may call the API: the static token (every scope), JWTs with `courier.api` scopes, or
/// (with neither) anyone, from loopback only unless anonymous calls are allowed.
pub struct ApiAuth {
    /// The static token; empty: none.
    pub token: String,
    /// Verifies JWTs, when configured.
    pub verifier: Option<Arc<JwtVerifier>>,
    /// Protected mode: no API authentication configured and anonymous calls not allowed.
    pub loopback_only: bool,
}

impl ApiAuth {
    /// Checks a request's bearer token for the scope its route needs.
    fn check(&self, req: &Request) -> Result<(), ApiError> {
        let fail = |status, code: &'static str, message: String| {
            Err(ApiError {
                status,
                code,
                message,
            })
        };
        if self.token.is_empty() && self.verifier.is_none() {
            let local = req
                .extensions()
                .get::<RemoteAddr>()
                .is_some_and(|a| crate::hub::is_loopback(a.0.ip()));
            if self.loopback_only && !local {
                return fail(
                    StatusCode::FORBIDDEN,
                    "protected_mode",
                    "protected mode: this hub has no API authentication configured and accepts \
                     only local calls; set api.token, configure [auth], or set [auth] \
                     allow_anonymous = true"
                        .into(),
                );
            }
            return Ok(());
        }
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let statics = std::slice::from_ref(&self.token);
        let identity = match crate::hub::authenticate(given, statics, self.verifier.as_deref()) {
            Ok(None) => return Ok(()),
            Ok(Some(i)) => i,
            Err(e) => return fail(StatusCode::UNAUTHORIZED, e.code(), e.to_string()),
        };
        let scope = scope_of(req.method(), req.uri().path());
        if identity.grants.api.contains(&scope) {
            return Ok(());
        }
        tracing::info!(
            sub = identity.sub,
            path = req.uri().path(),
            scope = scope.as_str(),
            "API call denied: scope missing"
        );
        fail(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token lacks the {:?} scope", scope.as_str()),
        )
    }
}

/// The scope a route needs: `read` for every GET, `publish` to publish, `emit` to emit or
/// disconnect, `manage` for the rest (create or change streams, purge, delete consumers).
fn scope_of(method: &Method, path: &str) -> Scope {
    if *method == Method::GET {
        Scope::Read
    } else if path.ends_with("/publish") || path.contains("/replay/") {
        // A replayed dead letter (the dashboard's) is a publish into its stream.
        Scope::Publish
    } else if path.ends_with("/emit") || path.ends_with("/disconnect") {
        Scope::Emit
    } else {
        Scope::Manage
    }
}

/// The router with the API and, as fallback, the hub's Engine.IO endpoint.
pub fn router(io: Io, cluster: Option<Cluster>, auth: ApiAuth, max_body: usize) -> Router {
    let api = Api {
        io: io.clone(),
        cluster,
        auth: Arc::new(auth),
    };
    let v1 = Router::new()
        .route("/emit", post(emit))
        .route("/disconnect", post(disconnect))
        .route("/sockets", get(sockets))
        .route("/streams", get(list_streams))
        .route("/streams/{stream}", get(stream_info).put(put_stream))
        .route("/streams/{stream}/publish", post(publish))
        .route("/streams/{stream}/purge", post(purge))
        .route("/streams/{stream}/consumers", get(list_consumers))
        .route(
            "/streams/{stream}/consumers/{consumer}",
            get(consumer_info).delete(delete_consumer),
        )
        .layer(middleware::from_fn_with_state(api.clone(), authorize))
        .fallback(|| async { ApiError::not_found("no such API route") });
    Router::new()
        .route("/health", get(health))
        .nest("/api/v1", v1)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(api)
        .fallback_service(io.service())
}

/// An API error: a status and a JSON body naming what went wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

async fn authorize(State(api): State<Api>, req: Request, next: Next) -> Response {
    match api.auth.check(&req) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            // Answered before the body is read: the connection cannot carry another request, and
            // the client must know that rather than find it dropped under its next one.
            let mut res = e.into_response();
            let close = HeaderValue::from_static("close");
            res.headers_mut().insert(header::CONNECTION, close);
            res
        }
    }
}

/// A request body, or why it could not be read (too large, say).
type Body = Result<Bytes, BytesRejection>;

/// Parses a JSON body, answering malformed or oversized input with an error that says what is
/// wrong.
fn parse<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        code: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        },
        message: e.body_text(),
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

async fn health(State(api): State<Api>) -> Json<Value> {
    let mut body = json!({"status": "ok", "connections": api.io.connection_count()});
    if let Some(c) = &api.cluster {
        let s = c.status();
        body["cluster"] = json!({"redis": if s.redis_up { "up" } else { "down" }, "node": s.node});
    }
    if let Some(store) = api.io.streams().and_then(|s| s.store()) {
        let m = store.memory_use();
        body["memory"] = json!({
            "tail_bytes": m.tail_bytes,
            "tail_entries": m.tail_entries,
            "recovery_bytes": m.recovery_bytes,
            "recovery_events": m.recovery_events,
            "recovery_kept": m.recovery_kept,
            "recovery_unpersisted": m.recovery_unpersisted,
        });
    }
    Json(body)
}

fn default_ns() -> String {
    "/".into()
}

/// The sockets of `namespace` in any of `rooms` (all with none), minus those in `except`.
fn targets(
    io: &Io,
    namespace: &str,
    rooms: &[String],
    except: &[String],
) -> Result<BroadcastOperator, ApiError> {
    // A namespace from a pattern may have sockets on other nodes of a cluster only.
    let ns = io
        .get_or_create(namespace)
        .ok_or_else(|| ApiError::not_found(format!("no namespace {namespace:?}")))?;
    let mut op = ns.broadcast();
    for r in rooms {
        op = op.to(r.as_str());
    }
    for r in except {
        op = op.except(r.as_str());
    }
    Ok(op)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitRequest {
    #[serde(default = "default_ns")]
    namespace: String,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
    event: String,
    #[serde(default)]
    data: Vec<Value>,
    #[serde(default)]
    volatile: bool,
    ack_timeout_ms: Option<u64>,
}

async fn emit(State(api): State<Api>, body: Body) -> Result<Json<Value>, ApiError> {
    let req: EmitRequest = parse(body)?;
    if !is_event_name(&req.event) {
        return Err(ApiError::bad_request(format!(
            "{:?} cannot be emitted",
            req.event
        )));
    }
    let mut op = targets(&api.io, &req.namespace, &req.rooms, &req.except)?;
    if req.volatile {
        op = op.volatile();
    }
    let payload = Payload::from(req.data);
    let Some(ms) = req.ack_timeout_ms else {
        let n = op
            .emit_counted(&req.event, payload)
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        return Ok(Json(json!({"recipients": n})));
    };
    let timeout = Duration::from_millis(ms).min(MAX_ACK_WAIT);
    let results = op.emit_with_ack(&req.event, payload, timeout).await;
    let timeouts = results.recipients.saturating_sub(results.answers.len());
    let acks: Vec<Value> = results
        .answers
        .into_iter()
        .map(|(sid, p)| json!({"sid": sid.as_deref(), "args": p.args}))
        .collect();
    Ok(Json(
        json!({"recipients": results.recipients, "acks": acks, "timeouts": timeouts}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    #[serde(default = "default_ns")]
    namespace: String,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    close: bool,
}

async fn disconnect(State(api): State<Api>, body: Body) -> Result<Json<Value>, ApiError> {
    let req: DisconnectRequest = parse(body)?;
    let n = targets(&api.io, &req.namespace, &req.rooms, &[])?
        .disconnect(req.close)
        .await;
    Ok(Json(json!({"disconnected": n})))
}

#[derive(Deserialize)]
struct SocketsQuery {
    #[serde(default = "default_ns")]
    namespace: String,
    room: Option<String>,
}

async fn sockets(
    State(api): State<Api>,
    Query(q): Query<SocketsQuery>,
) -> Result<Json<Value>, ApiError> {
    let rooms: Vec<String> = q.room.into_iter().collect();
    let list: Vec<Value> = targets(&api.io, &q.namespace, &rooms, &[])?
        .fetch_sockets()
        .await
        .into_iter()
        .map(|s| json!({"sid": s.id.as_ref(), "rooms": s.rooms, "transport": s.transport, "sub": s.sub}))
        .collect();
    Ok(Json(json!({"sockets": list})))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::StreamNotFound(_) | StoreError::ConsumerNotFound(..) => {
                StatusCode::NOT_FOUND
            }
            StoreError::InvalidName(..) => StatusCode::BAD_REQUEST,
            StoreError::TooLarge(..) => StatusCode::PAYLOAD_TOO_LARGE,
            StoreError::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::TooManyStreams(_) | StoreError::TooManyConsumers(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
        }
    }
}

fn streams(api: &Api) -> Result<&Streams, ApiError> {
    api.io.streams().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "unavailable",
        message: crate::hub::NO_STREAMS.into(),
    })
}

fn stream_json(s: &StreamInfo) -> Value {
    json!({
        "name": s.name,
        "first_seq": s.first_seq,
        "last_seq": s.last_seq,
        "entries": s.entries,
        "bytes": s.bytes,
        "consumers": s.consumers,
        "config": s.config,
    })
}

fn consumer_json(name: &str, last_seq: Seq, r: &ConsumerRecord) -> Value {
    let st = &r.state;
    json!({
        "name": name,
        "delivered": st.delivered(),
        "ack_floor": st.ack_floor(),
        "pending": st.pending.len(),
        "waiting": last_seq.saturating_sub(st.delivered()),
        "redelivered": st.redelivered,
        "dead_lettered": st.dead_lettered,
        "config": r.config,
    })
}

async fn list_streams(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = streams(&api)?
        .list()
        .await?
        .iter()
        .map(stream_json)
        .collect();
    Ok(Json(json!({"streams": list})))
}

async fn find_stream(api: &Api, name: &str) -> Result<StreamInfo, ApiError> {
    streams(api)?
        .info(name)
        .await?
        .ok_or_else(|| StoreError::StreamNotFound(name.to_owned()).into())
}

async fn stream_info(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(stream_json(&find_stream(&api, &name).await?)))
}

async fn put_stream(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let config: Value = parse(body)?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "expected a JSON object of stream settings",
        ));
    }
    let config: StreamConfig = serde_json::from_value(config)
        .map_err(|e| ApiError::bad_request(format!("invalid stream settings: {e}")))?;
    let info = streams(&api)?.create_stream(&name, config).await?;
    Ok(Json(stream_json(&info)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    event: String,
    #[serde(default)]
    data: Value,
    id: Option<String>,
}

async fn publish(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: PublishRequest = parse(body)?;
    if !is_event_name(&req.event) {
        return Err(ApiError::bad_request(format!(
            "{:?} cannot be an event name",
            req.event
        )));
    }
    let a = streams(&api)?
        .publish(&name, &req.event, &req.data, req.id)
        .await?;
    Ok(Json(json!({"seq": a.seq, "duplicate": a.duplicate})))
}

async fn purge(State(api): State<Api>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let n = streams(&api)?.purge(&name).await?;
    Ok(Json(json!({"purged": n})))
}

async fn list_consumers(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = find_stream(&api, &name).await?;
    let list: Vec<Value> = streams(&api)?
        .consumers(&name)
        .await?
        .iter()
        .map(|(c, r)| consumer_json(c, info.last_seq, r))
        .collect();
    Ok(Json(json!({"consumers": list})))
}

async fn consumer_info(
    State(api): State<Api>,
    Path((name, consumer)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let info = find_stream(&api, &name).await?;
    let r = streams(&api)?
        .consumers(&name)
        .await?
        .into_iter()
        .find_map(|(c, r)| (c == consumer).then_some(r))
        .ok_or_else(|| StoreError::ConsumerNotFound(name.clone(), consumer.clone()))?;
    Ok(Json(consumer_json(&consumer, info.last_seq, &r)))
}

async fn delete_consumer(
    State(api): State<Api>,
    Path((name, consumer)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    find_stream(&api, &name).await?;
    if !streams(&api)?.delete_consumer(&name, &consumer).await? {
        return Err(StoreError::ConsumerNotFound(name, consumer).into());
    }
    Ok(Json(json!({"deleted": true})))
}

/// `routes` behind the same check as `/api/v1` (the scope of each route from [`scope_of`]).
pub fn behind_token(routes: Router, io: Io, cluster: Option<Cluster>, auth: ApiAuth) -> Router {
    let api = Api {
        io,
        cluster,
        auth: Arc::new(auth),
    };
    routes.layer(middleware::from_fn_with_state(api, authorize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_routes_need_read_and_a_replay_needs_publish() {
        for path in [
            "/metrics",
            "/dashboard/api/summary",
            "/dashboard/api/streams/orders.dlq/entries",
        ] {
            assert_eq!(scope_of(&Method::GET, path), Scope::Read, "{path}");
        }
        let replay = "/dashboard/api/streams/orders.dlq/replay/7";
        assert_eq!(scope_of(&Method::POST, replay), Scope::Publish);
    }
}
