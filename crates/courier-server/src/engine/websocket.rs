//! WebSocket transport: direct connections and upgrades from long-polling.
//!
//! One task per connection reads frames and writes the outbound queue. It takes every item that is
//! ready (up to a batch), encodes them all and writes them with one system call.
//!
//! Frames are Courier's own (`wsframe`), so that an idle connection holds no buffer. When hyper
//! hands back the TCP stream, the task waits for readiness, reads into a per-thread scratch buffer
//! and decodes every whole frame straight out of it: only the part of a frame cut short stays with
//! the connection. Writes are encoded into another per-thread buffer and written at once; only what
//! the kernel did not take stays. Any other I/O (TLS, say) is read into the same scratch buffer
//! through `poll_read` and written through the connection's own queue of unsent bytes.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use courier_proto::engine::Packet;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::http::{EngineError, HttpResponse};
use super::session::Outq;
use super::{CloseReason, Engine, Entry, Handler, Outbound, Transport};
use crate::serve::ConnectionSlot;
use crate::stats::Stats;
use courier_proto::ws::{self as wsframe, Decoder, FrameError, Message};

/// Most queued items written at once.
const BATCH: usize = 128;
const PROBE_PING: &str = "2probe";
/// How long a websocket the server closes may take to answer the close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Bytes read per system call, into the per-thread scratch buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Payloads at least this long are written from where they are, as their own slice of a
/// vectored write, instead of being copied after their header.
const COPY_MAX: usize = 4096;
/// The write scratch buffer is given back to the allocator past this capacity.
const WRITE_SCRATCH_KEEP: usize = 256 * 1024;
/// Status codes of close frames the server sends.
const GOING_AWAY: u16 = 1001;

thread_local! {
    // Taken out while in use and put back before any `.await`, so a task that moves to another
    // thread never holds one, and a reentrant use just allocates a fresh one.
    static READ_SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static WRITE_SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

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
        // Boxed: the arguments of an async fn stay in its future for the connection's life.
        tokio::spawn(
            self.clone()
                .websocket_task(on_upgrade, Box::new(parts), join),
        );
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
        mut parts: Box<http::request::Parts>,
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
        let mut ws = Ws::new(upgraded, self.inner.config.max_payload);
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
                if ws.send(wsframe::OP_TEXT, open).await.is_err() {
                    entry.session.close(CloseReason::TransportError);
                    return;
                }
                entry
            }
            Join::Upgrade(entry) => {
                drop(parts);
                // Boxed, as every wait that an idle connection is not in: the task's future is
                // as large as its largest state, and is held for the connection's life.
                let upgraded = Box::pin(tokio::time::timeout(
                    self.inner.config.upgrade_timeout,
                    probe(&mut ws, &entry),
                ))
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
            // Answer the client's close frame, if there was one, and end the stream.
            let _ = Box::pin(tokio::time::timeout(CLOSE_WAIT, ws.finish())).await;
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
        // Allocated while a batch is written only: an idle connection keeps no room for one.
        let mut batch = Vec::new();
        let mut throttle: Option<BoxFuture<'static, ()>> = None;
        loop {
            let mut paused = None;
            let mut deliver = |msg| self.deliver(entry, msg, &mut paused);
            tokio::select! {
                _ = async { throttle.as_mut().expect("guarded").await }, if throttle.is_some() => {
                    throttle = None;
                }
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return (CloseReason::TransportClose, false);
                    }
                    let written = write_batch(ws, &mut batch, session.stats.as_deref()).await;
                    batch = Vec::new();
                    if written.is_err() {
                        return (CloseReason::TransportError, true);
                    }
                    session.note_drained();
                }
                read = ws.read(&mut deliver), if throttle.is_none() => match read {
                    Ok(()) => {
                        throttle = paused.take();
                        if ws.pong.is_some() && ws.send_pong().await.is_err() {
                            return (CloseReason::TransportError, true);
                        }
                    }
                    Err(ReadEnd::Closed) => return (CloseReason::TransportClose, true),
                    Err(ReadEnd::Stop(reason)) => {
                        return (reason, reason == CloseReason::TransportClose);
                    }
                    Err(ReadEnd::Bad(e)) => {
                        tracing::debug!(sid = %session.sid(), error = %e, "websocket error");
                        // The client sees why: 1002 (protocol error), 1007 (invalid UTF-8) or
                        // 1009 (too big), before the connection is dropped.
                        let close = wsframe::close_payload(Some(e.close_code()), &e.to_string());
                        let _ =
                            Box::pin(tokio::time::timeout(CLOSE_WAIT, ws.send(wsframe::OP_CLOSE, close)))
                                .await;
                        ws.close_sent = true;
                        return (CloseReason::TransportError, true);
                    }
                    Err(ReadEnd::Io(e)) => {
                        tracing::debug!(sid = %session.sid(), error = %e, "websocket error");
                        return (CloseReason::TransportError, true);
                    }
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
                        .then_some(GOING_AWAY);
                    close_ws(ws, code).await;
                    return (CloseReason::ForcedClose, true);
                }
            }
        }
    }

    /// Hands one message from the client on, then says whether reading may go on.
    fn deliver(
        &self,
        entry: &Entry<H::Conn>,
        msg: Message,
        paused: &mut Option<BoxFuture<'static, ()>>,
    ) -> Step {
        if let Err(reason) = self.on_frame(entry, msg) {
            return Step::Stop(reason);
        }
        *paused = self.wait_ready(entry);
        if paused.is_some() {
            Step::Pause
        } else {
            Step::Go
        }
    }

    fn on_frame(&self, entry: &Entry<H::Conn>, msg: Message) -> Result<(), CloseReason> {
        match msg {
            Message::Text(text) => match Packet::decode_text(text) {
                Ok(p) => self.on_packet(entry, p),
                Err(e) => {
                    tracing::info!(sid = %entry.session.sid(), error = %e, "closing session: bad websocket packet");
                    return Err(CloseReason::ParseError);
                }
            },
            Message::Binary(data) => {
                let data = courier_proto::engine::Data::Binary(data);
                self.on_packet(entry, Packet::Message(data));
            }
            // Answered by `Ws` itself.
            Message::Ping(_) | Message::Close(_) => {}
        }
        Ok(())
    }
}

