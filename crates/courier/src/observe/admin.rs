//! The server side of the Socket.IO admin UI (`@socket.io/admin-ui` 0.5), on its own namespace
//! (`/admin` by default).
//!
//! - Login: a CONNECT whose auth has a known `sessionId`, or `username` and a `password` that
//!   matches the bcrypt hash, is let in; the latter gets a new session id (event `session`).
//!   Anything else is refused with `invalid credentials`.
//! - On connect the UI gets `config` (the features it may use: none of the commands when
//!   `readonly`) and, in development mode, `all_sockets`.
//! - Every 2 s every UI gets `server_stats`: this node's id, connections, sockets per namespace,
//!   and aggregated events (connections, disconnections, packets and bytes both ways) since the
//!   last report, from the server's counters.
//! - In development mode an [`Observer`] reports sockets (`socket_connected`, `socket_updated`,
//!   `socket_disconnected`), rooms (`room_joined`, `room_left`) and events (`event_received`,
//!   `event_sent`) as they happen; in production mode nothing is done per event.
//! - Commands: `emit`, `join`, `leave`, `_disconnect`, each on a namespace and, optionally, a
//!   room or socket id, and on every node of a cluster.
//!
//! What the UI is sent goes through the admin namespace's broadcast, so on a cluster every node's
//! reports reach the UIs connected to any node, each under its own server id.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use courier_server::engine::CloseReason;
use courier_server::stats::{CLOSE_REASONS, Stats};
use courier_server::{
    ConnectError, DisconnectReason, Io, Message, Namespace, Observer, Payload, Setup, Socket,
};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::settings::Admin as Settings;

/// How often `server_stats` is sent.
const STATS_EVERY: Duration = Duration::from_secs(2);

/// Login sessions kept; past it the oldest is forgotten (its UI logs in again).
const MAX_SESSIONS: usize = 1024;

/// How long a login session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The admin UI's server side, installed on `io`. Returns what must run for as long as the hub
/// does (the stats reporter); it ends when the returned task is aborted.
pub fn install(io: &Io, settings: &Settings, node: Option<String>) -> tokio::task::JoinHandle<()> {
    let ns = io.of(&settings.namespace);
    let admin = Arc::new(AdminUi {
        io: io.clone(),
        ns: ns.clone(),
        settings: settings.clone(),
        development: settings.mode == "development",
        sessions: Mutex::new(Sessions::default()),
        logins: Mutex::new(HashMap::new()),
        server_id: server_id(settings, node.as_deref()),
        clustered: node.is_some(),
    });
    if !settings.no_auth {
        let a = admin.clone();
        ns.middleware(move |socket| {
            let a = a.clone();
            async move { a.authenticate(&socket).await }
        });
    } else {
        tracing::warn!(
            namespace = settings.namespace,
            "admin UI without a login: anyone who reaches the hub may use it"
        );
    }
    let a = admin.clone();
    ns.on_connect(move |socket| {
        let a = a.clone();
        async move { a.on_connect(socket).await }
    });
    if admin.development {
        io.set_observer(admin.clone());
    }
    tokio::spawn(admin.report())
}

fn server_id(settings: &Settings, node: Option<&str>) -> String {
    if !settings.server_id.is_empty() {
        return settings.server_id.clone();
    }
    let host = hostname();
    match node {
        Some(n) => format!("{host}#{n}"),
        None => host,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "courier".into())
}

struct AdminUi {
    io: Io,
    ns: Namespace,
    settings: Settings,
    development: bool,
    // Blocking mutexes (parking_lot): looked up and changed at once, never held across an await.
    sessions: Mutex<Sessions>,
    /// Session ids made by a login, until the socket's connect handler sends them.
    logins: Mutex<HashMap<String, String>>,
    server_id: String,
    clustered: bool,
}

/// Login sessions, oldest first.
#[derive(Default)]
struct Sessions {
    ids: HashMap<String, Instant>,
    order: VecDeque<String>,
}

impl Sessions {
    fn valid(&self, id: &str) -> bool {
        self.ids
            .get(id)
            .is_some_and(|made| made.elapsed() < SESSION_LIFETIME)
    }

    fn add(&mut self, id: String) {
        while self.order.len() >= MAX_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.clone(), Instant::now());
        self.order.push_back(id);
    }
}

