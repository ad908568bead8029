//! What can go wrong, one enum for the whole client.

use serde_json::Value;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL cannot be used: not `http`/`ws`, no host, a path where none belongs...
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached, or refused the WebSocket upgrade.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// Where the client tried to connect.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The Engine.IO handshake was missing or malformed.
    #[error("bad handshake from the server: {0}")]
    Handshake(String),
    /// The server refused to let the socket join its namespace (CONNECT_ERROR).
    #[error("namespace {namespace:?} refused the connection: {message}")]
    Refused {
        /// The namespace.
        namespace: String,
        /// The server's `message`.
        message: String,
        /// The server's `data`, if any.
        data: Option<Value>,
    },
    /// No answer in time: a CONNECT, an acknowledgement or a request.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The connection was lost (or the socket left its namespace) before an answer came.
    #[error("disconnected before an answer arrived")]
    Disconnected,
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// Too many emits are waiting for the connection to come back.
    #[error("send buffer full ({0} packets wait for the connection)")]
    BufferFull(usize),
    /// The outbound queue is full (an acknowledgement sent from a handler could not be queued).
    #[error("outbound queue full")]
    QueueFull,
    /// A frame is larger than the server accepts.
    #[error("{size} bytes exceed the server's limit of {limit} bytes per message")]
    TooLarge {
        /// Size of the offending frame.
        size: usize,
        /// The server's `maxPayload`.
        limit: usize,
    },
    /// An acknowledgement for an event received on an earlier connection: its id means nothing
    /// to the server now. A durable delivery is sent again by the server.
    #[error("the event came on an earlier connection; its acknowledgement is void")]
    StaleAck,
    /// An event name that cannot be sent.
    #[error("invalid event name {0:?}")]
    InvalidEvent(String),
    /// A second consumer on a stream this socket already consumes.
    #[error("this socket already consumes {stream:?} as {consumer:?}")]
    AlreadySubscribed {
        /// The stream.
        stream: String,
        /// The consumer the socket uses for it.
        consumer: String,
    },
    /// The server answered a request with `{ok: false, error: {code, message}}`.
    #[error("{message} ({code})")]
    Server {
        /// Machine-readable code, e.g. `stream_not_found`.
        code: String,
        /// What went wrong.
        message: String,
    },
    /// The HTTP API answered with an error status.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code from the body, e.g. `not_found`.
        code: String,
        /// The error message from the body.
        message: String,
    },
    /// An HTTP request failed below the API (connection, protocol).
    #[error("HTTP request to {url} failed: {reason}")]
    Http {
        /// The request URL.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// An answer did not have the expected shape.
    #[error("unexpected answer: {0}")]
    BadAnswer(String),
    /// A value could not be converted to or from JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// The machine-readable code of a server or API error (`stream_not_found`, `not_found`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } | Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The `{ok: false, error}` answer of a reserved event as an error, or `None` when `ok`.
    pub(crate) fn from_answer(answer: &Value) -> Option<Error> {
        if answer.get("ok").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        let err = answer.get("error");
        let field = |k: &str| {
            err.and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let (code, message) = (field("code"), field("message"));
        if code.is_empty() && message.is_empty() {
            return Some(Error::BadAnswer(answer.to_string()));
        }
        Some(Error::Server { code, message })
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
