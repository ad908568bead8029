//! `GET /metrics`: the hub's numbers in the Prometheus text format (0.0.4), encoded by
//! `prometheus-client` from Courier's own counters at scrape time.
//!
//! Nothing here runs per packet: counters are atomics kept by the server, store and cluster
//! (`courier_server::stats`); gauges (connections, sockets, streams, consumers) are read from
//! their tables when Prometheus asks. Every label set is bounded: transports, reasons and causes
//! are fixed lists, namespaces are bounded by `engine.max_namespaces`, streams by
//! `store.max_streams`, and consumers by `metrics.max_consumer_series` (the rest of a stream's
//! consumers are summed under `consumer="_other"`). docs/observe.md lists every metric.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use courier_cluster::Cluster;
use courier_server::stats::{
    CLOSE_REASONS, HistogramSnapshot, PUBLISH_REFUSALS, RecoveryRefusal, Refusal, Stats,
    TRANSPORTS, close_label, disconnect_labels,
};
use courier_server::store::ConsumerSummary;
use courier_server::{Io, Overview};
use parking_lot::Mutex;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// What `/metrics` reads.
pub struct Exporter {
    registry: Registry,
    io: Io,
    /// A cluster's streams, read from Redis before each scrape's text is written.
    shared_streams: Arc<Mutex<Option<Overview>>>,
}

impl Exporter {
    /// An exporter of `io`'s numbers (and the cluster's, on a cluster node).
    pub fn new(io: Io, cluster: Option<Cluster>, max_consumer_series: usize) -> Self {
        let mut registry = Registry::default();
        let shared_streams = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(Hub {
            io: io.clone(),
            cluster,
            max_consumer_series,
            started: Instant::now(),
            started_at: SystemTime::now(),
            shared_streams: shared_streams.clone(),
        }));
        Exporter {
            registry,
            io,
            shared_streams,
        }
    }

    /// The text a scrape gets. On a cluster, the streams are read from Redis first (and
    /// left out if Redis does not answer).
    pub async fn render(&self) -> String {
        if let Some(streams) = self.io.streams().filter(|s| s.store().is_none()) {
            let overview = streams.overview().await.ok();
            *self.shared_streams.lock() = overview;
        }
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// The content type of [`Exporter::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Hub {
    io: Io,
    cluster: Option<Cluster>,
    max_consumer_series: usize,
    started: Instant,
    started_at: SystemTime,
    shared_streams: Arc<Mutex<Option<Overview>>>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Writes one family; counters are named without `_total`, which the encoder appends.
struct Out<'e, 'a> {
    enc: &'e mut DescriptorEncoder<'a>,
}

impl Out<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        self.counters(name, help, [(Vec::new(), v)])
    }

    fn counters<'l>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'l>, u64)>,
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in rows {
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) -> fmt::Result {
        self.gauges(name, help, [(Vec::new(), v)])
    }

    fn gauges<'l>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'l>, f64)>,
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in rows {
            ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn histograms<'l>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'l>, HistogramSnapshot)>,
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in rows {
            // The encoder takes per-bucket counts and accumulates them itself.
            let mut prev = 0;
            let mut buckets: Vec<(f64, u64)> = h
                .buckets
                .iter()
                .map(|&(b, n)| {
                    let own = n - prev;
                    prev = n;
                    (b, own)
                })
                .collect();
            buckets.push((f64::INFINITY, h.count - prev));
            m.encode_family(&labels)?
                .encode_histogram::<Labels<'_>>(h.sum, h.count, &buckets, None)?;
        }
        Ok(())
    }
}

impl prometheus_client::collector::Collector for Hub {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let mut out = Out { enc: &mut enc };
        self.process(&mut out)?;
        if let Some(stats) = self.io.stats() {
            self.connections(&mut out, stats)?;
            traffic(&mut out, stats)?;
            recovery(&mut out, stats)?;
            streams_counters(&mut out, stats)?;
        }
        self.streams(&mut out)?;
        self.cluster(&mut out)?;
        Ok(())
    }
}

