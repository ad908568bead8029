//! The bench protocol on the Courier library, as every compared server implements it: `echo`
//! is acknowledged with its own arguments; `broadcast` sends `message` with the same arguments to
//! every connected client. Durable streams (`courier:publish`, `courier:subscribe`) are on, in a
//! SQLite store. Runs until the process is killed.

use std::path::PathBuf;

use anyhow::{Context, bail};
use courier_server::store::{Store, StoreOptions, SyncPolicy};
use courier_server::{Config, Io, Setup};
use tokio::net::TcpListener;

pub async fn run(
    listen: String,
    data_dir: Option<PathBuf>,
    sync: String,
    metrics: bool,
) -> anyhow::Result<()> {
    let sync = match sync.as_str() {
        "always" => SyncPolicy::Always,
        "interval" => SyncPolicy::Interval,
        other => bail!("unknown sync policy {other:?}: expected always or interval"),
    };
    let dir = data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("courier-bench-hub-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("courier.db");
    let store = Store::sqlite(&path, sync, StoreOptions::default())
        .with_context(|| format!("opening {}", path.display()))?;

    let config = Config {
        metrics,
        ..Config::default()
    };
    let io = Io::with_store(config, store);
    io.of("/").on_connect(|socket| async move {
        socket.on("echo", |_, mut msg| async move {
            let payload = std::mem::take(&mut msg.payload);
            let _ = msg.ack_payload(payload);
        });
        socket.on("broadcast", |socket, mut msg| async move {
            let payload = std::mem::take(&mut msg.payload);
            let _ = socket.ns().broadcast().emit_payload("message", payload);
        });
    });

    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!(
        "courier bench hub listening on http://{} (store {})",
        listener.local_addr()?,
        dir.display()
    );
    courier_server::serve(listener, io.service(), std::future::pending()).await?;
    Ok(())
}
