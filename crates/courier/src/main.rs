//! `courier`: the hub and its command-line tools.
//!
//! - `settings`: defaults, config file, environment and flags, validated once.
//! - `hub`: what clients may do on a hub with no code (namespaces, auth, rooms, relay).
//! - `api`: the HTTP API backends use (health, emit, disconnect, sockets).
//! - `observe`: `/metrics`, the Socket.IO admin UI's namespace, the dashboard at `/dashboard/`.
//! - `cli`: the client commands (emit, publish, listen, streams), on `courier-client`.

mod alloc;
mod api;
mod cli;
mod hub;
mod observe;
mod settings;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use courier_server::Io;
use courier_server::store::{Store, SyncPolicy};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use settings::{Overrides, Settings};

#[derive(Parser)]
#[command(name = "courier", version, about = "A Socket.IO event hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: Socket.IO endpoint and HTTP API on one port.
    Serve {
        /// TOML config file (see docs/serve.md).
        #[arg(long, env = "COURIER_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:3000 (port 0 picks a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Directory for what the hub keeps on disk.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Log filter, e.g. info, debug, courier_server=trace.
        #[arg(long)]
        log: Option<String>,
        /// Join the cluster on this Redis, e.g. redis://127.0.0.1:6379 (see docs/cluster.md).
        #[arg(long)]
        redis: Option<String>,
        /// Serve the Socket.IO admin UI's built files (ui/dist of @socket.io/admin-ui) from
        /// this directory at /admin/ (see docs/observe.md).
        #[arg(long)]
        admin_ui: Option<PathBuf>,
    },
    /// Send an event to the hub's clients, through a socket or the HTTP API.
    Emit(cli::emit::Args),
    /// Publish entries to a durable stream.
    Publish(cli::publish::Args),
    /// Print events and durable deliveries as JSON lines.
    Listen(cli::listen::Args),
    /// List, inspect and purge durable streams.
    Streams(cli::streams::Args),
    /// Load generator and benchmark hub (see bench/README.md).
    Bench(courier_bench::Args),
}

