//! WebSocket (RFC 6455) framing for the server side, with no I/O.
//!
//! [`Decoder`] takes client bytes in pieces of any size and yields whole messages: fragments are
//! reassembled, control frames may come between them, pongs are swallowed. It keeps only the
//! header of a frame cut short (at most 14 bytes) and the payload read so far of the message in
//! progress, which it allocates once the header says how long the frame is: an idle connection
//! holds no buffer. It is strict, as no extension is ever negotiated: client frames are masked,
//! reserved bits are 0, and every rule broken is a [`FrameError`] that names the close code the
//! client is sent.
//!
//! Server frames are unmasked, so encoding is only a header ([`header`]) before the payload.

use bytes::Bytes;

const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong.
pub const OP_PONG: u8 = 0xA;

/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const MAX_HEADER: usize = 14;
/// The longest payload of a control frame.
const MAX_CONTROL: usize = 125;
/// The longest header of a server frame (no mask).
pub const MAX_SERVER_HEADER: usize = 10;

/// A whole message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping, answered with a pong carrying the same payload.
    Ping(Bytes),
    /// A close frame, with its status code if it had one.
    Close(Option<u16>),
}

/// A rule of RFC 6455 the client broke. The connection ends with a close frame carrying
/// [`FrameError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A framing rule (close code 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or a close reason that is not UTF-8 (close code 1007).
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A frame, or a fragmented message, longer than `max_payload` (close code 1009).
    #[error("message longer than max_payload")]
    TooBig,
}

impl FrameError {
    /// The close code the client is sent.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => 1002,
            FrameError::InvalidUtf8 => 1007,
            FrameError::TooBig => 1009,
        }
    }
}

/// The frame whose payload is being read.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes still to come.
    remaining: usize,
    /// Payload bytes read so far (where the mask is at).
    read: usize,
}

/// Decodes client frames into messages. See the module's documentation.
#[derive(Debug)]
pub struct Decoder {
    max_payload: usize,
    /// The start of a header not complete yet.
    head: [u8; MAX_HEADER],
    head_len: u8,
    frame: Option<Frame>,
    /// The opcode of the data message in progress (text or binary), 0 when there is none.
    message_op: u8,
    /// The unmasked payload of the data message in progress, every fragment so far.
    message: Vec<u8>,
    /// The unmasked payload of the control frame being read.
    control: Vec<u8>,
}

impl Decoder {
    /// A decoder that refuses messages longer than `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Decoder {
            max_payload,
            head: [0; MAX_HEADER],
            head_len: 0,
            frame: None,
            message_op: 0,
            message: Vec::new(),
            control: Vec::new(),
        }
    }

    /// Decodes from the front of `input` up to the end of the next whole message and returns
    /// it, leaving the rest in `input`; `None` once `input` is used up without completing one
    /// (what was read of it is kept). After an error the decoder must not be used again.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Message>, FrameError> {
        loop {
            let frame = match self.frame {
                Some(ref mut f) => f,
                None => {
                    if !self.read_header(input)? {
                        return Ok(None);
                    }
                    self.frame.as_mut().expect("header just read")
                }
            };
            let take = frame.remaining.min(input.len());
            let dest = if frame.opcode >= OP_CLOSE {
                &mut self.control
            } else {
                &mut self.message
            };
            // Memory follows the bytes that came, not the length a header claims: doubling, but
            // never past the frame's end, so a message that arrives whole is allocated once.
            let need = dest.len() + take;
            if need > dest.capacity() {
                let end = dest.len() + frame.remaining;
                let target = (dest.capacity() * 2).max(need).min(end);
                dest.reserve_exact(target - dest.len());
            }
            unmask_into(dest, &input[..take], frame.mask, frame.read);
            *input = &input[take..];
            frame.remaining -= take;
            frame.read += take;
            if frame.remaining > 0 {
                return Ok(None);
            }
            let frame = self.frame.take().expect("frame in progress");
            if let Some(msg) = self.complete(frame)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Collects header bytes from `input`; true once the header is complete, checked, and its
    /// frame is in progress.
    fn read_header(&mut self, input: &mut &[u8]) -> Result<bool, FrameError> {
        loop {
            let have = usize::from(self.head_len);
            let need = header_len(&self.head[..have]);
            if have == need {
                break;
            }
            let Some((&b, rest)) = input.split_first() else {
                return Ok(false);
            };
            // Byte by byte: a header is short, and its length is known only from its second byte.
            self.head[have] = b;
            self.head_len += 1;
            *input = rest;
        }
        let head = &self.head[..usize::from(self.head_len)];
        self.head_len = 0;
        let (b0, b1) = (head[0], head[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let opcode = b0 & 0x0F;
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frame not masked"));
        }
        let (len, mask_at): (u64, usize) = match b1 & 0x7F {
            126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), 4),
            127 => {
                let len = u64::from_be_bytes(head[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length's top bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = head[mask_at..mask_at + 4].try_into().expect("4 bytes");
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(FrameError::Protocol("fragmented control frame"));
                }
                if len > MAX_CONTROL as u64 {
                    return Err(FrameError::Protocol("control frame longer than 125 bytes"));
                }
            }
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                if opcode == OP_CONTINUATION && self.message_op == 0 {
                    return Err(FrameError::Protocol("continuation frame without a message"));
                }
                if opcode != OP_CONTINUATION && self.message_op != 0 {
                    return Err(FrameError::Protocol("new message inside a fragmented one"));
                }
                let total = (self.message.len() as u64).saturating_add(len);
                if total > self.max_payload as u64 {
                    return Err(FrameError::TooBig);
                }
                if opcode != OP_CONTINUATION {
                    self.message_op = opcode;
                }
            }
            _ => return Err(FrameError::Protocol("unknown opcode")),
        }
        self.frame = Some(Frame {
            opcode,
            fin,
            mask,
            remaining: len as usize,
            read: 0,
        });
        Ok(true)
    }

    /// The message a frame whose payload is all read completes, if any.
    fn complete(&mut self, frame: Frame) -> Result<Option<Message>, FrameError> {
        match frame.opcode {
            OP_PING => Ok(Some(Message::Ping(
                std::mem::take(&mut self.control).into(),
            ))),
            OP_PONG => {
                self.control = Vec::new();
                Ok(None)
            }
            OP_CLOSE => {
                let payload = std::mem::take(&mut self.control);
                close_code(&payload).map(|code| Some(Message::Close(code)))
            }
            _ if !frame.fin => Ok(None),
            _ => {
                let payload = std::mem::take(&mut self.message);
                let op = std::mem::replace(&mut self.message_op, 0);
                if op == OP_TEXT {
                    // The whole message at once: a fragment may end inside a code point.
                    if std::str::from_utf8(&payload).is_err() {
                        return Err(FrameError::InvalidUtf8);
                    }
                    Ok(Some(Message::Text(payload.into())))
                } else {
                    Ok(Some(Message::Binary(payload.into())))
                }
            }
        }
    }
}

