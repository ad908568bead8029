//! Server settings, each with the default a stock Socket.IO server uses.

use std::time::Duration;

/// Settings of the Engine.IO and Socket.IO layers. `Config::default()` matches the reference
/// server's defaults; change fields, then hand the struct to [`crate::Io::new`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the Engine.IO endpoint. Default `/socket.io/`.
    pub path: String,
    /// How often the server pings each client. Default 25 s.
    pub ping_interval: Duration,
    /// How long a client has to answer a ping. Default 20 s.
    pub ping_timeout: Duration,
    /// Largest HTTP POST body or WebSocket message accepted, in bytes. Default 1,000,000.
    pub max_payload: usize,
    /// Time a client has to join a namespace after the handshake. Default 45 s.
    pub connect_timeout: Duration,
    /// Time a client has to finish upgrading to WebSocket. Default 10 s.
    pub upgrade_timeout: Duration,
    /// Accept HTTP long-polling. Default true.
    pub polling: bool,
    /// Accept WebSocket. Default true.
    pub websocket: bool,
    /// Packets that may wait in one connection's outbound queue. A client that lets the queue fill
    /// is disconnected (volatile packets are dropped instead). Default 1024.
    pub max_buffered_packets: usize,
    /// Default timeout of an emit that waits for acknowledgements. Default 10 s.
    pub ack_timeout: Duration,
    /// Cross-origin settings for long-polling requests.
    pub cors: Cors,
    /// Connection state recovery: broadcasts carry an offset, and a client that lost its
    /// connection gets its socket id, rooms, data and missed broadcasts back when it returns
    /// within the store's recovery window. Default false (as in the reference server).
    pub recovery: bool,
    /// Engine.IO sessions open at once (0 = no limit); a handshake past it is answered 503.
    /// Default 0.
    pub max_sessions: usize,
    /// Namespaces one connection may join at once (0 = no limit); a CONNECT past it gets
    /// CONNECT_ERROR `{"message":"Too many namespaces"}`. Default 32.
    pub max_namespaces_per_connection: usize,
    /// Namespaces in all (0 = no limit): past it no namespace is created from a dynamic
    /// pattern, and a CONNECT to a new one gets `Invalid namespace`. Default 10,000.
    pub max_namespaces: usize,
    /// Count what the server does ([`crate::stats::Stats`], read by [`crate::Io::stats`]): one
    /// atomic add per counted thing. Off, nothing is counted. Default on.
    pub metrics: bool,
    /// Durable subscriptions one socket may hold (0 = no limit); one more is refused with
    /// `too_many_subscriptions`. Default 100.
    pub max_subscriptions_per_socket: usize,
    /// Events per second one connection may send, over all its namespaces (0 = no limit). Past
    /// it (and its burst) an event is refused: its ack gets `rate_limited`, and it is not
    /// handled. Default 0.
    pub events_per_second: u32,
    /// Events a connection may send at once above its rate. Default 0 (the rate itself).
    pub event_burst: u32,
    /// Events refused within 10 s after which the connection is closed (`rate limited`, not
    /// recoverable). 0 = never. Default 0.
    pub rate_limit_disconnect: u32,
    /// Engine.IO sessions one client address may have open (0 = no limit). Default 0.
    pub max_sessions_per_ip: usize,
    /// Handshakes one client address may make per second, with as many at once (0 = no limit).
    /// Default 0.
    pub handshakes_per_ip_per_second: u32,
    /// Whether the per-address limits spare loopback clients, which behind a local reverse
    /// proxy are every client. Default false.
    pub exempt_loopback: bool,
    /// Sockets one identity (JWT subject) may have at once (0 = no limit). Default 0.
    pub max_sockets_per_sub: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: "/socket.io/".into(),
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
            connect_timeout: Duration::from_millis(45_000),
            upgrade_timeout: Duration::from_millis(10_000),
            polling: true,
            websocket: true,
            max_buffered_packets: 1024,
            ack_timeout: Duration::from_secs(10),
            cors: Cors::default(),
            recovery: false,
            max_sessions: 0,
            max_namespaces_per_connection: 32,
            max_namespaces: 10_000,
            metrics: true,
            max_subscriptions_per_socket: 100,
            events_per_second: 0,
            event_burst: 0,
            rate_limit_disconnect: 0,
            max_sessions_per_ip: 0,
            handshakes_per_ip_per_second: 0,
            exempt_loopback: false,
            max_sockets_per_sub: 0,
        }
    }
}

/// Cross-origin resource sharing for long-polling requests.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// Allowed origins: empty sends no CORS headers, `"*"` allows any origin.
    pub origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (the origin is then echoed, never `*`).
    pub credentials: bool,
}

/// Why a [`Config`] cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting is out of range.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Config {
    /// Checks the settings once, before serving.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason| Err(ConfigError::Invalid { name, reason });
        if !self.path.starts_with('/') {
            return invalid("path", "must start with /");
        }
        if !self.polling && !self.websocket {
            return invalid("transports", "at least one transport is needed");
        }
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return invalid("ping_interval/ping_timeout", "must be positive");
        }
        if self.max_payload < 16 {
            return invalid("max_payload", "must be at least 16 bytes");
        }
        if self.max_buffered_packets == 0 {
            return invalid("max_buffered_packets", "must be positive");
        }
        Ok(())
    }
}
