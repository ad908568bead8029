//! The HTTP API of `courier serve`, for backends: health, emit (optionally waiting for acks),
//! disconnect, and a listing of sockets. JSON in, JSON out; every error is
//! `{"error":{"code","message"}}` with a 4xx status.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use courier_proto::socket::RESERVED_EVENTS;
use courier_server::{BroadcastOperator, Io, Payload};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Longest a request may wait for acknowledgements.
const MAX_ACK_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Api {
    io: Io,
    token: String,
}

/// The router with the API and, as fallback, the hub's Engine.IO endpoint.
pub fn router(io: Io, token: String, max_body: usize) -> Router {
    let api = Api {
        io: io.clone(),
        token,
    };
    let v1 = Router::new()
        .route("/emit", post(emit))
        .route("/disconnect", post(disconnect))
        .route("/sockets", get(sockets))
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
    if !api.token.is_empty() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(api.token.as_str()) {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: "missing or wrong bearer token".into(),
            }
            .into_response();
        }
    }
    next.run(req).await
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
    Json(json!({"status": "ok", "connections": api.io.connection_count()}))
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
    let ns = io
        .get(namespace)
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
    if req.event.is_empty() || RESERVED_EVENTS.contains(&req.event.as_str()) {
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
            .emit_payload(&req.event, payload)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        return Ok(Json(json!({"recipients": n})));
    };
    let timeout = Duration::from_millis(ms).min(MAX_ACK_WAIT);
    let results = op.emit_with_ack(&req.event, payload, timeout).await;
    let recipients = results.len();
    let mut acks = Vec::new();
    let mut timeouts = 0;
    for (sid, res) in results {
        match res {
            Ok(p) => acks.push(json!({"sid": sid.as_ref(), "args": p.args})),
            Err(_) => timeouts += 1,
        }
    }
    Ok(Json(
        json!({"recipients": recipients, "acks": acks, "timeouts": timeouts}),
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
    let n = targets(&api.io, &req.namespace, &req.rooms, &[])?.disconnect(req.close);
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
        .sockets()
        .into_iter()
        .map(|s| json!({"sid": s.id().as_ref(), "rooms": s.rooms(), "transport": s.transport().name()}))
        .collect();
    Ok(Json(json!({"sockets": list})))
}
