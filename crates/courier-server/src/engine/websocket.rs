//! WebSocket transport: direct connections and upgrades from long-polling.
//!
//! One task per connection reads frames and writes the outbound queue. It takes every item that is
//! ready (up to a batch), feeds them all to the socket and flushes once, so a burst of packets
//! costs one write system call instead of one per packet.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use courier_proto::engine::Packet;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_websockets::{
    CloseCode, Config as WsConfig, Limits, Message, ServerBuilder, WebSocketStream,
};

use super::http::{EngineError, HttpResponse};
use super::session::Outq;
use super::{CloseReason, Engine, Entry, Handler, Outbound, Transport};
use crate::serve::ConnectionSlot;
use crate::stats::Stats;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Most queued items written before one flush.
const BATCH: usize = 128;
const PROBE_PING: &str = "2probe";
/// How long a websocket the server closes may take to answer the close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What a websocket request for an existing session turns into.
enum Join<C> {
    /// A fresh session (no sid).
    Open,
    /// The upgrade of a polling session.
    Upgrade(Entry<C>),
    /// The session has a websocket already, or one is upgrading it: this one is accepted and
    /// closed at once, as by the reference server, so the client sees a closed websocket rather
    /// than a failed handshake, and the session is not touched.
    Refuse,
}

impl<H: Handler> Engine<H> {
    pub(super) fn upgrade_websocket<B>(
        &self,
        mut req: Request<B>,
        existing: Option<Entry<H::Conn>>,
    ) -> Result<HttpResponse, EngineError> {
        let key = req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(EngineError::BadRequest)?;
        let accept = accept_key(key.as_bytes());
        let join = match existing {
            None => Join::Open,
            Some(entry) => {
                let taken = entry.session.transport() != Transport::Polling
                    || entry.session.upgrading.swap(true, Ordering::AcqRel);
                if taken {
                    Join::Refuse
                } else {
                    Join::Upgrade(entry)
                }
            }
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        tokio::spawn(self.clone().websocket_task(on_upgrade, parts, join));
        Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(header::CONNECTION, HeaderValue::from_static("Upgrade"))
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Default::default())
            .expect("static response parts"))
    }

    async fn websocket_task(
        self,
        on_upgrade: OnUpgrade,
        mut parts: http::request::Parts,
        join: Join<H::Conn>,
    ) {
        // The connection's slot under `max_connections` lives as long as the WebSocket.
        let _slot = parts.extensions.remove::<ConnectionSlot>();
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                if let Join::Upgrade(entry) = join {
                    entry.session.upgrading.store(false, Ordering::Release);
                }
                return;
            }
        };
        let max = self.inner.config.max_payload;
        let mut ws = ServerBuilder::new()
            .limits(Limits::default().max_payload_len(Some(max)))
            .config(WsConfig::default().flush_threshold(64 * 1024))
            .serve(TokioIo::new(upgraded));
        let entry = match join {
            Join::Refuse => {
                tracing::debug!("websocket for a session that has one already: closed");
                close_ws(&mut ws, None).await;
                return;
            }
            Join::Open => {
                let entry = self.open(Transport::WebSocket, &parts);
                // The request's headers point into hyper's read buffer: let it go now rather
                // than keep it for the life of the connection.
                drop(parts);
                let open = self.handshake(entry.session.sid(), Transport::WebSocket);
                if ws.send(Message::text(open)).await.is_err() {
                    entry.session.close(CloseReason::TransportError);
                    return;
                }
                entry
            }
            Join::Upgrade(entry) => {
                drop(parts);
                let upgraded =
                    tokio::time::timeout(self.inner.config.upgrade_timeout, probe(&mut ws, &entry))
                        .await;
                if upgraded != Ok(true) {
                    // The session goes on polling; only this websocket ends.
                    tracing::debug!(sid = %entry.session.sid(), "websocket upgrade abandoned");
                    entry.session.upgrading.store(false, Ordering::Release);
                    close_ws(&mut ws, None).await;
                    return;
                }
                entry
            }
        };
        let session = entry.session.clone();
        let mut rx = tokio::select! {
            rx = session.rx.lock() => rx,
            _ = session.closed() => return,
        };
        if session.transport() == Transport::Polling {
            if let Some(s) = self.stats() {
                s.upgrades.inc();
            }
            self.inner.handler.on_upgrade(&entry.conn);
        }
        session.set_transport(Transport::WebSocket);
        session.upgrading.store(false, Ordering::Release);
        let (reason, settled) = self.pump(&mut ws, &mut rx, &entry).await;
        session.close(reason);
        if settled {
            // Flush the answer to the client's close frame, if there was one.
            let _ = tokio::time::timeout(CLOSE_WAIT, ws.close()).await;
        } else {
            close_ws(&mut ws, None).await;
        }
    }

    /// Moves frames both ways until the connection ends; returns why it ended and whether the
    /// closing is settled (the client closed, the connection broke, or the server's close frame
    /// is sent already) or the server still owes its close frame.
    async fn pump(
        &self,
        ws: &mut Ws,
        rx: &mut Outq,
        entry: &Entry<H::Conn>,
    ) -> (CloseReason, bool) {
        let session = &entry.session;
        let mut batch = Vec::with_capacity(16);
        let mut throttle: Option<futures_util::future::BoxFuture<'static, ()>> = None;
        loop {
            tokio::select! {
                _ = async { throttle.as_mut().expect("guarded").await }, if throttle.is_some() => {
                    throttle = None;
                }
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return (CloseReason::TransportClose, false);
                    }
                    if write_batch(ws, &mut batch, session.stats.as_deref()).await.is_err() {
                        return (CloseReason::TransportError, true);
                    }
                    session.note_drained();
                }
                msg = ws.next(), if throttle.is_none() => match msg {
                    Some(Ok(msg)) => {
                        if let Err(reason) = self.on_frame(entry, msg) {
                            return (reason, reason == CloseReason::TransportClose);
                        }
                        throttle = self.wait_ready(entry);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(sid = %session.sid(), error = %e, "websocket error");
                        // A protocol error or an oversized frame has a close frame queued (1002,
                        // 1009): it is sent before the connection is dropped.
                        let _ = tokio::time::timeout(CLOSE_WAIT, ws.flush()).await;
                        return (CloseReason::TransportError, true);
                    }
                    None => return (CloseReason::TransportClose, true),
                },
                _ = session.closed() => {
                    // Flush what was queued before the close (a DISCONNECT packet, say).
                    while let Some(item) = rx.try_recv() {
                        batch.push(item);
                    }
                    let _ = write_batch(ws, &mut batch, session.stats.as_deref()).await;
                    // Like the reference server, a close frame without a status, except at
                    // shutdown, which says so.
                    let code = (session.close_reason() == Some(CloseReason::ServerShutdown))
                        .then_some(CloseCode::GOING_AWAY);
                    close_ws(ws, code).await;
                    return (CloseReason::ForcedClose, true);
                }
            }
        }
    }

    fn on_frame(&self, entry: &Entry<H::Conn>, msg: Message) -> Result<(), CloseReason> {
        if msg.is_text() {
            let text = Bytes::from(msg.into_payload());
            match Packet::decode_text(text) {
                Ok(p) => self.on_packet(entry, p),
                Err(e) => {
                    tracing::info!(sid = %entry.session.sid(), error = %e, "closing session: bad websocket packet");
                    return Err(CloseReason::ParseError);
                }
            }
        } else if msg.is_binary() {
            let data = courier_proto::engine::Data::Binary(Bytes::from(msg.into_payload()));
            self.on_packet(entry, Packet::Message(data));
        } else if msg.is_close() {
            return Err(CloseReason::TransportClose);
        }
        Ok(())
    }
}

