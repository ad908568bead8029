//! What the server counts (`Io::stats`) and tells its `Observer`, for one raw WebSocket client.

use std::sync::Arc;
use std::time::Duration;

use courier_server::engine::{CloseReason, Transport};
use courier_server::stats::TRANSPORTS;
use courier_server::{Config, DisconnectReason, Io, Observer, Setup, Socket};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_websockets::{ClientBuilder, Message};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Observer for Log {
    fn socket_connected(&self, s: &Socket) {
        self.0.lock().push(format!("connected {}", s.ns().name()));
    }
    fn socket_disconnected(&self, _: &Socket, r: DisconnectReason) {
        self.0.lock().push(format!("disconnected {r}"));
    }
    fn room_joined(&self, _: &Socket, room: &str) {
        self.0.lock().push(format!("joined {room}"));
    }
    fn room_left(&self, _: &Socket, room: &str) {
        self.0.lock().push(format!("left {room}"));
    }
    fn event_received(&self, _: &Socket, event: &str, args: &[Value]) {
        self.0
            .lock()
            .push(format!("received {event} {}", Value::from(args.to_vec())));
    }
    fn event_sent(&self, _: &Socket, event: &str, _: &[Value]) {
        self.0.lock().push(format!("sent {event}"));
    }
}

async fn next_text(
    ws: &mut tokio_websockets::WebSocketStream<
        impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    >,
) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame")
            .expect("open")
            .unwrap();
        if let Some(t) = msg.as_text() {
            return t.to_owned();
        }
    }
}

#[tokio::test]
async fn counts_and_observes_a_client() {
    let io = Io::new(Config::default());
    let log = Arc::new(Log::default());
    io.set_observer(log.clone());
    io.of("/").on_connect(|socket| async move {
        socket.on("join", |s, _| async move {
            s.join("room-1");
            s.join("room-1");
            s.leave("room-1");
            let _ = s.emit("joined", &1);
        });
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(courier_server::serve(
        listener,
        io.service(),
        std::future::pending(),
    ));

    let uri = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = ClientBuilder::new()
        .uri(&uri)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert!(next_text(&mut ws).await.starts_with("0{"));
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("40{"));
    ws.send(Message::text(r#"42["join","x"]"#)).await.unwrap();
    assert_eq!(next_text(&mut ws).await, r#"42["joined",1]"#);
    ws.send(Message::text(r#"41"#)).await.unwrap();
    let stats = io.stats().expect("metrics on by default");
    let deadline = tokio::time::Instant::now() + WAIT;
    while stats
        .socket_disconnects
        .iter()
        .map(|c| c.get())
        .sum::<u64>()
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "the socket left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *log.0.lock(),
        [
            "connected /",
            r#"received join ["x"]"#,
            "joined room-1",
            "left room-1",
            "sent joined",
            "disconnected client namespace disconnect",
        ]
    );
    let ws_slot = TRANSPORTS
        .iter()
        .position(|&t| t == Transport::WebSocket)
        .unwrap();
    assert_eq!(stats.connections_opened[ws_slot].get(), 1);
    assert_eq!(stats.socket_connects.get(), 1);
    assert_eq!(stats.events_received.get(), 1);
    assert_eq!(stats.events_emitted.get(), 1);
    assert_eq!(
        stats.socket_disconnects[0].get(),
        1,
        "client namespace disconnect"
    );
    // 40, the event, 41 (pongs are not due yet).
    assert_eq!(stats.packets_in.get(), 3);
    // The open packet went out before the session was the writer's; then 40, the event.
    assert!(stats.packets_out.get() >= 2, "{}", stats.packets_out.get());
    assert_eq!(io.transport_counts(), (0, 1));
    drop(ws);
    let deadline = tokio::time::Instant::now() + WAIT;
    while stats.closed_count(CloseReason::TransportClose) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn metrics_off_counts_nothing() {
    let io = Io::new(Config {
        metrics: false,
        ..Config::default()
    });
    assert!(io.stats().is_none());
}
