//! A client of the HTTP API of `courier serve` (see `docs/serve.md` and `docs/streams.md`):
//! emit to sockets, disconnect them, publish to streams and inspect streams and consumers.
//!
//! HTTP/1.1 over plain TCP with keep-alive; idle connections are kept for the next request.

use parking_lot::Mutex;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::config::percent_encode;
use crate::error::{Error, Result};
use crate::streams::Published;

/// Most idle connections kept.
const IDLE_MAX: usize = 16;

/// A client of Courier's HTTP API. Cheap to share (`&self` everywhere, or in an `Arc`);
/// concurrent requests use separate connections.
pub struct ApiClient {
    base: String,
    authority: String,
    token: Option<String>,
    // A blocking mutex (parking_lot): a push or pop, never held across an await.
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// `POST /api/v1/emit`: what to send to which sockets.
#[derive(Debug, Clone, Serialize)]
pub struct EmitRequest {
    /// The namespace. Default `/`.
    pub namespace: String,
    /// Target rooms; empty means the whole namespace.
    pub rooms: Vec<String>,
    /// Rooms whose sockets are left out.
    pub except: Vec<String>,
    /// The event name.
    pub event: String,
    /// The arguments.
    pub data: Vec<Value>,
    /// May be dropped for clients that cannot take it now.
    pub volatile: bool,
    /// Ask every recipient for an acknowledgement and wait at most this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
}

impl EmitRequest {
    /// `event` with `data` to the whole default namespace.
    pub fn new(event: impl Into<String>, data: Vec<Value>) -> Self {
        EmitRequest {
            namespace: "/".into(),
            rooms: Vec::new(),
            except: Vec::new(),
            event: event.into(),
            data,
            volatile: false,
            ack_timeout_ms: None,
        }
    }
}

/// The answer to an emit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Emitted {
    /// Sockets the event was sent to.
    pub recipients: u64,
    /// With `ack_timeout_ms`: the acknowledgements received.
    #[serde(default)]
    pub acks: Vec<AckAnswer>,
    /// With `ack_timeout_ms`: recipients that did not answer in time.
    #[serde(default)]
    pub timeouts: u64,
}

/// One socket's acknowledgement of an emit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AckAnswer {
    /// The socket.
    pub sid: String,
    /// The arguments it answered with.
    pub args: Vec<Value>,
}

/// A stream as the API describes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct StreamInfo {
    /// The name.
    pub name: String,
    /// Sequence number of the oldest entry kept (`last_seq + 1` when empty).
    pub first_seq: u64,
    /// Sequence number of the newest entry ever stored (0 when none).
    pub last_seq: u64,
    /// Entries kept.
    pub entries: u64,
    /// Bytes of entries kept.
    pub bytes: u64,
    /// Consumer names.
    pub consumers: Vec<String>,
    /// Retention and dedupe settings.
    pub config: Value,
}

/// A consumer as the API describes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ConsumerInfo {
    /// The name.
    pub name: String,
    /// Highest sequence number delivered.
    pub delivered: u64,
    /// Every entry up to this one is acknowledged.
    pub ack_floor: u64,
    /// Delivered and not yet acknowledged.
    pub pending: u64,
    /// Not delivered yet.
    pub waiting: u64,
    /// Deliveries that were repeats.
    pub redelivered: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// The consumer's settings.
    pub config: Value,
}

/// A connected socket as the API lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SocketInfo {
    /// Socket id.
    pub sid: String,
    /// Rooms, its own id included.
    pub rooms: Vec<String>,
    /// `polling` or `websocket`.
    pub transport: String,
}

