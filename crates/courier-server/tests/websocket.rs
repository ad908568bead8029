//! The WebSocket transport byte by byte: framing rules, close codes, fragmentation, pings, and
//! bytes that come with the upgrade request. Every test runs twice: over `serve` (the server takes
//! the TCP stream back from hyper) and over I/O hyper cannot hand back (the generic path a TLS
//! stream would take).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use courier_server::{Config, Io, Setup};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(5);
const MAX_PAYLOAD: usize = 20_000;

/// A TCP stream hyper cannot downcast to its own I/O type.
struct Opaque(TcpStream);

impl AsyncRead for Opaque {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Opaque {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[derive(Clone, Copy, Debug)]
enum Path {
    Tcp,
    Opaque,
}

/// A hub whose `echo` event answers with its first argument.
async fn start(path: Path) -> std::net::SocketAddr {
    let io = Io::new(Config {
        max_payload: MAX_PAYLOAD,
        ..Config::default()
    });
    io.of("/").on_connect(|socket| async move {
        socket.on("echo", |s, m| async move {
            let v: serde_json::Value = m.arg(0).unwrap();
            let _ = s.emit("echo", &v);
        });
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match path {
        Path::Tcp => {
            tokio::spawn(courier_server::serve(
                listener,
                io.service(),
                std::future::pending(),
            ));
        }
        Path::Opaque => {
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let svc = io.service();
                    let hyper_svc = hyper::service::service_fn(move |req| {
                        tower::ServiceExt::oneshot(svc.clone(), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(Opaque(stream)), hyper_svc)
                        .with_upgrades();
                    tokio::spawn(conn);
                }
            });
        }
    }
    addr
}

/// A raw client connection after the upgrade.
struct Client {
    rd: OwnedReadHalf,
    /// Taken by a test that writes from another task.
    wr: Option<OwnedWriteHalf>,
    buf: Vec<u8>,
}

const UPGRADE: &str = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n\
    Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

impl Client {
    /// Upgrades, sending `extra` in the same write as the request, and reads the open packet.
    async fn connect_with(addr: std::net::SocketAddr, extra: &[u8]) -> Client {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut req = UPGRADE.as_bytes().to_vec();
        req.extend_from_slice(extra);
        tcp.write_all(&req).await.unwrap();
        let (rd, wr) = tcp.into_split();
        let mut c = Client {
            rd,
            wr: Some(wr),
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            c.fill().await;
        };
        let head = String::from_utf8(c.buf.drain(..end).collect()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        let (op, open) = c.frame().await;
        assert_eq!(op, 1);
        assert!(open.starts_with(b"0{"), "{open:?}");
        c
    }

    /// Upgrades and joins `/`.
    async fn connected(addr: std::net::SocketAddr) -> Client {
        let mut c = Client::connect_with(addr, b"").await;
        c.send(&frame(true, 1, b"40")).await;
        assert!(c.text().await.starts_with("40{"));
        c
    }

    async fn fill(&mut self) {
        let mut chunk = [0; 4096];
        let n = tokio::time::timeout(WAIT, self.rd.read(&mut chunk))
            .await
            .expect("the server answers")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.wr.as_mut().unwrap().write_all(bytes).await.unwrap();
    }

    /// The next server frame: its opcode and payload. Server frames are final and unmasked.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[0] & 0xF0, 0x80, "final, no reserved bits");
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match self.buf[1] {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0F;
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return (op, payload);
                }
            }
            self.fill().await;
        }
    }

    /// The next text frame, skipping the server's pings.
    async fn text(&mut self) -> String {
        loop {
            let (op, payload) = self.frame().await;
            if op == 1 && payload != b"2" {
                return String::from_utf8(payload).unwrap();
            }
        }
    }

    /// The close frame that ends the connection: its code, if any.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (op, payload) = self.frame().await;
            if op == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }

    /// Waits for the server to end the stream.
    async fn eof(&mut self) {
        let mut chunk = [0; 1024];
        loop {
            match tokio::time::timeout(WAIT, self.rd.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => panic!("the server kept the connection open"),
            }
        }
    }
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked(u8::from(fin) << 7 | opcode, payload, true)
}

