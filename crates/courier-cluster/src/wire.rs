//! The messages nodes exchange on Redis, in the format of Node's `@socket.io/redis-adapter` 8.x:
//! broadcasts are MessagePack `[uid, packet, opts]`; requests and responses are JSON objects,
//! or MessagePack maps when they carry binary data.

use std::sync::Arc;

use bytes::Bytes;
use courier_proto::payload::Payload;
use courier_proto::socket::{placeholder, placeholder_num};
use courier_server::{Room, Targets};
use rmpv::Value as Mp;
use serde_json::{Map, Value};

/// Request types of the Node adapter (`RequestType` in its source), and Courier's own.
pub mod kind {
    pub const SOCKETS: u64 = 0;
    pub const ALL_ROOMS: u64 = 1;
    pub const REMOTE_JOIN: u64 = 2;
    pub const REMOTE_LEAVE: u64 = 3;
    pub const REMOTE_DISCONNECT: u64 = 4;
    pub const REMOTE_FETCH: u64 = 5;
    pub const BROADCAST: u64 = 7;
    pub const BROADCAST_CLIENT_COUNT: u64 = 8;
    pub const BROADCAST_ACK: u64 = 9;
    /// Courier's answer to a counted broadcast or disconnect: how many sockets it reached.
    /// Node servers never see it: it goes to the asking node's own response channel.
    pub const COUNT: u64 = 100;
}

/// The Socket.IO EVENT packet type, as the Node adapter puts it in a broadcast.
const EVENT: u64 = 2;
const BINARY_EVENT: u64 = 5;

/// The channels of one namespace.
#[derive(Debug, Clone)]
pub struct Channels {
    /// Broadcasts to the whole namespace or to several rooms.
    pub broadcast: String,
    /// Requests from any node.
    pub request: String,
    /// Responses published for every node (the Node adapter's default).
    pub response: String,
    /// Responses meant for this node only.
    pub own_response: String,
}

impl Channels {
    pub fn new(key: &str, nsp: &str, uid: &str) -> Self {
        let response = format!("{key}-response#{nsp}#");
        Channels {
            broadcast: format!("{key}#{nsp}#"),
            request: format!("{key}-request#{nsp}#"),
            own_response: format!("{response}{uid}#"),
            response,
        }
    }

    /// The channel of a broadcast to `room` alone.
    pub fn room(&self, room: &str) -> String {
        format!("{}{room}#", self.broadcast)
    }

    /// Where a response to node `uid` goes.
    pub fn response_to(&self, uid: &str) -> String {
        format!("{}{uid}#", self.response)
    }

    /// Where a broadcast to `targets` is published: a single room has its own channel.
    pub fn for_targets(&self, targets: &Targets) -> String {
        match targets.rooms.as_slice() {
            [room] => self.room(room),
            _ => self.broadcast.clone(),
        }
    }
}

/// A broadcast as it arrives from another node.
#[derive(Debug)]
pub struct Incoming {
    pub uid: String,
    pub nsp: String,
    pub event: String,
    pub payload: Payload,
    pub targets: Targets,
    pub volatile: bool,
    /// Set on a Courier broadcast whose sender counts recipients: (request id, sender uid).
    pub count: Option<(String, String)>,
    /// Where the shared recovery log holds it, for a recoverable broadcast.
    pub offset: Option<u64>,
}

/// Bits of an offset that hold the sequence part of a log id (`<ms>-<seq>`).
const SEQ_BITS: u32 = 20;

/// The offset clients see for the log id `<ms>-<seq>`: one number, ordered as the ids are.
pub fn offset_of_id(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq) = (ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?);
    (seq < 1 << SEQ_BITS && ms < 1 << (64 - SEQ_BITS)).then_some(ms << SEQ_BITS | seq)
}

/// The log id of an offset.
pub fn id_of_offset(offset: u64) -> String {
    format!("{}-{}", offset >> SEQ_BITS, offset & ((1 << SEQ_BITS) - 1))
}

