//! A connection to Redis, whether Redis is one server (with its replicas) or a Redis Cluster
//! of several shards.
//!
//! On a Redis Cluster every key belongs to one of 16,384 hash slots, and a command, a pipeline
//! or a script touches the keys of one slot only. Courier's keys are named so that what must
//! change together shares a slot (a stream's keys carry the stream's name as their hash tag),
//! and its pub/sub goes through sharded channels (`SPUBLISH`, `SSUBSCRIBE`), which live on the
//! shard of their slot instead of being copied to every shard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc;

/// The URL scheme of a Redis Cluster: `redis-cluster://host:port[,host:port...]` (and
/// `rediss-cluster://` for TLS), with the same `user:password@` as `redis://`.
const CLUSTER_SCHEME: &str = "-cluster://";

/// Where Redis is.
#[derive(Clone)]
pub(crate) enum Target {
    One(Box<redis::Client>),
    /// The URLs of the cluster's seed nodes, `redis://` or `rediss://` each.
    Sharded(Vec<String>),
}

/// One link to Redis. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Link {
    One(ConnectionManager),
    Sharded(ClusterConnection),
    /// A Redis Cluster link without pub/sub, which is made again when it has lost every
    /// connection (see [`Remade`]).
    Remade(Arc<Remade>),
}

/// A Redis Cluster connection that a new one replaces, for every clone of its link, when it
/// answers "No connections found". After every server of a Redis Cluster was killed and
/// started again, the redis crate's connection was seen to stay without any connection for
/// good, while the node's other connections, made the same way, came back.
pub(crate) struct Remade {
    client: ClusterClient,
    conn: Mutex<ClusterConnection>,
    /// When a new one was last tried: at most one try per `REMAKE_EVERY` (more than the time
    /// a try may take to connect).
    tried: Mutex<Instant>,
}

const REMAKE_EVERY: Duration = Duration::from_secs(3);

impl Remade {
    fn current(&self) -> ClusterConnection {
        self.conn.lock().clone()
    }

    /// `answer`, seeing its error first (see `on_error`).
    fn watch<'a, T: Send + 'a>(
        self: &'a Arc<Self>,
        answer: impl Future<Output = RedisResult<T>> + Send + 'a,
    ) -> RedisFuture<'a, T> {
        Box::pin(async move {
            let answer = answer.await;
            if let Err(e) = &answer {
                self.on_error(e);
            }
            answer
        })
    }

    /// After an error: makes a new connection in the background when this one has none left.
    fn on_error(self: &Arc<Self>, e: &redis::RedisError) {
        if e.kind() != redis::ErrorKind::ClusterConnectionNotFound
            || !e.to_string().contains("No connections found")
        {
            return;
        }
        {
            let mut tried = self.tried.lock();
            if tried.elapsed() < REMAKE_EVERY {
                return;
            }
            *tried = Instant::now();
        }
        let this = self.clone();
        tokio::spawn(async move {
            match this.client.get_async_connection().await {
                Ok(conn) => {
                    *this.conn.lock() = conn;
                    tracing::info!(
                        "cluster: made a new connection to the Redis Cluster, the last one had lost all of its own"
                    );
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: a new connection to the Redis Cluster failed");
                }
            }
        });
    }
}

impl Target {
    /// Reads `redis://...`, `rediss://...` or `redis-cluster://...`.
    pub(crate) fn parse(url: &str) -> RedisResult<Target> {
        let Some((scheme, rest)) = url.split_once(CLUSTER_SCHEME) else {
            return Ok(Target::One(Box::new(redis::Client::open(url)?)));
        };
        let (auth, seeds) = match rest.rsplit_once('@') {
            Some((auth, seeds)) => (format!("{auth}@"), seeds),
            None => (String::new(), rest),
        };
        // What follows the list (`/db`, `?...`, `#insecure`) is every seed's.
        let (seeds, tail) = seeds.split_at(seeds.find(['/', '?', '#']).unwrap_or(seeds.len()));
        let urls: Vec<String> = seeds
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|seed| format!("{scheme}://{auth}{seed}{tail}"))
            .collect();
        // Each must be a valid URL on its own; the first error says which part is wrong.
        for u in &urls {
            redis::Client::open(u.as_str())?;
        }
        if urls.is_empty() {
            return Err((
                redis::ErrorKind::InvalidClientConfig,
                "no cluster node given",
            )
                .into());
        }
        Ok(Target::Sharded(urls))
    }

    /// Whether Redis is a Redis Cluster.
    pub(crate) fn sharded(&self) -> bool {
        matches!(self, Target::Sharded(_))
    }

    /// Connects; with `push`, the link can subscribe and sends what arrives there (RESP3).
    pub(crate) async fn connect(
        &self,
        push: Option<mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> RedisResult<Link> {
        match self {
            Target::One(client) => {
                let mut config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_max_delay(Duration::from_secs(2))
                    .set_number_of_retries(1);
                let client = match push {
                    Some(tx) => {
                        config = config.set_push_sender(tx).set_automatic_resubscription();
                        let info = client.get_connection_info().clone();
                        let settings = info
                            .redis_settings()
                            .clone()
                            .set_protocol(redis::ProtocolVersion::RESP3);
                        redis::Client::open(info.set_redis_settings(settings))?
                    }
                    None => (**client).clone(),
                };
                let conn = client.get_connection_manager_with_config(config).await?;
                Ok(Link::One(conn))
            }
            Target::Sharded(urls) => {
                let builder = ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2))
                    .retries(1)
                    .max_retry_wait(2000);
                // A link that subscribes keeps its connection: a new one would not have its
                // subscriptions (the heartbeat subscribes again when Redis comes back).
                let Some(tx) = push else {
                    let client = builder.build()?;
                    let conn = client.get_async_connection().await?;
                    return Ok(Link::Remade(Arc::new(Remade {
                        client,
                        conn: Mutex::new(conn),
                        tried: Mutex::new(Instant::now()),
                    })));
                };
                let builder = builder
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx);
                let conn = builder.build()?.get_async_connection().await?;
                Ok(Link::Sharded(conn))
            }
        }
    }
}

