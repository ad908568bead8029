//! Hooks for whoever watches sockets come and go (the admin UI of `courier serve`).

use serde_json::Value;

use super::{DisconnectReason, Socket};

/// Told of what happens to sockets, inline, on the thread where it happens: an implementation
/// must be quick and must not wait (queue the work instead). Every method does nothing by
/// default. Installed once with [`Io::set_observer`](super::Io::set_observer); a server without
/// one pays one load of an unset `OnceLock` per hook.
pub trait Observer: Send + Sync + 'static {
    /// A socket joined its namespace (its CONNECT was answered).
    fn socket_connected(&self, socket: &Socket) {
        let _ = socket;
    }

    /// A socket left its namespace.
    fn socket_disconnected(&self, socket: &Socket, reason: DisconnectReason) {
        let _ = (socket, reason);
    }

    /// The connection of `socket` moved from long-polling to WebSocket.
    fn transport_upgraded(&self, socket: &Socket) {
        let _ = socket;
    }

    /// `socket` joined `room` (it was not in it).
    fn room_joined(&self, socket: &Socket, room: &str) {
        let _ = (socket, room);
    }

    /// `socket` left `room` (it was in it).
    fn room_left(&self, socket: &Socket, room: &str) {
        let _ = (socket, room);
    }

    /// The client of `socket` sent `event` with `args` (binary attachments not included).
    fn event_received(&self, socket: &Socket, event: &str, args: &[Value]) {
        let _ = (socket, event, args);
    }

    /// `event` was sent to `socket` alone (broadcasts are not reported per socket).
    fn event_sent(&self, socket: &Socket, event: &str, args: &[Value]) {
        let _ = (socket, event, args);
    }
}
