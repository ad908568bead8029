//! Engine.IO v4 packets.
//!
//! A packet is one ASCII digit (its type) followed by its data. Over WebSocket a text frame holds
//! one packet and a binary frame is a binary `message`. Over HTTP long-polling a payload holds
//! several packets separated by the record separator 0x1E, binary messages written as `b` followed
//! by their base64 encoding.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};

/// Separator between packets in a long-polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `0`: the handshake, a JSON object sent by the server.
    Open(Bytes),
    /// `1`: the transport is about to close.
    Close,
    /// `2`: heartbeat request; `probe` during an upgrade.
    Ping(Bytes),
    /// `3`: heartbeat answer; `probe` during an upgrade.
    Pong(Bytes),
    /// `4`: application data.
    Message(Data),
    /// `5`: the client switches to the new transport.
    Upgrade,
    /// `6`: nothing; used to release a pending long-polling request.
    Noop,
}

/// The data of a `message` packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// UTF-8 text.
    Text(Bytes),
    /// Raw bytes.
    Binary(Bytes),
}

/// Why bytes could not be decoded as Engine.IO packets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A packet with no bytes at all.
    #[error("empty packet")]
    Empty,
    /// The first byte is not a known packet type.
    #[error("unknown packet type {0:?}")]
    UnknownType(u8),
    /// Text that is not UTF-8.
    #[error("packet is not valid UTF-8")]
    InvalidUtf8,
    /// A `b` packet whose body is not base64.
    #[error("invalid base64 in binary packet")]
    InvalidBase64,
    /// A packet type that must not carry data carried some.
    #[error("unexpected data after packet type {0}")]
    UnexpectedData(u8),
}

impl Packet {
    /// The packet's type digit.
    pub fn type_char(&self) -> u8 {
        match self {
            Packet::Open(_) => b'0',
            Packet::Close => b'1',
            Packet::Ping(_) => b'2',
            Packet::Pong(_) => b'3',
            Packet::Message(_) => b'4',
            Packet::Upgrade => b'5',
            Packet::Noop => b'6',
        }
    }

    /// Decodes the text of one packet (a WebSocket text frame or one polling record).
    ///
    /// `text` must already be known to be UTF-8 when it comes from a WebSocket text frame; polling
    /// records are checked by [`decode_payload`].
    pub fn decode_text(text: Bytes) -> Result<Packet, DecodeError> {
        let Some(&kind) = text.first() else {
            return Err(DecodeError::Empty);
        };
        let data = text.slice(1..);
        let no_data = |p: Packet| {
            if data.is_empty() {
                Ok(p)
            } else {
                Err(DecodeError::UnexpectedData(kind))
            }
        };
        match kind {
            b'0' => Ok(Packet::Open(data)),
            b'1' => no_data(Packet::Close),
            b'2' => Ok(Packet::Ping(data)),
            b'3' => Ok(Packet::Pong(data)),
            b'4' => Ok(Packet::Message(Data::Text(data))),
            b'5' => no_data(Packet::Upgrade),
            b'6' => no_data(Packet::Noop),
            other => Err(DecodeError::UnknownType(other)),
        }
    }

    /// Appends the packet as text: what a WebSocket text frame or a polling record holds.
    /// A binary message is written as `b` + base64, the polling form.
    pub fn encode_text(&self, out: &mut BytesMut) {
        match self {
            Packet::Message(Data::Binary(bin)) => encode_binary_record(bin, out),
            Packet::Open(d)
            | Packet::Ping(d)
            | Packet::Pong(d)
            | Packet::Message(Data::Text(d)) => {
                out.put_u8(self.type_char());
                out.extend_from_slice(d);
            }
            Packet::Close | Packet::Upgrade | Packet::Noop => out.put_u8(self.type_char()),
        }
    }

    /// The packet as a standalone text, e.g. for one WebSocket frame.
    pub fn to_text(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_text(&mut out);
        out.freeze()
    }
}

/// Appends a binary message in its long-polling form, `b` + base64.
pub fn encode_binary_record(bin: &[u8], out: &mut BytesMut) {
    out.put_u8(b'b');
    let start = out.len();
    out.resize(start + bin.len().div_ceil(3) * 4, 0);
    let written = BASE64
        .encode_slice(bin, &mut out[start..])
        .expect("buffer sized for base64");
    out.truncate(start + written);
}

/// Decodes a long-polling payload (the body of a POST) into its packets.
///
/// Decoding stops at the first bad record: a client that sends one is broken, and the caller
/// closes its session.
pub fn decode_payload(payload: Bytes) -> Result<Vec<Packet>, DecodeError> {
    payload_records(payload)?.map(decode_record).collect()
}

/// The records of a long-polling payload, split at [`SEPARATOR`], once the payload is known to be
/// UTF-8. An empty payload is one empty record (which decodes to no packet).
pub fn payload_records(payload: Bytes) -> Result<PayloadRecords, DecodeError> {
    if std::str::from_utf8(&payload).is_err() {
        return Err(DecodeError::InvalidUtf8);
    }
    Ok(PayloadRecords {
        rest: Some(payload),
    })
}

