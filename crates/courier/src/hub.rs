//! The rules of `courier serve` for clients: which namespaces exist, who may connect, room
//! membership through `courier:join` / `courier:leave`, and relaying of client events to the
//! sender's rooms.

use std::future::Future;
use std::sync::Arc;

use courier_server::auth::{Access, Identity, JwtVerifier, TokenError, check_grants};
use courier_server::{ConnectError, Io, Message, Payload, Room, Setup, Socket, error_answer};
use futures_util::future::{Either, join_all};
use serde_json::{Value, json};

use crate::settings::{Hub as HubSettings, Settings};

/// Who may connect: static tokens, JWTs, or (with neither) anyone, from loopback only unless
/// anonymous clients are allowed.
pub struct Gate {
    tokens: Vec<String>,
    verifier: Option<Arc<JwtVerifier>>,
    /// Protected mode: no authentication configured and anonymous clients not allowed.
    loopback_only: bool,
}

impl Gate {
    /// The gate `settings` describe, sharing `verifier` with the HTTP API.
    pub fn new(settings: &Settings, verifier: Option<Arc<JwtVerifier>>) -> Gate {
        Gate {
            tokens: settings.hub.auth_tokens.clone(),
            loopback_only: settings.protected().0,
            verifier,
        }
    }

    /// Checks a CONNECT; with a JWT, the socket gets the identity it names.
    fn admit(&self, socket: &Socket) -> Result<(), ConnectError> {
        let refuse = |code: &str, message: String| {
            Err(ConnectError::new("unauthorized")
                .with_data(json!({"code": code, "message": message})))
        };
        if self.loopback_only {
            return match socket.handshake().address {
                Some(a) if is_loopback(a.ip()) => Ok(()),
                _ => refuse("protected_mode", PROTECTED.into()),
            };
        }
        if self.tokens.is_empty() && self.verifier.is_none() {
            return Ok(());
        }
        let token = socket
            .auth()
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or("");
        match authenticate(token, &self.tokens, self.verifier.as_deref()) {
            Ok(None) => Ok(()),
            Ok(Some(identity)) => {
                socket.set_identity(identity);
                Ok(())
            }
            Err(e) => {
                tracing::info!(nsp = socket.ns().name(), address = ?socket.handshake().address, code = e.code(), "CONNECT refused: {e}");
                refuse(e.code(), e.to_string())
            }
        }
    }
}

/// Who presents `token`: `Ok(None)` for one of the static `tokens` (no identity, no
/// restriction), `Ok(Some)` for a valid JWT. The one rule for clients and the HTTP API alike.
pub fn authenticate(
    token: &str,
    tokens: &[String],
    verifier: Option<&JwtVerifier>,
) -> Result<Option<Identity>, TokenError> {
    if !token.is_empty() && tokens.iter().any(|t| same(t, token)) {
        return Ok(None);
    }
    match verifier {
        Some(v) => v.verify(token).map(Some),
        None if token.is_empty() => Err(TokenError::Missing),
        None => Err(TokenError::Invalid("not a known token".into())),
    }
}

/// What a client refused by protected mode is told.
const PROTECTED: &str = "protected mode: this hub has no authentication configured and accepts \
     only local clients; configure [auth] or set [auth] allow_anonymous = true";

/// Whether `ip` is this machine (IPv4-mapped IPv6 loopback included).
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        v4 => v4.is_loopback(),
    }
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Applies the hub settings to `io`.
pub fn install(io: &Io, settings: &HubSettings, gate: Gate) -> anyhow::Result<()> {
    let rules = Arc::new(settings.clone());
    let gate = Arc::new(gate);
    for name in &settings.namespaces {
        setup(&io.of(name), &rules, &gate);
    }
    for pattern in &settings.namespace_patterns {
        let re = regex::Regex::new(pattern)?;
        setup(&io.dynamic_regex(re), &rules, &gate);
    }
    let (publish, subscribe) = (settings.client_publish, settings.client_subscribe);
    io.set_authorizer(move |socket, access| match access {
        Access::Publish(_) if !publish => Err("clients may not publish on this hub".into()),
        Access::Subscribe { .. } if !subscribe => {
            Err("clients may not subscribe on this hub".into())
        }
        _ => check_grants(socket, access),
    });
    Ok(())
}

