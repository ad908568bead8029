//! Client settings, each with the default socket.io-client uses where it has one.

use std::time::Duration;

use rand::Rng;

use crate::error::{Error, Result};

/// Settings of a [`crate::Client`]. Change fields of `Config::default()`, then hand it to
/// [`crate::Client::connect_with`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the server's Engine.IO endpoint. Default `/socket.io/`.
    pub path: String,
    /// Extra query parameters sent with the WebSocket request (`EIO` and `transport` are
    /// always sent). Default none.
    pub query: Vec<(String, String)>,
    /// Automatic reconnection after the connection is lost.
    pub reconnect: Reconnect,
    /// Time to open the WebSocket and receive the handshake, and for a namespace to answer a
    /// CONNECT. Default 20 s.
    pub connect_timeout: Duration,
    /// Time to wait for the answer to `subscribe`, `unsubscribe` and `publish`. Default 30 s.
    pub request_timeout: Duration,
    /// Packets that may wait in the connection's outbound queue; an emit waits for room.
    /// Default 1024.
    pub queue_capacity: usize,
    /// Emits a socket keeps while it is not connected, sent once it is. Default 1024.
    pub buffer_capacity: usize,
    /// Deliveries a subscription holds for the application. A delivery that finds it full is
    /// dropped unacknowledged, so the server sends it again later. Default 1024.
    pub subscription_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: "/socket.io/".into(),
            query: Vec::new(),
            reconnect: Reconnect::default(),
            connect_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
            queue_capacity: 1024,
            buffer_capacity: 1024,
            subscription_capacity: 1024,
        }
    }
}

/// Reconnection with exponential backoff: attempt `n` (from 0) waits
/// `min(initial_delay * 2^n, max_delay)`, moved up or down by a random part of at most
/// `jitter` of itself, as socket.io-client does.
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// Reconnect at all. Default true.
    pub enabled: bool,
    /// Wait before the first attempt. Default 1 s.
    pub initial_delay: Duration,
    /// Longest wait between attempts. Default 5 s.
    pub max_delay: Duration,
    /// Attempts in a row before giving up; `None` tries forever. Default `None`.
    pub max_attempts: Option<u32>,
    /// Randomization factor in `0.0..=1.0`. Default 0.5.
    pub jitter: f64,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            enabled: true,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            max_attempts: None,
            jitter: 0.5,
        }
    }
}

impl Reconnect {
    /// The wait before attempt `attempt` (0 for the first one).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial_delay.as_secs_f64() * 2f64.powi(attempt.min(62) as i32);
        let mut secs = base;
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter > 0.0 {
            let mut rng = rand::rng();
            let deviation = rng.random::<f64>() * jitter * base;
            if rng.random::<bool>() {
                secs += deviation;
            } else {
                secs -= deviation;
            }
        }
        Duration::from_secs_f64(secs.min(self.max_delay.as_secs_f64()).max(0.0))
    }
}

/// Where the client connects: host, port and the WebSocket request target.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The URL as the user gave it, for messages.
    pub url: String,
    /// `ws://host:port/path?EIO=4&transport=websocket...`
    pub ws_uri: http::Uri,
}

impl Endpoint {
    /// Parses `http://host:port` (or `ws://`); the path must be empty or `/`.
    pub fn parse(url: &str, config: &Config) -> Result<Endpoint> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http" | "ws") => {}
            Some("https" | "wss") => return Err(bad("TLS is not supported; use http://")),
            Some(_) => return Err(bad("the scheme must be http:// or ws://")),
            None => return Err(bad("missing scheme, e.g. http://127.0.0.1:3000")),
        }
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        if authority.host().is_empty() {
            return Err(bad("missing host"));
        }
        if !matches!(uri.path(), "" | "/") {
            return Err(bad(
                "a URL path is not a namespace here: use Client::socket(namespace), and \
                 Config::path for the Engine.IO path",
            ));
        }
        let mut path = config.path.clone();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let mut target = format!("ws://{authority}{path}?EIO=4&transport=websocket");
        for (k, v) in &config.query {
            target.push('&');
            target.push_str(&percent_encode(k));
            target.push('=');
            target.push_str(&percent_encode(v));
        }
        let ws_uri = target.parse().map_err(|e| bad(&format!("{e}")))?;
        Ok(Endpoint {
            url: url.to_owned(),
            ws_uri,
        })
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_builds_the_websocket_target() {
        let mut config = Config::default();
        config.query.push(("a b".into(), "é".into()));
        let e = Endpoint::parse("http://127.0.0.1:3000", &config).unwrap();
        assert_eq!(
            e.ws_uri.to_string(),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket&a%20b=%C3%A9"
        );
        assert!(Endpoint::parse("https://x", &config).is_err());
        assert!(Endpoint::parse("127.0.0.1:3000", &config).is_err());
        assert!(Endpoint::parse("http://x/admin", &config).is_err());
        assert!(Endpoint::parse("http://x/", &config).is_ok());
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let r = Reconnect {
            jitter: 0.0,
            ..Reconnect::default()
        };
        assert_eq!(r.delay(0), Duration::from_secs(1));
        assert_eq!(r.delay(1), Duration::from_secs(2));
        assert_eq!(r.delay(2), Duration::from_secs(4));
        assert_eq!(r.delay(3), Duration::from_secs(5));
        assert_eq!(r.delay(1000), Duration::from_secs(5));
        let r = Reconnect::default();
        for attempt in 0..10 {
            let d = r.delay(attempt);
            let base = (1u64 << attempt.min(10)) as f64;
            assert!(d.as_secs_f64() >= (base * 0.5).min(5.0) - 1e-9, "{d:?}");
            assert!(d <= Duration::from_secs(5));
        }
    }
}
