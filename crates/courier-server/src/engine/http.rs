//! HTTP side of the engine: request checks, error answers, CORS, and routing to a transport.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::{Engine, Handler, Transport};

/// The peer address of a connection, put in request extensions by [`crate::serve`].
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// An Engine.IO request error, answered as the reference server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The `transport` parameter names no enabled transport.
    #[error("Transport unknown")]
    TransportUnknown,
    /// The `sid` parameter names no open session.
    #[error("Session ID unknown")]
    UnknownSid,
    /// A handshake that is not a GET.
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    /// Anything else the protocol does not allow.
    #[error("Bad request")]
    BadRequest,
    /// `EIO` other than 4.
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion,
    /// A body over `max_payload`.
    #[error("Payload too large")]
    PayloadTooLarge,
    /// A handshake while `max_sessions` sessions are open.
    #[error("Too many connections")]
    TooManySessions,
    /// A handshake from an address that has `max_sessions_per_ip` sessions open.
    #[error("Too many connections from this address")]
    TooManyFromAddress,
    /// A handshake past `handshakes_per_ip_per_second`.
    #[error("Too many handshakes from this address")]
    TooManyHandshakes,
}

impl EngineError {
    fn code(self) -> u8 {
        match self {
            EngineError::TransportUnknown => 0,
            EngineError::UnknownSid => 1,
            EngineError::BadHandshakeMethod => 2,
            EngineError::BadRequest | EngineError::PayloadTooLarge => 3,
            // The reference server's code for a handshake its `allowRequest` refuses.
            EngineError::TooManySessions
            | EngineError::TooManyFromAddress
            | EngineError::TooManyHandshakes => 4,
            EngineError::UnsupportedProtocolVersion => 5,
        }
    }

    pub(crate) fn response(self) -> Response<Full<Bytes>> {
        let status = match self {
            EngineError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            EngineError::TooManySessions => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::TooManyFromAddress | EngineError::TooManyHandshakes => {
                StatusCode::TOO_MANY_REQUESTS
            }
            _ => StatusCode::BAD_REQUEST,
        };
        let body = serde_json::json!({"code": self.code(), "message": self.to_string()});
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("static response parts")
    }
}

/// The query parameters the engine reads.
#[derive(Default)]
pub(crate) struct Query<'a> {
    pub eio: Option<&'a str>,
    pub transport: Option<&'a str>,
    pub sid: Option<&'a str>,
}

impl<'a> Query<'a> {
    pub fn parse(query: &'a str) -> Self {
        let mut q = Query::default();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "EIO" => q.eio = Some(v),
                "transport" => q.transport = Some(v),
                "sid" => q.sid = Some(v),
                _ => {}
            }
        }
        q
    }
}

pub(crate) type HttpResponse = Response<Full<Bytes>>;

impl<H: Handler> Engine<H> {
    /// Whether `path` is this engine's endpoint (with or without the trailing slash).
    pub fn matches_path(&self, path: &str) -> bool {
        let own = &self.inner.config.path;
        path == own || own.strip_suffix('/') == Some(path)
    }

