//! Connection state recovery shared by every node, in Redis.
//!
//! - The log: one Redis stream per namespace (`<key>-courier-log#<nsp>#`), bounded by
//!   `max_events`. A recoverable broadcast is appended and published by one script, and every
//!   node, the sender included, delivers it when it arrives from Redis: each node sees the log's
//!   order, so "everything after the client's offset" is exactly what the client missed.
//!   Offsets are the stream ids, as one number (`wire::offset_of_id`).
//! - Sessions of connected sockets: fields of their node's hash (`<key>-courier-live#<node>`),
//!   which the node keeps alive every second; after a crash the hash outlives the node by the
//!   recovery window, so its clients can be recovered by the others.
//! - Sessions of lost connections: one key each (`<key>-courier-session#<pid>`) that expires
//!   with the recovery window. Taking one is `GETDEL`: one node wins.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use courier_server::Broadcast;
use courier_server::store::{LIVE_SESSION, RecoveryEvent, SessionRecord};
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::link::Link;
use crate::wire::{self, id_of_offset, offset_of_id};
use crate::{Cluster, LOGGED_PUBLISH, counted, one_each};

/// Most missed broadcasts read back for one client; more and it starts afresh.
const MAX_REPLAY: usize = 10_000;
/// How long a node waits for a lost connection's session to be handed over by the node that
/// had it, when that node has not noticed the loss yet.
const HANDOVER_WAIT: Duration = Duration::from_millis(1500);

/// How recovery is shared.
#[derive(Debug, Clone)]
pub struct RecoveryOptions {
    /// How long a lost session can be recovered.
    pub window: Duration,
    /// Most broadcasts kept per namespace.
    pub max_events: usize,
}

impl Cluster {
    /// On a Redis Cluster, in the slot of the namespace's channel, where its logged
    /// broadcasts are published.
    fn log_key(&self, nsp: &str) -> String {
        if self.0.sharded {
            return crate::link::beside(&self.channels(nsp).broadcast, "-courier-log");
        }
        format!("{}-courier-log#{nsp}#", self.0.key)
    }

    fn session_key(&self, pid: &str) -> String {
        format!("{}-courier-session#{pid}", self.0.key)
    }

    pub(crate) fn live_key(&self, node: &str) -> String {
        format!("{}-courier-live#{node}", self.0.key)
    }

    pub(crate) fn window(&self) -> Duration {
        self.0
            .recovery
            .as_ref()
            .map_or(Duration::ZERO, |r| r.window)
    }