/// How long the header that starts with `head` is (2 while its length byte is unknown).
fn header_len(head: &[u8]) -> usize {
    let Some(&b1) = head.get(1) else {
        return 2;
    };
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// The status code of a close frame's payload: none, or a valid code followed by a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame with a 1-byte payload")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            // RFC 6455 7.4: the defined codes a peer may send, and those for applications.
            // 1004-1006 and 1015 are reserved and never sent.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// Appends `src` to `dest`, unmasked with `mask` from payload offset `at`.
fn unmask_into(dest: &mut Vec<u8>, src: &[u8], mask: [u8; 4], at: usize) {
    let start = dest.len();
    dest.extend_from_slice(src);
    let mut mask = mask;
    mask.rotate_left(at % 4);
    let word = u32::from_ne_bytes(mask);
    let mut chunks = dest[start..].chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes((&*chunk).try_into().expect("4 bytes")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// Writes the header of a final, unmasked server frame with `opcode` and a payload of `len`
/// bytes into `out`; returns its length.
pub fn header(opcode: u8, len: usize, out: &mut [u8; MAX_SERVER_HEADER]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// The payload of a close frame: empty, or `code` and a reason cut to fit a control frame.
pub fn close_payload(code: Option<u16>, reason: &str) -> Bytes {
    let Some(code) = code else {
        return Bytes::new();
    };
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame: `first` is the header's first byte (FIN, RSV, opcode).
    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        client_frame(
            u8::from(fin) << 7 | opcode,
            payload,
            [0x12, 0x34, 0x56, 0x78],
        )
    }

    /// Everything `bytes` decodes to, fed in one piece.
    fn decode_all(max: usize, bytes: &[u8]) -> Result<Vec<Message>, FrameError> {
        let mut d = Decoder::new(max);
        let mut input = bytes;
        let mut out = Vec::new();
        while let Some(m) = d.decode(&mut input)? {
            out.push(m);
        }
        assert!(input.is_empty());
        Ok(out)
    }

    fn text(s: &str) -> Message {
        Message::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn decodes_text_binary_and_every_length_encoding() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let got = decode_all(1 << 20, &frame(true, OP_BINARY, &payload)).unwrap();
            assert_eq!(got, [Message::Binary(payload.into())], "length {len}");
        }
        assert_eq!(
            decode_all(100, &frame(true, OP_TEXT, "héllo".as_bytes())).unwrap(),
            [text("héllo")]
        );
    }

    #[test]
    fn reassembles_fragments_with_control_frames_between() {
        let mut bytes = frame(false, OP_TEXT, b"he");
        bytes.extend(frame(true, OP_PING, b"p"));
        bytes.extend(frame(false, OP_CONTINUATION, b"ll"));
        bytes.extend(frame(true, OP_PONG, b"ignored"));
        bytes.extend(frame(true, OP_CONTINUATION, b"o"));
        let got = decode_all(100, &bytes).unwrap();
        assert_eq!(
            got,
            [Message::Ping(Bytes::from_static(b"p")), text("hello")]
        );
    }

    #[test]
    fn a_code_point_may_be_split_across_fragments() {
        let euro = "€".as_bytes();
        let mut bytes = frame(false, OP_TEXT, &euro[..1]);
        bytes.extend(frame(false, OP_CONTINUATION, &euro[1..2]));
        bytes.extend(frame(true, OP_CONTINUATION, &euro[2..]));
        assert_eq!(decode_all(100, &bytes).unwrap(), [text("€")]);
    }

    #[test]
    fn invalid_utf8_text_is_1007() {
        let err = decode_all(100, &frame(true, OP_TEXT, &[0xC3, 0x28])).unwrap_err();
        assert_eq!(err.close_code(), 1007);
        // A code point cut short at the end of the message.
        let mut bytes = frame(false, OP_TEXT, b"ok");
        bytes.extend(frame(true, OP_CONTINUATION, &"€".as_bytes()[..2]));
        assert_eq!(decode_all(100, &bytes).unwrap_err().close_code(), 1007);
        // Binary messages are not checked.
        assert!(decode_all(100, &frame(true, OP_BINARY, &[0xFF])).is_ok());
    }

    #[test]
    fn protocol_errors_are_1002() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", vec![0x81, 0x02, b'h', b'i']),
            ("rsv1", frame(true, 0x40 | OP_TEXT, b"hi")),
            ("rsv3", frame(true, 0x10 | OP_BINARY, b"hi")),
            ("opcode 3", frame(true, 0x3, b"")),
            ("opcode 0xB", frame(true, 0xB, b"")),
            ("continuation first", frame(true, OP_CONTINUATION, b"x")),
            ("fragmented ping", frame(false, OP_PING, b"")),
            ("ping of 126", frame(true, OP_PING, &[0; 126])),
            ("close of 1 byte", frame(true, OP_CLOSE, &[3])),
            (
                "close code 1005",
                frame(true, OP_CLOSE, &1005u16.to_be_bytes()),
            ),
            (
                "close code 999",
                frame(true, OP_CLOSE, &999u16.to_be_bytes()),
            ),
            (
                "close code 5000",
                frame(true, OP_CLOSE, &5000u16.to_be_bytes()),
            ),
            ("new message mid-way", {
                let mut b = frame(false, OP_TEXT, b"a");
                b.extend(frame(true, OP_BINARY, b"b"));
                b
            }),
            ("length top bit", {
                let mut b = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
                b.extend_from_slice(&[0; 4]);
                b
            }),
        ];
        for (name, bytes) in cases {
            let err = decode_all(1000, &bytes).unwrap_err();
            assert_eq!(err.close_code(), 1002, "{name}: {err}");
        }
    }

    #[test]
    fn close_frames() {
        assert_eq!(
            decode_all(100, &frame(true, OP_CLOSE, b"")).unwrap(),
            [Message::Close(None)]
        );
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(
            decode_all(100, &frame(true, OP_CLOSE, &p)).unwrap(),
            [Message::Close(Some(1000))]
        );
        let mut p = 4000u16.to_be_bytes().to_vec();
        p.push(0xFF);
        let err = decode_all(100, &frame(true, OP_CLOSE, &p)).unwrap_err();
        assert_eq!(err.close_code(), 1007);
    }

    #[test]
    fn too_big_is_1009_before_the_payload_arrives() {
        let bytes = frame(true, OP_BINARY, &[0; 101]);
        let mut d = Decoder::new(100);
        // The header alone is enough to refuse.
        assert_eq!(d.decode(&mut &bytes[..8]), Err(FrameError::TooBig));
        assert!(decode_all(101, &bytes).is_ok());
        // Fragments count together.
        let mut bytes = frame(false, OP_TEXT, &[b'a'; 60]);
        bytes.extend(frame(true, OP_CONTINUATION, &[b'a'; 41]));
        assert_eq!(decode_all(100, &bytes), Err(FrameError::TooBig));
        // A length too large for the machine.
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(decode_all(100, &bytes), Err(FrameError::TooBig));
    }

    #[test]
    fn keeps_nothing_between_messages() {
        let mut d = Decoder::new(1 << 20);
        let bytes = frame(true, OP_BINARY, &[7; 5000]);
        let (a, b) = bytes.split_at(3000);
        assert_eq!(d.decode(&mut &a[..]), Ok(None));
        // Only what came is held.
        assert_eq!(d.message.capacity(), 2992);
        assert!(d.decode(&mut &b[..]).unwrap().is_some());
        assert_eq!(d.message.capacity(), 0);
        assert_eq!(d.control.capacity(), 0);
    }

    #[test]
    fn server_headers() {
        let head = |op, len| {
            let mut h = [0; MAX_SERVER_HEADER];
            let n = header(op, len, &mut h);
            h[..n].to_vec()
        };
        assert_eq!(head(OP_TEXT, 5), [0x81, 5]);
        assert_eq!(head(OP_BINARY, 300), [0x82, 126, 1, 44]);
        assert_eq!(
            head(OP_BINARY, 70000),
            [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert_eq!(close_payload(None, "x"), Bytes::new());
        assert_eq!(close_payload(Some(1009), "")[..], [0x03, 0xF1]);
        let long = "é".repeat(100);
        let p = close_payload(Some(1002), &long);
        assert!(p.len() <= MAX_CONTROL);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }

    /// A valid client message as frames: fragments with control frames between them.
    #[derive(Debug, Clone)]
    enum Item {
        Data {
            text: bool,
            body: Vec<u8>,
            cuts: Vec<usize>,
            pings: Vec<bool>,
        },
        Ping(Vec<u8>),
        Pong(Vec<u8>),
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            (
                any::<bool>(),
                prop_oneof![
                    ".{0,40}".prop_map(String::into_bytes),
                    prop::collection::vec(any::<u8>(), 0..300),
                ],
                prop::collection::vec(any::<usize>(), 0..4),
                prop::collection::vec(any::<bool>(), 0..4),
            )
                .prop_map(|(text, body, cuts, pings)| Item::Data {
                    text,
                    body,
                    cuts,
                    pings
                }),
            prop::collection::vec(any::<u8>(), 0..=125).prop_map(Item::Ping),
            prop::collection::vec(any::<u8>(), 0..=125).prop_map(Item::Pong),
        ]
    }

    /// The frames of `items` (with `mask`) and the messages they decode to.
    fn encode_items(items: &[Item], mask: [u8; 4]) -> (Vec<u8>, Vec<Message>) {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for it in items {
            match it {
                Item::Ping(p) => {
                    bytes.extend(client_frame(0x80 | OP_PING, p, mask));
                    want.push(Message::Ping(p.clone().into()));
                }
                Item::Pong(p) => bytes.extend(client_frame(0x80 | OP_PONG, p, mask)),
                Item::Data {
                    text,
                    body,
                    cuts,
                    pings,
                } => {
                    // A text message is cut anywhere, inside code points too.
                    let text = *text && std::str::from_utf8(body).is_ok();
                    let mut cuts: Vec<usize> = cuts
                        .iter()
                        .map(|c| c % (body.len() + 1))
                        .chain([body.len()])
                        .collect();
                    cuts.sort_unstable();
                    let mut from = 0;
                    for (i, &to) in cuts.iter().enumerate() {
                        let op = match (i, text) {
                            (0, true) => OP_TEXT,
                            (0, false) => OP_BINARY,
                            _ => OP_CONTINUATION,
                        };
                        let fin = i + 1 == cuts.len();
                        bytes.extend(client_frame(u8::from(fin) << 7 | op, &body[from..to], mask));
                        from = to;
                        if !fin && pings.get(i).copied().unwrap_or(false) {
                            bytes.extend(client_frame(0x80 | OP_PING, b"mid", mask));
                            want.push(Message::Ping(Bytes::from_static(b"mid")));
                        }
                    }
                    let body = Bytes::from(body.clone());
                    want.push(if text {
                        Message::Text(body)
                    } else {
                        Message::Binary(body)
                    });
                }
            }
        }
        (bytes, want)
    }

    proptest! {
        #[test]
        fn split_reads_decode_like_one(
            items in prop::collection::vec(item(), 0..12),
            mask in any::<[u8; 4]>(),
            splits in prop::collection::vec(any::<usize>(), 0..20),
        ) {
            let (bytes, want) = encode_items(&items, mask);
            prop_assert_eq!(&decode_all(1 << 20, &bytes).unwrap(), &want);
            let mut splits: Vec<usize> =
                splits.iter().map(|s| s % (bytes.len() + 1)).chain([bytes.len()]).collect();
            splits.sort_unstable();
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            let mut from = 0;
            for to in splits {
                let mut input = &bytes[from..to];
                while let Some(m) = d.decode(&mut input).unwrap() {
                    got.push(m);
                }
                prop_assert!(input.is_empty());
                from = to;
            }
            prop_assert_eq!(got, want);
            prop_assert_eq!(d.message.capacity(), 0);
            prop_assert_eq!(d.head_len, 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut d = Decoder::new(100);
            let mut input = &bytes[..];
            while let Ok(Some(_)) = d.decode(&mut input) {}
        }
    }
}