/// Encodes a broadcast: `[uid, {type, data, nsp}, {rooms, except, flags}]`.
pub fn encode_broadcast(uid: &str, b: &courier_server::Broadcast, count: Option<&str>) -> Vec<u8> {
    let mut opts = targets_mp(&b.targets);
    let mut flags = Vec::new();
    if b.volatile {
        flags.push((Mp::from("volatile"), Mp::Boolean(true)));
    }
    opts.push((Mp::from("flags"), Mp::Map(flags)));
    if let Some(id) = count {
        opts.push((
            Mp::from("courier"),
            Mp::Map(vec![
                (Mp::from("count"), Mp::from(id)),
                (Mp::from("uid"), Mp::from(uid)),
            ]),
        ));
    }
    let msg = Mp::Array(vec![
        Mp::from(uid),
        packet_mp(&b.nsp, &b.event, &b.payload),
        Mp::Map(opts),
    ]);
    encode(&msg)
}

/// Decodes a broadcast; `None` if it is not one.
pub fn decode_broadcast(bytes: &[u8]) -> Option<Incoming> {
    let msg = decode(bytes)?;
    let Mp::Array(mut parts) = msg else {
        return None;
    };
    if parts.len() < 3 {
        return None;
    }
    let offset = match parts.len() {
        3 => None,
        _ => parts.pop()?.as_str().and_then(offset_of_id),
    };
    let opts = parts.pop()?;
    let packet = parts.pop()?;
    let uid = parts.pop()?.as_str()?.to_owned();
    let (nsp, event, payload) = packet_from_mp(&packet)?;
    let targets = targets_from(&opts);
    let volatile = get(&opts, "flags")
        .and_then(|f| get(f, "volatile"))
        .and_then(Mp::as_bool)
        .unwrap_or(false);
    let count = get(&opts, "courier").and_then(|c| {
        Some((
            get(c, "count")?.as_str()?.to_owned(),
            get(c, "uid")?.as_str()?.to_owned(),
        ))
    });
    Some(Incoming {
        uid,
        nsp,
        event,
        payload,
        targets,
        volatile,
        count,
        offset,
    })
}

/// The packet of a broadcast: `{type: 2, data: [event, ...args], nsp}`, binary arguments as
/// MessagePack binaries.
pub fn packet_mp(nsp: &str, event: &str, payload: &Payload) -> Mp {
    let mut data = Vec::with_capacity(payload.args.len() + 1);
    data.push(Mp::from(event));
    data.extend(
        payload
            .args
            .iter()
            .map(|a| json_to_mp(a, &payload.attachments)),
    );
    Mp::Map(vec![
        (Mp::from("type"), Mp::from(EVENT)),
        (Mp::from("data"), Mp::Array(data)),
        (Mp::from("nsp"), Mp::from(nsp)),
    ])
}

/// Reads a broadcast packet back: namespace (`/` when absent), event, arguments.
pub fn packet_from_mp(packet: &Mp) -> Option<(String, String, Payload)> {
    let kind = get(packet, "type").and_then(Mp::as_u64)?;
    if kind != EVENT && kind != BINARY_EVENT {
        return None;
    }
    let nsp = get(packet, "nsp")
        .and_then(Mp::as_str)
        .unwrap_or("/")
        .to_owned();
    let Some(Mp::Array(data)) = get(packet, "data") else {
        return None;
    };
    let (first, rest) = data.split_first()?;
    let event = first.as_str()?.to_owned();
    let mut payload = Payload::new();
    for arg in rest {
        let v = mp_to_json(arg, &mut payload.attachments);
        payload.args.push(v);
    }
    Some((nsp, event, payload))
}