impl ApiClient {
    /// A client of the API at `url` (`http://host:port`), sending `token` as a bearer token when
    /// given. Nothing is connected until the first request.
    pub fn new(url: &str, token: Option<String>) -> Result<ApiClient> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("TLS is not supported; use http://")),
            _ => return Err(bad("expected http://host:port")),
        }
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        if authority.host().is_empty() {
            return Err(bad("missing host"));
        }
        let authority = if authority.port().is_some() {
            authority.to_string()
        } else {
            format!("{}:80", authority.host())
        };
        Ok(ApiClient {
            base: url.trim_end_matches('/').to_owned(),
            authority,
            token: token.filter(|t| !t.is_empty()),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Value> {
        self.call(Method::GET, "/health", None).await
    }

    /// `POST /api/v1/emit`.
    pub async fn emit(&self, req: &EmitRequest) -> Result<Emitted> {
        self.call(
            Method::POST,
            "/api/v1/emit",
            Some(serde_json::to_value(req)?),
        )
        .await
    }

    /// `POST /api/v1/disconnect`: the sockets of `namespace` in `rooms` (all with none) leave
    /// it, or with `close` lose their whole connection (and reconnect by themselves). Returns
    /// how many.
    pub async fn disconnect(&self, namespace: &str, rooms: &[String], close: bool) -> Result<u64> {
        let body = json!({"namespace": namespace, "rooms": rooms, "close": close});
        let v: Value = self
            .call(Method::POST, "/api/v1/disconnect", Some(body))
            .await?;
        count(&v, "disconnected")
    }

    /// `GET /api/v1/sockets`.
    pub async fn sockets(&self, namespace: &str, room: Option<&str>) -> Result<Vec<SocketInfo>> {
        let mut path = format!("/api/v1/sockets?namespace={}", percent_encode(namespace));
        if let Some(r) = room {
            path.push_str(&format!("&room={}", percent_encode(r)));
        }
        let v: Value = self.call(Method::GET, &path, None).await?;
        field(v, "sockets")
    }

    /// `POST /api/v1/streams/{stream}/publish`: answers once the entry is durable.
    pub async fn publish(
        &self,
        stream: &str,
        event: &str,
        data: &Value,
        id: Option<&str>,
    ) -> Result<Published> {
        let mut body = json!({"event": event, "data": data});
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        let path = format!("/api/v1/streams/{}/publish", percent_encode(stream));
        self.call(Method::POST, &path, Some(body)).await
    }

    /// `GET /api/v1/streams`.
    pub async fn streams(&self) -> Result<Vec<StreamInfo>> {
        let v: Value = self.call(Method::GET, "/api/v1/streams", None).await?;
        field(v, "streams")
    }

    /// `GET /api/v1/streams/{stream}`.
    pub async fn stream(&self, stream: &str) -> Result<StreamInfo> {
        let path = format!("/api/v1/streams/{}", percent_encode(stream));
        self.call(Method::GET, &path, None).await
    }

    /// `PUT /api/v1/streams/{stream}`: creates or updates a stream with `config`
    /// (`max_age_ms`, `max_entries`, `max_bytes`, `dedupe_window_ms`, `dead_letter`).
    pub async fn put_stream(&self, stream: &str, config: &Value) -> Result<StreamInfo> {
        let path = format!("/api/v1/streams/{}", percent_encode(stream));
        self.call(Method::PUT, &path, Some(config.clone())).await
    }

    /// `POST /api/v1/streams/{stream}/purge`: removes every entry; returns how many.
    pub async fn purge(&self, stream: &str) -> Result<u64> {
        let path = format!("/api/v1/streams/{}/purge", percent_encode(stream));
        let v: Value = self.call(Method::POST, &path, None).await?;
        count(&v, "purged")
    }

    /// `GET /api/v1/streams/{stream}/consumers`.
    pub async fn consumers(&self, stream: &str) -> Result<Vec<ConsumerInfo>> {
        let path = format!("/api/v1/streams/{}/consumers", percent_encode(stream));
        let v: Value = self.call(Method::GET, &path, None).await?;
        field(v, "consumers")
    }

    /// `GET /api/v1/streams/{stream}/consumers/{consumer}`.
    pub async fn consumer(&self, stream: &str, consumer: &str) -> Result<ConsumerInfo> {
        let path = format!(
            "/api/v1/streams/{}/consumers/{}",
            percent_encode(stream),
            percent_encode(consumer)
        );
        self.call(Method::GET, &path, None).await
    }

    /// `DELETE /api/v1/streams/{stream}/consumers/{consumer}`.
    pub async fn delete_consumer(&self, stream: &str, consumer: &str) -> Result<()> {
        let path = format!(
            "/api/v1/streams/{}/consumers/{}",
            percent_encode(stream),
            percent_encode(consumer)
        );
        let _: Value = self.call(Method::DELETE, &path, None).await?;
        Ok(())
    }

    /// Any request: `path` (with its query) and an optional JSON body; the JSON answer as `T`.
    /// An error status becomes [`Error::Api`] with the code and message of the body.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, bytes) = self.send(method, path, body).await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Error::BadAnswer(format!(
                    "{e}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ))
            });
        }
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let err = parsed.as_ref().and_then(|v| v.get("error"));
        let text = |k: &str| {
            err.and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Err(Error::Api {
            status: status.as_u16(),
            code: text("code").unwrap_or_else(|| format!("http_{}", status.as_u16())),
            message: text("message").unwrap_or_else(|| {
                let body = String::from_utf8_lossy(&bytes).trim().to_owned();
                if body.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_owned()
                } else {
                    body
                }
            }),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes)> {
        let url = format!("{}{path}", self.base);
        let http_err = |reason: String| Error::Http {
            url: url.clone(),
            reason,
        };
        // A kept connection may have been closed by the server meanwhile: then try a fresh one.
        let mut reused = self.idle.lock().pop();
        loop {
            let was_reused = reused.is_some();
            let mut sender = match reused.take() {
                Some(s) => s,
                None => self.open().await.map_err(&http_err)?,
            };
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(header::HOST, &self.authority)
                .header(header::ACCEPT, "application/json");
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            if let Some(t) = &self.token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Full::new(body.clone().unwrap_or_default()))
                .map_err(|e| http_err(e.to_string()))?;
            // A kept connection that is no longer ready never saw the request: try a fresh one.
            // Once sent, only an idempotent request is sent again: a POST may have reached the
            // hub (a publish without an id would be stored twice).
            if sender.ready().await.is_err() && was_reused {
                continue;
            }
            let res = match sender.send_request(req).await {
                Ok(r) => r,
                Err(_) if was_reused && method.is_idempotent() => continue,
                Err(e) => return Err(http_err(e.to_string())),
            };
            let status = res.status();
            let bytes = res
                .into_body()
                .collect()
                .await
                .map_err(|e| http_err(e.to_string()))?
                .to_bytes();
            let mut idle = self.idle.lock();
            if idle.len() < IDLE_MAX && !sender.is_closed() {
                idle.push(sender);
            }
            return Ok((status, bytes));
        }
    }

    async fn open(&self) -> std::result::Result<SendRequest<Full<Bytes>>, String> {
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish()
    }
}

fn count(v: &Value, key: &str) -> Result<u64> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::BadAnswer(v.to_string()))
}

fn field<T: DeserializeOwned>(mut v: Value, key: &str) -> Result<T> {
    let inner = v.get_mut(key).map(Value::take).unwrap_or(Value::Null);
    serde_json::from_value(inner).map_err(|e| Error::BadAnswer(format!("{key}: {e}")))
}
