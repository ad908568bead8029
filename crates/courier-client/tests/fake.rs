//! The client against a scripted server that misbehaves on purpose: it stops pinging, or sends
//! bytes that are not Socket.IO.

use std::time::Duration;

use courier_client::{Client, Config, DisconnectReason, Reconnect, Status};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_websockets::{Message, ServerBuilder};

/// Accepts WebSocket connections; on each, sends the handshake, accepts one CONNECT to `/`,
/// then sends `after` (if any) and goes silent.
async fn scripted(
    after: Option<&'static str>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let (_req, mut ws) = ServerBuilder::new().accept(tcp).await.unwrap();
                let open = r#"0{"sid":"s1","upgrades":[],"pingInterval":100,"pingTimeout":100,"maxPayload":1000000}"#;
                ws.send(Message::text(open)).await.unwrap();
                let _ = tx.send(());
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.as_text().is_some_and(|t| t.starts_with("40")) {
                        ws.send(Message::text(r#"40{"sid":"a1"}"#)).await.unwrap();
                        if let Some(text) = after {
                            ws.send(Message::text(text)).await.unwrap();
                        }
                    }
                }
            });
        }
    });
    (url, rx)
}

fn config() -> Config {
    Config {
        reconnect: Reconnect {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(50),
            ..Reconnect::default()
        },
        ..Config::default()
    }
}

async fn next_reason(socket: &courier_client::Socket) -> DisconnectReason {
    let mut rx = socket.status();
    let st = tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|s| matches!(s, Status::Disconnected(_))),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    match st {
        Status::Disconnected(r) => r,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_silent_server_is_a_ping_timeout() {
    let (url, mut opened) = scripted(None).await;
    let client = Client::connect_with(&url, config()).await.unwrap();
    let s = client.socket("/");
    s.connect().await.unwrap();
    assert_eq!(s.id().as_deref(), Some("a1"));
    // No ping within pingInterval + pingTimeout (200 ms).
    assert_eq!(next_reason(&s).await, DisconnectReason::PingTimeout);
    // ... and the client comes back by itself.
    opened.recv().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), opened.recv())
        .await
        .unwrap()
        .unwrap();
    client.close().await;
}

#[tokio::test]
async fn garbage_is_a_parse_error() {
    let (url, _opened) = scripted(Some("4x-not-socket.io")).await;
    let client = Client::connect_with(&url, config()).await.unwrap();
    let s = client.socket("/");
    let _ = s.connect().await;
    assert_eq!(next_reason(&s).await, DisconnectReason::ParseError);
    client.close().await;
}
