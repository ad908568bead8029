//! Socket.IO packet decoding of untrusted bytes, held to a round trip: whatever decodes must
//! encode to text that decodes to an equal packet, and that encoding must be stable.
#![no_main]

use courier_proto::socket::Packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::decode(data) else {
        return;
    };

    let wire = packet.encode();
    let again = match Packet::decode(&wire) {
        Ok(p) => p,
        Err(e) => panic!(
            "encoding of a decoded packet does not decode ({e}):\n input: {:?}\n wire:  {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&wire),
        ),
    };
    assert_eq!(
        again,
        packet,
        "round trip changed the packet:\n input: {:?}\n wire:  {:?}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&wire),
    );
    assert_eq!(again.encode(), wire, "encoding is not stable");

    // The Engine.IO message form is `4` followed by the same text.
    let message = packet.encode_message();
    assert_eq!(message[0], b'4');
    assert_eq!(&message[1..], &wire[..]);
});