/// `{rooms, except}` as MessagePack map entries.
fn targets_mp(t: &Targets) -> Vec<(Mp, Mp)> {
    let list = |rooms: &[Room]| Mp::Array(rooms.iter().map(|r| Mp::from(&**r)).collect());
    vec![
        (Mp::from("rooms"), list(&t.rooms)),
        (Mp::from("except"), list(&t.except)),
    ]
}

fn targets_from(opts: &Mp) -> Targets {
    let list = |name| -> Vec<Room> {
        match get(opts, name) {
            Some(Mp::Array(a)) => a.iter().filter_map(room_of_mp).collect(),
            _ => Vec::new(),
        }
    };
    Targets {
        rooms: list("rooms"),
        except: list("except"),
    }
}

/// A room name; Node servers also allow numbers.
fn room_of_mp(v: &Mp) -> Option<Room> {
    match v {
        Mp::String(s) => s.as_str().map(Arc::from),
        Mp::Integer(i) => Some(Arc::from(i.to_string())),
        Mp::F64(f) => Some(Arc::from(f.to_string())),
        _ => None,
    }
}

/// `{rooms, except}` of a JSON request.
pub fn targets_json(t: &Targets) -> Value {
    serde_json::json!({"rooms": t.rooms, "except": t.except})
}

/// Reads `{rooms, except}` of a JSON request.
pub fn targets_from_json(opts: &Value) -> Targets {
    Targets {
        rooms: rooms_in(opts, "rooms"),
        except: rooms_in(opts, "except"),
    }
}

/// The room names listed under `key` of a JSON object.
pub fn rooms_in(object: &Value, key: &str) -> Vec<Room> {
    object
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(room_of_json).collect())
        .unwrap_or_default()
}

pub fn room_of_json(v: &Value) -> Option<Room> {
    match v {
        Value::String(s) => Some(Arc::from(s.as_str())),
        Value::Number(n) => Some(Arc::from(n.to_string())),
        _ => None,
    }
}

/// A JSON argument as MessagePack; placeholders become the binaries they stand for.
pub fn json_to_mp(v: &Value, attachments: &[Bytes]) -> Mp {
    if let Some(bytes) = placeholder_num(v).and_then(|n| attachments.get(n)) {
        return Mp::Binary(bytes.to_vec());
    }
    match v {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Mp::from(i)
            } else if let Some(u) = n.as_u64() {
                Mp::from(u)
            } else {
                Mp::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => Mp::from(s.as_str()),
        Value::Array(a) => Mp::Array(a.iter().map(|x| json_to_mp(x, attachments)).collect()),
        Value::Object(o) => Mp::Map(
            o.iter()
                .map(|(k, x)| (Mp::from(k.as_str()), json_to_mp(x, attachments)))
                .collect(),
        ),
    }
}

/// MessagePack as a JSON argument; binaries become attachments and placeholders. Extension
/// values (how Node's encoder writes `undefined`) become null.
pub fn mp_to_json(v: &Mp, attachments: &mut Vec<Bytes>) -> Value {
    match v {
        Mp::Nil | Mp::Ext(..) => Value::Null,
        Mp::Boolean(b) => Value::Bool(*b),
        Mp::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => Value::from(n),
            (None, Some(n)) => Value::from(n),
            _ => Value::Null,
        },
        Mp::F32(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        Mp::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Mp::String(s) => Value::String(s.as_str().unwrap_or_default().to_owned()),
        Mp::Binary(b) => {
            attachments.push(Bytes::copy_from_slice(b));
            placeholder(attachments.len() - 1)
        }
        Mp::Array(a) => Value::Array(a.iter().map(|x| mp_to_json(x, attachments)).collect()),
        Mp::Map(entries) => {
            let mut m = Map::with_capacity(entries.len());
            for (k, x) in entries {
                let key = match k {
                    Mp::String(s) => s.as_str().unwrap_or_default().to_owned(),
                    other => other.to_string(),
                };
                m.insert(key, mp_to_json(x, attachments));
            }
            Value::Object(m)
        }
    }
}

