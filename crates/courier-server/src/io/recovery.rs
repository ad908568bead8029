//! Connection state recovery: offsets on broadcasts, and what a returning client gets back.

use bytes::{BufMut, Bytes, BytesMut};
use courier_store::RecoveryEvent;

/// The EVENT packet text (`42...`) for an `[event, ...args]` array with `offset` appended as the
/// last argument, which is where socket.io-client looks for it.
pub(crate) fn with_offset(nsp: &str, data: &[u8], offset: u64) -> Bytes {
    debug_assert!(data.ends_with(b"]"));
    let mut out = BytesMut::with_capacity(data.len() + nsp.len() + 24);
    out.put_slice(b"42");
    if nsp != "/" {
        out.put_slice(nsp.as_bytes());
        out.put_u8(b',');
    }
    out.put_slice(&data[..data.len() - 1]);
    out.put_slice(b",\"");
    out.put_slice(offset.to_string().as_bytes());
    out.put_slice(b"\"]");
    out.freeze()
}

/// Whether a broadcast reached a socket with id `sid` in `rooms`.
pub(crate) fn was_for(event: &RecoveryEvent, sid: &str, rooms: &[String]) -> bool {
    let member = |r: &String| r == sid || rooms.contains(r);
    (event.rooms.is_empty() || event.rooms.iter().any(member)) && !event.except.iter().any(member)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_is_the_last_argument() {
        assert_eq!(&with_offset("/", br#"["a",1]"#, 7)[..], br#"42["a",1,"7"]"#);
        assert_eq!(
            &with_offset("/x", br#"["a"]"#, 12)[..],
            br#"42/x,["a","12"]"#
        );
    }

    #[test]
    fn replay_respects_rooms_and_except() {
        let ev = |rooms: &[&str], except: &[&str]| RecoveryEvent {
            offset: 1,
            ts_ms: 0,
            nsp: "/".into(),
            rooms: rooms.iter().map(|s| s.to_string()).collect(),
            except: except.iter().map(|s| s.to_string()).collect(),
            data: Bytes::from_static(b"[\"e\"]"),
        };
        let rooms = vec!["r1".to_string()];
        assert!(was_for(&ev(&[], &[]), "me", &rooms));
        assert!(was_for(&ev(&["r1", "r2"], &[]), "me", &rooms));
        assert!(was_for(&ev(&["me"], &[]), "me", &rooms));
        assert!(!was_for(&ev(&["r2"], &[]), "me", &rooms));
        assert!(!was_for(&ev(&[], &["me"]), "me", &rooms));
        assert!(!was_for(&ev(&["r1"], &["r1"]), "me", &rooms));
    }
}
