//! A small HTTP/1.1 server loop for a hub: accepts connections, serves a tower service with
//! upgrades enabled, and stops gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::RemoteAddr;

/// Settings of [`serve_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServeOptions {
    /// TCP connections open at once, WebSocket and HTTP alike (0 = no limit). One past it is
    /// answered `503 Service Unavailable` and closed before anything is read or kept for it.
    /// Default 0.
    pub max_connections: usize,
    /// Where refused connections are counted (see [`crate::Io::stats_handle`]).
    pub stats: Option<Arc<crate::stats::Stats>>,
}

impl ServeOptions {
    /// Options that count refused connections in `stats`.
    pub fn stats(mut self, stats: Option<Arc<crate::stats::Stats>>) -> Self {
        self.stats = stats;
        self
    }

    /// Options with `max_connections`.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting and waits for
/// open HTTP exchanges to finish. Upgraded WebSocket connections are not waited for: close them
/// with [`crate::Io::shutdown`].
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(listener, service, ServeOptions::default(), shutdown).await
}

/// A connection's place under `max_connections`, kept in each request's extensions so that an
/// upgraded WebSocket keeps it after the HTTP exchange ends. Never read: holding it is its use.
#[derive(Clone)]
pub(crate) struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Refusals being written at once; past it, a refused connection is just closed.
const REFUSALS: usize = 64;
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 56\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"unavailable\",\"message\":\"server full\"}}";

/// Answers a connection over the limit, then closes it.
async fn refuse(mut stream: TcpStream) {
    let answer = async {
        stream.write_all(REFUSAL).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes, so that closing does not reset the
        // connection before the client has read the answer.
        let mut sink = [0u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// [`serve`] with settings.
pub async fn serve_with<S, B>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let slots =
        (options.max_connections > 0).then(|| Arc::new(Semaphore::new(options.max_connections)));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let permit = match &slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    tracing::debug!(%peer, "connection refused: max_connections reached");
                    if let Some(s) = &options.stats {
                        s.refuse(crate::stats::Refusal::MaxConnections);
                    }
                    if let Ok(p) = refusals.clone().try_acquire_owned() {
                        tokio::spawn(async move {
                            refuse(stream).await;
                            drop(p);
                        });
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = service.clone();
        let slot = permit.map(|p| ConnectionSlot {
            _permit: Arc::new(p),
        });
        let slot_for_requests = slot.clone();
        let hyper_svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(RemoteAddr(peer));
            if let Some(slot) = &slot_for_requests {
                req.extensions_mut().insert(slot.clone());
            }
            tower::ServiceExt::oneshot(svc.clone(), req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), hyper_svc)
            .with_upgrades();
        let stop = stop.clone();
        tracker.spawn(async move {
            // Held until the connection ends; an upgraded WebSocket holds its own copy.
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::trace!(error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}
