//! A worker and a producer on one connection: the worker consumes the durable stream `orders`
//! as consumer `billing`, the producer publishes a few orders, and a chat handler prints what
//! the hub relays. Run a hub first (`courier serve`), then:
//!
//! ```text
//! cargo run -p courier-client --example orders -- http://127.0.0.1:3000
//! ```
//!
//! Stop the hub and start it again while this runs: the client reconnects, the subscription
//! goes on, and unacknowledged orders come again.

use std::time::Duration;

use courier_client::{Client, Config, StartAt, Status};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let client = Client::connect_with(&url, Config::default()).await?;
    let socket = client.socket("/");
    socket.on("chat", |event| println!("chat: {:?}", event.payload.args));
    socket.connect().await?;
    println!("connected as {:?}", socket.id());
    socket.join(&["lobby"]).await?;

    // Report reconnections.
    let mut status = socket.status();
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            match &*status.borrow() {
                Status::Connected { sid, recovered } => {
                    println!("connected as {sid} (recovered: {recovered})");
                }
                Status::Disconnected(reason) => println!("disconnected: {reason}"),
                _ => {}
            }
        }
    });

    let mut orders = socket.subscribe("orders", "billing", StartAt::All).await?;
    println!("{} orders were waiting", orders.pending());

    let producer = socket.clone();
    tokio::spawn(async move {
        for n in 1..=5 {
            let id = format!("order-{n}");
            match producer
                .publish("orders", "order", &json!({"n": n}), Some(&id))
                .await
            {
                Ok(p) => println!("published {id} as #{} (duplicate: {})", p.seq, p.duplicate),
                Err(e) => eprintln!("publishing {id} failed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    while let Some(delivery) = orders.recv().await {
        println!(
            "{} #{} (delivery {}): {}",
            delivery.event, delivery.meta.seq, delivery.meta.deliveries, delivery.data
        );
        // Acknowledge once handled; an order not acknowledged comes again after ack_wait.
        if let Err(e) = delivery.ack() {
            eprintln!("ack failed ({e}); the hub will deliver it again");
        }
    }
    Ok(())
}