fn setup<S: Setup>(ns: &S, rules: &Arc<HubSettings>, gate: &Arc<Gate>) {
    let gate = gate.clone();
    ns.middleware(move |socket| std::future::ready(gate.admit(&socket)));
    let rules = rules.clone();
    ns.on_connect(move |socket| {
        let rules = rules.clone();
        async move {
            tracing::info!(sid = %socket.id(), nsp = socket.ns().name(), transport = socket.transport().name(), sub = socket.sub(), recovered = socket.recovered(), "client connected");
            socket.on_disconnect(|socket, reason| async move {
                tracing::info!(sid = %socket.id(), nsp = socket.ns().name(), sub = socket.sub(), reason = reason.as_str(), "client disconnected");
            });
            socket.on_any(move |socket, msg| handle(&rules, &socket, msg));
        }
    });
}

/// Answers a client event. A join is answered once the rooms are live on every node (at once on
/// a single node), so that what another node sends right after the answer arrives.
fn handle(
    rules: &HubSettings,
    socket: &Socket,
    mut msg: Message,
) -> impl Future<Output = ()> + Send + 'static + use<> {
    let mut joined = Vec::new();
    let answer = match msg.event.as_str() {
        "courier:join" | "courier:leave" => rooms_request(rules, socket, &msg, &mut joined),
        // Reached only when the hub has no streams.
        "courier:subscribe" | "courier:unsubscribe" | "courier:publish" => {
            error_answer("unavailable", NO_STREAMS)
        }
        other if other.starts_with("courier:") => {
            error_answer("unknown_event", format!("unknown event {other:?}"))
        }
        _ => relay(rules, socket, &mut msg),
    };
    if joined.is_empty() {
        let _ = msg.ack(&answer);
        return Either::Left(std::future::ready(()));
    }
    let ns = socket.ns().clone();
    Either::Right(async move {
        join_all(joined.iter().map(|r| ns.room_ready(r))).await;
        let _ = msg.ack(&answer);
    })
}

/// Why a hub without streams refuses them.
pub const NO_STREAMS: &str = "this hub has no durable streams";

/// Longest room name a client may join.
const MAX_ROOM_NAME: usize = 256;

/// Joins or leaves the rooms `msg` names; the rooms joined go to `joined`.
fn rooms_request(
    rules: &HubSettings,
    socket: &Socket,
    msg: &Message,
    joined: &mut Vec<Room>,
) -> Value {
    if !rules.client_rooms {
        return error_answer(
            "forbidden",
            "clients may not join or leave rooms on this hub",
        );
    }
    let names: Vec<String> = match msg.payload.args.first() {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return error_answer(
                "bad_request",
                "expected a room name or an array of room names",
            );
        }
    };
    if names
        .iter()
        .any(|n| n.is_empty() || n.len() > MAX_ROOM_NAME)
    {
        return error_answer(
            "bad_request",
            format!("room names must be 1 to {MAX_ROOM_NAME} bytes"),
        );
    }
    if msg.event == "courier:join" && rules.max_rooms_per_socket > 0 {
        let mut rooms: std::collections::HashSet<String> = socket
            .rooms()
            .into_iter()
            .filter(|r| **r != **socket.id())
            .map(|r| r.to_string())
            .collect();
        rooms.extend(names.iter().cloned());
        if rooms.len() > rules.max_rooms_per_socket {
            return error_answer(
                "too_many_rooms",
                format!(
                    "a socket may be in at most {} rooms",
                    rules.max_rooms_per_socket
                ),
            );
        }
    }
    if msg.event == "courier:join" {
        for name in &names {
            if let Err(why) = socket.authorize(&Access::Join(name)) {
                return error_answer("forbidden", why);
            }
        }
    }
    for name in names {
        if msg.event == "courier:join" {
            let room = Room::from(name);
            socket.join(room.clone());
            joined.push(room);
        } else {
            socket.leave(&name);
        }
    }
    json!({"ok": true, "rooms": socket.rooms()})
}

fn relay(rules: &HubSettings, socket: &Socket, msg: &mut Message) -> Value {
    if !rules.client_relay {
        return error_answer("forbidden", "client events are not relayed on this hub");
    }
    let own = socket.id();
    let joined: Vec<_> = socket.rooms().into_iter().filter(|r| r != own).collect();
    if joined.is_empty() {
        return json!({"ok": true, "recipients": 0});
    }
    // Only to rooms the client may be in: a room a server handler put it in does not count.
    let rooms: Vec<_> = joined
        .into_iter()
        .filter(|r| socket.authorize(&Access::Relay(r)).is_ok())
        .collect();
    if rooms.is_empty() {
        return error_answer("forbidden", "not allowed to send to any of its rooms");
    }
    let mut targets = socket.broadcast();
    for r in rooms {
        targets = targets.to(r);
    }
    let payload = std::mem::replace(&mut msg.payload, Payload::new());
    match targets.emit_payload(&msg.event, payload) {
        Ok(n) => json!({"ok": true, "recipients": n}),
        Err(e) => error_answer("bad_request", e.to_string()),
    }
}
