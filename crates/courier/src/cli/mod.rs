//! The command-line client: `courier emit`, `publish`, `listen` and `streams`, built on
//! `courier-client` (a Socket.IO connection, or the HTTP API).
//!
//! - `emit`: one event, through a socket (relayed by the hub to `--room`s) or `--http`.
//! - `publish`: entries for a durable stream over the HTTP API, one or in bulk.
//! - `listen`: prints events and durable deliveries as JSON lines, acking each after printing.
//! - `streams`: list, inspect and purge streams.
//!
//! Every command takes `--url` (env `COURIER_URL`) and `--token` (env `COURIER_TOKEN`), prints
//! for people by default and JSON with `--json`, and fails with a message on stderr and a
//! non-zero exit.

pub mod emit;
pub mod listen;
pub mod publish;
pub mod streams;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use courier_client::{ApiClient, Client, Config, Socket};
use serde_json::{Value, json};

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The hub, e.g. http://127.0.0.1:3000.
    #[arg(
        long,
        global = true,
        env = "COURIER_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub url: String,
    /// Token for the HTTP API (sent as a bearer token), also sent as `auth: {token}` when a
    /// command connects a socket.
    #[arg(long, global = true, env = "COURIER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Common {
    /// The HTTP API client.
    pub fn api(&self) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::new(&self.url, self.token.clone())?)
    }

    /// A connected socket of `namespace`, with the token as auth.
    pub async fn socket(&self, namespace: &str, config: Config) -> anyhow::Result<Socket> {
        let client = Client::connect_with(&self.url, config).await?;
        let socket = client.socket(namespace);
        if let Some(t) = &self.token {
            socket.set_auth(json!({"token": t}));
        }
        socket
            .connect()
            .await
            .with_context(|| format!("joining namespace {}", socket.namespace()))?;
        Ok(socket)
    }
}

/// Runs a command's future on a runtime of its own. A failure is printed on stderr as one
/// message (with its causes) and the process exits with status 1.
pub fn block_on<F: Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f);
    if let Err(e) = result {
        eprintln!("courier: error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// Parses command-line JSON arguments, saying which one is not JSON.
pub fn parse_json_args(args: &[String]) -> anyhow::Result<Vec<Value>> {
    args.iter()
        .enumerate()
        .map(|(i, a)| {
            serde_json::from_str(a).with_context(|| {
                format!(
                    "argument {} is not JSON: {a:?} (a string needs quotes: '\"text\"')",
                    i + 1
                )
            })
        })
        .collect()
}

/// Parses a duration in milliseconds for clap.
pub fn millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("expected milliseconds, not {s:?}"))
}

/// Prints a value as one line of JSON.
pub fn print_json(v: &Value) {
    println!("{v}");
}

/// Prints rows under a header, columns aligned.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_arguments_must_be_json() {
        let ok = parse_json_args(&["1".into(), "\"a\"".into(), "{\"x\":[]}".into()]).unwrap();
        assert_eq!(ok, vec![json!(1), json!("a"), json!({"x": []})]);
        let err = parse_json_args(&["1".into(), "hello".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("argument 2 is not JSON"));
    }
}
