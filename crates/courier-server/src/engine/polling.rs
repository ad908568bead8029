//! HTTP long-polling: GET receives what is queued, POST sends packets.

use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use courier_proto::engine::{self, SEPARATOR};
use http::Request;
use http_body_util::{BodyExt, Limited};

use super::http::{EngineError, HttpResponse, text_response};
use super::{CloseReason, Engine, Entry, Handler, Outbound, Transport};

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
                session.close(CloseReason::TransportError);
            }
            return EngineError::BadRequest.response();
        };
        let mut out = BytesMut::new();
        let first = tokio::select! {
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
            }
            None => {
                // Closed: send what was queued before the close, then a close packet.
                while let Some(item) = rx.try_recv() {
                    write_item(&mut out, &item);
                }
                if !out.is_empty() {
                    out.put_u8(SEPARATOR);
                }
                out.put_u8(b'1');
                session.close_delivered.notify_one();
            }
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
            session.close(CloseReason::TransportError);
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
                session.close(CloseReason::TransportError);
                return Err(EngineError::BadRequest);
            }
        };
        match engine::decode_payload(body) {
            Ok(packets) => {
                for p in packets {
                    self.on_packet(&entry, p);
                    // Back-pressure: the rest of this POST (and the client's next one, which
                    // waits for this answer) is read once the session can take more.
                    if let Some(ready) = self.wait_ready(&entry) {
                        tokio::select! {
                            _ = ready => {}
                            _ = session.closed() => break,
                        }
                    }
                }
                Ok(text_response(Bytes::from_static(b"ok"), "text/html"))
            }
            Err(e) => {
                tracing::info!(sid = %session.sid(), error = %e, "closing session: bad polling payload");
                session.close(CloseReason::ParseError);
                Err(EngineError::BadRequest)
            }
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
