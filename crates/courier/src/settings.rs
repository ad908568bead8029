//! `courier serve` settings: defaults, then the config file, then `COURIER_*` environment
//! variables, then flags. Every field here is documented in docs/serve.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// All settings of `courier serve`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: Server,
    pub engine: Engine,
    pub cors: Cors,
    pub hub: Hub,
    pub api: Api,
    pub store: StoreSettings,
    pub recovery: Recovery,
    pub streams: Streams,
    pub cluster: Cluster,
    pub auth: Auth,
    pub limits: Limits,
    /// Streams created at start-up (`[[stream]]` tables).
    pub stream: Vec<StreamDef>,
    pub metrics: crate::observe::settings::Metrics,
    pub admin: crate::observe::settings::Admin,
    pub dashboard: crate::observe::settings::Dashboard,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite` (in `data_dir`) or `memory` (nothing survives a restart).
    pub backend: String,
    /// `always`: every publish is fsynced before it is confirmed. `interval`: fsync every
    /// `sync_interval_ms`; faster, and a power loss can lose the last interval.
    pub sync: String,
    pub sync_interval_ms: u64,
    /// Largest entry a publisher may store (event + data + id), in bytes.
    pub max_entry_bytes: usize,
    /// Bytes of entries kept across all streams; a publish past it is refused (0 = no limit).
    pub max_disk_bytes: u64,
    /// Most streams; creating one more is refused (0 = no limit).
    pub max_streams: usize,
    /// Bytes of recent entries kept in memory across all streams for live delivery.
    pub tail_memory_bytes: u64,
    /// Bytes of publishes waiting for their commit; past it publishers wait.
    pub max_queued_bytes: u64,
    /// Most consumers across all streams; creating one more is refused (0 = no limit).
    pub max_consumers: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        let d = courier_server::store::StoreOptions::default();
        StoreSettings {
            backend: "sqlite".into(),
            sync: "always".into(),
            sync_interval_ms: 100,
            max_entry_bytes: d.max_entry_bytes,
            max_disk_bytes: d.max_disk_bytes,
            max_streams: d.max_streams,
            tail_memory_bytes: d.tail_memory_bytes,
            max_queued_bytes: d.max_queued_bytes,
            max_consumers: d.max_consumers,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// `redis://[user:password@]host:port[/db]`: this node is one of many on that Redis.
    /// Empty: a single node.
    pub redis_url: String,
    /// Prefix of the Redis channels; Node's `@socket.io/redis-adapter` uses `socket.io`.
    pub key: String,
    /// How long an operation on every node waits at most for the others' answers.
    pub requests_timeout_ms: u64,
    /// Where the other nodes reach this one, e.g. `http://10.0.0.5:3000`, to forward the
    /// requests of clients whose session is here. Empty: `http://` and the listening address
    /// (127.0.0.1 when listening on every interface).
    pub advertise_url: String,
    /// Replicas of Redis that must have a publish before it is confirmed (`WAIT`); 0: the
    /// primary alone.
    pub wait_replicas: u32,
    /// Longest wait for them; a publish they did not confirm in time answers `unavailable`.
    pub wait_timeout_ms: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            redis_url: String::new(),
            key: "socket.io".into(),
            requests_timeout_ms: 5000,
            advertise_url: String::new(),
            wait_replicas: 0,
            wait_timeout_ms: 1000,
        }
    }
}

/// Who may connect and what they may touch (docs/auth.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// HMAC secret for HS256/384/512 tokens.
    pub jwt_secret: String,
    /// PEM public key for RS*, PS*, ES* or EdDSA tokens.
    pub jwt_public_key_file: String,
    /// A JWKS document; a token's `kid` picks the key.
    pub jwks_file: String,
    /// Required `iss`, when set.
    pub issuer: String,
    /// Required `aud`, when set.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_ms: u64,
    /// With no authentication configured, accept clients and API calls from other machines
    /// too (protected mode off).
    pub allow_anonymous: bool,
    /// Grants of a token without a `courier` claim; `{sub}` is the token's subject.
    pub default: courier_server::auth::GrantSpec,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            jwt_secret: String::new(),
            jwt_public_key_file: String::new(),
            jwks_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_ms: 5000,
            allow_anonymous: false,
            default: Default::default(),
        }
    }
}

impl Auth {
    /// Whether JSON Web Tokens are accepted.
    pub fn jwt(&self) -> bool {
        !(self.jwt_secret.is_empty()
            && self.jwt_public_key_file.is_empty()
            && self.jwks_file.is_empty())
    }

