//! `courier publish STREAM EVENT JSON`: entries for a durable stream, through the HTTP API.
//! Each is confirmed once durable. `--count N` publishes the same data N times, `--file F.jsonl`
//! one entry per line (each line is the entry's data), with a progress bar on a terminal.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use courier_client::{ApiClient, Published};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use super::emit::plural;
use super::{Common, print_json};

/// Arguments of `courier publish`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stream (created on first use unless the hub says otherwise).
    pub stream: String,
    /// The event name deliveries carry.
    pub event: String,
    /// The entry's data, one JSON value (not with --file).
    pub data: Option<String>,
    /// Message id for deduplication; in bulk each entry gets ID-1, ID-2, ...
    #[arg(long)]
    pub id: Option<String>,
    /// Publish the data this many times.
    #[arg(long, conflicts_with = "file")]
    pub count: Option<u64>,
    /// Publish one entry per line of this JSON Lines file (each line is the entry's data).
    #[arg(long, value_name = "F.jsonl")]
    pub file: Option<PathBuf>,
    /// Publishes in flight at once in bulk. 1 keeps the entries in order; more is faster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `courier publish`.
pub fn run(args: Args) -> anyhow::Result<()> {
    super::block_on(publish(args))
}

async fn publish(args: Args) -> anyhow::Result<()> {
    let api = args.common.api()?;
    let entries = entries(&args)?;
    if entries.len() == 1 && args.count.is_none() && args.file.is_none() {
        let (data, id) = &entries[0];
        let p = api
            .publish(&args.stream, &args.event, data, id.as_deref())
            .await?;
        if args.common.json {
            print_json(&json!({"seq": p.seq, "duplicate": p.duplicate}));
        } else if p.duplicate {
            println!(
                "already in {} as #{} (duplicate id, not stored again)",
                args.stream, p.seq
            );
        } else {
            println!("published to {} as #{}", args.stream, p.seq);
        }
        return Ok(());
    }
    bulk(&api, &args, entries).await
}

/// Each entry's data and id.
fn entries(args: &Args) -> anyhow::Result<Vec<(Value, Option<String>)>> {
    let numbered = |i: usize| args.id.as_ref().map(|id| format!("{id}-{}", i + 1));
    if let Some(path) = &args.file {
        if args.data.is_some() {
            bail!("give the data either as an argument or with --file, not both");
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))?;
            out.push((v, numbered(out.len())));
        }
        if out.is_empty() {
            bail!("{} has no entries", path.display());
        }
        return Ok(out);
    }
    let Some(data) = &args.data else {
        bail!("the entry's data is missing: courier publish STREAM EVENT JSON");
    };
    let data: Value = serde_json::from_str(data)
        .with_context(|| format!("the data is not JSON: {data:?} (a string needs quotes)"))?;
    match args.count {
        None => Ok(vec![(data, args.id.clone())]),
        Some(n) => Ok((0..n as usize)
            .map(|i| (data.clone(), numbered(i)))
            .collect()),
    }
}

async fn bulk(
    api: &ApiClient,
    args: &Args,
    entries: Vec<(Value, Option<String>)>,
) -> anyhow::Result<()> {
    let total = entries.len() as u64;
    let bar = ProgressBar::new(total);
    if args.common.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta})",
        )
        .expect("a valid template"),
    );
    let started = Instant::now();
    let mut results = futures_util::stream::iter(entries.into_iter().enumerate())
        .map(|(i, (data, id))| async move {
            let r = api
                .publish(&args.stream, &args.event, &data, id.as_deref())
                .await;
            (i, r)
        })
        .buffered(args.concurrency as usize);
    let (mut first, mut last, mut duplicates, mut done) = (u64::MAX, 0u64, 0u64, 0u64);
    while let Some((i, r)) = results.next().await {
        let p: Published = match r {
            Ok(p) => p,
            Err(e) => {
                bar.abandon();
                return Err(e).with_context(|| {
                    format!("entry {} failed after {done} were published", i + 1)
                });
            }
        };
        first = first.min(p.seq);
        last = last.max(p.seq);
        duplicates += u64::from(p.duplicate);
        done += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if args.common.json {
        print_json(&json!({
            "published": done,
            "duplicates": duplicates,
            "first_seq": first,
            "last_seq": last,
            "seconds": (secs * 1000.0).round() / 1000.0,
        }));
    } else {
        println!(
            "published {done} {} to {} (#{first}..#{last}, {duplicates} {}) in {secs:.2} s ({:.0}/s)",
            if done == 1 { "entry" } else { "entries" },
            args.stream,
            plural(duplicates, "duplicate"),
            done as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