fn new_session_id() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl AdminUi {
    async fn authenticate(&self, socket: &Socket) -> Result<(), ConnectError> {
        let auth = socket.auth();
        if let Some(id) = auth.get("sessionId").and_then(Value::as_str)
            && self.sessions.lock().valid(id)
        {
            return Ok(());
        }
        let user = auth.get("username").and_then(Value::as_str);
        let password = auth.get("password").and_then(Value::as_str);
        if let (Some(user), Some(password)) = (user, password)
            && user == self.settings.username
        {
            let hash = self.settings.password_hash.clone();
            let password = password.to_owned();
            // bcrypt is slow on purpose: off the async threads.
            let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false);
            if ok {
                let id = new_session_id();
                self.sessions.lock().add(id.clone());
                self.logins.lock().insert(socket.id().to_string(), id);
                return Ok(());
            }
        }
        tracing::info!(sid = %socket.id(), "admin UI login refused");
        Err(ConnectError::new("invalid credentials"))
    }

    async fn on_connect(self: Arc<Self>, socket: Socket) {
        let login = self.logins.lock().remove(socket.id().as_ref());
        if let Some(id) = login {
            let _ = socket.emit("session", &id);
        }
        if !self.settings.readonly {
            let a = self.clone();
            socket.on_any(move |_, msg| {
                let a = a.clone();
                async move { a.command(msg).await }
            });
        }
        let _ = socket.emit("config", &json!({"supportedFeatures": self.features()}));
        if self.development {
            let all = self.all_sockets().await;
            let _ = socket.emit("all_sockets", &all);
        }
    }

    fn features(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if !self.settings.readonly {
            f.extend([
                "EMIT",
                "JOIN",
                "LEAVE",
                "DISCONNECT",
                "MJOIN",
                "MLEAVE",
                "MDISCONNECT",
            ]);
        }
        f.push("AGGREGATED_EVENTS");
        if self.development {
            f.push("ALL_EVENTS");
        }
        f
    }

    /// Every socket of every namespace, on every node.
    async fn all_sockets(&self) -> Vec<Value> {
        let mut all = Vec::new();
        for ns in self.io.namespaces() {
            let local: HashMap<String, Socket> = ns
                .sockets()
                .into_iter()
                .map(|s| (s.id().to_string(), s))
                .collect();
            for info in ns.broadcast().fetch_sockets().await {
                match local.get(info.id.as_ref()) {
                    Some(s) => all.push(serialize(s)),
                    // Another node's: what the cluster tells of it.
                    None => all.push(json!({
                        "id": info.id.as_ref(),
                        "clientId": Value::Null,
                        "transport": info.transport,
                        "nsp": ns.name(),
                        "data": data_of(info.data),
                        "handshake": {},
                        "rooms": info.rooms,
                    })),
                }
            }
        }
        all
    }

    /// Runs a command of the UI; anything malformed is ignored, as the reference does.
    async fn command(&self, msg: Message) {
        let args = &msg.payload.args;
        let str_at = |i: usize| args.get(i).and_then(Value::as_str);
        let Some(nsp) = str_at(0) else { return };
        let Some(ns) = self.io.get(nsp) else { return };
        let target = |filter: Option<&str>| {
            let op = ns.broadcast();
            match filter {
                Some(f) if !f.is_empty() => op.to(f.to_owned()),
                _ => op,
            }
        };
        match msg.event.as_str() {
            "emit" => {
                let Some(event) = str_at(2) else { return };
                if !courier_proto::socket::is_event_name(event) {
                    return;
                }
                let rest = Payload::from(args.iter().skip(3).cloned().collect::<Vec<_>>());
                tracing::info!(nsp, filter = str_at(1), event, "admin UI: emit");
                let _ = target(str_at(1)).emit_payload(event, rest);
            }
            "join" | "leave" => {
                let Some(room) = str_at(1) else { return };
                tracing::info!(
                    nsp,
                    room,
                    filter = str_at(2),
                    command = msg.event,
                    "admin UI: rooms"
                );
                let op = target(str_at(2));
                if msg.event == "join" {
                    op.join(room.to_owned());
                } else {
                    op.leave(room);
                }
            }
            "_disconnect" => {
                let close = args.get(1).and_then(Value::as_bool).unwrap_or(false);
                tracing::info!(nsp, close, filter = str_at(2), "admin UI: disconnect");
                target(str_at(2)).disconnect(close).await;
            }
            _ => {}
        }
    }

    /// Sends `event` to every UI, on every node. Volatile: a report is not worth keeping for
    /// connection state recovery, and a UI that reads too slowly misses reports rather than
    /// being disconnected.
    fn tell(&self, event: &str, args: Vec<Value>) {
        // Nobody to tell: a single node with no UI connected pays nothing more.
        if !self.clustered && self.ns.is_empty() {
            return;
        }
        let _ = self
            .ns
            .broadcast()
            .volatile()
            .emit_payload(event, Payload::from(args));
    }

    /// Sends `server_stats` every two seconds.
    async fn report(self: Arc<Self>) {
        let started = Instant::now();
        let mut last = Snapshot::default();
        let mut ticks = tokio::time::interval(STATS_EVERY);
        loop {
            ticks.tick().await;
            let now = self.io.stats().map(Snapshot::of).unwrap_or_default();
            let events = now.since(&last, now_ms());
            last = now;
            let (polling, websocket) = self.io.transport_counts();
            let mut namespaces: Vec<Value> = self
                .io
                .namespaces()
                .iter()
                .map(|ns| json!({"name": ns.name(), "socketsCount": ns.len()}))
                .collect();
            namespaces.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            let stats = json!({
                "serverId": self.server_id,
                "hostname": hostname(),
                "pid": std::process::id(),
                "uptime": started.elapsed().as_secs_f64(),
                "clientsCount": polling + websocket,
                "pollingClientsCount": polling,
                "aggregatedEvents": events,
                "namespaces": namespaces,
            });
            self.tell("server_stats", vec![stats]);
        }
    }
}

