//! The server the Socket.IO protocol's own test suite runs against, built on Courier.
//!
//! `cargo run --release --example conformance -- socketio` (or `-- engineio`), optionally with
//! `--listen ADDR` (default `[::]:3000`, which also accepts IPv4). Settings follow the reference
//! test server: pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1000000, connectTimeout
//! 1000 ms, upgradeTimeout 1000 ms, CORS origin `*`.
//!
//! - `socketio`: namespaces `/` and `/custom`; on connect emits `auth` with the handshake's auth
//!   payload; `message` is answered with `message-back` and the same arguments;
//!   `message-with-ack` is acknowledged with the same arguments; `server-disconnect` makes the
//!   server disconnect that socket (the connection keeps its other namespaces).
//! - `engineio`: a bare Engine.IO server at `/engine.io/` that sends every message back.

use std::sync::Arc;
use std::time::Duration;

use courier_proto::engine::Data;
use courier_server::engine::{CloseReason, Engine, Handler, Outbound, Session};
use courier_server::{Config, Cors, Io, Setup};
use tokio::net::TcpListener;

fn config(path: &str) -> Config {
    Config {
        path: path.into(),
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        connect_timeout: Duration::from_millis(1000),
        upgrade_timeout: Duration::from_millis(1000),
        cors: Cors {
            origins: vec!["*".into()],
            credentials: false,
        },
        ..Config::default()
    }
}

/// Engine.IO echo: every message goes back to its sender.
struct Echo;

impl Handler for Echo {
    type Conn = Session;

    fn on_open(&self, session: &Arc<Session>, _: &http::request::Parts) -> Arc<Session> {
        session.clone()
    }

    fn on_message(&self, session: &Arc<Session>, data: Data) {
        let out = match data {
            Data::Text(t) => Outbound::Text([&b"4"[..], &t].concat().into()),
            Data::Binary(b) => Outbound::Binary(b),
        };
        let _ = session.send(out);
    }

    fn on_close(&self, _: &Arc<Session>, _: CloseReason) {}
}

fn socketio() -> Io {
    let io = Io::new(config("/socket.io/"));
    for name in ["/", "/custom"] {
        io.of(name).on_connect(|socket| async move {
            let _ = socket.emit("auth", socket.auth());
            socket.on("message", |socket, msg| async move {
                let _ = socket.emit_payload("message-back", msg.payload);
            });
            socket.on("message-with-ack", |_, mut msg| async move {
                let payload = std::mem::take(&mut msg.payload);
                let _ = msg.ack_payload(payload);
            });
            socket.on("server-disconnect", |socket, _| async move {
                socket.disconnect();
            });
        });
    }
    io
}

async fn bind(addr: Option<String>) -> std::io::Result<TcpListener> {
    match addr {
        Some(a) => TcpListener::bind(a).await,
        None => match TcpListener::bind("[::]:3000").await {
            Ok(l) => Ok(l),
            Err(_) => TcpListener::bind("0.0.0.0:3000").await,
        },
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "socketio".into());
    let mut listen = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next(),
            other => {
                eprintln!(
                    "unknown argument {other}; usage: conformance socketio|engineio [--listen ADDR]"
                );
                std::process::exit(2);
            }
        }
    }
    let listener = bind(listen).await?;
    eprintln!(
        "{mode} conformance server listening on http://{}",
        listener.local_addr()?
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match mode.as_str() {
        "socketio" => courier_server::serve(listener, socketio().service(), shutdown).await,
        "engineio" => {
            let engine = Engine::new(config("/engine.io/"), Echo);
            courier_server::serve(listener, engine.service(), shutdown).await
        }
        other => {
            eprintln!("unknown mode {other}: expected socketio or engineio");
            std::process::exit(2);
        }
    }
}
