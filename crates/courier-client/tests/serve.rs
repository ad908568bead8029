//! The client against a real `courier serve` (target/debug/courier, built beforehand).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, TempDir, quick_config, recv, socket, wait_status};
use courier_client::api::EmitRequest;
use courier_client::{
    ApiClient, Client, DisconnectReason, Error, Payload, StartAt, Status, SubscribeOptions,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const SECOND: Duration = Duration::from_secs(1);

fn serve(dir: &TempDir) -> Server {
    Server::courier(&dir.0, &[])
}

#[tokio::test]
async fn emit_and_ack_both_ways() {
    let dir = TempDir::new("ack");
    let server = serve(&dir);
    let a = socket(&server.url(), "/").await;
    let b = socket(&server.url(), "/").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.on("hello", move |ev| {
        let _ = tx.send(ev.payload.args);
    });
    b.on("question", |mut ev| {
        let n: u64 = ev.payload.get(0).unwrap();
        ev.ack(json!({"answer": n * 2})).unwrap();
    });
    a.join(&["r"]).await.unwrap();
    let rooms = b.join(&["r"]).await.unwrap();
    assert!(rooms.contains(&"r".to_owned()));

    // Client to server with an ack: the hub answers with the number of recipients.
    let answer = a
        .emit_with_ack(
            "hello",
            Payload::from(vec![json!(1), json!("x")]),
            5 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(answer.args, vec![json!({"ok": true, "recipients": 1})]);
    let got = recv(&mut rx).await;
    assert_eq!(&got[..2], &[json!(1), json!("x")]);

    // Server to client with an ack: the API waits for the handler's answer.
    let api = ApiClient::new(&server.url(), None).unwrap();
    let mut req = EmitRequest::new("question", vec![json!(21)]);
    req.rooms = vec![b.id().unwrap()];
    req.ack_timeout_ms = Some(5000);
    let emitted = api.emit(&req).await.unwrap();
    assert_eq!(emitted.recipients, 1);
    assert_eq!(emitted.timeouts, 0);
    assert_eq!(emitted.acks[0].sid, b.id().unwrap());
    assert_eq!(emitted.acks[0].args, vec![json!({"answer": 42})]);

    // A reserved name is refused before anything is sent.
    assert!(matches!(
        a.emit("disconnect", ()).await,
        Err(Error::InvalidEvent(_))
    ));
    a.client().close().await;
    b.client().close().await;
}

#[tokio::test]
async fn binary_arguments_both_ways() {
    let dir = TempDir::new("binary");
    let server = serve(&dir);
    let a = socket(&server.url(), "/").await;
    let b = socket(&server.url(), "/").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.on("file", move |ev| {
        let _ = tx.send(ev.payload);
    });
    a.join(&["r"]).await.unwrap();
    b.join(&["r"]).await.unwrap();

    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut payload = Payload::new().value(json!("meta"));
    let inner = payload.binary_value(vec![1u8, 2, 3]);
    let payload = payload.value(json!({"thumb": inner})).binary(big.clone());
    let answer = a.emit_with_ack("file", payload, 5 * SECOND).await.unwrap();
    assert_eq!(answer.args[0]["recipients"], json!(1));

    let got = recv(&mut rx).await;
    assert_eq!(got.args[0], json!("meta"));
    assert_eq!(
        got.binary_of(&got.args[1]["thumb"]).unwrap(),
        &Bytes::from_static(&[1, 2, 3])
    );
    assert_eq!(got.bytes(2).unwrap().as_ref(), &big[..]);
    a.client().close().await;
    b.client().close().await;
}

#[tokio::test]
async fn several_namespaces_share_one_connection() {
    let dir = TempDir::new("nsp");
    let server = Server::courier(&dir.0, &[("COURIER_HUB_NAMESPACES", "/,/admin")]);
    let client = Client::connect_with(&server.url(), quick_config())
        .await
        .unwrap();
    let root = client.socket("/");
    let admin = client.socket("admin");
    assert_eq!(admin.namespace(), "/admin");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tx2 = tx.clone();
    root.on("news", move |_| {
        let _ = tx.send("/");
    });
    admin.on("news", move |_| {
        let _ = tx2.send("/admin");
    });
    root.connect().await.unwrap();
    admin.connect().await.unwrap();
    assert_ne!(root.id(), admin.id());

    let api = ApiClient::new(&server.url(), None).unwrap();
    let mut req = EmitRequest::new("news", vec![json!(1)]);
    req.namespace = "/admin".into();
    assert_eq!(api.emit(&req).await.unwrap().recipients, 1);
    assert_eq!(recv(&mut rx).await, "/admin");
    let sockets = api.sockets("/", None).await.unwrap();
    assert_eq!(sockets.len(), 1);
    assert_eq!(sockets[0].transport, "websocket");

    let nope = client.socket("/nope");
    match nope.connect().await {
        Err(Error::Refused { message, .. }) => assert_eq!(message, "Invalid namespace"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Leaving one namespace keeps the other.
    admin.disconnect().await;
    assert!(!admin.connected());
    req.namespace = "/".into();
    assert_eq!(api.emit(&req).await.unwrap().recipients, 1);
    assert_eq!(recv(&mut rx).await, "/");
    client.close().await;
}

#[tokio::test]
async fn auth_payload_is_checked_by_the_hub() {
    let dir = TempDir::new("auth");
    let server = Server::courier(&dir.0, &[("COURIER_HUB_AUTH_TOKENS", "s3cret")]);
    let client = Client::connect_with(&server.url(), quick_config())
        .await
        .unwrap();
    let s = client.socket("/");
    s.set_auth(json!({"token": "wrong"}));
    match s.connect().await {
        Err(Error::Refused { message, data, .. }) => {
            assert_eq!(message, "unauthorized");
            assert_eq!(data.unwrap()["code"], "invalid_token");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        s.status().borrow().clone(),
        Status::Refused { .. }
    ));
    s.set_auth(json!({"token": "s3cret"}));
    s.connect().await.unwrap();
    assert!(s.connected());
    client.close().await;
}

#[tokio::test]
async fn pings_are_answered() {
    let dir = TempDir::new("ping");
    let server = Server::courier(
        &dir.0,
        &[
            ("COURIER_ENGINE_PING_INTERVAL_MS", "150"),
            ("COURIER_ENGINE_PING_TIMEOUT_MS", "300"),
            // Without recovery a reconnection would change the id.
            ("COURIER_RECOVERY_ENABLED", "false"),
        ],
    );
    let s = socket(&server.url(), "/").await;
    let sid = s.id();
    // A missed pong drops the connection and a quick reconnection could hide it: the status
    // must not change at all while the server pings.
    let mut status = s.status();
    status.mark_unchanged();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !status.has_changed().unwrap(),
        "the connection was never lost"
    );
    assert!(s.connected());
    assert_eq!(s.id(), sid);
    assert!(matches!(
        s.status().borrow().clone(),
        Status::Connected { .. }
    ));
    s.client().close().await;
}

#[tokio::test]
async fn reconnects_after_the_server_is_killed_and_restarted() {
    let dir = TempDir::new("restart");
    let mut server = serve(&dir);
    let s = socket(&server.url(), "/").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    s.on("news", move |ev| {
        let _ = tx.send(ev.payload.args);
    });
    server.kill();
    let status = wait_status(&s, |st| matches!(st, Status::Disconnected(_))).await;
    assert_eq!(
        status,
        Status::Disconnected(DisconnectReason::TransportClose)
    );
    // Emits made while down wait in the buffer.
    let pending = {
        let s = s.clone();
        tokio::spawn(async move {
            s.emit_with_ack("while-down", (), 10 * SECOND)
                .await
                .map(|p| p.args)
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.restart();
    wait_status(&s, |st| matches!(st, Status::Connected { .. })).await;
    assert_eq!(
        pending.await.unwrap().unwrap(),
        vec![json!({"ok": true, "recipients": 0})]
    );
    let api = ApiClient::new(&server.url(), None).unwrap();
    api.emit(&EmitRequest::new("news", vec![json!("back")]))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx).await[0], json!("back"));
    s.client().close().await;
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let dir = TempDir::new("giveup");
    let mut server = serve(&dir);
    let mut config = quick_config();
    config.reconnect.max_attempts = Some(2);
    config.reconnect.max_delay = Duration::from_millis(100);
    let client = Client::connect_with(&server.url(), config).await.unwrap();
    let s = client.socket("/");
    s.connect().await.unwrap();
    server.kill();
    let mut st = client.status();
    tokio::time::timeout(
        5 * SECOND,
        st.wait_for(|s| *s == courier_client::ClientStatus::GaveUp),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!s.connected());
    assert!(matches!(s.emit("x", ()).await, Err(Error::Disconnected)));
}

#[tokio::test]
async fn unreachable_server_is_an_error() {
    // A port nobody listens on: bind one, then free it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = Client::connect(&format!("http://{addr}"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let err = Client::connect("ftp://x").await.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
}

#[tokio::test]
async fn recovery_after_an_api_close() {
    let dir = TempDir::new("recover");
    let server = serve(&dir);
    let mut config = quick_config();
    config.reconnect.initial_delay = Duration::from_millis(500);
    config.reconnect.jitter = 0.0;
    let client = Client::connect_with(&server.url(), config).await.unwrap();
    let s = client.socket("/");
    let (tx, mut rx) = mpsc::unbounded_channel();
    s.on("news", move |ev| {
        let _ = tx.send(ev.payload.args);
    });
    s.connect().await.unwrap();
    assert!(!s.recovered());
    assert!(s.pid().is_some());
    s.join(&["room1"]).await.unwrap();
    let sid = s.id();

    let api = ApiClient::new(&server.url(), None).unwrap();
    let mut news = EmitRequest::new("news", vec![json!(1)]);
    news.rooms = vec!["room1".into()];
    api.emit(&news).await.unwrap();
    assert_eq!(recv(&mut rx).await[0], json!(1));
    assert!(s.last_offset().is_some());

    assert_eq!(api.disconnect("/", &[], true).await.unwrap(), 1);
    wait_status(&s, |st| {
        *st == Status::Disconnected(DisconnectReason::TransportClose)
    })
    .await;
    // Sent while the client is away: replayed on recovery.
    news.data = vec![json!(2)];
    api.emit(&news).await.unwrap();
    let status = wait_status(&s, |st| matches!(st, Status::Connected { .. })).await;
    assert!(matches!(
        status,
        Status::Connected {
            recovered: true,
            ..
        }
    ));
    assert!(s.recovered());
    assert_eq!(s.id(), sid);
    assert_eq!(recv(&mut rx).await[0], json!(2));
    // The rooms came back too.
    news.data = vec![json!(3)];
    assert_eq!(api.emit(&news).await.unwrap().recipients, 1);
    assert_eq!(recv(&mut rx).await[0], json!(3));
    client.close().await;
}

#[tokio::test]
async fn recovery_across_a_graceful_restart() {
    let dir = TempDir::new("recover-restart");
    let mut server = serve(&dir);
    let s = socket(&server.url(), "/").await;
    let sid = s.id();
    server.stop();
    wait_status(&s, |st| matches!(st, Status::Disconnected(_))).await;
    server.restart();
    let status = wait_status(&s, |st| matches!(st, Status::Connected { .. })).await;
    assert!(
        matches!(
            status,
            Status::Connected {
                recovered: true,
                ..
            }
        ),
        "{status:?}"
    );
    assert_eq!(s.id(), sid);
    s.client().close().await;
}

#[tokio::test]
async fn publish_confirms_and_dedupes() {
    let dir = TempDir::new("publish");
    let server = serve(&dir);
    let s = socket(&server.url(), "/").await;
    let first = s
        .publish("orders", "order", &json!({"n": 1}), Some("o-1"))
        .await
        .unwrap();
    assert_eq!((first.seq, first.duplicate), (1, false));
    let again = s
        .publish("orders", "order", &json!({"n": 1}), Some("o-1"))
        .await
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    let second = s
        .publish("orders", "order", &json!({"n": 2}), None)
        .await
        .unwrap();
    assert_eq!(second.seq, 2);
    let err = s
        .publish("bad/name", "order", &json!(1), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_name"), "{err}");
    s.client().close().await;
}

/// Publishes `n` entries through the API, starting at `first`.
async fn publish_many(api: &ApiClient, stream: &str, range: std::ops::Range<u64>) {
    for i in range {
        api.publish(stream, "order", &json!({"n": i}), Some(&format!("o-{i}")))
            .await
            .unwrap();
    }
}

/// Waits until the consumer's acks reached `ack_floor`, then a little longer so that they are on
/// disk before a test kills the server (a kill can lose what the last group commit had not
/// written yet: at-least-once allows the redelivery, but the tests want exact sequences).
async fn settle(api: &ApiClient, stream: &str, consumer: &str, ack_floor: u64) {
    for _ in 0..100 {
        let c = api.consumer(stream, consumer).await.unwrap();
        if c.ack_floor >= ack_floor {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("acks of {stream}/{consumer} did not reach {ack_floor}");
}

async fn next(sub: &mut courier_client::Subscription) -> courier_client::Delivery {
    tokio::time::timeout(10 * SECOND, sub.recv())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
}

#[tokio::test]
async fn durable_subscription_survives_a_restart() {
    let dir = TempDir::new("durable");
    let mut server = serve(&dir);
    let api = ApiClient::new(&server.url(), None).unwrap();
    publish_many(&api, "orders", 1..4).await;
    let s = socket(&server.url(), "/").await;
    let mut sub = s
        .subscribe("orders", "billing", StartAt::All)
        .await
        .unwrap();
    assert_eq!(sub.pending(), 3);
    for seq in 1..4 {
        let d = next(&mut sub).await;
        assert_eq!(d.meta.seq, seq);
        assert_eq!(d.event, "order");
        assert_eq!(d.data, json!({"n": seq}));
        assert_eq!(d.meta.id.as_deref(), Some(format!("o-{seq}").as_str()));
        d.ack().unwrap();
    }
    settle(&api, "orders", "billing", 3).await;

    server.kill();
    wait_status(&s, |st| matches!(st, Status::Disconnected(_))).await;
    server.restart();
    wait_status(&s, |st| matches!(st, Status::Connected { .. })).await;
    publish_many(&api, "orders", 4..6).await;
    for seq in 4..6 {
        let d = next(&mut sub).await;
        assert_eq!(d.meta.seq, seq);
        assert_eq!(d.meta.deliveries, 1);
        d.ack().unwrap();
    }
    let info = api.consumer("orders", "billing").await.unwrap();
    assert_eq!(info.delivered, 5);
    s.client().close().await;
}

#[tokio::test]
async fn resubscribes_when_the_session_is_not_recovered() {
    let dir = TempDir::new("resub");
    let mut server = Server::courier(&dir.0, &[("COURIER_RECOVERY_ENABLED", "false")]);
    let api = ApiClient::new(&server.url(), None).unwrap();
    let s = socket(&server.url(), "/").await;
    assert!(s.pid().is_none());
    let mut sub = s
        .subscribe_with(
            "jobs",
            "worker",
            StartAt::New,
            SubscribeOptions {
                ack_wait_ms: Some(60_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    publish_many(&api, "jobs", 1..3).await;
    let d1 = next(&mut sub).await;
    assert_eq!(d1.meta.seq, 1);
    d1.ack().unwrap();
    // Seq 2 is received but not acknowledged before the connection goes.
    let unacked = next(&mut sub).await;
    assert_eq!(unacked.meta.seq, 2);
    settle(&api, "jobs", "worker", 1).await;

    server.kill();
    wait_status(&s, |st| matches!(st, Status::Disconnected(_))).await;
    assert!(matches!(unacked.ack(), Err(Error::StaleAck)));
    server.restart();
    let status = wait_status(&s, |st| matches!(st, Status::Connected { .. })).await;
    assert!(matches!(
        status,
        Status::Connected {
            recovered: false,
            ..
        }
    ));
    // Renewed by the client: the unacknowledged entry comes again, then new ones.
    let again = next(&mut sub).await;
    assert_eq!((again.meta.seq, again.meta.deliveries), (2, 2));
    again.ack().unwrap();
    publish_many(&api, "jobs", 3..4).await;
    let d3 = next(&mut sub).await;
    assert_eq!(d3.meta.seq, 3);
    d3.ack().unwrap();

    // Unsubscribed, the stream can be subscribed to again.
    sub.unsubscribe().await.unwrap();
    s.subscribe("jobs", "worker", StartAt::New).await.unwrap();
    s.client().close().await;
}

#[tokio::test]
async fn subscription_errors_come_back() {
    let dir = TempDir::new("suberr");
    let server = Server::courier(&dir.0, &[("COURIER_STREAMS_AUTO_CREATE", "false")]);
    let s = socket(&server.url(), "/").await;
    let err = s.subscribe("missing", "c", StartAt::All).await.unwrap_err();
    assert_eq!(err.code(), Some("stream_not_found"), "{err}");
    // The failed subscription is forgotten: a second try is not "already subscribed".
    let err = s.subscribe("missing", "c", StartAt::All).await.unwrap_err();
    assert_eq!(err.code(), Some("stream_not_found"), "{err}");
    let api = ApiClient::new(&server.url(), None).unwrap();
    let err = api.stream("missing").await.unwrap_err();
    assert!(matches!(err, Error::Api { status: 404, .. }), "{err}");
    api.put_stream("present", &json!({})).await.unwrap();
    let _sub = s.subscribe("present", "c", StartAt::All).await.unwrap();
    let err = s.subscribe("present", "d", StartAt::All).await.unwrap_err();
    assert!(matches!(err, Error::AlreadySubscribed { .. }), "{err}");
    let _: Value = api.health().await.unwrap();
    s.client().close().await;
}

#[tokio::test]
async fn server_side_namespace_disconnect_is_final() {
    let dir = TempDir::new("srvdisc");
    let server = serve(&dir);
    let s = socket(&server.url(), "/").await;
    let api = ApiClient::new(&server.url(), None).unwrap();
    assert_eq!(api.disconnect("/", &[], false).await.unwrap(), 1);
    let st = wait_status(&s, |st| matches!(st, Status::Disconnected(_))).await;
    assert_eq!(st, Status::Disconnected(DisconnectReason::ServerDisconnect));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!s.connected());
    assert!(matches!(s.emit("x", ()).await, Err(Error::Disconnected)));
    // Joining again is the application's decision.
    s.connect().await.unwrap();
    assert!(s.connected());
    s.client().close().await;
}

#[tokio::test]
async fn oversized_messages_are_refused_before_sending() {
    let dir = TempDir::new("large");
    let server = Server::courier(&dir.0, &[("COURIER_ENGINE_MAX_PAYLOAD", "10000")]);
    let s = socket(&server.url(), "/").await;
    let err = s
        .emit("blob", Payload::new().binary(vec![0u8; 20_000]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size: 20_000,
                limit: 10_000
            }
        ),
        "{err}"
    );
    // The connection is still fine.
    let answer = s
        .emit_with_ack("small", json!(1), 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(answer.args[0]["ok"], json!(true));
    s.client().close().await;
}

#[tokio::test]
async fn work_queue_and_redelivery() {
    let dir = TempDir::new("workq");
    let server = serve(&dir);
    let api = ApiClient::new(&server.url(), None).unwrap();
    let a = socket(&server.url(), "/").await;
    let b = socket(&server.url(), "/").await;
    let options = SubscribeOptions {
        ack_wait_ms: Some(300),
        ..Default::default()
    };
    let mut sa = a
        .subscribe_with("tasks", "workers", StartAt::All, options.clone())
        .await
        .unwrap();
    let mut sb = b
        .subscribe_with("tasks", "workers", StartAt::All, options)
        .await
        .unwrap();
    publish_many(&api, "tasks", 1..11).await;
    // Two sockets on one consumer share the entries: each goes to one of them.
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let d = tokio::select! {
            d = next(&mut sa) => d,
            d = next(&mut sb) => d,
        };
        assert_eq!(d.meta.deliveries, 1, "{:?}", d.meta);
        seen.push(d.meta.seq);
        d.ack().unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..11).collect::<Vec<_>>());

    // Not acknowledged within ack_wait: sent again, with the delivery count up.
    publish_many(&api, "tasks", 11..12).await;
    let first = tokio::select! {
        d = next(&mut sa) => d,
        d = next(&mut sb) => d,
    };
    assert_eq!((first.meta.seq, first.meta.deliveries), (11, 1));
    drop(first);
    let again = tokio::select! {
        d = next(&mut sa) => d,
        d = next(&mut sb) => d,
    };
    assert_eq!((again.meta.seq, again.meta.deliveries), (11, 2));
    again.ack().unwrap();
    a.client().close().await;
    b.client().close().await;
}
