//! The client against the reference Node server (tests/e2e/reference/conformance.mjs, npm
//! `socket.io` 4.8): it echoes `message` as `message-back`, answers `message-with-ack` with its
//! arguments, and emits `auth` with the handshake's auth on connection, on `/` and `/custom`.
//! Skipped, with a message, when node or tests/e2e/node_modules is missing.

mod common;

use std::time::Duration;

use common::{Server, quick_config, recv, wait_status};
use courier_client::{Client, DisconnectReason, Payload, Status};
use serde_json::json;
use tokio::sync::mpsc;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn connect_with_auth_and_echo() {
    let Some(server) = Server::reference() else {
        return;
    };
    let client = Client::connect_with(&server.url(), quick_config())
        .await
        .unwrap();
    let s = client.socket("/");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tx2 = tx.clone();
    s.on("auth", move |ev| {
        let _ = tx.send(("auth", ev.payload));
    });
    s.on("message-back", move |ev| {
        let _ = tx2.send(("back", ev.payload));
    });
    s.set_auth(json!({"token": "abc"}));
    s.connect().await.unwrap();
    // The reference server has no recovery: no pid.
    assert!(s.pid().is_none());
    let (what, p) = recv(&mut rx).await;
    assert_eq!((what, p.args), ("auth", vec![json!({"token": "abc"})]));

    s.emit(
        "message",
        Payload::from(vec![json!(1), json!({"a": [true]})]),
    )
    .await
    .unwrap();
    let (what, p) = recv(&mut rx).await;
    assert_eq!(
        (what, p.args),
        ("back", vec![json!(1), json!({"a": [true]})])
    );
    client.close().await;
}

#[tokio::test]
async fn binary_both_ways_and_acks() {
    let Some(server) = Server::reference() else {
        return;
    };
    let client = Client::connect_with(&server.url(), quick_config())
        .await
        .unwrap();
    let s = client.socket("/");
    let (tx, mut rx) = mpsc::unbounded_channel();
    s.on("message-back", move |ev| {
        let _ = tx.send(ev.payload);
    });
    s.connect().await.unwrap();

    let blob: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
    let mut payload = Payload::new().value(json!("file"));
    let nested = payload.binary_value(vec![0xffu8, 0]);
    let payload = payload
        .value(json!({"parts": [nested]}))
        .binary(blob.clone());

    // Binary out, binary back as an event (BINARY_EVENT both ways).
    s.emit("message", payload.clone()).await.unwrap();
    let back = recv(&mut rx).await;
    assert_eq!(back.args[0], json!("file"));
    assert_eq!(
        back.binary_of(&back.args[1]["parts"][0]).unwrap().as_ref(),
        &[0xff, 0]
    );
    assert_eq!(back.bytes(2).unwrap().as_ref(), &blob[..]);

    // Binary out, binary back as an acknowledgement (BINARY_ACK).
    let answer = s
        .emit_with_ack("message-with-ack", payload, 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(answer.bytes(2).unwrap().as_ref(), &blob[..]);
    assert_eq!(answer.attachments.len(), 2);

    // Plain JSON acknowledgement, and one with no arguments.
    let answer = s
        .emit_with_ack("message-with-ack", json!({"x": 1}), 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(answer.args, vec![json!({"x": 1})]);
    let answer = s
        .emit_with_ack("message-with-ack", (), 5 * SECOND)
        .await
        .unwrap();
    assert!(answer.args.is_empty());

    // An event nobody answers times out.
    let err = s
        .emit_with_ack("message", (), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, courier_client::Error::Timeout(_)), "{err}");
    client.close().await;
}

#[tokio::test]
async fn namespaces_on_one_connection() {
    let Some(server) = Server::reference() else {
        return;
    };
    let client = Client::connect_with(&server.url(), quick_config())
        .await
        .unwrap();
    let root = client.socket("/");
    let custom = client.socket("/custom");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tx2 = tx.clone();
    root.on("message-back", move |ev| {
        let _ = tx.send(("/", ev.payload.args));
    });
    custom.on("message-back", move |ev| {
        let _ = tx2.send(("/custom", ev.payload.args));
    });
    root.connect().await.unwrap();
    custom.connect().await.unwrap();
    custom.emit("message", json!("c")).await.unwrap();
    assert_eq!(recv(&mut rx).await, ("/custom", vec![json!("c")]));
    root.emit("message", json!("r")).await.unwrap();
    assert_eq!(recv(&mut rx).await, ("/", vec![json!("r")]));

    let err = client.socket("/other").connect().await.unwrap_err();
    assert!(
        matches!(&err, courier_client::Error::Refused { message, .. } if message == "Invalid namespace"),
        "{err}"
    );
    client.close().await;
}

#[tokio::test]
async fn pings_keep_the_connection() {
    let Some(server) = Server::reference() else {
        return;
    };
    // The reference pings every 300 ms and waits 200 ms for the pong.
    let client = Client::connect_with(&server.url(), quick_config())
        .await
        .unwrap();
    let s = client.socket("/");
    s.connect().await.unwrap();
    let sid = s.id();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(s.connected());
    assert_eq!(s.id(), sid);
    client.close().await;
}

#[tokio::test]
async fn reconnects_after_a_restart() {
    let Some(mut server) = Server::reference() else {
        return;
    };
    let client = Client::connect_with(&server.url(), quick_config())
        .await
        .unwrap();
    let s = client.socket("/custom");
    let (tx, mut rx) = mpsc::unbounded_channel();
    s.on("message-back", move |ev| {
        let _ = tx.send(ev.payload.args);
    });
    s.connect().await.unwrap();
    let first = s.id();
    server.kill();
    let st = wait_status(&s, |st| matches!(st, Status::Disconnected(_))).await;
    assert_eq!(st, Status::Disconnected(DisconnectReason::TransportClose));
    server.restart();
    let st = wait_status(&s, |st| matches!(st, Status::Connected { .. })).await;
    assert!(matches!(
        st,
        Status::Connected {
            recovered: false,
            ..
        }
    ));
    assert_ne!(s.id(), first);
    s.emit("message", json!("again")).await.unwrap();
    assert_eq!(recv(&mut rx).await, vec![json!("again")]);
    client.close().await;
}