/// Runs the client's side of the upgrade: `2probe` -> `3probe`, then waits for `5`.
async fn probe<C>(ws: &mut Ws, entry: &Entry<C>) -> bool {
    let mut probed = false;
    while let Some(Ok(msg)) = ws.next().await {
        match (msg.as_text(), probed) {
            (Some(PROBE_PING), false) => {
                if ws.send(Message::text("3probe")).await.is_err() {
                    return false;
                }
                probed = true;
                // Release a pending GET so that the client can finish the upgrade.
                let _ = entry.session.send(Outbound::Text(Bytes::from_static(b"6")));
            }
            (Some("5"), true) => return true,
            _ => return false,
        }
    }
    false
}

/// Sends the server's close frame and waits, up to [`CLOSE_WAIT`], for the client's answer.
async fn close_ws(ws: &mut Ws, code: Option<CloseCode>) {
    if ws.send(Message::close(code, "")).await.is_ok() {
        let _ = tokio::time::timeout(CLOSE_WAIT, ws.close()).await;
    }
}

async fn write_batch(
    ws: &mut Ws,
    batch: &mut Vec<Outbound>,
    stats: Option<&Stats>,
) -> Result<(), tokio_websockets::Error> {
    if let Some(s) = stats {
        // Counted once per batch: one add for the packets, one for their bytes.
        let (mut packets, mut bytes) = (0, 0);
        for item in batch.iter() {
            packets += item.frames();
            bytes += item.len();
        }
        s.packets_out.add(packets as u64);
        s.bytes_out.add(bytes as u64);
    }
    for item in batch.drain(..) {
        match item {
            Outbound::Text(t) => ws.feed(Message::text(t)).await?,
            Outbound::Binary(b) => ws.feed(Message::binary(b)).await?,
            Outbound::WithAttachments(t, atts) => {
                ws.feed(Message::text(t)).await?;
                for a in atts.iter() {
                    ws.feed(Message::binary(a.clone())).await?;
                }
            }
        }
    }
    ws.flush().await
}

fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    HeaderValue::from_str(&digest).expect("base64 is a valid header value")
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
