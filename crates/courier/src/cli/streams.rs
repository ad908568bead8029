//! `courier streams list|info S|consumers S|purge S`: the streams of a hub, over its HTTP API.

use courier_client::api::{ConsumerInfo, StreamInfo};
use serde_json::{Value, json};

use super::{Common, print_json, print_table};

/// Arguments of `courier streams`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub common: Common,
}

/// What to do with the streams.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every stream, with its size and sequence numbers.
    List,
    /// One stream: sequence numbers, size, consumers, settings.
    Info {
        /// The stream.
        stream: String,
    },
    /// The consumers of a stream and where each one is.
    Consumers {
        /// The stream.
        stream: String,
    },
    /// Removes every entry of a stream (sequence numbers go on from where they were).
    Purge {
        /// The stream.
        stream: String,
    },
}

/// Runs `courier streams`.
pub fn run(args: Args) -> anyhow::Result<()> {
    super::block_on(streams(args))
}

async fn streams(args: Args) -> anyhow::Result<()> {
    let api = args.common.api()?;
    let json = args.common.json;
    match &args.command {
        Command::List => {
            let list = api.streams().await?;
            if json {
                print_json(&json!({"streams": list}));
            } else if list.is_empty() {
                println!("no streams");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.entries.to_string(),
                            seq_range(s),
                            human_bytes(s.bytes),
                            s.consumers.len().to_string(),
                        ]
                    })
                    .collect();
                print_table(&["STREAM", "ENTRIES", "SEQ", "BYTES", "CONSUMERS"], &rows);
            }
        }
        Command::Info { stream } => {
            let s = api.stream(stream).await?;
            if json {
                print_json(&serde_json::to_value(&s)?);
            } else {
                print_stream(&s);
            }
        }
        Command::Consumers { stream } => {
            let list = api.consumers(stream).await?;
            if json {
                print_json(&json!({"consumers": list}));
            } else if list.is_empty() {
                println!("{stream} has no consumers");
            } else {
                let rows: Vec<Vec<String>> = list.iter().map(consumer_row).collect();
                print_table(
                    &[
                        "CONSUMER",
                        "DELIVERED",
                        "ACK FLOOR",
                        "PENDING",
                        "WAITING",
                        "REDELIVERED",
                        "DEAD",
                    ],
                    &rows,
                );
            }
        }
        Command::Purge { stream } => {
            let n = api.purge(stream).await?;
            if json {
                print_json(&json!({"purged": n}));
            } else {
                println!(
                    "purged {n} {} from {stream}",
                    if n == 1 { "entry" } else { "entries" }
                );
            }
        }
    }
    Ok(())
}

fn seq_range(s: &StreamInfo) -> String {
    if s.entries == 0 {
        format!("- (last #{})", s.last_seq)
    } else {
        format!("#{}..#{}", s.first_seq, s.last_seq)
    }
}

fn print_stream(s: &StreamInfo) {
    println!("stream     {}", s.name);
    println!("entries    {}", s.entries);
    println!("sequence   {}", seq_range(s));
    println!("bytes      {}", human_bytes(s.bytes));
    let consumers = if s.consumers.is_empty() {
        "none".to_owned()
    } else {
        s.consumers.join(", ")
    };
    println!("consumers  {consumers}");
    if let Value::Object(config) = &s.config {
        let settings: Vec<String> = config
            .iter()
            .map(|(k, v)| match v {
                Value::Null => format!("{k}=default"),
                v => format!(
                    "{k}={}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                ),
            })
            .collect();
        println!("settings   {}", settings.join(" "));
    }
}

fn consumer_row(c: &ConsumerInfo) -> Vec<String> {
    vec![
        c.name.clone(),
        c.delivered.to_string(),
        c.ack_floor.to_string(),
        c.pending.to_string(),
        c.waiting.to_string(),
        c.redelivered.to_string(),
        c.dead_lettered.to_string(),
    ]
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 1), "5.0 MiB");
    }
}