    /// Appends `b` to the log and publishes it; with `count`, waits for every Courier node's
    /// count of the sockets it reached (each delivers it, this one included).
    pub(crate) fn log_and_publish(
        &self,
        b: Broadcast,
        data: Bytes,
        count: bool,
    ) -> BoxFuture<'static, usize> {
        if !self.0.up.load(std::sync::atomic::Ordering::Relaxed) {
            // Redis is gone: this node's sockets still get it, without an offset.
            let n = self.deliver_here(&b);
            return Box::pin(async move { n });
        }
        let max = self.0.recovery.as_ref().map_or(0, |r| r.max_events);
        // On a Redis Cluster the log and the channel must share a slot: every logged broadcast
        // goes on the namespace's channel (its rooms are in it, and each node picks its
        // sockets), not on a room's.
        let ch = self.channels(&b.nsp);
        let channel = match self.0.sharded {
            true => ch.broadcast,
            false => ch.for_targets(&b.targets),
        };
        let id = count.then(Self::request_id);
        let message = wire::encode_broadcast(&self.0.uid, &b, id.as_deref());
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LOGGED_PUBLISH)
            .arg(2)
            .arg(self.log_key(&b.nsp))
            .arg(&channel)
            .arg(max)
            .arg(json!(b.targets.rooms).to_string())
            .arg(json!(b.targets.except).to_string())
            .arg(&data[..])
            .arg(message)
            .arg(u8::from(count))
            .arg(if self.0.sharded {
                "SPUBLISH"
            } else {
                "PUBLISH"
            });
        let Some(id) = id else {
            self.enqueue(cmd, None);
            return Box::pin(async { 0 });
        };
        let asking = self.start_asking(&id, |tx| self.enqueue(cmd, Some((tx, 0))));
        let this = self.clone();
        Box::pin(
            async move { counted(&this.collect(asking, None, one_each, this.0.timeout).await) },
        )
    }

    fn deliver_here(&self, b: &Broadcast) -> usize {
        let Some(ns) = self.0.io.get(&b.nsp) else {
            return 0;
        };
        let mut op = crate::operator(&ns, &b.targets);
        if b.volatile {
            op = op.volatile();
        }
        op.emit_payload(&b.event, b.payload.clone()).unwrap_or(0)
    }

    /// The offset just past the newest logged broadcast of `nsp`.
    pub(crate) fn position(&self, nsp: &str) -> BoxFuture<'static, u64> {
        let key = self.log_key(nsp);
        let conn = self.0.publisher.get().cloned();
        Box::pin(async move {
            let newest = match conn {
                Some(mut conn) => redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async::<Vec<(String, HashMap<String, redis::Value>)>>(&mut conn)
                    .await
                    .ok(),
                None => None,
            };
            match newest {
                Some(entries) => entries
                    .first()
                    .and_then(|(id, _)| offset_of_id(id))
                    .map_or(0, |o| o + 1),
                // Without Redis, the time is the best guess of the log's position.
                None => {
                    offset_of_id(&format!("{}-0", courier_server::store::now_ms())).unwrap_or(0)
                }
            }
        })
    }

    pub(crate) fn keep_session(&self, pid: &str, record: SessionRecord) {
        let json = serde_json::to_string(&record).expect("sessions serialize");
        if record.expires_ms == LIVE_SESSION {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(self.live_key(&self.0.uid)).arg(pid).arg(json);
            self.enqueue(cmd, None);
            return;
        }
        let ttl = record
            .expires_ms
            .saturating_sub(courier_server::store::now_ms())
            .max(1);
        let mut set = redis::cmd("SET");
        set.arg(self.session_key(pid)).arg(json).arg("PX").arg(ttl);
        self.enqueue(set, None);
        self.forget_live(pid);
    }

    pub(crate) fn forget_session(&self, pid: &str) {
        self.forget_live(pid);
        let mut del = redis::cmd("DEL");
        del.arg(self.session_key(pid));
        self.enqueue(del, None);
    }

    fn forget_live(&self, pid: &str) {
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(self.live_key(&self.0.uid)).arg(pid);
        self.enqueue(hdel, None);
    }

    /// Takes the session `pid` once its connection is gone: a lost connection's session at
    /// once; a live one when its node is gone (crashed), or after that node hands it over on
    /// noticing the loss.
    pub(crate) fn take(&self, pid: &str) -> BoxFuture<'static, Option<SessionRecord>> {
        let this = self.clone();
        let pid = pid.to_owned();
        Box::pin(async move {
            let mut conn = this.0.publisher.get()?.clone();
            let node = pid.get(..this.0.uid.len())?.to_owned();
            let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
            loop {
                let lost: Option<String> = redis::cmd("GETDEL")
                    .arg(this.session_key(&pid))
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                if let Some(json) = lost {
                    return serde_json::from_str(&json).ok();
                }
                if node != this.0.uid && !this.node_alive(&mut conn, &node).await {
                    return this.take_live(&mut conn, &node, &pid).await;
                }
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Whether `node` is connected to Redis (it listens on its own channel while it is).
    async fn node_alive(&self, conn: &mut Link, node: &str) -> bool {
        self.listeners(conn, &self.node_channel(node))
            .await
            .is_none_or(|n| n > 0)
    }

    /// Takes a live session of a node that is gone; the node that removes it wins.
    async fn take_live(&self, conn: &mut Link, node: &str, pid: &str) -> Option<SessionRecord> {
        let key = self.live_key(node);
        let (json, removed): (Option<String>, u32) = redis::pipe()
            .atomic()
            .hget(&key, pid)
            .hdel(&key, pid)
            .query_async(conn)
            .await
            .ok()?;
        if removed == 0 {
            return None;
        }
        let mut record: SessionRecord = serde_json::from_str(&json?).ok()?;
        // Recoverable for a window from now: the crash was noticed at most a window ago.
        record.expires_ms = courier_server::store::now_ms() + self.window().as_millis() as u64;
        Some(record)
    }

    /// The logged broadcasts of `nsp` after `after`; `None` when some were trimmed from the log
    /// or there are too many to replay.
    pub(crate) fn after(
        &self,
        nsp: &str,
        after: u64,
    ) -> BoxFuture<'static, Option<Vec<RecoveryEvent>>> {
        let key = self.log_key(nsp);
        let nsp = nsp.to_owned();
        let conn = self.0.publisher.get().cloned();
        Box::pin(async move {
            let mut conn = conn?;
            let info: redis::RedisResult<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&key)
                .query_async(&mut conn)
                .await;
            let Ok(info) = info else {
                // No log (nothing was ever logged, or it expired): nothing was missed.
                return Some(Vec::new());
            };
            let trimmed = info
                .get("max-deleted-entry-id")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .and_then(|id| offset_of_id(&id))
                .unwrap_or(0);
            if trimmed > after {
                return None;
            }
            let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
                .arg(&key)
                .arg(format!("({}", id_of_offset(after)))
                .arg("+")
                .arg("COUNT")
                .arg(MAX_REPLAY + 1)
                .query_async(&mut conn)
                .await
                .ok()?;
            if entries.len() > MAX_REPLAY {
                return None;
            }
            let rooms = |v: Option<&Vec<u8>>| -> Vec<String> {
                v.and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default()
            };
            entries
                .into_iter()
                .map(|(id, mut fields)| {
                    let offset = offset_of_id(&id)?;
                    Some(RecoveryEvent {
                        offset,
                        ts_ms: offset >> 20,
                        nsp: nsp.clone(),
                        rooms: rooms(fields.get("r")),
                        except: rooms(fields.get("e")),
                        data: Bytes::from(fields.remove("d")?),
                    })
                })
                .collect()
        })
    }
}