/// Runs the client's side of the upgrade: `2probe` -> `3probe`, then waits for `5`.
async fn probe<C>(ws: &mut Ws, entry: &Entry<C>) -> bool {
    let mut probed = false;
    while let Some(msg) = ws.next_message().await {
        let text = match &msg {
            Message::Text(t) => std::str::from_utf8(t).ok(),
            _ => None,
        };
        match (text, probed) {
            (Some(PROBE_PING), false) => {
                if ws
                    .send(wsframe::OP_TEXT, Bytes::from_static(b"3probe"))
                    .await
                    .is_err()
                {
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
/// Boxed: see `websocket_task`.
fn close_ws(ws: &mut Ws, code: Option<u16>) -> BoxFuture<'_, ()> {
    Box::pin(close_ws_inner(ws, code))
}

async fn close_ws_inner(ws: &mut Ws, code: Option<u16>) {
    if ws.close_sent {
        return;
    }
    let frame = wsframe::close_payload(code, "");
    if tokio::time::timeout(CLOSE_WAIT, ws.send(wsframe::OP_CLOSE, frame))
        .await
        .is_ok_and(|sent| sent.is_ok())
    {
        ws.close_sent = true;
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            // Whatever comes before the client's close frame is dropped.
            while ws.read(&mut |_| Step::Go).await.is_ok() {}
            ws.shutdown().await
        })
        .await;
    }
}

/// Writes a batch of queued items, counted once.
async fn write_batch(
    ws: &mut Ws,
    batch: &mut Vec<Outbound>,
    stats: Option<&Stats>,
) -> io::Result<()> {
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
    let mut out = Out::new();
    for item in batch.drain(..) {
        match item {
            Outbound::Text(t) => out.frame(wsframe::OP_TEXT, t),
            Outbound::Binary(b) => out.frame(wsframe::OP_BINARY, b),
            Outbound::WithAttachments(t, atts) => {
                out.frame(wsframe::OP_TEXT, t);
                for a in atts.iter() {
                    out.frame(wsframe::OP_BINARY, a.clone());
                }
            }
        }
    }
    ws.write(out);
    ws.flush_queued().await
}

/// What `Ws::read`'s callback says after a message.
enum Step {
    /// Read on.
    Go,
    /// Stop reading for now; what is left of the input is kept for later.
    Pause,
    /// The connection ends.
    Stop(CloseReason),
}

/// How reading ended, when it does not go on.
enum ReadEnd {
    /// The client closed: its close frame (kept in `Ws::peer_close`), or the end of the stream.
    Closed,
    /// The client broke RFC 6455.
    Bad(FrameError),
    /// Reading failed.
    Io(io::Error),
    /// The callback ended the connection.
    Stop(CloseReason),
}

/// The stream under a WebSocket.
enum Link {
    /// hyper gave the TCP stream back: readiness, then reads and writes that do not wait.
    Tcp(TcpStream),
    /// Any other I/O the service is mounted on.
    Io(TokioIo<Upgraded>),
}

/// One WebSocket connection: the stream, the decoder, and what is owed either way.
struct Ws {
    link: Link,
    decoder: Decoder,
    /// Input read but not decoded yet: what hyper read past the upgrade request, or what was left
    /// when reading paused. Usually empty.
    pending: Bytes,
    /// Encoded frames the stream has not taken yet. Empty (and unallocated) between writes.
    unsent: VecDeque<Bytes>,
    /// The payload of the last ping not answered yet (RFC 6455 5.5.3 lets only the latest be).
    pong: Option<Bytes>,
    /// The client's close frame, with its code, once it came.
    peer_close: Option<Option<u16>>,
    /// Whether the server's close frame is sent.
    close_sent: bool,
}

impl Ws {
    fn new(upgraded: Upgraded, max_payload: usize) -> Ws {
        let (link, pending) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Link::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => (Link::Io(TokioIo::new(upgraded)), Bytes::new()),
        };
        Ws {
            link,
            decoder: Decoder::new(max_payload),
            // A copy when there is anything: a slice would keep hyper's whole read buffer.
            pending: Bytes::copy_from_slice(&pending),
            unsent: VecDeque::new(),
            pong: None,
            peer_close: None,
            close_sent: false,
        }
    }

    /// Waits for input and decodes it, handing each text or binary message to `deliver`, which
    /// may pause reading; pings and the client's close frame are kept for the caller to answer.
    /// Cancel-safe: nothing is read until the stream is ready, and then everything read is
    /// decoded before returning.
    async fn read<F>(&mut self, deliver: &mut F) -> Result<(), ReadEnd>
    where
        F: FnMut(Message) -> Step,
    {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let used = self.absorb(&pending, deliver)?;
            self.pending = pending.slice(used..);
            return Ok(());
        }
        // `poll_read` on either link: the scratch buffer is lent only while the read runs, and a
        // short read of a TCP stream clears its readiness, so the next wait costs no extra
        // read system call (`try_read` kept the readiness and paid an EAGAIN per burst).
        poll_fn(|cx| {
            let mut buf = read_scratch();
            let mut rb = ReadBuf::new(&mut buf);
            let polled = match &mut self.link {
                Link::Tcp(stream) => Pin::new(stream).poll_read(cx, &mut rb),
                Link::Io(io) => Pin::new(io).poll_read(cx, &mut rb),
            };
            let got = match polled {
                Poll::Pending => None,
                Poll::Ready(Ok(())) => Some(Ok(rb.filled().len())),
                Poll::Ready(Err(e)) => Some(Err(ReadEnd::Io(e))),
            };
            let done = got.map(|got| got.and_then(|n| self.take_in(&buf[..n], deliver)));
            READ_SCRATCH.set(buf);
            match done {
                None => Poll::Pending,
                Some(done) => Poll::Ready(done),
            }
        })
        .await
    }

    /// Decodes what was just read (none: the stream ended) and keeps what a pause left over.
    fn take_in<F>(&mut self, input: &[u8], deliver: &mut F) -> Result<(), ReadEnd>
    where
        F: FnMut(Message) -> Step,
    {
        if input.is_empty() {
            return Err(ReadEnd::Closed);
        }
        let used = self.absorb(input, deliver)?;
        if used < input.len() {
            self.pending = Bytes::copy_from_slice(&input[used..]);
        }
        Ok(())
    }

    /// Decodes `input` until it is used up or `deliver` pauses; returns how much was used.
    fn absorb<F>(&mut self, input: &[u8], deliver: &mut F) -> Result<usize, ReadEnd>
    where
        F: FnMut(Message) -> Step,
    {
        let mut rest = input;
        loop {
            match self.decoder.decode(&mut rest) {
                Ok(None) => return Ok(input.len()),
                Ok(Some(Message::Ping(payload))) => self.pong = Some(payload),
                Ok(Some(Message::Close(code))) => {
                    self.peer_close = Some(code);
                    return Err(ReadEnd::Closed);
                }
                Ok(Some(msg)) => match deliver(msg) {
                    Step::Go => {}
                    Step::Pause => return Ok(input.len() - rest.len()),
                    Step::Stop(reason) => return Err(ReadEnd::Stop(reason)),
                },
                Err(e) => return Err(ReadEnd::Bad(e)),
            }
        }
    }

    /// The next text or binary message, answering pings meanwhile; `None` once the connection
    /// ends or breaks.
    async fn next_message(&mut self) -> Option<Message> {
        loop {
            let mut got = None;
            let read = self
                .read(&mut |msg| {
                    got = Some(msg);
                    Step::Pause
                })
                .await;
            if read.is_err() {
                return None;
            }
            if self.pong.is_some() && self.send_pong().await.is_err() {
                return None;
            }
            if got.is_some() {
                return got;
            }
        }
    }

    /// Answers the last ping.
    async fn send_pong(&mut self) -> io::Result<()> {
        match self.pong.take() {
            Some(payload) => self.send(wsframe::OP_PONG, payload).await,
            None => Ok(()),
        }
    }

    /// Writes one frame.
    async fn send(&mut self, opcode: u8, payload: Bytes) -> io::Result<()> {
        let mut out = Out::new();
        out.frame(opcode, payload);
        self.write(out);
        self.flush_queued().await
    }

    /// Finishes what [`Ws::write`] left. Most writes finish at once; a wait is boxed, so that
    /// the idle task's future has no room for one.
    async fn flush_queued(&mut self) -> io::Result<()> {
        if self.unsent.is_empty() && matches!(self.link, Link::Tcp(_)) {
            return Ok(());
        }
        Box::pin(self.flush()).await
    }

    /// Writes what the stream takes of `out` now, without waiting, and keeps the rest in
    /// `unsent` for [`Ws::flush`].
    fn write(&mut self, out: Out) {
        let mut written = 0;
        if let (Link::Tcp(stream), true) = (&self.link, self.unsent.is_empty()) {
            let mut slices = out.slices();
            let mut left: &mut [IoSlice<'_>] = &mut slices;
            while !left.is_empty() {
                match stream.try_write_vectored(left) {
                    Ok(0) | Err(_) => break, // Would block, or an error `flush` will see again.
                    Ok(n) => {
                        written += n;
                        IoSlice::advance_slices(&mut left, n);
                    }
                }
            }
        }
        out.keep_unwritten(written, &mut self.unsent);
    }

    /// Writes everything in `unsent`, waiting for the stream as needed.
    async fn flush(&mut self) -> io::Result<()> {
        while !self.unsent.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .unsent
                .iter()
                .take(64)
                .map(|b| IoSlice::new(b))
                .collect();
            let n = match &mut self.link {
                Link::Tcp(stream) => {
                    stream.writable().await?;
                    match stream.try_write_vectored(&slices) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
                Link::Io(io) => io.write_vectored(&slices).await?,
            };
            drop(slices);
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            consume(&mut self.unsent, n);
        }
        // Its room goes back too: an idle connection keeps nothing.
        self.unsent = VecDeque::new();
        if let Link::Io(io) = &mut self.link {
            io.flush().await?;
        }
        Ok(())
    }

    /// Answers the client's close frame, if it sent one, and ends the stream.
    async fn finish(&mut self) {
        if let Some(code) = self.peer_close.take()
            && !self.close_sent
        {
            self.close_sent = true;
            // Only the code is echoed.
            let payload = wsframe::close_payload(code, "");
            if self.send(wsframe::OP_CLOSE, payload).await.is_err() {
                return;
            }
        }
        let _ = self.flush().await;
        let _ = self.shutdown().await;
    }

    /// Ends the stream's writing side.
    async fn shutdown(&mut self) -> io::Result<()> {
        match &mut self.link {
            Link::Tcp(stream) => stream.shutdown().await,
            Link::Io(io) => io.shutdown().await,
        }
    }
}

/// The per-thread read buffer, taken out; put it back with `READ_SCRATCH.set`.
fn read_scratch() -> Vec<u8> {
    let mut buf = READ_SCRATCH.take();
    if buf.len() < READ_CHUNK {
        buf.resize(READ_CHUNK, 0);
    }
    buf
}

/// Drops the first `n` bytes of `unsent`.
fn consume(unsent: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let front = unsent.front_mut().expect("no more written than queued");
        if front.len() <= n {
            n -= front.len();
            unsent.pop_front();
        } else {
            let _ = front.split_to(n);
            n = 0;
        }
    }
}

