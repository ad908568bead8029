//! The `[metrics]`, `[admin]` and `[dashboard]` sections of `courier serve`'s settings.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Count what the hub does and serve it at `GET /metrics`. Off: nothing is counted and
    /// `/metrics` is 404.
    pub enabled: bool,
    /// Most consumers reported one by one (those with the most entries waiting and pending);
    /// the others of each stream are summed under `consumer="_other"`.
    pub max_consumer_series: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            max_consumer_series: 1000,
        }
    }
}

/// `[admin]`: the server side of the Socket.IO admin UI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Serve the admin UI's namespace.
    pub enabled: bool,
    /// The namespace the UI connects to.
    pub namespace: String,
    /// The UI's login name.
    pub username: String,
    /// A bcrypt hash of the UI's password (`$2a$`, `$2b$` or `$2y$`).
    pub password_hash: String,
    /// No login at all: anyone who reaches the hub may watch it (and, unless `readonly`, act
    /// on its sockets). Must be said explicitly.
    pub no_auth: bool,
    /// The UI may only watch: no emit, join, leave or disconnect.
    pub readonly: bool,
    /// `development` sends every socket and event to the UI; `production` only aggregated
    /// numbers, which costs nothing per event.
    pub mode: String,
    /// The id this node reports; empty: the host name (and, on a cluster, the node id).
    pub server_id: String,
    /// A directory with the UI's built files (`ui/dist` of the npm package
    /// `@socket.io/admin-ui`), served at `/admin/`. Empty: not served.
    pub ui_dir: PathBuf,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            enabled: false,
            namespace: "/admin".into(),
            username: "admin".into(),
            password_hash: String::new(),
            no_auth: false,
            readonly: false,
            mode: "development".into(),
            server_id: String::new(),
            ui_dir: PathBuf::new(),
        }
    }
}

/// `[dashboard]`: Courier's own page for streams and consumers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dashboard {
    /// Serve the dashboard at `/dashboard/`.
    pub enabled: bool,
}

/// Checks the three sections.
pub fn validate(admin: &Admin) -> anyhow::Result<()> {
    let enabled = admin.enabled || !admin.ui_dir.as_os_str().is_empty();
    if !enabled {
        return Ok(());
    }
    if !admin.namespace.starts_with('/') {
        bail!("admin.namespace: {:?} must start with /", admin.namespace);
    }
    if !matches!(admin.mode.as_str(), "development" | "production") {
        bail!(
            "admin.mode: {:?} (expected development or production)",
            admin.mode
        );
    }
    if admin.enabled && !admin.no_auth {
        if admin.password_hash.is_empty() {
            bail!(
                "admin.password_hash: the admin UI needs a bcrypt hash of its password \
                 (or admin.no_auth = true to serve it without a login)"
            );
        }
        admin
            .password_hash
            .parse::<bcrypt::HashParts>()
            .ok()
            .context("admin.password_hash: not a bcrypt hash")?;
    }
    if !admin.ui_dir.as_os_str().is_empty() && !admin.ui_dir.join("index.html").is_file() {
        bail!(
            "admin.ui_dir: {} has no index.html (expected the ui/dist directory of @socket.io/admin-ui)",
            admin.ui_dir.display()
        );
    }
    Ok(())
}
