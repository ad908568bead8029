//! Engine.IO decoding of untrusted bytes: a long-polling payload and a single text packet.
//!
//! Neither decoder may panic. Whatever decodes must encode back to exactly the input: text data
//! is kept verbatim and the base64 of a binary record is canonical, so the wire form is unique.
#![no_main]

use bytes::Bytes;
use courier_proto::engine::{self, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);

    if let Ok(packets) = engine::decode_payload(input.clone()) {
        assert!(!packets.is_empty(), "a decoded payload holds at least one packet");
        let wire = engine::encode_payload(&packets);
        assert_eq!(wire, input, "payload does not re-encode to its input");
        let again = engine::decode_payload(wire).expect("an encoded payload decodes");
        assert_eq!(again, packets, "payload round trip changed the packets");
    }

    if let Ok(packet) = Packet::decode_text(input.clone()) {
        let wire = packet.to_text();
        assert_eq!(wire, input, "packet does not re-encode to its input");
        let again = Packet::decode_text(wire).expect("an encoded packet decodes");
        assert_eq!(again, packet, "packet round trip changed the packet");
    }
});
