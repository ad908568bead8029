//! What the server counts, for metrics and the admin UI.
//!
//! Every counter is a relaxed atomic add at the place the thing happens, with no lock and no
//! allocation; labels are fixed enums, so every labelled count is an array slot. Counts of the
//! present (connections, sockets per namespace, streams, consumers) are not kept here: whoever
//! exports them reads them from the server's own tables when asked. With
//! [`Config::metrics`](crate::Config::metrics) off the server has no `Stats` and counts nothing.

pub use courier_store::stats::{Counter, Histogram, HistogramSnapshot, ShardedCounter};

use crate::engine::{CloseReason, Transport};
use crate::io::DisconnectReason;

/// Why a client's attempt to connect (an Engine.IO handshake or a Socket.IO CONNECT) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A TCP connection past `ServeOptions::max_connections` (answered 503).
    MaxConnections,
    /// A handshake while `max_sessions` sessions were open.
    MaxSessions,
    /// A CONNECT past `max_namespaces_per_connection`.
    TooManyNamespaces,
    /// A CONNECT to a namespace that does not exist (or `max_namespaces` was reached).
    InvalidNamespace,
    /// A connect middleware said no (auth tokens or JWTs, for `courier serve`).
    Middleware,
    /// A CONNECT past `max_sockets_per_sub` sockets of one identity.
    MaxSocketsPerSub,
    /// A handshake past `max_sessions_per_ip` sessions of one client address.
    MaxSessionsPerIp,
    /// A handshake past `handshakes_per_ip_per_second` of one client address.
    HandshakeRate,
}

impl Refusal {
    /// Every cause, in label order.
    pub const ALL: [Refusal; 8] = [
        Refusal::MaxConnections,
        Refusal::MaxSessions,
        Refusal::TooManyNamespaces,
        Refusal::InvalidNamespace,
        Refusal::Middleware,
        Refusal::MaxSocketsPerSub,
        Refusal::MaxSessionsPerIp,
        Refusal::HandshakeRate,
    ];

    /// The cause as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxSessions => "max_sessions",
            Refusal::TooManyNamespaces => "max_namespaces_per_connection",
            Refusal::InvalidNamespace => "invalid_namespace",
            Refusal::Middleware => "middleware",
            Refusal::MaxSocketsPerSub => "max_sockets_per_sub",
            Refusal::MaxSessionsPerIp => "max_sessions_per_ip",
            Refusal::HandshakeRate => "handshakes_per_ip_per_second",
        }
    }
}

/// Why a recovery attempt (a CONNECT with `pid` and `offset`) started afresh instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryRefusal {
    /// No session with that pid: never known, expired, or taken already.
    Unknown,
    /// The session belongs to another namespace.
    WrongNamespace,
    /// The session's old socket is still connected.
    StillConnected,
    /// The offset is not one the server gave out.
    BadOffset,
    /// Broadcasts after the offset are no longer kept.
    Expired,
    /// More missed broadcasts than half the outbound queue.
    TooManyMissed,
    /// The session belongs to another identity (JWT subject) than the one reconnecting.
    OtherIdentity,
}

impl RecoveryRefusal {
    /// Every cause, in label order.
    pub const ALL: [RecoveryRefusal; 7] = [
        RecoveryRefusal::Unknown,
        RecoveryRefusal::WrongNamespace,
        RecoveryRefusal::StillConnected,
        RecoveryRefusal::BadOffset,
        RecoveryRefusal::Expired,
        RecoveryRefusal::TooManyMissed,
        RecoveryRefusal::OtherIdentity,
    ];

    /// The cause as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryRefusal::Unknown => "unknown_session",
            RecoveryRefusal::WrongNamespace => "wrong_namespace",
            RecoveryRefusal::StillConnected => "still_connected",
            RecoveryRefusal::BadOffset => "bad_offset",
            RecoveryRefusal::Expired => "log_expired",
            RecoveryRefusal::TooManyMissed => "too_many_missed",
            RecoveryRefusal::OtherIdentity => "other_identity",
        }
    }
}

