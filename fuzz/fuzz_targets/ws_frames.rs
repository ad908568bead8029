//! WebSocket frames from a client, untrusted, held to two rules: decoding never panics, and the
//! messages (or the error) do not depend on how the bytes were cut into reads. The first byte
//! picks the cut; the rest are the bytes on the wire.
#![no_main]

use courier_proto::ws::{Decoder, FrameError, Message};
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer reaches the limit, with frames of every length form.
const MAX_PAYLOAD: usize = 300;

/// Decodes `chunks` in turn with one decoder: every message, then the error if one came.
fn decode_all<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<Message>, Option<FrameError>) {
    let mut decoder = Decoder::new(MAX_PAYLOAD);
    let mut out = Vec::new();
    for chunk in chunks {
        let mut rest = chunk;
        loop {
            match decoder.decode(&mut rest) {
                Ok(Some(msg)) => out.push(msg),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        assert!(rest.is_empty(), "a read was left half used without an error");
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, wire)) = data.split_first() else {
        return;
    };
    let whole = decode_all(std::iter::once(wire));
    let at = usize::from(cut).min(wire.len());
    let split = decode_all([&wire[..at], &wire[at..]].into_iter());
    let step = usize::from(cut % 7) + 1;
    let small = decode_all(wire.chunks(step));
    assert_eq!(whole, split, "cut at {at}");
    assert_eq!(whole, small, "reads of {step} bytes");
    for msg in &whole.0 {
        match msg {
            Message::Text(t) => {
                assert!(t.len() <= MAX_PAYLOAD);
                assert!(std::str::from_utf8(t).is_ok(), "text that is not UTF-8");
            }
            Message::Binary(b) | Message::Ping(b) => assert!(b.len() <= MAX_PAYLOAD),
            Message::Close(_) => {}
        }
    }
});