impl Hub {
    fn process(&self, out: &mut Out<'_, '_>) -> fmt::Result {
        let version = env!("CARGO_PKG_VERSION");
        out.gauges(
            "courier_build_info",
            "Courier's version; always 1.",
            [(vec![("version", version)], 1.0)],
        )?;
        let start = self
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        out.gauge(
            "courier_start_time_seconds",
            "When the hub started, in seconds since the Unix epoch.",
            start,
        )?;
        out.gauge(
            "courier_uptime_seconds",
            "Seconds since the hub started.",
            self.started.elapsed().as_secs_f64(),
        )
    }

    fn connections(&self, out: &mut Out<'_, '_>, s: &Stats) -> fmt::Result {
        let (polling, websocket) = self.io.transport_counts();
        out.gauges(
            "courier_connections",
            "Open Engine.IO connections, by transport.",
            [
                (vec![("transport", "polling")], polling as f64),
                (vec![("transport", "websocket")], websocket as f64),
            ],
        )?;
        out.counters(
            "courier_connections_opened",
            "Engine.IO connections opened, by the transport of their handshake.",
            TRANSPORTS
                .iter()
                .zip(&s.connections_opened)
                .map(|(t, c)| (vec![("transport", t.name())], c.get())),
        )?;
        out.counters(
            "courier_connections_closed",
            "Engine.IO connections closed, by reason.",
            CLOSE_REASONS
                .iter()
                .zip(&s.connections_closed)
                .map(|(&r, c)| (vec![("reason", close_label(r))], c.get())),
        )?;
        out.counter(
            "courier_slow_clients_disconnected",
            "Connections closed because the client read too slowly and its queue filled up.",
            s.closed_count(courier_server::engine::CloseReason::SlowClient),
        )?;
        out.counter(
            "courier_upgrades",
            "Connections upgraded from long-polling to WebSocket.",
            s.upgrades.get(),
        )?;
        out.counters(
            "courier_handshakes_refused",
            "Handshakes and namespace CONNECTs refused, by cause.",
            Refusal::ALL
                .iter()
                .zip(&s.refused)
                .map(|(r, c)| (vec![("cause", r.as_str())], c.get())),
        )?;
        let mut namespaces: Vec<(String, usize)> = self
            .io
            .namespaces()
            .iter()
            .map(|ns| (ns.name().to_owned(), ns.len()))
            .collect();
        namespaces.sort();
        out.gauges(
            "courier_sockets",
            "Connected sockets on this node, by namespace.",
            namespaces
                .iter()
                .map(|(n, len)| (vec![("namespace", n.as_str())], *len as f64)),
        )?;
        out.counter(
            "courier_socket_connects",
            "Sockets that joined a namespace (recovered ones included).",
            s.socket_connects.get(),
        )?;
        out.counters(
            "courier_socket_disconnects",
            "Sockets that left a namespace, by reason.",
            disconnect_labels()
                .zip(&s.socket_disconnects)
                .map(|(r, c)| (vec![("reason", r)], c.get())),
        )
    }

