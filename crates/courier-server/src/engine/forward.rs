//! Requests for sessions another node owns: polling requests are relayed, WebSocket upgrades
//! tunnelled.
//!
//! A request whose sid this node does not know, and whose prefix names another node with a known
//! address, goes there with the same method, path, query, headers (less the hop-by-hop ones) and
//! body, marked with [`FORWARDED`]; the owner's answer comes back as it was given. A marked
//! request is never forwarded again, so nodes that disagree about an owner cannot pass a request
//! around: the owner answers an unknown sid itself. An owner that cannot be reached is treated as
//! a session that ended: the client is answered "Session ID unknown" and opens a new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::http::{EngineError, HttpResponse};
use super::peers::{Peers, owner_of};
use super::{Engine, Handler, Transport};
use crate::serve::ConnectionSlot;

/// Marks a forwarded request.
pub(crate) const FORWARDED: HeaderName = HeaderName::from_static("x-courier-forwarded");
/// How long a connection to an owner may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle connections kept per owner; past that, a connection is closed after its exchange.
const MAX_IDLE: usize = 16;
/// An idle connection older than this is not reused: servers and proxies commonly close idle
/// connections after 30 s or more, and a request sent as they do would be lost.
const IDLE_FOR: Duration = Duration::from_secs(15);

type Body = Full<Bytes>;

/// The other nodes: the installed [`Peers`], and kept-alive connections to each owner.
pub(crate) struct Cluster {
    /// This node's id, read once from `peers` (and checked) when they were installed.
    pub(crate) node: Box<str>,
    peers: Arc<dyn Peers>,
    owners: DashMap<Authority, Arc<Owner>>,
}

/// One owner's address: its idle connections and whether it is known to be down.
#[derive(Default)]
struct Owner {
    // A blocking mutex (parking_lot): a push or a pop, never held across an await.
    idle: Mutex<Vec<(Instant, SendRequest<Body>)>>,
    /// Set while the owner cannot be reached, so that an outage is logged once and not per
    /// request.
    down: AtomicBool,
}

/// Where one request goes.
struct Target {
    node: String,
    authority: Authority,
    owner: Arc<Owner>,
}

/// Why an owner could not answer.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("connect: timed out")]
    ConnectTimeout,
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
}

impl Cluster {
    pub(crate) fn new(peers: Arc<dyn Peers>) -> Cluster {
        Cluster {
            node: peers.node_id().into(),
            peers,
            owners: DashMap::new(),
        }
    }

    /// The node `sid` names and its address, if that is another node this one can reach.
    fn target(&self, sid: &str) -> Option<Target> {
        let own = &*self.node;
        let node = owner_of(sid, own.len()).filter(|n| *n != own)?;
        let uri = self.peers.address_of(node)?;
        let authority = match (uri.scheme_str(), uri.authority()) {
            (None | Some("http"), Some(a)) => a.clone(),
            _ => {
                tracing::debug!(node, %uri, "peer address unusable: http://host:port expected");
                return None;
            }
        };
        let owner = match self.owners.get(&authority) {
            Some(o) => o.clone(),
            None => self.owners.entry(authority.clone()).or_default().clone(),
        };
        Some(Target {
            node: node.to_owned(),
            authority,
            owner,
        })
    }
}

impl<H: Handler> Engine<H> {
    /// Answers a request for `sid`, which this node does not know: forwarded to its owner when
    /// another node made it, "Session ID unknown" otherwise.
    pub(super) async fn forward<B>(
        &self,
        sid: &str,
        transport: Transport,
        is_upgrade: bool,
        req: Request<B>,
    ) -> Result<HttpResponse, EngineError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let forwardable = match transport {
            Transport::Polling => matches!(*req.method(), Method::GET | Method::POST),
            Transport::WebSocket => is_upgrade,
        };
        if !forwardable || req.headers().contains_key(&FORWARDED) {
            return Err(EngineError::UnknownSid);
        }
        let Some(target) = self.cluster().and_then(|c| c.target(sid)) else {
            return Err(EngineError::UnknownSid);
        };
        let answer = match transport {
            Transport::Polling => {
                let req = self.outbound_polling(req).await?;
                target.exchange(req).await
            }
            Transport::WebSocket => target.tunnel(req).await,
        };
        match answer {
            Ok(res) => {
                target.reached();
                Ok(res)
            }
            Err(e) => {
                target.failed(&e);
                Err(EngineError::UnknownSid)
            }
        }
    }

    /// The request to send the owner for a polling request; a POST body is read first, within
    /// `max_payload` as for a local session.
    async fn outbound_polling<B>(&self, req: Request<B>) -> Result<Request<Body>, EngineError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let body = if parts.method == Method::POST {
            match Limited::new(body, self.inner.config.max_payload)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<LengthLimitError>() => return Err(EngineError::PayloadTooLarge),
                Err(e) => {
                    tracing::debug!(error = %e, "forwarded polling body read failed");
                    return Err(EngineError::BadRequest);
                }
            }
        } else {
            Bytes::new()
        };
        Ok(outbound(&parts, body, false))
    }
}