    /// The verifier these settings describe, if tokens are accepted.
    pub fn verifier(&self) -> anyhow::Result<Option<courier_server::auth::JwtVerifier>> {
        if !self.jwt() {
            return Ok(None);
        }
        let read = |what: &str, path: &str| -> anyhow::Result<Option<Vec<u8>>> {
            if path.is_empty() {
                return Ok(None);
            }
            std::fs::read(path)
                .map(Some)
                .with_context(|| format!("auth.{what}: reading {path}"))
        };
        let jwks = read("jwks_file", &self.jwks_file)?
            .map(String::from_utf8)
            .transpose()
            .context("auth.jwks_file: not UTF-8")?;
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let options = courier_server::auth::JwtOptions {
            secret: nonempty(&self.jwt_secret).map(String::into_bytes),
            public_key_pem: read("jwt_public_key_file", &self.jwt_public_key_file)?,
            jwks_json: jwks,
            issuer: nonempty(&self.issuer),
            audience: nonempty(&self.audience),
            leeway: Duration::from_millis(self.leeway_ms),
            default_grants: self.default.clone(),
        };
        let verifier = courier_server::auth::JwtVerifier::new(options)
            .map_err(|e| anyhow::anyhow!("[auth]: {e}"))?;
        // A template that cannot compile would refuse every token without a `courier` claim.
        self.default
            .compile(Some("subject"))
            .map_err(|e| anyhow::anyhow!("[auth.default]: {e}"))?;
        Ok(Some(verifier))
    }
}

/// What one client may do, so that none can starve the others (docs/serve.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Events per second one connection may send (0 = no limit).
    pub events_per_second: u32,
    /// Events a connection may send at once above its rate.
    pub event_burst: u32,
    /// Refused events within 10 s after which the connection is closed (0 = never).
    pub rate_limit_disconnect: u32,
    /// Connections open at once from one address (0 = no limit).
    pub connections_per_ip: usize,
    /// Handshakes per second from one address (0 = no limit).
    pub handshakes_per_ip_per_second: u32,
    /// Sockets one token subject may have at once (0 = no limit).
    pub connections_per_sub: usize,
    /// Durable subscriptions one socket may hold (0 = no limit).
    pub subscriptions_per_socket: usize,
    /// The per-address limits spare loopback clients (a local reverse proxy is every client).
    pub exempt_loopback: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            events_per_second: 1000,
            event_burst: 2000,
            rate_limit_disconnect: 5000,
            connections_per_ip: 1000,
            handshakes_per_ip_per_second: 50,
            connections_per_sub: 100,
            subscriptions_per_socket: 100,
            exempt_loopback: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recovery {
    /// Connection state recovery for socket.io-client >= 4.6.
    pub enabled: bool,
    /// How long a lost session can be recovered.
    pub window_ms: u64,
    /// Most broadcasts kept for recovery.
    pub max_events: usize,
    /// Most bytes of broadcasts kept for recovery, on disk and in memory.
    pub max_bytes: u64,
    /// Bytes of the newest broadcasts kept in memory; older ones are read from disk.
    pub memory_bytes: u64,
}