    fn streams(&self, out: &mut Out<'_, '_>) -> fmt::Result {
        let Some(streams) = self.io.streams() else {
            return Ok(());
        };
        // A node's own store, or what the scrape read from a cluster's Redis.
        let store = streams.store();
        let (list, summaries) = match store {
            Some(store) => (store.streams(), store.consumer_summaries()),
            None => match self.shared_streams.lock().take() {
                Some(o) => o,
                None => return Ok(()),
            },
        };
        out.gauges(
            "courier_stream_entries",
            "Entries kept in the stream.",
            list.iter()
                .map(|s| (vec![("stream", s.name.as_str())], s.entries as f64)),
        )?;
        out.gauges(
            "courier_stream_bytes",
            "Bytes of the entries kept in the stream.",
            list.iter()
                .map(|s| (vec![("stream", s.name.as_str())], s.bytes as f64)),
        )?;
        out.gauges(
            "courier_stream_last_seq",
            "Sequence number of the stream's newest entry.",
            list.iter()
                .map(|s| (vec![("stream", s.name.as_str())], s.last_seq as f64)),
        )?;
        let last: HashMap<&str, u64> = list.iter().map(|s| (s.name.as_str(), s.last_seq)).collect();
        let rows = consumer_rows(&summaries, &last, self.max_consumer_series);
        let by = |f: fn(&ConsumerRow<'_>) -> u64| {
            rows.iter()
                .map(move |r| (vec![("stream", r.stream), ("consumer", r.consumer)], f(r)))
        };
        out.gauges(
            "courier_stream_consumers",
            "Consumers of the stream.",
            list.iter()
                .map(|s| (vec![("stream", s.name.as_str())], s.consumers.len() as f64)),
        )?;
        out.gauges(
            "courier_consumer_pending",
            "Entries delivered to the consumer and not yet acknowledged.",
            by(|r| r.pending).map(|(l, v)| (l, v as f64)),
        )?;
        out.gauges(
            "courier_consumer_waiting",
            "Entries of the stream not yet delivered to the consumer (its lag).",
            by(|r| r.waiting).map(|(l, v)| (l, v as f64)),
        )?;
        out.counters(
            "courier_consumer_redelivered",
            "Deliveries to the consumer that were repeats.",
            by(|r| r.redelivered),
        )?;
        out.counters(
            "courier_consumer_dead_lettered",
            "Entries of the consumer moved to the dead-letter stream.",
            by(|r| r.dead_lettered),
        )?;
        let Some(store) = store else {
            return Ok(());
        };
        let m = store.memory_use();
        out.gauges(
            "courier_store_memory_bytes",
            "Bytes the store keeps in memory: stream tails and the recovery log.",
            [
                (vec![("part", "stream_tails")], m.tail_bytes as f64),
                (vec![("part", "recovery_log")], m.recovery_bytes as f64),
            ],
        )?;
        let st = store.stats();
        out.histograms(
            "courier_store_commit_seconds",
            "Time of each group commit (its fsync is courier_store_fsync_seconds).",
            [(Vec::new(), st.commit_seconds.snapshot())],
        )?;
        out.histograms(
            "courier_store_commit_group_size",
            "Requests (publishes, creations, purges) answered by each group commit.",
            [(Vec::new(), st.group_size.snapshot())],
        )?;
        out.histograms(
            "courier_store_fsync_seconds",
            "Time of each fsync (sync = always: after each commit; interval: periodic; at shutdown).",
            [(Vec::new(), st.sync_seconds.snapshot())],
        )?;
        out.counter(
            "courier_store_commit_failures",
            "Group commits that failed.",
            st.commit_failures.get(),
        )
    }

    fn cluster(&self, out: &mut Out<'_, '_>) -> fmt::Result {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        let status = c.status();
        let node = status.node.as_str();
        out.gauges(
            "courier_cluster_redis_up",
            "Whether this node's links to Redis answer (1) or not (0).",
            [(
                vec![("node", node)],
                if status.redis_up { 1.0 } else { 0.0 },
            )],
        )?;
        out.gauges(
            "courier_cluster_nodes",
            "Nodes of the cluster this node knows of, itself included.",
            [(vec![("node", node)], c.nodes().len() as f64)],
        )?;
        let st = c.stats();
        out.histograms(
            "courier_cluster_redis_ping_seconds",
            "Round trip of the heartbeat's PING to Redis, once a second.",
            [(vec![("node", node)], st.ping_seconds.snapshot())],
        )?;
        out.histograms(
            "courier_cluster_redis_pipeline_seconds",
            "Round trip of each pipeline of broadcasts and sessions sent to Redis.",
            [(vec![("node", node)], st.pipeline_seconds.snapshot())],
        )?;
        out.counters(
            "courier_cluster_redis_pipeline_failures",
            "Pipelines to Redis that failed.",
            [(vec![("node", node)], st.pipeline_failures.get())],
        )
    }
}

