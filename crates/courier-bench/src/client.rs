//! Benchmark connections: Socket.IO v5 over a WebSocket opened directly (no polling, no
//! upgrade), or a raw WebSocket, plus the marked payloads every scenario sends.
//!
//! Hot paths (a delivery, an ack) are recognised by their first bytes without decoding JSON;
//! everything else goes through `courier-proto`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use courier_proto::{engine, socket};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::{ClientBuilder, Message};

/// A client WebSocket.
pub type Ws = tokio_websockets::WebSocketStream<TcpStream>;

/// What a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Socket.IO (Engine.IO v4 over WebSocket); URL `http://host:port`.
    SocketIo,
    /// Plain WebSocket frames: `e...` is echoed, `b...` is sent to everyone; URL `ws://host:port/`.
    Raw,
    /// Redis (RESP); URL `redis://host:port`.
    Redis,
}

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its protocol, from the URL's scheme.
    pub proto: Proto,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The WebSocket URI to open (unused for Redis).
    pub ws_uri: String,
}

impl Target {
    /// Parses `http://host:port` (Socket.IO), `ws://host:port/path` (raw) or `redis://host:port`.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let (proto, rest) = if let Some(r) = url.strip_prefix("http://") {
            (Proto::SocketIo, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (Proto::Raw, r)
        } else if let Some(r) = url.strip_prefix("redis://") {
            (Proto::Redis, r)
        } else {
            bail!("unsupported URL {url:?}: expected http://, ws:// or redis://");
        };
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let addr = hostport
            .to_socket_addrs()
            .with_context(|| format!("resolving {hostport}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("no IPv4 address for {hostport}"))?;
        let ws_uri = match proto {
            Proto::SocketIo => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
            _ => format!("ws://{addr}/{path}"),
        };
        Ok(Target {
            proto,
            addr,
            ws_uri,
        })
    }

    /// A WebSocket client builder for this target.
    pub fn builder(&self) -> anyhow::Result<ClientBuilder<'static>> {
        Ok(ClientBuilder::new().uri(&self.ws_uri)?)
    }
}

