//! The bench protocol over plain WebSocket frames, with no Engine.IO or Socket.IO framing: the
//! ceiling the Socket.IO servers are compared with. A text frame starting with `e` is sent back
//! as it is; one starting with `b` is sent to every connected client.
//!
//! Each connection has one writer task that drains its bounded queue and flushes once per
//! burst; a broadcast hands every queue a reference to the same frame.
//!
//! `courier-bench-rawws [ADDR]` (default 127.0.0.1:0) prints `listening on ws://ADDR/`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_websockets::{Message, ServerBuilder};

/// Frames one connection may have waiting; past that, broadcasts to it are dropped.
const QUEUE: usize = 1024;
/// Frames written per flush at most.
const BURST: usize = 128;

// std lock: taken briefly to add, remove or walk the peers, never across an await.
type Peers = Arc<RwLock<HashMap<u64, mpsc::Sender<Message>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("rawws listening on ws://{}/", listener.local_addr()?);
    let peers = Peers::default();
    let mut next = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next += 1;
        tokio::spawn(serve(stream, next, peers.clone()));
    }
}

async fn serve(stream: TcpStream, id: u64, peers: Peers) {
    let Ok((_, ws)) = ServerBuilder::new().accept(stream).await else {
        return;
    };
    let (mut sink, mut incoming) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    peers.write().expect("peers lock").insert(id, tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            for _ in 1..BURST {
                let Ok(m) = rx.try_recv() else { break };
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = incoming.next().await {
        if !msg.is_text() {
            continue;
        }
        match msg.as_payload().first() {
            Some(b'e') => {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            Some(b'b') => {
                for peer in peers.read().expect("peers lock").values() {
                    let _ = peer.try_send(msg.clone());
                }
            }
            _ => {}
        }
    }
    peers.write().expect("peers lock").remove(&id);
    writer.abort();
}