/// Every engine close reason, in label order.
pub const CLOSE_REASONS: [CloseReason; 10] = [
    CloseReason::TransportClose,
    CloseReason::TransportError,
    CloseReason::PingTimeout,
    CloseReason::ServerShutdown,
    CloseReason::ForcedClose,
    CloseReason::ParseError,
    CloseReason::SlowClient,
    CloseReason::ConnectTimeout,
    CloseReason::TokenExpired,
    CloseReason::RateLimited,
];

/// A close reason as a metric label: finer than Socket.IO's names (a slow client is a
/// `transport error` to Socket.IO).
pub fn close_label(r: CloseReason) -> &'static str {
    match r {
        CloseReason::TransportClose => "transport_close",
        CloseReason::TransportError => "transport_error",
        CloseReason::PingTimeout => "ping_timeout",
        CloseReason::ServerShutdown => "server_shutdown",
        CloseReason::ForcedClose => "forced_close",
        CloseReason::ParseError => "parse_error",
        CloseReason::SlowClient => "slow_client",
        CloseReason::ConnectTimeout => "connect_timeout",
        CloseReason::TokenExpired => "token_expired",
        CloseReason::RateLimited => "rate_limited",
    }
}

fn close_index(r: CloseReason) -> usize {
    CLOSE_REASONS.iter().position(|&c| c == r).unwrap_or(0)
}

/// Labels of socket disconnect reasons: the namespace-level two, then the close reasons.
pub fn disconnect_labels() -> impl Iterator<Item = &'static str> {
    ["client_namespace_disconnect", "server_namespace_disconnect"]
        .into_iter()
        .chain(CLOSE_REASONS.iter().map(|&r| close_label(r)))
}

fn disconnect_index(r: DisconnectReason) -> usize {
    match r {
        DisconnectReason::ClientNamespaceDisconnect => 0,
        DisconnectReason::ServerNamespaceDisconnect => 1,
        DisconnectReason::Connection(c) => 2 + close_index(c),
    }
}

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Polling => 0,
        Transport::WebSocket => 1,
    }
}

/// Transport labels, in the order [`Stats::connections_opened`] counts them.
pub const TRANSPORTS: [Transport; 2] = [Transport::Polling, Transport::WebSocket];

/// The server's counters. Shared by the engine, its sessions and the Socket.IO layer.
#[derive(Debug, Default)]
pub struct Stats {
    /// Engine.IO sessions opened, by transport of the handshake.
    pub connections_opened: [Counter; 2],
    /// Sessions upgraded from polling to WebSocket.
    pub upgrades: Counter,
    /// Sessions closed, by reason.
    pub connections_closed: [Counter; CLOSE_REASONS.len()],
    /// Handshakes and CONNECTs refused, by [`Refusal`].
    pub refused: [Counter; Refusal::ALL.len()],
    /// Engine.IO packets received (pongs and messages; each binary attachment is one).
    pub packets_in: ShardedCounter,
    /// Bytes of the packets received (their Engine.IO encoding).
    pub bytes_in: ShardedCounter,
    /// Engine.IO packets written to clients.
    pub packets_out: ShardedCounter,
    /// Bytes of the packets written (text as sent; binary payloads as their length).
    pub bytes_out: ShardedCounter,
    /// Sockets that joined a namespace (recovered ones included).
    pub socket_connects: Counter,
    /// Sockets that left a namespace, by reason (see [`disconnect_labels`]).
    pub socket_disconnects: [Counter; CLOSE_REASONS.len() + 2],
    /// Events received from clients (reserved `courier:` events included).
    pub events_received: ShardedCounter,
    /// Events refused because their connection was past `events_per_second`.
    pub events_rate_limited: Counter,
    /// Events sent to one socket (stream deliveries included).
    pub events_emitted: ShardedCounter,
    /// Broadcasts sent from this node.
    pub broadcasts: ShardedCounter,
    /// Sockets of this node a broadcast was queued for, summed.
    pub broadcast_recipients: ShardedCounter,
    /// Acknowledgements received from clients for an emit that asked for one.
    pub acks_received: ShardedCounter,
    /// Emits with an ack that timed out waiting for it.
    pub ack_timeouts: Counter,
    /// Volatile packets dropped because the client's queue was full.
    pub volatile_drops: Counter,
    /// Recovery attempts (a CONNECT with a pid).
    pub recovery_attempts: Counter,
    /// Attempts that recovered the session.
    pub recovered: Counter,
    /// Attempts that did not, by [`RecoveryRefusal`].
    pub recovery_refused: [Counter; RecoveryRefusal::ALL.len()],
    /// Stream entries sent to subscribers for the first time.
    pub deliveries: ShardedCounter,
    /// Stream entries sent again after `ack_wait`.
    pub redeliveries: Counter,
    /// Stream entries moved to a dead-letter stream.
    pub dead_lettered: Counter,
    /// Publishes confirmed as new entries.
    pub publishes: ShardedCounter,
    /// Publishes confirmed as duplicates of an entry with the same id.
    pub publish_duplicates: Counter,
    /// Publishes refused, by the error code answered (see [`PUBLISH_REFUSALS`]).
    pub publish_refused: [Counter; 10],
}