impl Target {
    /// Sends a polling request to the owner and reads its whole answer.
    async fn exchange(&self, mut req: Request<Body>) -> Result<HttpResponse, ForwardError> {
        // An idle connection first. One found closed gives the request back unsent; one that
        // fails after sending it does not, and the request is not sent twice.
        loop {
            let Some((since, mut conn)) = self.owner.idle.lock().pop() else {
                break;
            };
            if since.elapsed() > IDLE_FOR || conn.ready().await.is_err() {
                continue;
            }
            match conn.try_send_request(req).await {
                Ok(res) => return self.finish(conn, res).await,
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let io = connect(&self.authority).await?;
        let (mut conn, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, "peer connection ended");
            }
        });
        let res = conn.send_request(req).await?;
        self.finish(conn, res).await
    }

    /// Reads the owner's answer, then keeps the connection for the next request.
    async fn finish(
        &self,
        conn: SendRequest<Body>,
        res: Response<Incoming>,
    ) -> Result<HttpResponse, ForwardError> {
        let res = relay(res).await?;
        if !conn.is_closed() {
            let mut idle = self.owner.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push((Instant::now(), conn));
            }
        }
        Ok(res)
    }

    /// Forwards a WebSocket upgrade on a connection of its own. On the owner's 101 the client
    /// gets a 101 too, and a task copies bytes both ways until either side closes; any other
    /// answer is the client's as it is.
    async fn tunnel<B>(&self, mut req: Request<B>) -> Result<HttpResponse, ForwardError> {
        let from_client = hyper::upgrade::on(&mut req);
        let (mut parts, _) = req.into_parts();
        // The client's connection keeps its place under `max_connections` while tunnelled.
        let slot = parts.extensions.remove::<ConnectionSlot>();
        let out = outbound(&parts, Bytes::new(), true);
        drop(parts);
        let io = connect(&self.authority).await?;
        let (mut conn, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::trace!(error = %e, "peer connection ended");
            }
        });
        let mut res = conn.send_request(out).await?;
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(relay(res).await?);
        }
        let from_owner = hyper::upgrade::on(&mut res);
        let (mut head, _) = res.into_parts();
        strip_hop_by_hop(&mut head.headers, true);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (client, owner) = match tokio::try_join!(from_client, from_owner) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(node, error = %e, "tunnelled websocket upgrade failed");
                    return;
                }
            };
            let (mut client, mut owner) = (TokioIo::new(client), TokioIo::new(owner));
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut owner).await {
                tracing::trace!(node, error = %e, "tunnelled websocket ended");
            }
        });
        Ok(Response::from_parts(head, Full::default()))
    }

    /// The owner answered: if it was known to be down, it is up again.
    fn reached(&self) {
        let down = &self.owner.down;
        if down.load(Ordering::Relaxed) && down.swap(false, Ordering::AcqRel) {
            tracing::info!(node = %self.node, address = %self.authority, "peer reachable again");
        }
    }

    /// The owner did not answer; logged once until it answers again.
    fn failed(&self, e: &ForwardError) {
        self.owner.idle.lock().clear();
        if self.owner.down.swap(true, Ordering::AcqRel) {
            tracing::trace!(node = %self.node, error = %e, "peer still unreachable");
        } else {
            tracing::warn!(
                node = %self.node,
                address = %self.authority,
                error = %e,
                "peer unreachable: requests for its sessions are answered Session ID unknown"
            );
        }
    }
}

/// A TCP connection to `authority`.
async fn connect(authority: &Authority) -> Result<TokioIo<TcpStream>, ForwardError> {
    // An IPv6 literal comes in brackets, which the resolver does not take.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| ForwardError::ConnectTimeout)??;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

/// The owner's answer with its body read: a poll's payload, `ok` or an error, each of which the
/// owner built in memory whole, so reading it here holds no more than the owner did.
async fn relay(res: Response<Incoming>) -> Result<HttpResponse, hyper::Error> {
    let (mut head, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    strip_hop_by_hop(&mut head.headers, false);
    // The length is the body's again.
    head.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(head, Full::new(body)))
}

/// The request to the owner: the client's, with this hop's headers dropped and the mark added.
fn outbound(parts: &http::request::Parts, body: Bytes, upgrade: bool) -> Request<Body> {
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers, upgrade);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(FORWARDED, HeaderValue::from_static("1"));
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts
        .uri
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    *req.headers_mut() = headers;
    req
}

/// Headers that belong to one connection, not to the exchange (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Drops the hop-by-hop headers, and those the `Connection` header names. For a WebSocket
/// upgrade (`upgrade`) the next hop is asked for the same upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
}

#[cfg(test)]
mod tests {
    use super::{FORWARDED, outbound, strip_hop_by_hop};
    use http::header::{self, HeaderMap, HeaderValue};

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("hub"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-trace"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::COOKIE, HeaderValue::from_static("io=1"));
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["cookie", "host"]);
    }

    #[test]
    fn an_upgrade_asks_the_owner_for_the_same_upgrade() {
        let req = http::Request::get("/socket.io/?EIO=4&transport=websocket&sid=abc")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .header(header::CONTENT_LENGTH, "0")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let out = outbound(&parts, bytes::Bytes::new(), true);
        assert_eq!(
            out.uri().to_string(),
            "/socket.io/?EIO=4&transport=websocket&sid=abc"
        );
        let h = out.headers();
        assert_eq!(h[header::CONNECTION], "Upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::SEC_WEBSOCKET_KEY], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(h[FORWARDED], "1");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
    }
}
