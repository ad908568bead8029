//! A chat hub written with the library and mounted in an axum app next to its own routes.
//!
//! `cargo run --example chat -- 127.0.0.1:3000`, then connect socket.io-client to
//! `http://127.0.0.1:3000`: `socket.emit("join", "lobby")`, `socket.emit("say", "lobby", "hi",
//! ack)`. `GET /stats` shows the connection count.

use axum::Router;
use axum::routing::get;
use courier_server::{Config, ConnectError, Io, Setup};
use serde::Deserialize;

#[derive(Deserialize)]
struct Auth {
    name: String,
}

fn hub() -> Io {
    let io = Io::new(Config::default());
    io.of("/")
        // Every client must say who it is; the name is kept with the socket.
        .middleware(|socket| {
            let auth = serde_json::from_value::<Auth>(socket.auth().clone());
            async move {
                let auth = auth.map_err(|_| ConnectError::new("a name is required"))?;
                socket.set_data(serde_json::json!({"name": auth.name}));
                Ok(())
            }
        })
        .on_connect(|socket| async move {
            socket.on("join", |socket, msg| async move {
                if let Ok(room) = msg.arg::<String>(0) {
                    socket.join(room);
                }
            });
            // Typed arguments: ("room", "text"); the sender gets the number of recipients.
            socket.on("say", |socket, mut msg| async move {
                let Ok((room, text)) = msg.parse::<(String, String)>() else {
                    let _ = msg.ack(&serde_json::json!({"error": "expected (room, text)"}));
                    return;
                };
                let from = socket.data()["name"].clone();
                let line = serde_json::json!({"from": from, "text": text});
                let n = socket.to(room).emit("said", &line).unwrap_or(0);
                let _ = msg.ack(&serde_json::json!({"recipients": n}));
            });
            socket.on_disconnect(|socket, reason| async move {
                println!("{} left: {reason}", socket.data()["name"]);
            });
        });
    io
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let io = hub();
    let stats = io.clone();
    let app = Router::new()
        .route(
            "/stats",
            get(move || async move { format!("{} connections\n", stats.connection_count()) }),
        )
        .fallback_service(io.service());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("chat listening on http://{}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    courier_server::serve(listener, app, shutdown).await
}