/// Frames encoded for one write: headers and short payloads copied into the per-thread write
/// buffer, long payloads referenced where they are.
struct Out {
    buf: Vec<u8>,
    /// Long payloads, each with the length of `buf` when it came: it goes after those bytes.
    long: Vec<(usize, Bytes)>,
}

impl Out {
    fn new() -> Out {
        let mut buf = WRITE_SCRATCH.take();
        buf.clear();
        Out {
            buf,
            long: Vec::new(),
        }
    }

    /// Adds a final, unmasked frame.
    fn frame(&mut self, opcode: u8, payload: Bytes) {
        let mut head = [0; wsframe::MAX_SERVER_HEADER];
        let n = wsframe::header(opcode, payload.len(), &mut head);
        self.buf.extend_from_slice(&head[..n]);
        if payload.len() < COPY_MAX {
            self.buf.extend_from_slice(&payload);
        } else {
            self.long.push((self.buf.len(), payload));
        }
    }

    /// The bytes in order, as slices for a vectored write.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(2 * self.long.len() + 1);
        let mut at = 0;
        for (end, payload) in &self.long {
            slices.push(IoSlice::new(&self.buf[at..*end]));
            slices.push(IoSlice::new(payload));
            at = *end;
        }
        slices.push(IoSlice::new(&self.buf[at..]));
        slices
    }

    /// Queues into `unsent` all but the first `written` bytes, and gives the buffer back.
    fn keep_unwritten(mut self, written: usize, unsent: &mut VecDeque<Bytes>) {
        let mut skip = written;
        let mut keep = |piece: Piece<'_>| {
            let len = match &piece {
                Piece::Copied(b) => b.len(),
                Piece::Long(b) => b.len(),
            };
            if skip >= len {
                skip -= len;
                return;
            }
            let rest = match piece {
                Piece::Copied(b) => Bytes::copy_from_slice(&b[skip..]),
                Piece::Long(b) => b.slice(skip..),
            };
            skip = 0;
            if !rest.is_empty() {
                unsent.push_back(rest);
            }
        };
        let mut at = 0;
        for (end, payload) in std::mem::take(&mut self.long) {
            keep(Piece::Copied(&self.buf[at..end]));
            keep(Piece::Long(payload));
            at = end;
        }
        keep(Piece::Copied(&self.buf[at..]));
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() > WRITE_SCRATCH_KEEP {
            buf = Vec::new();
        }
        WRITE_SCRATCH.set(buf);
    }
}

