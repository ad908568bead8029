//! The bench protocol on socketioxide (axum): `echo` is acknowledged with its own argument,
//! `broadcast` sends `message` with the payload to every connected client. Default settings.
//!
//! `courier-bench-socketioxide [ADDR]` (default 127.0.0.1:0) prints `listening on http://ADDR`.

use axum::Router;
use axum::routing::get;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let (layer, io) = SocketIo::new_layer();
    io.ns("/", async |socket: SocketRef| {
        socket.on(
            "echo",
            async |Data(data): Data<Value>, ack: AckSender| {
                let _ = ack.send(&data);
            },
        );
        socket.on(
            "broadcast",
            async |io: SocketIo, Data(data): Data<Value>| {
                let _ = io.emit("message", &data).await;
            },
        );
    });
    let app = Router::new().route("/", get(async || "ok")).layer(layer);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("socketioxide listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