fn traffic(out: &mut Out<'_, '_>, s: &Stats) -> fmt::Result {
    let plain: [(&str, &str, u64); 14] = [
        (
            "courier_packets_received",
            "Engine.IO packets received from clients.",
            s.packets_in.get(),
        ),
        (
            "courier_received_bytes",
            "Bytes of the Engine.IO packets received.",
            s.bytes_in.get(),
        ),
        (
            "courier_packets_sent",
            "Engine.IO packets written to clients.",
            s.packets_out.get(),
        ),
        (
            "courier_sent_bytes",
            "Bytes of the Engine.IO packets written.",
            s.bytes_out.get(),
        ),
        (
            "courier_events_received",
            "Socket.IO events received from clients.",
            s.events_received.get(),
        ),
        (
            "courier_events_rate_limited",
            "Events refused because their connection was past its rate limit.",
            s.events_rate_limited.get(),
        ),
        (
            "courier_events_emitted",
            "Socket.IO events sent to one socket (stream deliveries included).",
            s.events_emitted.get(),
        ),
        (
            "courier_broadcasts",
            "Broadcasts sent from this node.",
            s.broadcasts.get(),
        ),
        (
            "courier_broadcast_recipients",
            "Sockets of this node that broadcasts were queued for.",
            s.broadcast_recipients.get(),
        ),
        (
            "courier_acks_received",
            "Acknowledgements received for emits that asked for one.",
            s.acks_received.get(),
        ),
        (
            "courier_ack_timeouts",
            "Emits whose acknowledgement did not come in time.",
            s.ack_timeouts.get(),
        ),
        (
            "courier_volatile_drops",
            "Volatile packets dropped because the client's queue was full.",
            s.volatile_drops.get(),
        ),
        (
            "courier_stream_deliveries",
            "Stream entries sent to subscribers for the first time.",
            s.deliveries.get(),
        ),
        (
            "courier_stream_redeliveries",
            "Stream entries sent again after ack_wait.",
            s.redeliveries.get(),
        ),
    ];
    for (name, help, v) in plain {
        out.counter(name, help, v)?;
    }
    out.counter(
        "courier_stream_dead_lettered",
        "Stream entries moved to a dead-letter stream.",
        s.dead_lettered.get(),
    )
}

fn recovery(out: &mut Out<'_, '_>, s: &Stats) -> fmt::Result {
    out.counter(
        "courier_recovery_attempts",
        "Connection state recovery attempts (a CONNECT with a private id).",
        s.recovery_attempts.get(),
    )?;
    out.counter(
        "courier_recovery_recovered",
        "Recovery attempts that restored the session.",
        s.recovered.get(),
    )?;
    out.counters(
        "courier_recovery_refused",
        "Recovery attempts that started afresh, by cause.",
        RecoveryRefusal::ALL
            .iter()
            .zip(&s.recovery_refused)
            .map(|(r, c)| (vec![("cause", r.as_str())], c.get())),
    )
}

fn streams_counters(out: &mut Out<'_, '_>, s: &Stats) -> fmt::Result {
    let rows = [
        (vec![("result", "ok")], s.publishes.get()),
        (vec![("result", "duplicate")], s.publish_duplicates.get()),
    ]
    .into_iter()
    .chain(
        PUBLISH_REFUSALS
            .iter()
            .zip(&s.publish_refused)
            .map(|(&code, c)| (vec![("result", code)], c.get())),
    );
    out.counters(
        "courier_stream_publishes",
        "Publishes: confirmed new (ok), confirmed duplicates, or refused with an error code.",
        rows,
    )
}

