//! Two nodes behind no sticky balancer: requests for a session reach whichever node, and the one
//! that does not own it forwards them to the one that does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use courier_server::{Config, Io, Peers, Setup};
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_websockets::{ClientBuilder, Message};

const PATH: &str = "/socket.io/";
const WAIT: Duration = Duration::from_secs(5);

/// A fixed cluster: this node's id and the others' addresses.
struct StaticPeers {
    id: &'static str,
    others: Vec<(&'static str, Uri)>,
}

impl Peers for StaticPeers {
    fn node_id(&self) -> &str {
        self.id
    }

    fn address_of(&self, node: &str) -> Option<Uri> {
        self.others
            .iter()
            .find(|(id, _)| *id == node)
            .map(|(_, uri)| uri.clone())
    }
}

struct Node {
    addr: SocketAddr,
    io: Io,
    /// Events this node's handlers ran.
    ran: Arc<AtomicUsize>,
}

fn base(addr: SocketAddr) -> Uri {
    format!("http://{addr}").parse().unwrap()
}

/// An address nothing listens on.
async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Nodes `node-a` and `node-b`, each knowing the other; `node-c` is known to both at an address
/// where nothing listens.
async fn two_nodes(config: Config) -> (Node, Node) {
    let la = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let dead = base(dead_address().await);
    let na = start(
        la,
        config.clone(),
        "node-a",
        vec![("node-b", base(b)), ("node-c", dead.clone())],
    );
    let nb = start(
        lb,
        config,
        "node-b",
        vec![("node-a", base(a)), ("node-c", dead)],
    );
    (na, nb)
}

fn start(
    listener: TcpListener,
    config: Config,
    id: &'static str,
    others: Vec<(&'static str, Uri)>,
) -> Node {
    let addr = listener.local_addr().unwrap();
    let io = Io::new(config);
    io.set_peers(Arc::new(StaticPeers { id, others }));
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    io.of("/").on_connect(move |socket| {
        let counter = counter.clone();
        async move {
            socket.on("hello", move |_, mut msg| {
                counter.fetch_add(1, Ordering::SeqCst);
                let arg: Value = msg.arg(0).unwrap_or(Value::Null);
                async move {
                    let _ = msg.ack(&json!({"node": id, "echo": arg}));
                }
            });
        }
    });
    tokio::spawn(courier_server::serve(
        listener,
        io.service(),
        std::future::pending(),
    ));
    Node { addr, io, ran }
}

/// One HTTP/1.1 exchange on a connection of its own.
async fn request(
    addr: SocketAddr,
    method: Method,
    query: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, String) {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{PATH}?{query}"))
            .header(http::header::HOST, addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = send
            .send_request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("answered in time")
}

async fn get(addr: SocketAddr, sid: &str) -> (StatusCode, String) {
    let query = format!("EIO=4&transport=polling&sid={sid}");
    request(addr, Method::GET, &query, &[], Bytes::new()).await
}

async fn post(addr: SocketAddr, sid: &str, body: &str) -> (StatusCode, String) {
    let query = format!("EIO=4&transport=polling&sid={sid}");
    let headers = [("content-type", "text/plain;charset=UTF-8")];
    request(addr, Method::POST, &query, &headers, body.to_owned()).await
}

/// A polling handshake; returns the sid.
async fn handshake(addr: SocketAddr) -> String {
    let (status, body) = request(addr, Method::GET, "EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open packet")).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

fn assert_unknown_sid((status, body): (StatusCode, String)) {
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, json!({"code": 1, "message": "Session ID unknown"}));
}

/// The Engine.IO packets of a polling answer (`\x1e`-separated).
fn packets(body: &str) -> Vec<&str> {
    body.split('\u{1e}').collect()
}

#[tokio::test]
async fn sids_start_with_the_node_id() {
    let (a, b) = two_nodes(Config::default()).await;
    let sa = handshake(a.addr).await;
    let sb = handshake(b.addr).await;
    assert!(sa.starts_with("node-a"), "{sa}");
    assert!(sb.starts_with("node-b"), "{sb}");
    // As random as a sid without a node: 20 URL-safe characters after the id.
    assert_eq!(sa.len(), 26);
    assert!(
        sa.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
}

#[tokio::test]
async fn polling_alternating_between_nodes_reaches_the_owner() {
    let (a, b) = two_nodes(Config::default()).await;
    let sid = handshake(a.addr).await;

    // CONNECT through B; the answer is read from A.
    assert_eq!(
        post(b.addr, &sid, "40").await,
        (StatusCode::OK, "ok".into())
    );
    let (status, body) = get(a.addr, &sid).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("40{\"sid\":"), "{body}");

    // An event with an ack sent to A, its answer read from B.
    assert_eq!(
        post(a.addr, &sid, r#"421["hello","one"]"#).await,
        (StatusCode::OK, "ok".into())
    );
    let (status, body) = get(b.addr, &sid).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"431[{"node":"node-a","echo":"one"}]"#);

    // A long-poll pending through B waits on A until the answer to a POST through B is there.
    let pending = tokio::spawn({
        let sid = sid.clone();
        async move { get(b.addr, &sid).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished());
    assert_eq!(
        post(b.addr, &sid, r#"422["hello","two"]"#).await,
        (StatusCode::OK, "ok".into())
    );
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(packets(&body), [r#"432[{"node":"node-a","echo":"two"}]"#]);

    // Every handler ran on the owner.
    assert_eq!(a.ran.load(Ordering::SeqCst), 2);
    assert_eq!(b.ran.load(Ordering::SeqCst), 0);
    assert_eq!(a.io.connection_count(), 1);
    assert_eq!(b.io.connection_count(), 0);
}

#[tokio::test]
async fn a_websocket_upgrade_through_another_node_is_tunnelled_to_the_owner() {
    let (a, b) = two_nodes(Config::default()).await;
    let sid = handshake(a.addr).await;
    assert_eq!(post(a.addr, &sid, "40").await.0, StatusCode::OK);
    assert!(get(b.addr, &sid).await.1.starts_with("40{"));

    // The client's poll is pending (through B) while it upgrades (through B as well).
    let pending = tokio::spawn({
        let sid = sid.clone();
        async move { get(b.addr, &sid).await }
    });
    let uri = format!("ws://{}{PATH}?EIO=4&transport=websocket&sid={sid}", b.addr);
    let stream = TcpStream::connect(b.addr).await.unwrap();
    let (mut ws, res) = ClientBuilder::new()
        .uri(&uri)
        .unwrap()
        .connect_on(stream)
        .await
        .expect("upgraded through B");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "3probe");
    // The probe releases the pending poll with a noop, as on the owner itself.
    assert_eq!(pending.await.unwrap(), (StatusCode::OK, "6".into()));
    ws.send(Message::text("5")).await.unwrap();

    ws.send(Message::text(r#"423["hello","ws"]"#))
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        r#"433[{"node":"node-a","echo":"ws"}]"#
    );
    assert_eq!(a.ran.load(Ordering::SeqCst), 1);
    assert_eq!(b.ran.load(Ordering::SeqCst), 0);

    // The session is on WebSocket now: polling it, through either node, is refused by A.
    let (status, _) = get(b.addr, &sid).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Closing the tunnel closes the session on its owner.
    ws.close().await.unwrap();
    wait_until(|| a.io.connection_count() == 0).await;
}

#[tokio::test]
async fn a_sid_naming_no_known_node_is_unknown() {
    let (_a, b) = two_nodes(Config::default()).await;
    // No node has this id, and none made a sid this short.
    assert_unknown_sid(get(b.addr, "node-zAAAAAAAAAAAAAAAAAAAA").await);
    assert_unknown_sid(get(b.addr, "node").await);
    // B's own prefix, but no such session on B: nowhere else to ask.
    assert_unknown_sid(get(b.addr, "node-bAAAAAAAAAAAAAAAAAAAA").await);
    assert_unknown_sid(post(b.addr, "node-zAAAAAAAAAAAAAAAAAAAA", "40").await);
}

#[tokio::test]
async fn an_unreachable_owner_answers_as_an_unknown_sid() {
    let (_a, b) = two_nodes(Config::default()).await;
    // node-c's address has nothing listening: the client is told to start again.
    let sid = "node-cAAAAAAAAAAAAAAAAAAAA";
    assert_unknown_sid(get(b.addr, sid).await);
    assert_unknown_sid(post(b.addr, sid, "40").await);
    let query = format!("EIO=4&transport=websocket&sid={sid}");
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    assert_unknown_sid(request(b.addr, Method::GET, &query, &upgrade, "").await);
}

#[tokio::test]
async fn a_forwarded_request_is_not_forwarded_again() {
    let (a, b) = two_nodes(Config::default()).await;
    let sid = handshake(a.addr).await;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    let marked = [("x-courier-forwarded", "1")];
    // B does not know the sid and must not pass a marked request on.
    assert_unknown_sid(request(b.addr, Method::GET, &query, &marked, "").await);
    assert_unknown_sid(request(b.addr, Method::POST, &query, &marked, "40").await);
    assert_eq!(a.ran.load(Ordering::SeqCst), 0);
    // The owner itself serves a marked request for a session it has.
    assert_eq!(
        request(a.addr, Method::POST, &query, &marked, "40").await,
        (StatusCode::OK, "ok".into())
    );
    assert!(get(b.addr, &sid).await.1.starts_with("40{"));
}

#[tokio::test]
async fn a_forwarded_post_over_max_payload_is_refused_before_it_is_sent() {
    let config = Config {
        max_payload: 100,
        ..Config::default()
    };
    let (a, b) = two_nodes(config).await;
    let sid = handshake(a.addr).await;
    let big = format!(r#"42["hello","{}"]"#, "x".repeat(200));
    let (status, _) = post(b.addr, &sid, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // The session goes on, and nothing of the refused body reached it.
    assert_eq!(post(b.addr, &sid, "40").await.0, StatusCode::OK);
    assert!(get(b.addr, &sid).await.1.starts_with("40{"));
    assert_eq!(a.ran.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_that_leaves_a_forwarded_poll_ends_the_session_on_the_owner() {
    let (a, b) = two_nodes(Config::default()).await;
    let sid = handshake(a.addr).await;
    let pending = tokio::spawn(async move { get(b.addr, &sid).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(a.io.connection_count(), 1);
    // Dropping the request drops the client's connection to B, and so B's to A.
    pending.abort();
    wait_until(|| a.io.connection_count() == 0).await;
}

async fn next_text<S>(ws: &mut tokio_websockets::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("websocket open")
            .unwrap();
        if let Some(text) = msg.as_text() {
            return text.to_owned();
        }
    }
}

async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