impl Default for Recovery {
    fn default() -> Self {
        let d = courier_server::store::StoreOptions::default();
        Recovery {
            enabled: true,
            window_ms: 120_000,
            max_events: 100_000,
            max_bytes: d.max_recovery_bytes,
            memory_bytes: d.recovery_memory_bytes,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Streams {
    /// Create a stream on its first publish or subscribe.
    pub auto_create: bool,
    /// Retention and dedupe of auto-created streams (0 = no limit).
    pub max_age_ms: u64,
    pub max_entries: u64,
    pub max_bytes: u64,
    pub dedupe_window_ms: u64,
    /// At `max_entries`/`max_bytes`: `old` drops the oldest entries, `new` refuses publishes.
    pub discard: courier_server::store::Discard,
}

impl Default for Streams {
    fn default() -> Self {
        let d = courier_server::store::StreamConfig::default();
        Streams {
            auto_create: true,
            max_age_ms: d.max_age_ms,
            max_entries: d.max_entries,
            max_bytes: AUTO_STREAM_MAX_BYTES,
            dedupe_window_ms: d.dedupe_window_ms,
            discard: d.discard,
        }
    }
}

/// `max_bytes` of an auto-created stream: any client may create one, so none is unbounded.
const AUTO_STREAM_MAX_BYTES: u64 = 1 << 30;

impl Streams {
    pub fn default_config(&self) -> courier_server::store::StreamConfig {
        courier_server::store::StreamConfig {
            max_age_ms: self.max_age_ms,
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            dedupe_window_ms: self.dedupe_window_ms,
            dead_letter: None,
            discard: self.discard,
        }
    }
}

/// A stream declared in the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDef {
    pub name: String,
    #[serde(flatten)]
    pub config: courier_server::store::StreamConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    /// Address to listen on; `[::]` also accepts IPv4 and falls back to 0.0.0.0 without IPv6.
    pub listen: String,
    /// Where the hub keeps what it stores.
    pub data_dir: PathBuf,
    /// Engine.IO endpoint path.
    pub path: String,
    /// Time given to connections to close on shutdown.
    pub shutdown_grace_ms: u64,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log: String,
    /// TCP connections open at once (and Engine.IO sessions, counted apart); past it a new
    /// one is answered 503. 0 = no limit.
    pub max_connections: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "[::]:3000".into(),
            data_dir: "courier-data".into(),
            path: "/socket.io/".into(),
            shutdown_grace_ms: 5000,
            log: "info".into(),
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Engine {
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub max_payload: usize,
    pub connect_timeout_ms: u64,
    pub upgrade_timeout_ms: u64,
    pub transports: Vec<String>,
    pub max_buffered_packets: usize,
    pub max_namespaces_per_connection: usize,
    pub max_namespaces: usize,
}

impl Default for Engine {
    fn default() -> Self {
        let d = courier_server::Config::default();
        Engine {
            ping_interval_ms: d.ping_interval.as_millis() as u64,
            ping_timeout_ms: d.ping_timeout.as_millis() as u64,
            max_payload: d.max_payload,
            connect_timeout_ms: d.connect_timeout.as_millis() as u64,
            upgrade_timeout_ms: d.upgrade_timeout.as_millis() as u64,
            transports: vec!["polling".into(), "websocket".into()],
            max_buffered_packets: d.max_buffered_packets,
            max_namespaces_per_connection: d.max_namespaces_per_connection,
            max_namespaces: d.max_namespaces,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cors {
    pub origins: Vec<String>,
    pub credentials: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hub {
    pub namespaces: Vec<String>,
    pub namespace_patterns: Vec<String>,
    pub auth_tokens: Vec<String>,
    pub client_rooms: bool,
    pub client_relay: bool,
    /// Clients may publish to streams with `courier:publish`.
    pub client_publish: bool,
    /// Clients may subscribe to streams with `courier:subscribe`.
    pub client_subscribe: bool,
    /// Rooms one socket may be in through `courier:join` (its own id not counted; 0 = no limit).
    pub max_rooms_per_socket: usize,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            namespaces: vec!["/".into()],
            namespace_patterns: Vec::new(),
            auth_tokens: Vec::new(),
            client_rooms: true,
            client_relay: true,
            client_publish: true,
            client_subscribe: true,
            max_rooms_per_socket: 1000,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Api {
    /// When set, the HTTP API requires `Authorization: Bearer <token>`.
    pub token: String,
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log: Option<String>,
    pub redis: Option<String>,
    pub admin_ui: Option<PathBuf>,
}

impl Settings {
    /// Reads the file (if any), applies `env` (`COURIER_<SECTION>_<KEY>` pairs) and `flags`, and
    /// checks the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: Overrides,
    ) -> anyhow::Result<Settings> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let defaults = toml::Table::try_from(Settings::default()).expect("defaults serialize");
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("COURIER_") else {
                continue;
            };
            let (section, key) = rest
                .split_once('_')
                .map(|(s, k)| (s.to_ascii_lowercase(), k.to_ascii_lowercase()))
                .unwrap_or_default();
            let Some(default) = defaults.get(&section).and_then(|s| s.get(&key)) else {
                // Not a setting (COURIER_BIN and the like belong to other tools).
                continue;
            };
            let parsed = parse_like(default, &value)
                .with_context(|| format!("environment variable {name}={value:?}"))?;
            table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .with_context(|| format!("config section for {name} is not a table"))?
                .insert(key, parsed);
        }
        let mut settings: Settings = table.try_into().context("invalid configuration")?;
        if let Some(l) = flags.listen {
            settings.server.listen = l;
        }
        if let Some(d) = flags.data_dir {
            settings.server.data_dir = d;
        }
        if let Some(l) = flags.log {
            settings.server.log = l;
        }
        if let Some(r) = flags.redis {
            settings.cluster.redis_url = r;
        }
        if let Some(d) = flags.admin_ui {
            settings.admin.ui_dir = d;
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        for t in &self.engine.transports {
            if t != "polling" && t != "websocket" {
                bail!("engine.transports: unknown transport {t:?} (expected polling or websocket)");
            }
        }
        for ns in &self.hub.namespaces {
            if !ns.starts_with('/') {
                bail!("hub.namespaces: {ns:?} must start with /");
            }
        }
        for p in &self.hub.namespace_patterns {
            regex::Regex::new(p).with_context(|| format!("hub.namespace_patterns: {p:?}"))?;
        }
        if !matches!(self.store.backend.as_str(), "sqlite" | "memory") {
            bail!(
                "store.backend: {:?} (expected sqlite or memory)",
                self.store.backend
            );
        }
        if !matches!(self.store.sync.as_str(), "always" | "interval") {
            bail!(
                "store.sync: {:?} (expected always or interval)",
                self.store.sync
            );
        }
        if self.store.sync == "interval" && self.store.sync_interval_ms == 0 {
            bail!("store.sync_interval_ms must be positive");
        }
        for s in &self.stream {
            courier_server::store::check_name(&s.name)
                .map_err(|e| anyhow::anyhow!("[[stream]]: {e}"))?;
        }
        crate::observe::settings::validate(&self.admin)?;
        self.server_config().validate()?;
        self.auth.verifier()?;
        Ok(())
    }

    /// The store settings these settings describe.
    pub fn store_options(&self) -> courier_server::store::StoreOptions {
        courier_server::store::StoreOptions {
            auto_create: self.streams.auto_create,
            default_stream: self.streams.default_config(),
            max_entry_bytes: self.store.max_entry_bytes,
            recovery_window: Duration::from_millis(self.recovery.window_ms),
            max_recovery_events: self.recovery.max_events,
            max_recovery_bytes: self.recovery.max_bytes,
            recovery_memory_bytes: self.recovery.memory_bytes,
            tail_memory_bytes: self.store.tail_memory_bytes,
            max_disk_bytes: self.store.max_disk_bytes,
            max_streams: self.store.max_streams,
            max_queued_bytes: self.store.max_queued_bytes,
            max_consumers: self.store.max_consumers,
            sync_interval: (self.store.sync == "interval")
                .then(|| Duration::from_millis(self.store.sync_interval_ms)),
        }
    }

    /// Whether clients must authenticate: static tokens or JWTs.
    pub fn client_auth(&self) -> bool {
        !self.hub.auth_tokens.is_empty() || self.auth.jwt()
    }

    /// Whether API calls must authenticate: the static API token or JWTs.
    pub fn api_auth(&self) -> bool {
        !self.api.token.is_empty() || self.auth.jwt()
    }

    /// Protected mode, for clients and for API calls: true where no authentication is
    /// configured and anonymous access was not allowed, so only loopback peers are served.
    pub fn protected(&self) -> (bool, bool) {
        let open = self.auth.allow_anonymous;
        (!open && !self.client_auth(), !open && !self.api_auth())
    }

    /// The library configuration these settings describe.
    pub fn server_config(&self) -> courier_server::Config {
        let e = &self.engine;
        let ms = Duration::from_millis;
        courier_server::Config {
            path: self.server.path.clone(),
            ping_interval: ms(e.ping_interval_ms),
            ping_timeout: ms(e.ping_timeout_ms),
            max_payload: e.max_payload,
            connect_timeout: ms(e.connect_timeout_ms),
            upgrade_timeout: ms(e.upgrade_timeout_ms),
            polling: e.transports.iter().any(|t| t == "polling"),
            websocket: e.transports.iter().any(|t| t == "websocket"),
            max_buffered_packets: e.max_buffered_packets,
            recovery: self.recovery.enabled,
            max_sessions: self.server.max_connections,
            max_namespaces_per_connection: e.max_namespaces_per_connection,
            max_namespaces: e.max_namespaces,
            max_subscriptions_per_socket: self.limits.subscriptions_per_socket,
            events_per_second: self.limits.events_per_second,
            event_burst: self.limits.event_burst,
            rate_limit_disconnect: self.limits.rate_limit_disconnect,
            max_sessions_per_ip: self.limits.connections_per_ip,
            handshakes_per_ip_per_second: self.limits.handshakes_per_ip_per_second,
            exempt_loopback: self.limits.exempt_loopback,
            max_sockets_per_sub: self.limits.connections_per_sub,
            cors: courier_server::Cors {
                origins: self.cors.origins.clone(),
                credentials: self.cors.credentials,
            },
            metrics: self.metrics.enabled,
            ..courier_server::Config::default()
        }
    }
}

/// Parses an environment value as the same TOML type as the setting's default.
fn parse_like(default: &toml::Value, raw: &str) -> anyhow::Result<toml::Value> {
    Ok(match default {
        toml::Value::Integer(_) => {
            toml::Value::Integer(raw.trim().parse().context("expected a whole number")?)
        }
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => bail!("expected true or false"),
        }),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        ),
        toml::Value::Table(_) => bail!("a table: set it in the config file"),
        _ => toml::Value::String(raw.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_reference_server() {
        let s = Settings::load(None, [], Overrides::default()).unwrap();
        let c = s.server_config();
        assert_eq!(c.ping_interval, Duration::from_millis(25_000));
        assert_eq!(c.ping_timeout, Duration::from_millis(20_000));
        assert_eq!(c.max_payload, 1_000_000);
        assert_eq!(s.server.listen, "[::]:3000");
        assert_eq!(s.hub.namespaces, vec!["/"]);
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("courier-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:1\"\n[engine]\nping_interval_ms = 100\nmax_payload = 500\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&file),
            env(&[
                ("COURIER_ENGINE_MAX_PAYLOAD", "600"),
                ("COURIER_HUB_AUTH_TOKENS", "a, b"),
                ("COURIER_HUB_CLIENT_RELAY", "false"),
                ("COURIER_BIN", "/not/a/setting"),
            ]),
            Overrides {
                listen: Some("127.0.0.1:2".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:2");
        assert_eq!(s.engine.ping_interval_ms, 100);
        assert_eq!(s.engine.max_payload, 600);
        assert_eq!(s.hub.auth_tokens, vec!["a", "b"]);
        assert!(!s.hub.client_relay);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        let err = Settings::load(
            None,
            env(&[("COURIER_ENGINE_PING_TIMEOUT_MS", "soon")]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("COURIER_ENGINE_PING_TIMEOUT_MS"),
            "{err:#}"
        );
        let err = Settings::load(
            None,
            env(&[("COURIER_ENGINE_TRANSPORTS", "carrier-pigeon")]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("carrier-pigeon"), "{err:#}");
        let err = Settings::load(
            None,
            env(&[("COURIER_HUB_NAMESPACE_PATTERNS", "(")]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("namespace_patterns"), "{err:#}");
    }

    #[test]
    fn protected_mode_is_judged_per_surface() {
        let load = |pairs: &[(&str, &str)]| Settings::load(None, env(pairs), Overrides::default());
        assert_eq!(load(&[]).unwrap().protected(), (true, true));
        assert_eq!(
            load(&[("COURIER_HUB_AUTH_TOKENS", "t")])
                .unwrap()
                .protected(),
            (false, true)
        );
        assert_eq!(
            load(&[("COURIER_API_TOKEN", "k")]).unwrap().protected(),
            (true, false)
        );
        let jwt = load(&[("COURIER_AUTH_JWT_SECRET", "s")]).unwrap();
        assert_eq!(jwt.protected(), (false, false));
        assert!(jwt.auth.verifier().unwrap().is_some());
        let open = load(&[("COURIER_AUTH_ALLOW_ANONYMOUS", "true")]).unwrap();
        assert_eq!(open.protected(), (false, false));
        assert_eq!(open.limits.events_per_second, 1000);
    }

    #[test]
    fn bad_auth_settings_are_named() {
        let err = Settings::load(
            None,
            env(&[("COURIER_AUTH_JWT_PUBLIC_KEY_FILE", "/no/such/key.pem")]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("jwt_public_key_file"),
            "{err:#}"
        );
        let err = Settings::load(
            None,
            env(&[("COURIER_AUTH_DEFAULT", "rooms")]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("config file"), "{err:#}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir =
            std::env::temp_dir().join(format!("courier-settings-typo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[engine]\nping_intervall_ms = 1\n").unwrap();
        let err = Settings::load(Some(&file), [], Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("ping_intervall_ms"), "{err:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