/// A piece of an [`Out`].
enum Piece<'a> {
    Copied(&'a [u8]),
    Long(Bytes),
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

    struct Quiet;

    impl crate::engine::Handler for Quiet {
        type Conn = ();
        fn on_open(
            &self,
            _: &std::sync::Arc<crate::engine::Session>,
            _: &http::request::Parts,
        ) -> std::sync::Arc<()> {
            std::sync::Arc::default()
        }
        fn on_message(&self, _: &std::sync::Arc<()>, _: courier_proto::engine::Data) {}
        fn on_close(&self, _: &std::sync::Arc<()>, _: crate::engine::CloseReason) {}
    }

    /// What an idle connection's tasks hold inline: the WebSocket task's future (with the pump
    /// and the connection state in it) and the session's driver. docs/limits.md has the figures;
    /// this keeps them from growing unnoticed.
    #[tokio::test]
    async fn idle_connection_futures_stay_small() {
        use super::*;
        let engine = Engine::new(crate::Config::default(), Quiet);
        let mut req = Request::new(());
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        let entry = engine.open(Transport::WebSocket, &parts);
        let task = engine
            .clone()
            .websocket_task(on_upgrade, Box::new(parts), Join::Open);
        let drive = engine.drive(entry.clone(), None);
        let (task, drive) = (size_of_val(&task), size_of_val(&drive));
        println!(
            "websocket task future: {task} bytes, driver future: {drive} bytes, Ws: {} bytes, \
             Decoder: {} bytes",
            size_of::<Ws>(),
            size_of::<Decoder>()
        );
        assert!(task <= 1152, "websocket task future: {task} bytes");
        assert!(drive <= 512, "driver future: {drive} bytes");
        entry.session.close(CloseReason::ForcedClose);
    }
}
