//! HTTP long-polling: GET receives what is queued, POST sends packets.

use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use courier_proto::engine::{self, SEPARATOR};
use http::Request;
use http_body_util::{BodyExt, Limited};

use super::http::{EngineError, HttpResponse, text_response};
use super::{CloseReason, Engine, Entry, Handler, Outbound, Session, Transport};

const TEXT: &str = "text/plain; charset=UTF-8";
/// A GET answer stops taking packets once it is this large; the rest waits for the next GET.
const MAX_GET_BYTES: usize = 1 << 20;
/// Most packets in one GET answer: python-engineio refuses payloads of more than 16 packets.
const MAX_GET_PACKETS: usize = 16;

impl<H: Handler> Engine<H> {
    pub(super) fn poll_handshake<B>(&self, req: Request<B>) -> HttpResponse {
        let (parts, _) = req.into_parts();
        let entry = self.open(Transport::Polling, &parts);
        let open = self.handshake(entry.session.sid(), Transport::Polling);
        text_response(open, TEXT)
    }

    pub(super) async fn poll_get(&self, entry: Entry<H::Conn>) -> HttpResponse {
        let session = &entry.session;
        // Only one GET may wait at a time; a second one breaks the protocol.
        // (During an upgrade the WebSocket task may hold the queue: refuse without closing.)
        let Ok(mut rx) = session.rx.try_lock() else {
            if !session.upgrading.load(Ordering::Acquire) {
                session.abort(CloseReason::TransportError);
            }
            return EngineError::BadRequest.response();
        };
        // hyper drops this future when the client goes away while it waits: that ends the
        // session, as the reference server does for a poll closed prematurely.
        let mut abandoned = AbortOnDrop(Some(session));
        let mut out = BytesMut::new();
        let mut sent = 0;
        // Biased: what was queued before a close is delivered first. After an abrupt close
        // (`Session::abort`) that is all this GET carries, as the sid is unknown from then on.
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = session.closed() => None,
        };
        match first {
            Some(item) => {
                let mut packets = item.frames();
                write_item(&mut out, &item);
                // A binary packet's attachments travel in the same answer as the packet.
                while out.len() < MAX_GET_BYTES {
                    let Some(item) = rx.try_recv() else { break };
                    packets += item.frames();
                    if packets > MAX_GET_PACKETS {
                        rx.hold(item);
                        break;
                    }
                    write_item(&mut out, &item);
                }
                sent = packets;
            }
            None => {
                // Closed: send what was queued before the close, then a close packet.
                while let Some(item) = rx.try_recv() {
                    sent += item.frames();
                    write_item(&mut out, &item);
                }
                if !out.is_empty() {
                    out.put_u8(SEPARATOR);
                }
                // A client that closed the session itself only needs its poll released: the
                // reference answers it with a noop, and a close packet otherwise.
                let last = if session.close_reason() == Some(CloseReason::TransportClose) {
                    b'6'
                } else {
                    b'1'
                };
                out.put_u8(last);
                sent += 1;
                session.note_close_sent();
            }
        }
        abandoned.0 = None;
        if let Some(s) = &session.stats {
            s.packets_out.add(sent as u64);
            s.bytes_out.add(out.len() as u64);
        }
        session.note_drained();
        text_response(out.freeze(), TEXT)
    }

    pub(super) async fn poll_post<B>(
        &self,
        entry: Entry<H::Conn>,
        req: Request<B>,
    ) -> Result<HttpResponse, EngineError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let session = &entry.session;
        if session.is_closed() {
            return Err(EngineError::BadRequest);
        }
        if session.post_busy.swap(true, Ordering::AcqRel) {
            session.abort(CloseReason::TransportError);
            return Err(EngineError::BadRequest);
        }
        // EIO 4 payloads are text; binary travels as `b` + base64. The reference server refuses
        // a binary body and ends the session.
        let binary_body = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| {
                v.as_bytes()
                    .eq_ignore_ascii_case(b"application/octet-stream")
            });
        if binary_body {
            session.post_busy.store(false, Ordering::Release);
            session.abort(CloseReason::TransportError);
            return Err(EngineError::BadRequest);
        }
        let body = Limited::new(req.into_body(), self.inner.config.max_payload)
            .collect()
            .await;
        session.post_busy.store(false, Ordering::Release);
        let body = match body {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(EngineError::PayloadTooLarge);
            }
            Err(e) => {
                tracing::debug!(sid = %session.sid(), error = %e, "polling body read failed");
                session.abort(CloseReason::TransportError);
                return Err(EngineError::BadRequest);
            }
        };
        // A body read in full is answered `ok` whatever it carries, as by the reference server:
        // the packets before a bad one are handled, the bad one ends the session, and the client
        // learns that from its poll.
        if let Err(e) = self.take_payload(&entry, body).await {
            tracing::info!(sid = %session.sid(), error = %e, "closing session: bad polling payload");
            session.abort(CloseReason::ParseError);
        }
        Ok(text_response(Bytes::from_static(b"ok"), "text/html"))
    }

    /// Hands the packets of one POST body to the session in order, until the first one that
    /// does not decode or until the session closes.
    async fn take_payload(
        &self,
        entry: &Entry<H::Conn>,
        body: Bytes,
    ) -> Result<(), engine::DecodeError> {
        let session = &entry.session;
        for record in engine::payload_records(body)? {
            self.on_packet(entry, engine::decode_record(record)?);
            if session.is_closed() {
                // Nothing after a close packet (or whatever closed it) reaches the handler.
                return Ok(());
            }
            // Back-pressure: the rest of this POST (and the client's next one, which waits for
            // this answer) is read once the session can take more.
            if let Some(ready) = self.wait_ready(entry) {
                tokio::select! {
                    _ = ready => {}
                    _ = session.closed() => return Ok(()),
                }
            }
        }
        Ok(())
    }
}

/// Ends the session if a pending GET is dropped before it answered (the client went away).
/// Defused (set to `None`) once the answer is ready.
struct AbortOnDrop<'a>(Option<&'a Session>);

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.0 {
            session.abort(CloseReason::TransportError);
        }
    }
}

fn write_item(out: &mut BytesMut, item: &Outbound) {
    let record = |out: &mut BytesMut, f: &dyn Fn(&mut BytesMut)| {
        if !out.is_empty() {
            out.put_u8(SEPARATOR);
        }
        f(out);
    };
    match item {
        Outbound::Text(t) => record(out, &|o| o.extend_from_slice(t)),
        Outbound::Binary(b) => record(out, &|o| engine::encode_binary_record(b, o)),
        Outbound::WithAttachments(t, atts) => {
            record(out, &|o| o.extend_from_slice(t));
            for a in atts.iter() {
                record(out, &|o| engine::encode_binary_record(a, o));
            }
        }
    }
}