/// The counters `server_stats` reports the growth of.
#[derive(Default)]
struct Snapshot {
    connections: u64,
    closes: [u64; CLOSE_REASONS.len()],
    packets_in: u64,
    packets_out: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Snapshot {
    fn of(s: &Stats) -> Snapshot {
        Snapshot {
            connections: s.connections_opened.iter().map(|c| c.get()).sum(),
            closes: std::array::from_fn(|i| s.connections_closed[i].get()),
            packets_in: s.packets_in.get(),
            packets_out: s.packets_out.get(),
            bytes_in: s.bytes_in.get(),
            bytes_out: s.bytes_out.get(),
        }
    }

    /// The UI's aggregated events: what grew since `before`, stamped with this second.
    fn since(&self, before: &Snapshot, now_ms: u64) -> Vec<Value> {
        let timestamp = now_ms - now_ms % 1000;
        let mut out = Vec::new();
        let mut push = |kind: &str, sub: Option<&str>, n: u64| {
            if n > 0 {
                let mut e = json!({"timestamp": timestamp, "type": kind, "count": n});
                if let Some(sub) = sub {
                    e["subType"] = json!(sub);
                }
                out.push(e);
            }
        };
        push("rawConnection", None, self.connections - before.connections);
        for (i, r) in CLOSE_REASONS.iter().enumerate() {
            push(
                "rawDisconnection",
                Some(close_reason_name(*r)),
                self.closes[i] - before.closes[i],
            );
        }
        push("packetsIn", None, self.packets_in - before.packets_in);
        push("packetsOut", None, self.packets_out - before.packets_out);
        push("bytesIn", None, self.bytes_in - before.bytes_in);
        push("bytesOut", None, self.bytes_out - before.bytes_out);
        out
    }
}

/// A close reason as Engine.IO names it to the UI.
fn close_reason_name(r: CloseReason) -> &'static str {
    match r {
        CloseReason::SlowClient => "transport error",
        CloseReason::ConnectTimeout => "forced close",
        other => other.as_str(),
    }
}

/// A socket as the UI shows it.
fn serialize(s: &Socket) -> Value {
    let h = s.handshake();
    let mut headers = Map::new();
    for (name, value) in &h.headers {
        if let Ok(v) = value.to_str() {
            headers.insert(name.as_str().to_owned(), Value::String(v.to_owned()));
        }
    }
    let forwarded = ["cf-connecting-ip", "x-forwarded-for"]
        .iter()
        .find_map(|n| h.headers.get(*n).and_then(|v| v.to_str().ok()))
        .map(str::to_owned);
    let address = forwarded.or_else(|| h.address.map(|a| a.ip().to_string()));
    let query: Map<String, Value> = h
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), Value::String(v.to_owned()))
        })
        .collect();
    let issued = h
        .issued
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let cid = s.connection_id();
    json!({
        "id": s.id().as_ref(),
        "clientId": cid.get(..12).unwrap_or(cid),
        "transport": s.transport().name(),
        "nsp": s.ns().name(),
        "data": data_of(s.data()),
        "handshake": {
            "address": address,
            "headers": headers,
            "query": query,
            "issued": issued,
            "secure": h.headers.get("x-forwarded-proto").is_some_and(|v| v == "https"),
            "time": iso_time(issued),
            "url": format!("{}?{}", s.ns().name(), h.query),
            "xdomain": h.headers.contains_key("origin"),
        },
        "rooms": s.rooms(),
    })
}

