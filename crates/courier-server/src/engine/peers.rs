//! Sessions across nodes: which node made a sid, and where that node is.
//!
//! With [`Peers`] installed, every sid this node makes is its node id followed by 20 random
//! characters. Node ids have the same length on every node, so the first `node_id().len()`
//! characters of any sid name the node that owns it. A request for a sid this node does not know
//! is forwarded to that node (`forward.rs`).

/// The other nodes of a cluster, as the engine needs them: who owns a session, and where to reach it.
pub trait Peers: Send + Sync + 'static {
    /// This node's id: a short URL-safe string (letters, digits, '-' '_'), the same length on every node, that starts every Engine.IO sid this node makes.
    fn node_id(&self) -> &str;
    /// The base address (e.g. `http://127.0.0.1:4001`) of the node whose id is `node`, if known and not this node.
    fn address_of(&self, node: &str) -> Option<http::Uri>;
}

/// Longest node id accepted: ids are a few characters, and each one lengthens every sid.
pub(crate) const MAX_NODE_ID: usize = 32;

/// Why a node id cannot start sids.
pub(crate) fn check_node_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_NODE_ID {
        return Err("a node id has 1 to 32 characters");
    }
    if !id.bytes().all(is_id_byte) {
        return Err("a node id has only letters, digits, '-' and '_'");
    }
    Ok(())
}

/// The node id that starts `sid`, on a cluster whose ids are `len` long; `None` if the sid cannot
/// have been made by a node (too short to hold an id and a random part, or not URL-safe there).
pub(crate) fn owner_of(sid: &str, len: usize) -> Option<&str> {
    if len == 0 || sid.len() <= len {
        return None;
    }
    let node = sid.get(..len)?;
    node.bytes().all(is_id_byte).then_some(node)
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::{check_node_id, owner_of};
    use crate::engine::session::prefixed_id;

    #[test]
    fn the_prefix_of_a_sid_names_its_node() {
        assert_eq!(owner_of("node-aAbCdEfGhIjKlMnOpQrSt", 6), Some("node-a"));
        assert_eq!(owner_of("ab_xyz", 3), Some("ab_"));
        // A sid made by a node round-trips, whatever its random part.
        for _ in 0..100 {
            let sid = prefixed_id("n_7-Q2");
            assert_eq!(sid.len(), 26);
            assert_eq!(owner_of(&sid, 6), Some("n_7-Q2"));
        }
    }

    #[test]
    fn a_sid_that_cannot_carry_a_node_id_names_none() {
        // Too short: the id alone, or less, leaves no random part.
        assert_eq!(owner_of("", 6), None);
        assert_eq!(owner_of("abc", 6), None);
        assert_eq!(owner_of("abcdef", 6), None);
        // Characters no node id has (a sid from a client is untrusted input).
        assert_eq!(owner_of("ab.def-rest", 6), None);
        assert_eq!(owner_of("ab%2Fef-rest", 6), None);
        // A multi-byte character across the boundary is not split.
        assert_eq!(owner_of("abcdé-rest", 5), None);
        assert_eq!(owner_of("anything", 0), None);
    }

    #[test]
    fn node_ids_are_short_and_url_safe() {
        assert!(check_node_id("a1B2-_").is_ok());
        assert!(check_node_id("x").is_ok());
        assert!(check_node_id("").is_err());
        assert!(check_node_id("has space").is_err());
        assert!(check_node_id("slash/").is_err());
        assert!(check_node_id(&"a".repeat(33)).is_err());
    }
}