/// A request or response: JSON when it starts with `{`, MessagePack otherwise. Binary values
/// of a MessagePack one are decoded as attachments of the payload returned beside it.
pub fn decode_object(bytes: &[u8]) -> Option<(Value, Vec<Bytes>)> {
    if bytes.first() == Some(&b'{') {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        return v.is_object().then_some((v, Vec::new()));
    }
    let mp = decode(bytes)?;
    let mut attachments = Vec::new();
    let v = mp_to_json(&mp, &mut attachments);
    v.is_object().then_some((v, attachments))
}

pub fn encode(v: &Mp) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("writing to a Vec cannot fail");
    out
}

fn decode(mut bytes: &[u8]) -> Option<Mp> {
    rmpv::decode::read_value(&mut bytes).ok()
}

/// The value under `key` of a MessagePack map.
pub fn get<'a>(map: &'a Mp, key: &str) -> Option<&'a Mp> {
    match map {
        Mp::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_broadcast_round_trips_with_binary() {
        let payload = Payload::new()
            .value(json!({"a": [1, 2.5, null, "x"]}))
            .binary(vec![1, 2, 3]);
        let b = courier_server::Broadcast {
            nsp: "/chat".into(),
            event: "news".into(),
            payload: payload.clone(),
            targets: Targets {
                rooms: vec!["r1".into()],
                except: vec!["x".into()],
            },
            volatile: true,
        };
        let bytes = encode_broadcast("abc123", &b, Some("req1"));
        let got = decode_broadcast(&bytes).unwrap();
        assert_eq!(got.uid, "abc123");
        assert_eq!(got.nsp, "/chat");
        assert_eq!(got.event, "news");
        assert_eq!(got.payload, payload);
        assert_eq!(got.targets, b.targets);
        assert!(got.volatile);
        assert_eq!(got.count, Some(("req1".into(), "abc123".into())));
    }

    #[test]
    fn node_undefined_and_numeric_rooms_are_read() {
        // [uid, {type: 2, data: ["e", undefined]}, {rooms: [42], except: []}] as Node writes it.
        let msg = Mp::Array(vec![
            Mp::from("n1"),
            Mp::Map(vec![
                (Mp::from("type"), Mp::from(2)),
                (
                    Mp::from("data"),
                    Mp::Array(vec![Mp::from("e"), Mp::Ext(0, vec![0])]),
                ),
            ]),
            Mp::Map(vec![
                (Mp::from("rooms"), Mp::Array(vec![Mp::from(42)])),
                (Mp::from("except"), Mp::Array(vec![])),
            ]),
        ]);
        let got = decode_broadcast(&encode(&msg)).unwrap();
        assert_eq!(got.nsp, "/");
        assert_eq!(got.payload.args, vec![Value::Null]);
        assert_eq!(got.targets.rooms, vec![Room::from("42")]);
    }

    #[test]
    fn offsets_keep_the_order_of_log_ids() {
        let a = offset_of_id("1796165938714-0").unwrap();
        let b = offset_of_id("1796165938714-7").unwrap();
        let c = offset_of_id("1796165938715-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(id_of_offset(b), "1796165938714-7");
        assert_eq!(offset_of_id("12-x"), None);
        assert_eq!(offset_of_id("5-1048576"), None);
    }

    #[test]
    fn requests_are_json_or_msgpack() {
        let (v, _) = decode_object(br#"{"type":5,"requestId":"x"}"#).unwrap();
        assert_eq!(v["type"], 5);
        let mp = Mp::Map(vec![
            (Mp::from("type"), Mp::from(9)),
            (Mp::from("packet"), Mp::Binary(vec![7])),
        ]);
        let (v, att) = decode_object(&encode(&mp)).unwrap();
        assert_eq!(v["type"], 9);
        assert_eq!(att, vec![Bytes::from_static(&[7])]);
        assert!(decode_object(b"garbage").is_none());
    }
}