/// Opens a TCP connection from `bind` (any loopback address, so that one machine has more than
/// one address's worth of ports), closed with a reset so that no TIME_WAIT is left behind.
pub async fn tcp(addr: SocketAddr, bind: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = bind {
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding {ip}"))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.set_zero_linger()?;
    Ok(stream)
}

/// Opens a WebSocket and, for Socket.IO, joins the main namespace.
pub async fn connect(
    target: &Target,
    builder: &ClientBuilder<'_>,
    bind: Option<IpAddr>,
) -> anyhow::Result<Ws> {
    let stream = tcp(target.addr, bind).await?;
    let (mut ws, _) = builder.connect_on(stream).await?;
    if target.proto == Proto::SocketIo {
        let open = next_text(&mut ws).await?;
        if !matches!(
            engine::Packet::decode_text(open),
            Ok(engine::Packet::Open(_))
        ) {
            bail!("expected an Engine.IO open packet");
        }
        let join = socket::Packet::new(socket::PacketType::Connect, "/", None);
        ws.send(Message::text(join.encode_message())).await?;
        loop {
            let text = next_text(&mut ws).await?;
            match engine::Packet::decode_text(text) {
                Ok(engine::Packet::Ping(_)) => ws.send(pong()).await?,
                Ok(engine::Packet::Message(engine::Data::Text(t))) => {
                    let p = socket::Packet::decode(&t).context("bad Socket.IO packet")?;
                    match p.kind {
                        socket::PacketType::Connect => break,
                        socket::PacketType::ConnectError => bail!("refused: {:?}", p.data),
                        _ => {}
                    }
                }
                _ => bail!("unexpected packet during the handshake"),
            }
        }
    }
    Ok(ws)
}

/// Joins `room` with the hub's `courier:join` and waits for its ack (answering pings meanwhile).
pub async fn join(ws: &mut Ws, room: &str) -> anyhow::Result<()> {
    ws.send(sio_event("courier:join", Value::from(room), Some(1)))
        .await?;
    loop {
        let text = next_text(ws).await?;
        match classify(Proto::SocketIo, &text) {
            Incoming::Ping => ws.send(pong()).await?,
            Incoming::Ack(1, body) => {
                let answer: Value = serde_json::from_slice(body).context("bad join ack")?;
                if answer[0]["ok"] != Value::Bool(true) {
                    bail!("courier:join {room:?} refused: {answer}");
                }
                return Ok(());
            }
            _ => {}
        }
    }
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<Bytes> {
    match ws.next().await {
        Some(Ok(m)) if m.is_text() => Ok(m.into_payload().into()),
        Some(Ok(_)) => bail!("unexpected non-text frame"),
        Some(Err(e)) => Err(e.into()),
        None => bail!("connection closed"),
    }
}

/// The Engine.IO answer to a server ping.
pub fn pong() -> Message {
    Message::text(Bytes::from_static(b"3"))
}

/// What an incoming frame is, as far as the benchmarks care.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// An Engine.IO ping; answer with [`pong`].
    Ping,
    /// A Socket.IO EVENT (with an ack id when the server wants an answer).
    Event(Option<u64>, &'a [u8]),
    /// A Socket.IO ACK.
    Ack(u64, &'a [u8]),
    /// A raw WebSocket frame.
    Raw(&'a [u8]),
    /// Anything else.
    Other,
}

/// Classifies a frame without decoding its JSON.
pub fn classify(proto: Proto, frame: &[u8]) -> Incoming<'_> {
    if proto != Proto::SocketIo {
        return Incoming::Raw(frame);
    }
    match frame {
        b"2" => Incoming::Ping,
        [b'4', b'2', rest @ ..] => {
            let (id, body) = digits(rest);
            Incoming::Event(id, body)
        }
        [b'4', b'3', rest @ ..] => match digits(rest) {
            (Some(id), body) => Incoming::Ack(id, body),
            _ => Incoming::Other,
        },
        _ => Incoming::Other,
    }
}

fn digits(s: &[u8]) -> (Option<u64>, &[u8]) {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return (None, &s[n..]);
    }
    let v = s[..n]
        .iter()
        .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
    (Some(v), &s[n..])
}

/// Nanoseconds since the Unix epoch: a clock every process on the machine shares.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A marked payload: `#<phase><seq>:<sent ns>:` padded with `x` to `size` bytes. Receivers find
/// the mark in any framing (Socket.IO string argument or raw frame) by its `#`.
pub fn mark(phase: u8, seq: u64, size: usize) -> String {
    let mut s = format!("#{}{seq}:{}:", phase as char, now_ns());
    while s.len() < size {
        s.push('x');
    }
    s
}

/// A payload's mark: phase, sequence number, send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// What the sender was doing (`S` saturation, `L` latency, ...).
    pub phase: u8,
    /// The sender's sequence number.
    pub seq: u64,
    /// When it was sent, [`now_ns`].
    pub sent: u64,
}

/// Finds the mark in a frame.
pub fn find_mark(frame: &[u8]) -> Option<Mark> {
    let at = frame.iter().position(|&b| b == b'#')?;
    let rest = frame.get(at + 1..)?;
    let (&phase, rest) = rest.split_first()?;
    let (seq, rest) = digits(rest);
    let rest = rest.strip_prefix(b":")?;
    let (sent, _) = digits(rest);
    Some(Mark {
        phase,
        seq: seq?,
        sent: sent?,
    })
}

/// A Socket.IO EVENT `[event, arg]` with an optional ack id, as a text frame.
pub fn sio_event(event: &str, arg: Value, ack: Option<u64>) -> Message {
    let mut p = socket::Packet::event("/", event, vec![arg], 0);
    p.id = ack;
    Message::text(p.encode_message())
}

/// A Socket.IO ACK with no arguments, as a text frame.
pub fn sio_empty_ack(id: u64) -> Message {
    let mut out = BytesMut::with_capacity(24);
    out.put_slice(b"43");
    out.put_slice(id.to_string().as_bytes());
    out.put_slice(b"[]");
    Message::text(out.freeze())
}

/// A raw frame: `op` (`e` echo, `b` broadcast) then the payload.
pub fn raw_frame(op: u8, payload: &str) -> Message {
    let mut out = BytesMut::with_capacity(payload.len() + 1);
    out.put_u8(op);
    out.put_slice(payload.as_bytes());
    Message::text(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_any_framing() {
        let p = mark(b'L', 42, 100);
        assert_eq!(p.len(), 100);
        let frame = format!("42[\"message\",\"{p}\"]");
        let m = find_mark(frame.as_bytes()).unwrap();
        assert_eq!((m.phase, m.seq), (b'L', 42));
        assert!(m.sent > 0);
        let raw = format!("b{p}");
        assert_eq!(find_mark(raw.as_bytes()), Some(m));
    }

    #[test]
    fn frames_are_classified_by_prefix() {
        assert_eq!(classify(Proto::SocketIo, b"2"), Incoming::Ping);
        assert_eq!(
            classify(Proto::SocketIo, b"4317[\"x\"]"),
            Incoming::Ack(17, b"[\"x\"]")
        );
        assert_eq!(
            classify(Proto::SocketIo, b"429[\"e\"]"),
            Incoming::Event(Some(9), b"[\"e\"]")
        );
        assert_eq!(
            classify(Proto::SocketIo, b"42[\"e\"]"),
            Incoming::Event(None, b"[\"e\"]")
        );
        assert_eq!(classify(Proto::Raw, b"2"), Incoming::Raw(b"2"));
        let m = sio_event("echo", Value::from("a"), Some(3));
        assert_eq!(m.as_text(), Some("423[\"echo\",\"a\"]"));
        assert_eq!(sio_empty_ack(12).as_text(), Some("4312[]"));
    }

    #[test]
    fn targets_come_from_urls() {
        let t = Target::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(t.proto, Proto::SocketIo);
        assert!(t.ws_uri.ends_with("/socket.io/?EIO=4&transport=websocket"));
        assert_eq!(
            Target::parse("ws://127.0.0.1:1/").unwrap().proto,
            Proto::Raw
        );
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379").unwrap().proto,
            Proto::Redis
        );
        assert!(Target::parse("ftp://x").is_err());
    }
}