/// See [`payload_records`].
#[derive(Debug)]
pub struct PayloadRecords {
    rest: Option<Bytes>,
}

impl Iterator for PayloadRecords {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let rest = self.rest.as_mut()?;
        match rest.iter().position(|&b| b == SEPARATOR) {
            Some(i) => {
                let record = rest.slice(..i);
                *rest = rest.slice(i + 1..);
                Some(record)
            }
            None => self.rest.take(),
        }
    }
}

/// Decodes one record of a long-polling payload: a text packet, or `b` + base64 for a binary
/// message, as [`payload_records`] yields them; decoding record by record lets a caller act on the
/// packets before a bad one.
pub fn decode_record(record: Bytes) -> Result<Packet, DecodeError> {
    if record.first() == Some(&b'b') {
        let bin = BASE64
            .decode(&record[1..])
            .map_err(|_| DecodeError::InvalidBase64)?;
        return Ok(Packet::Message(Data::Binary(bin.into())));
    }
    Packet::decode_text(record)
}

/// Encodes packets as one long-polling payload.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a Packet>) -> Bytes {
    let mut out = BytesMut::new();
    for (i, p) in packets.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(SEPARATOR);
        }
        p.encode_text(&mut out);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn decodes_every_packet_type() {
        let open = r#"{"sid":"a","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        let cases = [
            (format!("0{open}"), Packet::Open(text(open))),
            ("1".into(), Packet::Close),
            ("2".into(), Packet::Ping(Bytes::new())),
            ("2probe".into(), Packet::Ping(text("probe"))),
            ("3".into(), Packet::Pong(Bytes::new())),
            ("3probe".into(), Packet::Pong(text("probe"))),
            ("4hello".into(), Packet::Message(Data::Text(text("hello")))),
            ("4".into(), Packet::Message(Data::Text(Bytes::new()))),
            ("5".into(), Packet::Upgrade),
            ("6".into(), Packet::Noop),
        ];
        for (wire, packet) in cases {
            assert_eq!(
                Packet::decode_text(text(&wire)),
                Ok(packet.clone()),
                "{wire}"
            );
            assert_eq!(packet.to_text(), text(&wire));
        }
    }

    #[test]
    fn rejects_bad_packets() {
        assert_eq!(Packet::decode_text(Bytes::new()), Err(DecodeError::Empty));
        assert_eq!(
            Packet::decode_text(text("7")),
            Err(DecodeError::UnknownType(b'7'))
        );
        assert_eq!(
            Packet::decode_text(text("x")),
            Err(DecodeError::UnknownType(b'x'))
        );
        assert_eq!(
            Packet::decode_text(text("5x")),
            Err(DecodeError::UnexpectedData(b'5'))
        );
        assert_eq!(
            Packet::decode_text(text("1close")),
            Err(DecodeError::UnexpectedData(b'1'))
        );
    }

    #[test]
    fn payload_joins_with_record_separator_and_base64() {
        let packets = vec![
            Packet::Message(Data::Text(text("hello €"))),
            Packet::Message(Data::Binary(Bytes::from_static(&[1, 2, 3, 4]))),
            Packet::Ping(Bytes::new()),
        ];
        let wire = encode_payload(&packets);
        assert_eq!(&wire[..], "4hello €\x1ebAQIDBA==\x1e2".as_bytes());
        assert_eq!(decode_payload(wire).unwrap(), packets);
    }

    #[test]
    fn payload_errors() {
        assert_eq!(decode_payload(Bytes::new()), Err(DecodeError::Empty));
        assert_eq!(decode_payload(text("4a\x1e")), Err(DecodeError::Empty));
        assert_eq!(
            decode_payload(text("b!!!")),
            Err(DecodeError::InvalidBase64)
        );
        assert_eq!(
            decode_payload(Bytes::from_static(&[b'4', 0xff])),
            Err(DecodeError::InvalidUtf8)
        );
    }

    #[test]
    fn empty_binary_round_trips() {
        let packets = [Packet::Message(Data::Binary(Bytes::new()))];
        let wire = encode_payload(&packets);
        assert_eq!(&wire[..], b"b");
        assert_eq!(decode_payload(wire).unwrap(), packets);
    }

    fn any_packet() -> impl Strategy<Value = Packet> {
        // Text data never contains the separator: clients cannot send it inside a record either.
        let data = "[^\x1e]{0,40}".prop_map(|s| Bytes::from(s.into_bytes()));
        prop_oneof![
            data.clone().prop_map(Packet::Open),
            Just(Packet::Close),
            data.clone().prop_map(Packet::Ping),
            data.clone().prop_map(Packet::Pong),
            data.prop_map(|d| Packet::Message(Data::Text(d))),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|v| Packet::Message(Data::Binary(v.into()))),
            Just(Packet::Upgrade),
            Just(Packet::Noop),
        ]
    }

    proptest! {
        #[test]
        fn payload_round_trips(packets in proptest::collection::vec(any_packet(), 1..8)) {
            let wire = encode_payload(&packets);
            prop_assert_eq!(decode_payload(wire).unwrap(), packets);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let bytes = Bytes::from(bytes);
            let _ = decode_payload(bytes.clone());
            let _ = Packet::decode_text(bytes);
        }
    }
}