/// Error codes a publish can be refused with, in [`Stats::publish_refused`] order.
pub const PUBLISH_REFUSALS: [&str; 10] = [
    "stream_not_found",
    "invalid_name",
    "too_large",
    "storage_full",
    "too_many_streams",
    "too_many_consumers",
    "storage_failure",
    "unavailable",
    "bad_request",
    "other",
];

impl Stats {
    /// Counts a session opened with `t`.
    #[inline]
    pub(crate) fn opened(&self, t: Transport) {
        self.connections_opened[transport_index(t)].inc();
    }

    /// Counts a session closed for `r`.
    pub(crate) fn closed(&self, r: CloseReason) {
        self.connections_closed[close_index(r)].inc();
    }

    /// Counts a refusal.
    pub(crate) fn refuse(&self, r: Refusal) {
        self.refused[r as usize].inc();
    }

    /// Counts a socket leaving its namespace.
    pub(crate) fn disconnected(&self, r: DisconnectReason) {
        self.socket_disconnects[disconnect_index(r)].inc();
    }

    /// Counts a recovery attempt that started afresh.
    pub(crate) fn recovery_refused(&self, r: RecoveryRefusal) {
        self.recovery_refused[r as usize].inc();
    }

    /// Counts a publish refused with `code`.
    pub(crate) fn publish_refused(&self, code: &str) {
        let i = PUBLISH_REFUSALS
            .iter()
            .position(|&c| c == code)
            .unwrap_or(PUBLISH_REFUSALS.len() - 1);
        self.publish_refused[i].inc();
    }

    /// Sessions closed for `r` so far.
    pub fn closed_count(&self, r: CloseReason) -> u64 {
        self.connections_closed[close_index(r)].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_has_its_own_slot() {
        let s = Stats::default();
        for r in CLOSE_REASONS {
            s.closed(r);
            s.disconnected(DisconnectReason::Connection(r));
        }
        s.disconnected(DisconnectReason::ClientNamespaceDisconnect);
        s.disconnected(DisconnectReason::ServerNamespaceDisconnect);
        assert!(s.connections_closed.iter().all(|c| c.get() == 1));
        assert!(s.socket_disconnects.iter().all(|c| c.get() == 1));
        assert_eq!(disconnect_labels().count(), s.socket_disconnects.len());
        for r in Refusal::ALL {
            s.refuse(r);
        }
        assert!(s.refused.iter().all(|c| c.get() == 1));
        for r in RecoveryRefusal::ALL {
            s.recovery_refused(r);
        }
        assert!(s.recovery_refused.iter().all(|c| c.get() == 1));
        for code in PUBLISH_REFUSALS {
            s.publish_refused(code);
        }
        s.publish_refused("something new");
        assert_eq!(s.publish_refused[PUBLISH_REFUSALS.len() - 1].get(), 2);
    }
}