/// Socket data as the UI shows it: an object (anything else is wrapped).
fn data_of(v: Value) -> Value {
    match v {
        Value::Object(_) => v,
        Value::Null => json!({}),
        other => json!({"value": other}),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the epoch as an ISO 8601 UTC time, the way a JavaScript `Date` is sent in JSON.
fn iso_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn now_iso() -> Value {
    Value::String(iso_time(now_ms()))
}

impl Observer for AdminUi {
    fn socket_connected(&self, socket: &Socket) {
        self.tell("socket_connected", vec![serialize(socket), now_iso()]);
    }

    fn socket_disconnected(&self, socket: &Socket, reason: DisconnectReason) {
        self.tell(
            "socket_disconnected",
            vec![
                json!(socket.ns().name()),
                json!(socket.id().as_ref()),
                json!(reason.as_str()),
                now_iso(),
            ],
        );
    }

    fn transport_upgraded(&self, socket: &Socket) {
        let update = json!({"id": socket.id().as_ref(), "nsp": socket.ns().name(), "transport": "websocket"});
        self.tell("socket_updated", vec![update]);
    }

    fn room_joined(&self, socket: &Socket, room: &str) {
        self.room("room_joined", socket, room);
    }

    fn room_left(&self, socket: &Socket, room: &str) {
        self.room("room_left", socket, room);
    }

    fn event_received(&self, socket: &Socket, event: &str, args: &[Value]) {
        self.event("event_received", socket, event, args);
    }

    fn event_sent(&self, socket: &Socket, event: &str, args: &[Value]) {
        self.event("event_sent", socket, event, args);
    }
}

impl AdminUi {
    fn room(&self, kind: &str, socket: &Socket, room: &str) {
        let args = vec![
            json!(socket.ns().name()),
            json!(room),
            json!(socket.id().as_ref()),
            now_iso(),
        ];
        self.tell(kind, args);
    }

    fn event(&self, kind: &str, socket: &Socket, event: &str, args: &[Value]) {
        // The UI's own traffic is not reported to it.
        if socket.ns().name() == self.ns.name() || (!self.clustered && self.ns.is_empty()) {
            return;
        }
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(json!(event));
        all.extend_from_slice(args);
        self.tell(
            kind,
            vec![
                json!(socket.ns().name()),
                json!(socket.id().as_ref()),
                Value::Array(all),
                now_iso(),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_match_javascript_dates() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        // new Date(1780000000123).toISOString()
        assert_eq!(iso_time(1_780_000_000_123), "2026-05-28T20:26:40.123Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn sessions_are_bounded_oldest_first() {
        let mut s = Sessions::default();
        for i in 0..MAX_SESSIONS + 5 {
            s.add(format!("s{i}"));
        }
        assert!(!s.valid("s0"));
        assert!(!s.valid("s4"));
        assert!(s.valid("s5"));
        assert!(s.valid(&format!("s{}", MAX_SESSIONS + 4)));
        assert_eq!(s.ids.len(), MAX_SESSIONS);
    }

    #[test]
    fn aggregated_events_are_the_growth_since_the_last_report() {
        let before = Snapshot {
            connections: 2,
            packets_in: 10,
            ..Snapshot::default()
        };
        let mut now = Snapshot {
            connections: 5,
            packets_in: 10,
            bytes_out: 7,
            ..Snapshot::default()
        };
        now.closes[0] = 1;
        let ev = now.since(&before, 12_345);
        assert_eq!(
            ev,
            vec![
                json!({"timestamp": 12_000, "type": "rawConnection", "count": 3}),
                json!({"timestamp": 12_000, "type": "rawDisconnection", "subType": "transport close", "count": 1}),
                json!({"timestamp": 12_000, "type": "bytesOut", "count": 7}),
            ]
        );
    }
}