    /// Answers one HTTP request to the engine endpoint.
    pub async fn handle<B>(&self, req: Request<B>) -> HttpResponse
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let mut res = if req.method() == Method::OPTIONS {
            self.preflight(&req)
        } else {
            match self.route(req).await {
                Ok(res) => res,
                Err(e) => e.response(),
            }
        };
        self.add_cors(origin.as_ref(), &mut res);
        res
    }

    async fn route<B>(&self, req: Request<B>) -> Result<HttpResponse, EngineError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let config = &self.inner.config;
        let query = req.uri().query().unwrap_or("").to_owned();
        let q = Query::parse(&query);
        let transport = match q.transport {
            Some("polling") if config.polling => Transport::Polling,
            Some("websocket") if config.websocket => Transport::WebSocket,
            _ => return Err(EngineError::TransportUnknown),
        };
        let is_upgrade = is_websocket_upgrade(&req);
        match q.sid {
            Some(sid) => {
                let Some(entry) = self.entry(sid) else {
                    // Perhaps another node's session: the one place a cluster costs anything.
                    return self.forward(sid, transport, is_upgrade, req).await;
                };
                if transport == Transport::WebSocket {
                    if !is_upgrade {
                        return Err(EngineError::BadRequest);
                    }
                    // A session that has a websocket already is the upgrade's business too: the
                    // new one is accepted and closed, not refused here.
                    return self.upgrade_websocket(req, Some(entry));
                }
                if entry.session.transport() != Transport::Polling {
                    return Err(EngineError::BadRequest);
                }
                match *req.method() {
                    Method::GET => Ok(self.poll_get(entry).await),
                    Method::POST => self.poll_post(entry, req).await,
                    _ => Err(EngineError::BadRequest),
                }
            }
            None => {
                if req.method() != Method::GET {
                    return Err(EngineError::BadHandshakeMethod);
                }
                if q.eio != Some("4") {
                    return Err(EngineError::UnsupportedProtocolVersion);
                }
                let max = config.max_sessions;
                if max > 0 && self.inner.sessions.len() >= max {
                    tracing::debug!(max, "handshake refused: max_sessions sessions are open");
                    if let Some(s) = self.stats() {
                        s.refuse(crate::stats::Refusal::MaxSessions);
                    }
                    return Err(EngineError::TooManySessions);
                }
                if let Err(e) = self.admit_address(&req) {
                    if let Some(s) = self.stats() {
                        s.refuse(match e {
                            EngineError::TooManyHandshakes => crate::stats::Refusal::HandshakeRate,
                            _ => crate::stats::Refusal::MaxSessionsPerIp,
                        });
                    }
                    return Err(e);
                }
                match transport {
                    Transport::WebSocket if is_upgrade => self.upgrade_websocket(req, None),
                    Transport::WebSocket => Err(EngineError::BadRequest),
                    Transport::Polling => Ok(self.poll_handshake(req)),
                }
            }
        }
    }

    fn allowed_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let cors = &self.inner.config.cors;
        if cors.origins.is_empty() {
            return None;
        }
        let any = cors.origins.iter().any(|o| o == "*");
        match origin {
            Some(o) if any || cors.origins.iter().any(|a| a.as_bytes() == o.as_bytes()) => {
                Some(if any && !cors.credentials {
                    HeaderValue::from_static("*")
                } else {
                    o.clone()
                })
            }
            None if any => Some(HeaderValue::from_static("*")),
            _ => None,
        }
    }

    fn add_cors(&self, origin: Option<&HeaderValue>, res: &mut HttpResponse) {
        let Some(allow) = self.allowed_origin(origin) else {
            return;
        };
        let h = res.headers_mut();
        if allow != "*" {
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.inner.config.cors.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    fn preflight<B>(&self, req: &Request<B>) -> HttpResponse {
        let mut res = Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "GET,HEAD,PUT,PATCH,POST,DELETE",
            )
            .body(Full::default())
            .expect("static response parts");
        if let Some(h) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            res.headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
        }
        res
    }
}

pub(crate) fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    req.method() == Method::GET
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
}

pub(crate) fn text_response(body: Bytes, content_type: &'static str) -> HttpResponse {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .expect("static response parts")
}

/// An [`Engine`] as a tower `Service`: answers its endpoint, 404 elsewhere.
pub struct EngineService<H: Handler>(Engine<H>);

impl<H: Handler> Clone for EngineService<H> {
    fn clone(&self) -> Self {
        EngineService(self.0.clone())
    }
}

impl<H: Handler> Engine<H> {
    /// This engine as a tower `Service`, to mount in hyper, axum or [`crate::serve`].
    pub fn service(&self) -> EngineService<H> {
        EngineService(self.clone())
    }
}

impl<H, B> tower::Service<Request<B>> for EngineService<H>
where
    H: Handler,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let engine = self.0.clone();
        Box::pin(async move {
            if engine.matches_path(req.uri().path()) {
                Ok(engine.handle(req).await)
            } else {
                let mut res = Response::new(Full::new(Bytes::from_static(b"Not Found")));
                *res.status_mut() = StatusCode::NOT_FOUND;
                Ok(res)
            }
        })
    }
}
