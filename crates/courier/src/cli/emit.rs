//! `courier emit EVENT [JSON...]`: one event, through a socket or the HTTP API.
//!
//! Through a socket the event is what any client sends: the hub relays it to the other sockets
//! of the `--room`s the command joins first, and answers with the number of recipients. With
//! `--http` it goes through `POST /api/v1/emit`, to the rooms or the whole namespace.

use std::time::Duration;

use anyhow::bail;
use courier_client::Payload;
use courier_client::api::EmitRequest;
use serde_json::{Value, json};

use super::{Common, millis, parse_json_args, print_json};

/// Arguments of `courier emit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The event name.
    pub event: String,
    /// Its arguments, each one JSON value (quote strings: '"text"').
    pub args: Vec<String>,
    /// Send through the HTTP API instead of a socket.
    #[arg(long)]
    pub http: bool,
    /// Target room (repeatable). Through a socket, the command joins it first.
    #[arg(long = "room", value_name = "ROOM")]
    pub rooms: Vec<String>,
    /// The namespace.
    #[arg(long, default_value = "/")]
    pub namespace: String,
    /// Through a socket: how long to wait for the hub's answer. With --http: ask every
    /// recipient for an acknowledgement and wait this long for them (ms).
    #[arg(long, value_parser = millis, value_name = "MS")]
    pub ack_timeout: Option<Duration>,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `courier emit`.
pub fn run(args: Args) -> anyhow::Result<()> {
    super::block_on(emit(args))
}

async fn emit(args: Args) -> anyhow::Result<()> {
    let data = parse_json_args(&args.args)?;
    if args.http {
        return emit_http(&args, data).await;
    }
    let socket = args
        .common
        .socket(&args.namespace, courier_client::Config::default())
        .await?;
    if !args.rooms.is_empty() {
        let rooms: Vec<&str> = args.rooms.iter().map(String::as_str).collect();
        socket.join(&rooms).await?;
    }
    let timeout = args.ack_timeout.unwrap_or(Duration::from_secs(5));
    let answer = socket
        .emit_with_ack(&args.event, Payload::from(data), timeout)
        .await;
    socket.client().close().await;
    let answer = answer?.args.into_iter().next().unwrap_or(Value::Null);
    if answer.get("ok") == Some(&json!(false)) {
        let err = &answer["error"];
        bail!(
            "the hub refused the event: {} ({})",
            err["message"].as_str().unwrap_or("?"),
            err["code"].as_str().unwrap_or("?")
        );
    }
    if args.common.json {
        print_json(&answer);
        return Ok(());
    }
    match answer.get("recipients").and_then(Value::as_u64) {
        Some(n) => {
            println!("sent {} to {n} {}", args.event, plural(n, "recipient"));
            if args.rooms.is_empty() {
                eprintln!(
                    "note: through a socket the hub relays to the rooms given with --room; \
                     --http reaches the whole namespace"
                );
            }
        }
        None => println!("sent {}; the server answered {answer}", args.event),
    }
    Ok(())
}

async fn emit_http(args: &Args, data: Vec<Value>) -> anyhow::Result<()> {
    let api = args.common.api()?;
    let mut req = EmitRequest::new(args.event.clone(), data);
    req.namespace = args.namespace.clone();
    req.rooms = args.rooms.clone();
    req.ack_timeout_ms = args.ack_timeout.map(|d| d.as_millis() as u64);
    let answer = api.emit(&req).await?;
    if args.common.json {
        let mut v = json!({"recipients": answer.recipients});
        if req.ack_timeout_ms.is_some() {
            let acks: Vec<Value> = answer
                .acks
                .iter()
                .map(|a| json!({"sid": a.sid, "args": a.args}))
                .collect();
            v["acks"] = json!(acks);
            v["timeouts"] = json!(answer.timeouts);
        }
        print_json(&v);
        return Ok(());
    }
    println!(
        "sent {} to {} {}",
        args.event,
        answer.recipients,
        plural(answer.recipients, "recipient")
    );
    for a in &answer.acks {
        println!("  {}: {}", a.sid, Value::Array(a.args.clone()));
    }
    if answer.timeouts > 0 {
        println!("  {} did not answer in time", answer.timeouts);
    }
    Ok(())
}

/// `word` or `words`.
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}