fn masked(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let key = [0xA1, 0x02, 0xC3, 0x74];
    let mut out = vec![first];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

macro_rules! both_paths {
    ($($name:ident),* $(,)?) => {
        mod tcp {
            $(#[tokio::test] async fn $name() { super::$name(super::Path::Tcp).await })*
        }
        mod opaque {
            $(#[tokio::test] async fn $name() { super::$name(super::Path::Opaque).await })*
        }
    };
}

both_paths!(
    echoes_an_event,
    fragmented_text_over_many_tcp_writes,
    code_point_split_across_fragments,
    invalid_utf8_text_closes_with_1007,
    unmasked_client_frame_closes_with_1002,
    reserved_bits_close_with_1002,
    ping_is_answered_with_pong,
    frame_over_max_payload_closes_with_1009,
    fragmented_message_over_max_payload_closes_with_1009,
    bytes_sent_with_the_upgrade_request_are_read,
    client_close_is_echoed,
    large_messages_both_ways,
    answers_wait_for_a_slow_reader,
);

async fn echoes_an_event(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    c.send(&frame(true, 1, br#"42["echo","hi"]"#)).await;
    assert_eq!(c.text().await, r#"42["echo","hi"]"#);
}

async fn fragmented_text_over_many_tcp_writes(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    let msg = br#"42["echo","fragments"]"#;
    let mut bytes = Vec::new();
    for (i, part) in msg.chunks(3).enumerate() {
        let op = if i == 0 { 1 } else { 0 };
        let fin = (i + 1) * 3 >= msg.len();
        bytes.extend(frame(fin, op, part));
        if i == 2 {
            // A ping between fragments is answered at once.
            bytes.extend(frame(true, 9, b"mid"));
        }
    }
    // Byte by byte, each its own TCP segment (nodelay), with pauses so they are read apart.
    for b in bytes {
        c.send(&[b]).await;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(c.frame().await, (0xA, b"mid".to_vec()));
    assert_eq!(c.text().await, r#"42["echo","fragments"]"#);
}

async fn code_point_split_across_fragments(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    let msg = r#"42["echo","€uro"]"#.as_bytes();
    let euro = msg.iter().position(|&b| b == 0xE2).unwrap();
    let mut bytes = frame(false, 1, &msg[..euro + 1]);
    bytes.extend(frame(false, 0, &msg[euro + 1..euro + 2]));
    bytes.extend(frame(true, 0, &msg[euro + 2..]));
    c.send(&bytes).await;
    assert_eq!(c.text().await, r#"42["echo","€uro"]"#);
}

async fn invalid_utf8_text_closes_with_1007(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    c.send(&frame(true, 1, b"42[\"echo\",\"\xC3\x28\"]")).await;
    assert_eq!(c.close_code().await, Some(1007));
    c.eof().await;
}

async fn unmasked_client_frame_closes_with_1002(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    c.send(&masked(0x81, br#"42["echo","x"]"#, false)).await;
    assert_eq!(c.close_code().await, Some(1002));
    c.eof().await;
}

async fn reserved_bits_close_with_1002(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    // RSV1 is per-message compression, never negotiated.
    c.send(&frame(true, 0x40 | 1, b"42[\"echo\",1]")).await;
    assert_eq!(c.close_code().await, Some(1002));
    c.eof().await;
}

async fn ping_is_answered_with_pong(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    c.send(&frame(true, 9, b"are you there")).await;
    assert_eq!(c.frame().await, (0xA, b"are you there".to_vec()));
    // A pong from the client is ignored.
    c.send(&frame(true, 0xA, b"unasked")).await;
    c.send(&frame(true, 1, br#"42["echo",2]"#)).await;
    assert_eq!(c.text().await, r#"42["echo",2]"#);
}

async fn frame_over_max_payload_closes_with_1009(path: Path) {
    let addr = start(path).await;
    let mut c = Client::connected(addr).await;
    let big = format!(r#"42["echo","{}"]"#, "x".repeat(MAX_PAYLOAD));
    c.send(&frame(true, 1, big.as_bytes())).await;
    assert_eq!(c.close_code().await, Some(1009));
    c.eof().await;
    // Only that connection ends.
    let mut other = Client::connected(addr).await;
    other.send(&frame(true, 1, br#"42["echo","ok"]"#)).await;
    assert_eq!(other.text().await, r#"42["echo","ok"]"#);
}

async fn fragmented_message_over_max_payload_closes_with_1009(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    let half = vec![b'x'; MAX_PAYLOAD / 2 + 1];
    c.send(&frame(false, 1, b"42[\"echo\",\"")).await;
    c.send(&frame(false, 0, &half)).await;
    c.send(&frame(false, 0, &half)).await;
    assert_eq!(c.close_code().await, Some(1009));
    c.eof().await;
}

async fn bytes_sent_with_the_upgrade_request_are_read(path: Path) {
    let addr = start(path).await;
    let mut extra = frame(true, 1, b"40");
    extra.extend(frame(true, 1, br#"42["echo","early"]"#));
    let mut c = Client::connect_with(addr, &extra).await;
    assert!(c.text().await.starts_with("40{"));
    assert_eq!(c.text().await, r#"42["echo","early"]"#);
}

async fn client_close_is_echoed(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    let mut payload = 4000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"done");
    c.send(&frame(true, 8, &payload)).await;
    assert_eq!(c.close_code().await, Some(4000));
    c.eof().await;
}

async fn large_messages_both_ways(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    // Long enough that the answer is written as its own slice, short enough for max_payload.
    let body = "y".repeat(MAX_PAYLOAD - 20);
    let msg = format!(r#"42["echo","{body}"]"#);
    for _ in 0..3 {
        c.send(&frame(true, 1, msg.as_bytes())).await;
    }
    for _ in 0..3 {
        assert_eq!(c.text().await, msg);
    }
}

async fn answers_wait_for_a_slow_reader(path: Path) {
    let mut c = Client::connected(start(path).await).await;
    // More than the socket buffers hold: the server's writes are partial and wait for the
    // client, who reads only once everything is sent.
    let body = "z".repeat(MAX_PAYLOAD - 20);
    let msg = format!(r#"42["echo","{body}"]"#);
    const N: usize = 300;
    let mut wr = c.wr.take().unwrap();
    let request = frame(true, 1, msg.as_bytes());
    let writer = tokio::spawn(async move {
        for _ in 0..N {
            wr.write_all(&request).await.unwrap();
        }
        wr
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..N {
        assert_eq!(c.text().await, msg, "answer {i}");
    }
    c.wr = Some(writer.await.unwrap());
    c.send(&frame(true, 1, br#"42["echo","end"]"#)).await;
    assert_eq!(c.text().await, r#"42["echo","end"]"#);
}