/// One consumer's series (or the sum of a stream's consumers past the cap).
#[derive(Debug, PartialEq)]
struct ConsumerRow<'a> {
    stream: &'a str,
    consumer: &'a str,
    pending: u64,
    waiting: u64,
    redelivered: u64,
    dead_lettered: u64,
}

/// The consumer's label of the sum past the cap.
const OTHER: &str = "_other";

/// Per-consumer rows for at most `cap` consumers, those with the most entries waiting and
/// pending; each stream's others summed in one `_other` row, so sums by stream stay exact.
fn consumer_rows<'a>(
    all: &'a [(String, String, ConsumerSummary)],
    last_seq: &HashMap<&str, u64>,
    cap: usize,
) -> Vec<ConsumerRow<'a>> {
    let row = |(s, c, sum): &'a (String, String, ConsumerSummary)| ConsumerRow {
        stream: s,
        consumer: c,
        pending: sum.pending,
        waiting: last_seq
            .get(s.as_str())
            .map_or(0, |l| l.saturating_sub(sum.delivered)),
        redelivered: sum.redelivered,
        dead_lettered: sum.dead_lettered,
    };
    let mut rows: Vec<ConsumerRow<'a>> = all.iter().map(row).collect();
    if rows.len() <= cap {
        return rows;
    }
    // Biggest backlog first; ties in name order, so the set is stable from scrape to scrape.
    rows.sort_by(|a, b| {
        (b.waiting + b.pending)
            .cmp(&(a.waiting + a.pending))
            .then_with(|| (a.stream, a.consumer).cmp(&(b.stream, b.consumer)))
    });
    let rest = rows.split_off(cap);
    let mut others: Vec<ConsumerRow<'a>> = Vec::new();
    for r in rest {
        match others.iter_mut().find(|o| o.stream == r.stream) {
            Some(o) => {
                o.pending += r.pending;
                o.waiting += r.waiting;
                o.redelivered += r.redelivered;
                o.dead_lettered += r.dead_lettered;
            }
            None => others.push(ConsumerRow {
                consumer: OTHER,
                ..r
            }),
        }
    }
    rows.extend(others);
    rows.sort_by(|a, b| (a.stream, a.consumer).cmp(&(b.stream, b.consumer)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(delivered: u64, pending: u64) -> ConsumerSummary {
        ConsumerSummary {
            delivered,
            pending,
            redelivered: 1,
            dead_lettered: 0,
        }
    }

    #[test]
    fn consumers_past_the_cap_are_summed_per_stream() {
        let all = vec![
            ("a".to_owned(), "c1".to_owned(), summary(100, 0)),
            ("a".to_owned(), "c2".to_owned(), summary(10, 2)),
            ("a".to_owned(), "c3".to_owned(), summary(90, 1)),
            ("b".to_owned(), "d1".to_owned(), summary(0, 0)),
        ];
        let last = HashMap::from([("a", 100), ("b", 5)]);
        let rows = consumer_rows(&all, &last, 2);
        let names: Vec<_> = rows.iter().map(|r| (r.stream, r.consumer)).collect();
        assert_eq!(
            names,
            [("a", "_other"), ("a", "c2"), ("a", "c3"), ("b", "_other")]
        );
        let other = &rows[0];
        assert_eq!((other.waiting, other.pending, other.redelivered), (0, 0, 1));
        assert_eq!(rows.iter().map(|r| r.waiting).sum::<u64>(), 90 + 10 + 5);
        assert_eq!(rows.iter().map(|r| r.redelivered).sum::<u64>(), 4);
    }

    #[test]
    fn under_the_cap_every_consumer_has_its_series() {
        let all = vec![("a".to_owned(), "c1".to_owned(), summary(3, 1))];
        let rows = consumer_rows(&all, &HashMap::from([("a", 5)]), 10);
        assert_eq!(rows[0].waiting, 2);
        assert_eq!(rows[0].pending, 1);
    }
}