fn main() -> anyhow::Result<()> {
    alloc::tune();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => courier_bench::run(args),
        Command::Serve {
            config,
            listen,
            data_dir,
            log,
            redis,
            admin_ui,
        } => {
            let flags = Overrides {
                listen,
                data_dir,
                log,
                redis,
                admin_ui,
            };
            let settings = Settings::load(config.as_deref(), std::env::vars(), flags)?;
            init_logging(&settings.server.log)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(settings))
        }
        Command::Emit(args) => cli::emit::run(args),
        Command::Publish(args) => cli::publish::run(args),
        Command::Listen(args) => cli::listen::run(args),
        Command::Streams(args) => cli::streams::run(args),
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let mut filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    // On a Redis Cluster, the redis crate logs each failed reconnection (tens a second while
    // Redis is away); the node says once that Redis is away and once that it is back. A filter
    // that names the crate decides for itself.
    if !filter.contains("redis") {
        filter.push_str(",redis::cluster_handling=off");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        // `[::]` where the machine has no IPv6: the IPv4 wildcard serves the same purpose.
        Err(e) if addr.starts_with("[::]:") => {
            let v4 = addr.replacen("[::]", "0.0.0.0", 1);
            tracing::warn!(error = %e, "IPv6 unavailable, listening on {v4}");
            TcpListener::bind(&v4)
                .await
                .with_context(|| format!("binding {v4}"))
        }
        Err(e) => Err(e).with_context(|| format!("binding {addr}")),
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let data_dir = &settings.server.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;

    let config = settings.server_config();
    let store = open_store(&settings)?;
    let clustered = !settings.cluster.redis_url.is_empty();
    // On a cluster, durable streams live in Redis (created there once it answers); the
    // node's store keeps only what recovery needs when there is no Redis.
    if !clustered {
        for def in &settings.stream {
            store
                .create_stream(&def.name, def.config.clone())
                .await
                .with_context(|| format!("creating stream {:?}", def.name))?;
        }
    }
    let io = if clustered {
        Io::with_recovery_store(config.clone(), store.clone())
    } else {
        Io::with_store(config.clone(), store.clone())
    };
    let verifier = settings.auth.verifier()?.map(std::sync::Arc::new);
    hub::install(
        &io,
        &settings.hub,
        hub::Gate::new(&settings, verifier.clone()),
    )?;
    let listener = bind(&settings.server.listen).await?;
    let addr = listener.local_addr()?;
    let cluster = if clustered {
        let options = courier_cluster::Options {
            url: settings.cluster.redis_url.clone(),
            key: settings.cluster.key.clone(),
            requests_timeout: Duration::from_millis(settings.cluster.requests_timeout_ms),
            advertise: Some(advertise_url(&settings.cluster.advertise_url, addr)?),
            recovery: settings
                .recovery
                .enabled
                .then(|| courier_cluster::RecoveryOptions {
                    window: Duration::from_millis(settings.recovery.window_ms),
                    max_events: settings.recovery.max_events,
                }),
        };
        let cluster = courier_cluster::Cluster::start(&io, options)?;
        cluster.serve_streams(courier_cluster::StreamOptions {
            store: settings.store_options(),
            declared: settings
                .stream
                .iter()
                .map(|d| (d.name.clone(), d.config.clone()))
                .collect(),
            wait_replicas: settings.cluster.wait_replicas,
            wait_timeout: Duration::from_millis(settings.cluster.wait_timeout_ms),
        });
        Some(cluster)
    } else {
        None
    };
    let api_auth = || api::ApiAuth {
        token: settings.api.token.clone(),
        verifier: verifier.clone(),
        loopback_only: settings.protected().1,
    };
    let app = api::router(io.clone(), cluster.clone(), api_auth(), config.max_payload);
    let admin = settings.admin.enabled.then(|| {
        let node = cluster.as_ref().map(|c| c.status().node);
        observe::admin::install(&io, &settings.admin, node)
    });
    let app = observe::routes(&io, cluster.as_ref(), &settings, |r| {
        api::behind_token(r, io.clone(), cluster.clone(), api_auth())
    })
    .merge(app);

    let what = match settings.protected() {
        (true, true) => Some("clients and API calls"),
        (true, false) => Some("clients"),
        (false, true) => Some("API calls"),
        (false, false) => None,
    };
    if let Some(what) = what {
        eprintln!(
            "courier: PROTECTED MODE: no authentication is configured, so only {what} from this \
             machine are accepted. To accept others, configure [auth] (docs/auth.md), or open up \
             on purpose with `[auth] allow_anonymous = true` (env COURIER_AUTH_ALLOW_ANONYMOUS=true)."
        );
    }
    // Printed whatever the log level, after the protected-mode warning: scripts and tests wait
    // for this line.
    eprintln!("courier listening on http://{addr}");
    tracing::info!(
        data_dir = %data_dir.display(),
        path = config.path,
        namespaces = ?settings.hub.namespaces,
        store = settings.store.backend,
        sync = settings.store.sync,
        recovery = settings.recovery.enabled,
        max_connections = settings.server.max_connections,
        max_disk_bytes = settings.store.max_disk_bytes,
        cluster = cluster.as_ref().map(|c| c.status().node),
        jwt = settings.auth.jwt(),
        "hub ready"
    );

    let stop = CancellationToken::new();
    let server = tokio::spawn(courier_server::serve_with(
        listener,
        app,
        courier_server::ServeOptions::default()
            .max_connections(settings.server.max_connections)
            .stats(io.stats_handle()),
        stop.clone().cancelled_owned(),
    ));
    shutdown_signal().await;
    tracing::info!("shutting down: closing connections");
    stop.cancel();
    let grace = Duration::from_millis(settings.server.shutdown_grace_ms);
    io.shutdown(grace).await;
    if let Some(c) = &cluster {
        c.flush(grace).await;
    }
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined.context("server task")??,
        Err(_) => tracing::warn!("some HTTP requests were still open after the grace period"),
    }
    if let Some(a) = admin {
        a.abort();
    }
    store.close().await.context("flushing the store")?;
    tracing::info!("stopped");
    Ok(())
}

/// Where the other nodes of a cluster reach this one.
fn advertise_url(setting: &str, addr: std::net::SocketAddr) -> anyhow::Result<http::Uri> {
    if !setting.is_empty() {
        return setting
            .parse()
            .with_context(|| format!("cluster.advertise_url: {setting:?}"));
    }
    let ip = if addr.ip().is_unspecified() {
        tracing::warn!(
            "cluster.advertise_url not set: other nodes reach this one at 127.0.0.1, which only works on one machine"
        );
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    Ok(format!("http://{}", std::net::SocketAddr::new(ip, addr.port())).parse()?)
}

fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let options = settings.store_options();
    if settings.store.backend == "memory" {
        return Ok(Store::memory(options));
    }
    let path = settings.server.data_dir.join("courier.db");
    let sync = if settings.store.sync == "interval" {
        SyncPolicy::Interval
    } else {
        SyncPolicy::Always
    };
    Store::sqlite(&path, sync, options).with_context(|| format!("opening {}", path.display()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