impl Link {
    /// Listens on `channels` (sharded ones on a Redis Cluster: one `SSUBSCRIBE` per slot).
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Link::One(c) => c.subscribe(channels).await,
            Link::Sharded(c) => {
                for group in by_slot(channels) {
                    c.ssubscribe(&group).await?;
                }
                Ok(())
            }
            Link::Remade(_) => Err(no_push()),
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Link::One(c) => c.unsubscribe(channels).await,
            Link::Sharded(c) => {
                for group in by_slot(channels) {
                    c.sunsubscribe(&group).await?;
                }
                Ok(())
            }
            Link::Remade(_) => Err(no_push()),
        }
    }
}

fn no_push() -> redis::RedisError {
    (
        redis::ErrorKind::Client,
        "this link to Redis was made without pub/sub",
    )
        .into()
}

/// `channels` in groups of one slot each.
fn by_slot(channels: &[String]) -> Vec<Vec<&String>> {
    let mut groups: std::collections::BTreeMap<u16, Vec<&String>> = Default::default();
    for c in channels {
        groups.entry(slot(c.as_bytes())).or_default().push(c);
    }
    groups.into_values().collect()
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::One(c) => c.req_packed_command(cmd),
            Link::Sharded(c) => c.req_packed_command(cmd),
            Link::Remade(r) => {
                let mut c = r.current();
                r.watch(async move { c.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::One(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Sharded(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Remade(r) => {
                let mut c = r.current();
                r.watch(async move { c.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::One(c) => c.get_db(),
            Link::Sharded(c) => c.get_db(),
            Link::Remade(r) => r.current().get_db(),
        }
    }
}

/// The hash slot of `key` (Redis Cluster specification: CRC16/XMODEM of the key's hash tag, the
/// part between the first `{` and the next `}` when it is not empty, or of the whole key).
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let close = key[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &key[open + 1..open + 1 + close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of the key a command of Courier's works on: the first argument, or for a script
/// its first key; `None` for a command without keys.
pub(crate) fn slot_of(cmd: &Cmd) -> Option<u16> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => b,
            _ => &[][..],
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" => args.get(3).filter(|_| args[2] != b"0").map(|k| slot(k)),
        b"ECHO" | b"PING" | b"WAIT" => None,
        _ => Some(slot(args.get(1)?)),
    }
}

/// A key in the same slot as `channel`, for what a script changes and publishes there at once
/// (exact unless the channel has an empty `{}` before its first `}`, which no name Courier
/// makes of a namespace without braces has).
pub(crate) fn beside(channel: &str, suffix: &str) -> String {
    let tagged = channel
        .find('{')
        .is_some_and(|open| channel[open + 1..].find('}').is_some_and(|close| close > 0));
    if tagged {
        format!("{channel}{suffix}")
    } else {
        format!("{{{channel}}}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_of_the_specification() {
        // The examples of the Redis Cluster specification and of CLUSTER KEYSLOT.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"somekey"), 11058);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        // An empty tag is no tag: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn a_key_beside_a_channel_shares_its_slot() {
        for channel in ["socket.io#/#", "socket.io#/chat#", "a{b}#", "{x"] {
            assert_eq!(
                slot(beside(channel, "-log").as_bytes()),
                slot(channel.as_bytes()),
                "{channel}"
            );
        }
    }

    #[test]
    fn cluster_urls_name_every_seed() {
        let Target::Sharded(urls) =
            Target::parse("redis-cluster://u:p@127.0.0.1:7000,127.0.0.1:7001").unwrap()
        else {
            panic!("not sharded");
        };
        assert_eq!(
            urls,
            ["redis://u:p@127.0.0.1:7000", "redis://u:p@127.0.0.1:7001"]
        );
        let Target::Sharded(urls) = Target::parse("rediss-cluster://a:1,b:2#insecure").unwrap()
        else {
            panic!("not sharded");
        };
        assert_eq!(urls, ["rediss://a:1#insecure", "rediss://b:2#insecure"]);
        assert!(!Target::parse("redis://127.0.0.1:6379").unwrap().sharded());
        assert!(Target::parse("redis-cluster://").is_err());
    }
}
