//! Feeds a `socket::Reassembler` a sequence of text and binary messages taken from untrusted
//! bytes. It must never panic, and what it reports must be consistent.
//!
//! Input format: messages separated by the byte 0xFF (never part of UTF-8 text). A message whose
//! first byte is `b` is a binary message of the bytes after it; any other message is a text
//! message of the bytes after its first byte (seeds use `t`). For example
//! `t51-["up",{"_placeholder":true,"num":0}]` 0xFF `bhello` feeds one binary event and its
//! attachment.
#![no_main]

use bytes::Bytes;
use courier_proto::socket::{Complete, DecodeError, Packet, Reassembler};
use libfuzzer_sys::fuzz_target;

const MESSAGE_SEPARATOR: u8 = 0xff;

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::default();
    for message in data.split(|&b| b == MESSAGE_SEPARATOR) {
        let Some((&tag, body)) = message.split_first() else {
            continue;
        };
        let was_waiting = r.is_waiting();
        if tag == b'b' {
            match r.binary(Bytes::copy_from_slice(body)) {
                Ok(Some(done)) => {
                    check_complete(&done);
                    assert!(!r.is_waiting(), "still waiting after a complete packet");
                }
                Ok(None) => assert!(r.is_waiting(), "binary accepted but nothing pending"),
                Err(DecodeError::UnexpectedBinary) => {
                    assert!(!was_waiting, "binary refused while attachments were expected");
                }
                Err(DecodeError::BadPlaceholder) => {
                    assert!(!r.is_waiting(), "a refused packet is still pending");
                }
                Err(e) => panic!("unexpected error for a binary message: {e}"),
            }
        } else {
            let result = r.text(body);
            if was_waiting {
                assert!(
                    matches!(result, Err(DecodeError::MissingAttachments(n)) if n > 0),
                    "text while waiting gave {result:?}"
                );
                assert!(r.is_waiting(), "text while waiting dropped the pending packet");
                continue;
            }
            match result {
                Ok(Some(done)) => {
                    check_complete(&done);
                    assert_eq!(done.packet.attachments, 0);
                    assert_eq!(Packet::decode(body).as_ref(), Ok(&done.packet));
                    assert!(!r.is_waiting());
                }
                Ok(None) => {
                    assert!(r.is_waiting(), "text accepted but nothing pending");
                    let packet = Packet::decode(body).expect("a pending packet decodes");
                    assert!(packet.kind.is_binary() && packet.attachments > 0);
                }
                Err(_) => assert!(!r.is_waiting(), "a refused text left something pending"),
            }
        }
    }
});

fn check_complete(done: &Complete) {
    assert_eq!(
        done.attachments.len(),
        done.packet.attachments,
        "complete packet with the wrong number of attachments"
    );
}
