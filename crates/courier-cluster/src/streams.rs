//! Durable streams in Redis, shared by every node: one hub for them too.
//!
//! - A stream is a Redis stream whose entry ids are `0-<seq>`, so one sequence per stream is
//!   assigned by Redis whichever node publishes, and a read from `seq` is an `XRANGE`. Beside
//!   it, a hash with its settings and its bytes, and one key per message id seen within the
//!   dedupe window. A node sends its publishes in groups, one per stream: through a script
//!   (dedupe, quotas, the append, retention by count and bytes), or for a simple stream and no
//!   ids as plain `XADD <stream> 0-*` (see [`Fast`]); then a notice on the streams' channel.
//! - A consumer is a consumer group of that stream (its position and pending entries with
//!   their delivery counts are Redis's), and each node reads for it as a group member named
//!   after the node: Redis hands each entry to one node, the node to one of its subscribed
//!   sockets. An unacknowledged entry is claimed again (`XCLAIM`, which counts the delivery)
//!   by whichever node has a subscriber once it has been idle for its `ack_wait` (doubled per
//!   delivery), or at once if the node holding it is gone; after `max_deliver` deliveries it
//!   goes to the dead-letter stream.
//! - Every key of a stream carries the stream's name as its hash tag, so on a Redis Cluster
//!   its scripts run on its shard. What counts every stream (bytes, names, consumers) is in
//!   other slots: there the scripts check what the node last read and answer what they changed,
//!   which the node applies (see ENSURE_STREAM); on one Redis they count in place.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_server::store::{
    Appended, ConsumerConfig, ConsumerRecord, ConsumerState, ConsumerSummary, Entry, NewEntry,
    PublishCallback, SendLater, Seq, StartPosition, StoreError, StoreOptions, StreamConfig,
    StreamInfo, check_name,
};
use courier_server::{Overview, SharedStreams, Socket, engine::Sid};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redis::Value as Rv;
use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::Cluster;
use crate::link::Link;

/// Entries read for a consumer at a time, at most (fewer when they are large).
const READ_BATCH: usize = 1000;
/// Bytes of deliveries one consumer may have out with this node's subscribers.
const MAX_BYTES_IN_FLIGHT: u64 = 8 << 20;
/// How often a consumer with subscribers looks for entries that others left unacknowledged
/// (a dead node's), and for new ones in case a notice was missed.
const SCAN_EVERY: Duration = Duration::from_secs(1);
/// Acks sent to Redis together at most, when nothing else woke the runner.
const ACK_BATCH: usize = 128;
/// How long such acks wait for others.
const ACK_DELAY: Duration = Duration::from_millis(2);
/// After a failed round trip, the wait before the next.
const RETRY: Duration = Duration::from_secs(1);
/// Idle time given to entries a leaving socket held, so that any node takes them at once.
const RELEASED_IDLE_MS: u64 = 864_000_000;
/// How long a consumer group's member must have been idle (and its node gone) to be dropped.
const GONE_MEMBER_IDLE_MS: u64 = 60_000;
/// Pending entries looked at per scan.
const SCAN_PENDING: usize = 1000;

/// The settings of streams on a cluster: those of a single node's store that apply.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Auto-creation, defaults of new streams, limits and quotas.
    pub store: StoreOptions,
    /// Streams declared in the settings, created (or updated) once Redis answers.
    pub declared: Vec<(String, StreamConfig)>,
    /// Replicas that must have a publish before it is confirmed (`WAIT`); 0: the primary.
    pub wait_replicas: u32,
    /// Longest wait for them.
    pub wait_timeout: Duration,
}

/// A script invocation with these keys.
macro_rules! keys {
    ($inv:expr, $($k:expr),*) => {{ let mut i = $inv; $( i.key($k); )* i }};
}

/// What the scripts count about every stream: on one Redis, KEYS[3] (bytes of every stream),
/// KEYS[4] (the names of every stream) and KEYS[5] (how many consumers), in the script. On a
/// Redis Cluster those keys are in other slots than the stream's, out of a script's reach:
/// ARGV[1] then holds what the node last read of them, `<bytes> <streams> <consumers>`, and
/// `finish` answers the script's result with what it changed, for the node to apply (see
/// [`RedisStreams::settle`]).
///
/// Then ENSURE_STREAM: creates a stream if it does not exist (KEYS[2] its hash), with the
/// settings in ARGV[5..11]; ARGV[4] = 1 allows it, ARGV[12] is `max_streams` (0: none),
/// ARGV[13] the name. Returns an error table, or nil when the stream is there.
const ENSURE_STREAM: &str = r#"
local sharded = (ARGV[1] or '') ~= ''
local known = {}
for n in string.gmatch(ARGV[1] or '', '%d+') do known[#known + 1] = tonumber(n) end
local changed = {0, 0, 0}
local function all_bytes()
  if sharded then return known[1] + changed[1] end
  return tonumber(redis.call('GET', KEYS[3]) or '0')
end
local function add_bytes(n)
  -- (Redis refuses `-0`, which is what `-x` of a zero is in Lua.)
  if n == 0 then return all_bytes() end
  if sharded then
    changed[1] = changed[1] + n
    return known[1] + changed[1]
  end
  return redis.call('INCRBY', KEYS[3], n)
end
local function consumer_count()
  if sharded then return known[3] end
  return tonumber(redis.call('GET', KEYS[5]) or '0')
end
local function add_consumers(n)
  if sharded then changed[3] = n else redis.call('INCRBY', KEYS[5], n) end
end
local function finish(r)
  if sharded then return {r, changed[1], changed[2], changed[3]} end
  return r
end
-- Streams listed but this one, against `max_streams`.
local function other_streams()
  if sharded then return known[2] end
  if redis.call('SISMEMBER', KEYS[4], ARGV[13]) == 1 then return 0 end
  return redis.call('SCARD', KEYS[4])
end
local function ensure()
  if redis.call('EXISTS', KEYS[2]) == 1 then return nil end
  if ARGV[4] ~= '1' then return {1, 'stream_not_found', ''} end
  local max = tonumber(ARGV[12])
  if max > 0 and other_streams() >= max then
    return {1, 'too_many_streams', ARGV[12]}
  end
  redis.call('HSET', KEYS[2], 'bytes', 0, 'age', ARGV[5], 'entries', ARGV[6],
    'maxbytes', ARGV[7], 'dedupe', ARGV[8], 'discard', ARGV[9], 'dlq', ARGV[10], 'config', ARGV[11])
  if sharded then changed[2] = 1 else redis.call('SADD', KEYS[4], ARGV[13]) end
  return nil
end
-- The seq of the newest entry ever added to KEYS[1] (0 for none): ids are `0-<seq>`.
local function last_seq()
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return tonumber(string.match(info[i + 1], '%-(%d+)$')) end
  end
  return 0
end
local function size_of(fields)
  local n = 0
  for i = 2, #fields, 2 do
    if fields[i - 1] ~= 't' then n = n + #fields[i] end
  end
  return n
end
-- Removes the oldest entries while the stream is over its count or bytes (KEYS[1] the
-- entries, KEYS[3] the bytes of every stream).
local function trim(maxn, maxb)
  local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes'))
  while (maxn > 0 and redis.call('XLEN', KEYS[1]) > maxn) or (maxb > 0 and bytes > maxb) do
    local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
    if not old then break end
    local s = size_of(old[2])
    redis.call('XDEL', KEYS[1], old[1])
    bytes = redis.call('HINCRBY', KEYS[2], 'bytes', -s)
    add_bytes(-s)
  end
end
"#;

/// `gone_test(spec)`: a function telling whether the node named so is gone.
const GONE: &str = r#"
-- A function telling whether the node named so is gone, from `spec`: "n <prefix>" on one
-- Redis (a node listens on its channel, the prefix and its id, while it is connected), or
-- "g <id> <id> ..." on a Redis Cluster: those the calling node found not listening just before
-- (a sharded channel's listeners are counted on its shard, out of a script's reach).
local function gone_test(spec)
  local how, rest = string.sub(spec, 1, 1), string.sub(spec, 3)
  if how == 'g' then
    local gone = {}
    for id in string.gmatch(rest, '%S+') do gone[id] = true end
    return function(name) return gone[name] == true end
  end
  return function(name) return redis.call('PUBSUB', 'NUMSUB', rest .. name)[2] == 0 end
end
"#;

/// Publishes entries to one stream, in order. KEYS: 1 entries, 2 the stream's hash, 3 bytes of
/// every stream, 4 the list of streams, then per entry its message id's dedupe key (the hash
/// again for an entry without an id). ARGV: 4..13 as ENSURE_STREAM, 14 `max_disk_bytes`, 15 the
/// channel told of new entries, then per entry its event, data and id ('' for none). Returns,
/// per entry, {0, seq, duplicate} or {1, code, detail}, flattened; or one error table for all.
static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{ENSURE_STREAM}{}",
        r#"
local err = ensure()
if err then return finish(err) end
local m = redis.call('HMGET', KEYS[2], 'entries', 'maxbytes', 'discard', 'dedupe', 'bytes')
local maxn, maxb, dedupe, bytes = tonumber(m[1]), tonumber(m[2]), tonumber(m[4]), tonumber(m[5])
local seq = last_seq()
local disk = tonumber(ARGV[14])
local total = all_bytes()
local len = redis.call('XLEN', KEYS[1])
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local added, grown = 0, 0
for i = 0, (#ARGV - 15) / 3 - 1 do
  local e, d, id = ARGV[16 + 3 * i], ARGV[17 + 3 * i], ARGV[18 + 3 * i]
  local key = KEYS[5 + i]
  local seen = id ~= '' and redis.call('GET', key)
  local size = #e + #d + #id
  if seen then
    out[#out + 1] = 0; out[#out + 1] = tonumber(seen); out[#out + 1] = 1
  elseif disk > 0 and total + size > disk then
    out[#out + 1] = 1; out[#out + 1] = 'storage_full'; out[#out + 1] = 'over max_disk_bytes'
  elseif m[3] == 'new' and maxn > 0 and len >= maxn then
    out[#out + 1] = 1; out[#out + 1] = 'storage_full'; out[#out + 1] = 'the stream is at its max_entries'
  elseif m[3] == 'new' and maxb > 0 and bytes + size > maxb then
    out[#out + 1] = 1; out[#out + 1] = 'storage_full'; out[#out + 1] = 'the stream is at its max_bytes'
  else
    seq = seq + 1
    if id ~= '' then
      redis.call('XADD', KEYS[1], '0-' .. seq, 'e', e, 'd', d, 't', ms, 'i', id)
      if dedupe > 0 then redis.call('SET', key, seq, 'PX', dedupe) end
    else
      redis.call('XADD', KEYS[1], '0-' .. seq, 'e', e, 'd', d, 't', ms)
    end
    bytes = bytes + size
    total = total + size
    len = len + 1
    added = added + 1
    grown = grown + size
    out[#out + 1] = 0; out[#out + 1] = seq; out[#out + 1] = 0
  end
end
if added > 0 then
  redis.call('HINCRBY', KEYS[2], 'bytes', grown)
  total = add_bytes(grown)
  if m[3] ~= 'new' then trim(maxn, maxb) end
  -- On a Redis Cluster the channel is in another slot: the node tells it.
  if not sharded then redis.call('PUBLISH', ARGV[15], ARGV[13]) end
end
-- What a node needs to append to this stream without the script (see `Fast`).
local simple = 0
if m[3] ~= 'new' and maxn == 0 then simple = 1 end
out[#out + 1] = simple; out[#out + 1] = maxb; out[#out + 1] = total
return finish(out)
"#
    ))
});

/// A stream's last seq, entries kept and first entry's id ('' for none), or nil if there is no
/// such stream. KEYS: 1 entries, 2 hash.
static STREAM_NUMBERS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{ENSURE_STREAM}{}",
        r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return nil end
local len, first = 0, ''
if redis.call('EXISTS', KEYS[1]) == 1 then
  len = redis.call('XLEN', KEYS[1])
  local f = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if f then first = f[1] end
end
return {last_seq(), len, first}
"#
    ))
});

/// Creates a stream or changes its settings (KEYS and ARGV as ENSURE_STREAM, ARGV[4] = 1),
/// then applies its retention. Returns {0} or an error table.
static CREATE_STREAM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{ENSURE_STREAM}{}",
        r#"
local err = ensure()
if err then return finish(err) end
redis.call('HSET', KEYS[2], 'age', ARGV[5], 'entries', ARGV[6], 'maxbytes', ARGV[7],
  'dedupe', ARGV[8], 'discard', ARGV[9], 'dlq', ARGV[10], 'config', ARGV[11])
if ARGV[9] ~= 'new' then trim(tonumber(ARGV[6]), tonumber(ARGV[7])) end
return finish({0})
"#
    ))
});

/// Removes entries older than the stream's `max_age_ms` (at most 1000 a call), and for a
/// `discard = old` stream those over its count or bytes. KEYS: 1 entries, 2 hash, 3 bytes of
/// every stream; ARGV[1] as in ENSURE_STREAM. With ARGV[2] (which nodes are gone, as GONE's
/// `gone_test` reads it), also forgets the consumer groups' members that hold nothing, were
/// idle ARGV[3] ms and whose node is gone: every node that ever read for a group is one, and
/// a node's id is new at each start.
static RETAIN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{ENSURE_STREAM}{GONE}{}",
        r#"
local m = redis.call('HMGET', KEYS[2], 'age', 'entries', 'maxbytes', 'discard')
if not m[1] then return finish(0) end
local age = tonumber(m[1])
local removed = 0
if age > 0 then
  local t = redis.call('TIME')
  local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age
  for _, old in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1000)) do
    local f = old[2]
    local at = 0
    for i = 2, #f, 2 do if f[i - 1] == 't' then at = tonumber(f[i]) end end
    if at >= cutoff then break end
    local s = size_of(f)
    redis.call('XDEL', KEYS[1], old[1])
    redis.call('HINCRBY', KEYS[2], 'bytes', -s)
    add_bytes(-s)
    removed = removed + 1
  end
end
if m[4] ~= 'new' then trim(tonumber(m[2]), tonumber(m[3])) end
if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  local gone = gone_test(ARGV[2])
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local group = g[2]
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
      local f = {}
      for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
      if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[3]) and gone(f['name']) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, f['name'])
      end
    end
  end
end
return finish(removed)
"#
    ))
});

/// Removes every entry. KEYS: 1 entries, 2 hash, 3 bytes of every stream; ARGV[1] as in
/// ENSURE_STREAM. Returns how many, or -1 for no such stream.
static PURGE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{ENSURE_STREAM}{}",
        r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return finish(-1) end
local n = redis.call('XLEN', KEYS[1])
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes'))
if n > 0 then redis.call('XTRIM', KEYS[1], 'MAXLEN', 0) end
redis.call('HSET', KEYS[2], 'bytes', 0)
add_bytes(-bytes)
return finish(n)
"#
    ))
});

/// Creates a consumer unless it exists (a consumer group starting at ARGV[16], with its
/// settings ARGV[15] in KEYS[6]), creating the stream as ENSURE_STREAM says. KEYS: 1 entries,
/// 2 hash, 3 bytes, 4 list of streams, 5 count of consumers, 6 consumers' settings. ARGV:
/// 4..13 as ENSURE_STREAM, 14 the consumer, 17 `max_consumers`. Returns {0, waiting} or an
/// error table.
static ENSURE_CONSUMER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{ENSURE_STREAM}{}",
        r#"
local err = ensure()
if err then return finish(err) end
local name = ARGV[14]
if redis.call('HEXISTS', KEYS[6], name) == 0 then
  local max = tonumber(ARGV[17])
  if max > 0 and consumer_count() >= max then
    return finish({1, 'too_many_consumers', ARGV[17]})
  end
  local start = ARGV[16]
  if start == 'new' then start = '$' end
  local ok = redis.pcall('XGROUP', 'CREATE', KEYS[1], name, start, 'MKSTREAM')
  if type(ok) == 'table' and ok.err then
    -- A group left by a consumer deleted half-way: it starts afresh.
    redis.call('XGROUP', 'DESTROY', KEYS[1], name)
    redis.call('XGROUP', 'CREATE', KEYS[1], name, start, 'MKSTREAM')
  end
  redis.call('HSET', KEYS[6], name, ARGV[15])
  add_consumers(1)
end
local last = last_seq()
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == name then
    local delivered = tonumber(string.match(f['last-delivered-id'], '%-(%d+)$'))
    -- Entries removed before the consumer got them do not wait for it.
    local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
    local floor = last
    if first then floor = tonumber(string.match(first[1], '%-(%d+)$')) - 1 end
    if delivered < floor then delivered = floor end
    local waiting = last - delivered
    if waiting < 0 then waiting = 0 end
    return finish({0, waiting + f['pending']})
  end
end
return finish({0, 0})
"#
    ))
});

/// Deletes a consumer. KEYS: 1 entries, 5 count of consumers, 6 consumers' settings (2..4
/// unused); ARGV[1] as in ENSURE_STREAM, ARGV[14] the consumer. Returns 1 if it existed.
static DELETE_CONSUMER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{ENSURE_STREAM}{}",
        r#"
local name = ARGV[14]
if redis.call('HDEL', KEYS[6], name) == 0 then return finish(0) end
redis.call('HDEL', KEYS[6], name .. '#r', name .. '#d')
add_consumers(-1)
redis.pcall('XGROUP', 'DESTROY', KEYS[1], name)
return finish(1)
"#
    ))
});

/// Reads new entries for this node: at most ARGV[3] pending in the whole group, and of that
/// this node's share: the group members that hold entries or read in the last few seconds (the
/// nodes with subscribers) split `max_ack_pending` evenly, so that one node does not take a backlog's
/// whole window for its own sockets. At most ARGV[4] read. KEYS[1] entries; ARGV: 1 group, 2
/// this node. Returns the entries, or nil.
static READ_NEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local max = tonumber(ARGV[3])
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local room = max - p[1]
if room <= 0 then return nil end
local active, mine = 1, 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] == ARGV[2] then
    mine = f['pending']
  elseif f['idle'] < 3000 or f['pending'] > 0 then
    active = active + 1
  end
end
local share = math.ceil(max / active) - mine
if share < room then room = share end
if room <= 0 then return nil end
if room > tonumber(ARGV[4]) then room = tonumber(ARGV[4]) end
local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', room, 'STREAMS', KEYS[1], '>')
if not r then return nil end
return r[1][2]
"#,
    )
});

/// Claims for this node the group's entries that waited long enough for their ack: idle at
/// least ARGV[3] ms doubled per earlier delivery (at most 16 times), or held by a node that is
/// gone (ARGV[7], as GONE's `gone_test` reads it), or (ARGV[8] = 1)
/// held by this node without its knowing. KEYS: 1 entries, 2 the consumers' settings; ARGV:
/// 1 group, 2 this node, 3 ack_wait, 4 max_deliver, 5 most to claim, 6 pending entries to
/// look at, 7 and on as said. Returns {id, fields, deliveries, dead} per entry claimed; `dead`
/// (1) says it had its `max_deliver` deliveries and goes to the dead letters.
static CLAIM_DUE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{GONE}{}",
        r#"
local gone = gone_test(ARGV[7])
local wait, maxd, most = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
local function claim(id, count)
  local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
  local e = got[1]
  if e and e[2] then
    local dead = 0
    if count >= maxd then dead = 1 else redis.call('HINCRBY', KEYS[2], ARGV[1] .. '#r', 1) end
    table.insert(out, {e[1], e[2], count + 1 - dead, dead})
  else
    -- Removed by retention or a purge: nothing left to deliver.
    redis.call('XACK', KEYS[1], ARGV[1], id)
  end
end
-- With ARGV[8] = 1, this node's own entries but those listed from ARGV[9] on: read for it
-- by a round trip whose answer was lost. First, so that it sees none claimed just now.
if ARGV[8] == '1' and #out < most then
  local known = {}
  for i = 9, #ARGV do known[ARGV[i]] = true end
  for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[6], ARGV[2])) do
    if #out >= most then break end
    if not known[p[1]] then claim(p[1], p[4]) end
  end
end
-- Whatever a gone node held, whatever its idle time.
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if #out < most and f['pending'] > 0 and f['name'] ~= ARGV[2] and gone(f['name']) then
    for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', most - #out, f['name'])) do
      claim(p[1], p[4])
    end
  end
end
-- Entries idle for their wait: ack_wait doubled per earlier delivery, at most 16 times (only
-- those idle for one ack_wait at least are looked at, so fresh deliveries fill no page).
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', wait, '-', '+', ARGV[6])) do
  if #out >= most then break end
  local shift = p[4] - 1
  if shift > 4 then shift = 4 end
  if p[3] >= wait * (2 ^ shift) then claim(p[1], p[4]) end
end
return out
"#
    ))
});

/// Takes back entries from a socket that left: their idle time becomes so long that any
/// node with a subscriber sends them at its next look. KEYS[1] entries; ARGV: 1 group, 2 this
/// node, 3 the idle time, 4.. the ids.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
args[#args + 1] = 'IDLE'
args[#args + 1] = ARGV[3]
args[#args + 1] = 'JUSTID'
return #redis.call(unpack(args))
"#,
    )
});

/// ARGV[4..13] of ENSURE_STREAM: whether the stream may be created, its settings, the
/// `max_streams` limit and its name.
fn stream_args(
    create: bool,
    config: &StreamConfig,
    max_streams: usize,
    stream: &str,
) -> [String; 10] {
    let discard = match config.discard {
        courier_server::store::Discard::Old => "old",
        courier_server::store::Discard::New => "new",
    };
    [
        if create { "1" } else { "0" }.to_owned(),
        config.max_age_ms.to_string(),
        config.max_entries.to_string(),
        config.max_bytes.to_string(),
        config.dedupe_window_ms.to_string(),
        discard.to_owned(),
        config.dead_letter.clone().unwrap_or_default(),
        serde_json::to_string(config).expect("settings serialize"),
        max_streams.to_string(),
        stream.to_owned(),
    ]
}

/// `max_queued_bytes` in the units of the queue's semaphore (KiB), as a node's store counts it.
fn queue_capacity(options: &StoreOptions) -> u32 {
    (options.max_queued_bytes / 1024).clamp(1, u64::from(u32::MAX >> 4)) as u32
}

/// Publishes sent to Redis in one group at most.
const MAX_PUBLISH_BATCH: usize = 1024;

/// A publish waiting for the publishing task.
pub(crate) struct Publish {
    stream: String,
    entry: NewEntry,
    dead_letter: bool,
    /// Called with the answer, on the publishing task: every answer of a group in one burst, so
    /// that a connection's acks go out in one write.
    done: Box<dyn FnOnce(Result<Appended, StoreError>) + Send>,
    /// Its share of `max_queued_bytes`, given back with the answer.
    _queued: OwnedSemaphorePermit,
}

/// The replies of each group of publishes, from `results`: one per group (a pipeline each), or
/// one for all (one pipeline of every group's commands), `sizes` replies each.
fn per_group(
    results: Vec<redis::RedisResult<Vec<Rv>>>,
    sizes: Vec<usize>,
) -> Vec<redis::RedisResult<Vec<Rv>>> {
    if results.len() == sizes.len() {
        return results;
    }
    match results.into_iter().next() {
        Some(Ok(all)) => {
            let mut all = all.into_iter();
            sizes
                .into_iter()
                .map(|n| Ok(all.by_ref().take(n).collect()))
                .collect()
        }
        Some(Err(e)) => sizes.iter().map(|_| Err(e.clone())).collect(),
        None => Vec::new(),
    }
}

/// Answers every publish of `groups` with `e`.
fn fail_groups(groups: Vec<(String, bool, Vec<Publish>)>, e: &StoreError) {
    for (_, _, list) in groups {
        for p in list {
            (p.done)(Err(e.clone()));
        }
    }
}

/// Answers each publish of a group from the script's flattened answer.
///
/// Returns what the script said of the stream: whether it is simple (see [`Fast`]), its
/// `max_bytes`, and the bytes of every stream.
fn answer_group(
    stream: &str,
    list: Vec<Publish>,
    reply: Rv,
    replicated: &Result<(), StoreError>,
) -> Option<(bool, u64, u64)> {
    let items = match answer(reply, stream) {
        Ok(items) => items,
        Err(e) => {
            for p in list {
                (p.done)(Err(e.clone()));
            }
            return None;
        }
    };
    let n = list.len() * 3;
    let about = match items.get(n..n + 3) {
        Some([simple, maxb, total]) => Some((
            int(simple) == Some(1),
            int(maxb).unwrap_or(0) as u64,
            int(total).unwrap_or(0) as u64,
        )),
        _ => None,
    };
    for (p, r) in list.into_iter().zip(items.chunks(3)) {
        let result = match r {
            [status, a, b] if int(status) == Some(0) => {
                let appended = Appended {
                    seq: int(a).unwrap_or(0) as Seq,
                    duplicate: int(b) == Some(1),
                };
                match replicated {
                    Err(e) if !appended.duplicate => Err(e.clone()),
                    _ => Ok(appended),
                }
            }
            [_, code, detail] => Err(script_error(
                &text(code).unwrap_or_default(),
                &text(detail).unwrap_or_default(),
                stream,
            )),
            _ => Err(StoreError::io("Redis script: short answer")),
        };
        (p.done)(result);
    }
    about
}

/// What a node knows of a stream that lets it append without the publish script: no
/// `max_entries`, `discard = "old"` (so nothing is refused but by `max_disk_bytes`), learned
/// from the script's last answer, trusted for [`FAST_FOR`]. A group of publishes without
/// message ids to such a stream is sent as plain `XADD <stream> 0-* ...` (Redis gives the next
/// seq itself), then its bytes; retention by bytes follows at once if they passed `max_bytes`.
/// A change of settings on another node is seen within `FAST_FOR`.
#[derive(Debug, Clone, Copy)]
struct Fast {
    max_bytes: u64,
    until: Instant,
}

/// How long a stream's [`Fast`] is trusted.
const FAST_FOR: Duration = Duration::from_secs(1);

/// A group of publishes to one stream, and whether it may go without the script.
type Group = (String, bool, Vec<Publish>, Option<Fast>);

/// A stream with its consumers, as [`RedisStreams::consumer_state`] read them.
struct StreamState {
    info: StreamInfo,
    /// The consumers' hash: `<name>` -> settings, `<name>#r` and `#d` -> counts.
    settings: HashMap<String, String>,
    /// Per consumer group: last delivered seq, entries pending.
    by_group: HashMap<String, (Seq, u64)>,
}

impl StreamState {
    /// The consumers, by name, with their settings.
    fn consumers(&self) -> impl Iterator<Item = (&str, ConsumerConfig)> {
        self.settings.iter().filter_map(|(name, v)| {
            if name.ends_with("#r") || name.ends_with("#d") {
                return None;
            }
            Some((name.as_str(), serde_json::from_str(v).ok()?))
        })
    }

    /// A consumer's numbers. One that delivered nothing of a removed range stands at the
    /// stream's first entry, as on one node.
    fn summary(&self, name: &str) -> ConsumerSummary {
        let count = |suffix: &str| {
            self.settings
                .get(&format!("{name}{suffix}"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let (delivered, pending) = self.by_group.get(name).copied().unwrap_or((0, 0));
        ConsumerSummary {
            delivered: delivered.max(self.info.first_seq.saturating_sub(1)),
            pending,
            redelivered: count("#r"),
            dead_lettered: count("#d"),
        }
    }
}

/// The keys of one stream, every one with the stream's name as its hash tag.
struct Keys {
    entries: String,
    meta: String,
    consumers: String,
    tag: String,
}

/// Durable streams on a cluster's Redis. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RedisStreams(Arc<Inner>);

struct Inner {
    cluster: Cluster,
    options: StreamOptions,
    /// To the task that sends publishes to Redis in groups.
    publishes: mpsc::UnboundedSender<Publish>,
    /// `max_queued_bytes` (in KiB) for publishes waiting for Redis, as in a node's store.
    queued: Arc<Semaphore>,
    /// Streams this node may append to without the script, by name.
    fast: Mutex<HashMap<String, Fast>>,
    /// Bytes of every stream, as Redis last said.
    disk_total: AtomicU64,
    /// On a Redis Cluster, how many streams and consumers there are, as last read (see
    /// ENSURE_STREAM).
    stream_total: AtomicU64,
    consumer_total: AtomicU64,
    /// Runners of this node, by (stream, consumer).
    runners: Mutex<HashMap<(String, String), RunnerHandle>>,
}

#[derive(Clone)]
struct RunnerHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    wake: Arc<Notify>,
    /// Look for entries due again at the next wake, not only new ones.
    scan: Arc<AtomicBool>,
}

enum Cmd {
    Attach(Socket),
    Detach(Sid),
    Acked(Seq),
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("Redis: {e}"))
}

/// The error an error table of a script stands for.
fn script_error(code: &str, detail: &str, stream: &str) -> StoreError {
    let limit = || detail.parse().unwrap_or(0);
    match code {
        "stream_not_found" => StoreError::StreamNotFound(stream.to_owned()),
        "too_many_streams" => StoreError::TooManyStreams(limit()),
        "too_many_consumers" => StoreError::TooManyConsumers(limit()),
        "storage_full" => StoreError::StorageFull(detail.to_owned()),
        other => StoreError::io(format!("Redis script: {other} {detail}")),
    }
}

fn int(v: &Rv) -> Option<i64> {
    match v {
        Rv::Int(n) => Some(*n),
        Rv::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Rv::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Rv) -> Option<String> {
    match v {
        Rv::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Rv::SimpleString(s) => Some(s.clone()),
        Rv::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The seq of an entry id `0-<seq>`.
fn seq_of(id: &str) -> Option<Seq> {
    id.split_once('-')?.1.parse().ok()
}

/// The entry id of `seq`: a stream's entries are `0-1`, `0-2`, ..., so that `XADD` with `0-*`
/// gives the next seq by itself.
fn id_of(seq: Seq) -> String {
    format!("0-{seq}")
}

/// A script's answer `{0, ...}`, or its error table as an error.
fn answer(v: Rv, stream: &str) -> Result<Vec<Rv>, StoreError> {
    let Rv::Array(items) = v else {
        return Err(StoreError::io("Redis script: unexpected answer"));
    };
    if items.first().and_then(int) == Some(1) {
        let code = items.get(1).and_then(text).unwrap_or_default();
        let detail = items.get(2).and_then(text).unwrap_or_default();
        return Err(script_error(&code, &detail, stream));
    }
    Ok(items)
}

/// One entry from `[id, [field, value, ...]]`.
fn entry_of(v: &Rv) -> Option<Entry> {
    let Rv::Array(pair) = v else { return None };
    let seq = seq_of(&text(pair.first()?)?)?;
    let Rv::Array(fields) = pair.get(1)? else {
        return None;
    };
    entry_from_fields(seq, fields)
}

fn entry_from_fields(seq: Seq, fields: &[Rv]) -> Option<Entry> {
    let mut e = Entry {
        seq,
        ts_ms: 0,
        id: None,
        event: String::new(),
        data: Bytes::new(),
    };
    for kv in fields.chunks(2) {
        let [k, v] = kv else { break };
        match text(k)?.as_str() {
            "e" => e.event = text(v)?,
            "d" => {
                e.data = match v {
                    Rv::BulkString(b) => Bytes::from(b.clone()),
                    other => Bytes::from(text(other)?),
                }
            }
            "i" => e.id = text(v),
            "t" => e.ts_ms = int(v)? as u64,
            _ => {}
        }
    }
    Some(e)
}

/// The field maps of a list of `XINFO` records (arrays of field and value, or maps).
fn fields_of(v: &Rv) -> Vec<HashMap<String, Rv>> {
    let Rv::Array(list) = v else {
        return Vec::new();
    };
    list.iter()
        .map(|r| {
            let pairs: Vec<(&Rv, &Rv)> = match r {
                Rv::Array(f) => f
                    .chunks(2)
                    .filter_map(|c| Some((c.first()?, c.get(1)?)))
                    .collect(),
                Rv::Map(m) => m.iter().map(|(a, b)| (a, b)).collect(),
                _ => Vec::new(),
            };
            pairs
                .into_iter()
                .filter_map(|(k, v)| Some((text(k)?, v.clone())))
                .collect()
        })
        .collect()
}

fn entries_of(v: &Rv) -> Vec<Entry> {
    match v {
        Rv::Array(list) => list.iter().filter_map(entry_of).collect(),
        _ => Vec::new(),
    }
}

impl RedisStreams {
    /// The streams, and the receiving end for [`RedisStreams::publish_loop`].
    pub(crate) fn new(
        cluster: Cluster,
        options: StreamOptions,
    ) -> (RedisStreams, mpsc::UnboundedReceiver<Publish>) {
        let (publishes, rx) = mpsc::unbounded_channel();
        let capacity = queue_capacity(&options.store) as usize;
        let streams = RedisStreams(Arc::new(Inner {
            cluster,
            options,
            publishes,
            queued: Arc::new(Semaphore::new(capacity)),
            fast: Mutex::new(HashMap::new()),
            disk_total: Default::default(),
            stream_total: Default::default(),
            consumer_total: Default::default(),
            runners: Mutex::new(HashMap::new()),
        }));
        (streams, rx)
    }

    fn prefix(&self) -> &str {
        &self.0.cluster.0.key
    }

    fn keys(&self, stream: &str) -> Keys {
        // The hash tag is the part between the first `{` and the next `}`: braces in a name
        // are escaped so that the tag is always the whole name.
        let mut escaped = String::with_capacity(stream.len() + 2);
        for c in stream.chars() {
            match c {
                '%' => escaped.push_str("%25"),
                '{' => escaped.push_str("%7B"),
                '}' => escaped.push_str("%7D"),
                c => escaped.push(c),
            }
        }
        let p = self.prefix();
        let tag = format!("{{{escaped}}}");
        Keys {
            entries: format!("{p}-courier-stream#{tag}"),
            meta: format!("{p}-courier-stream-meta#{tag}"),
            consumers: format!("{p}-courier-stream-consumers#{tag}"),
            tag,
        }
    }

    fn dedupe_key(&self, keys: &Keys, id: &str) -> String {
        format!("{}-courier-stream-id#{}#{id}", self.prefix(), keys.tag)
    }

    fn bytes_key(&self) -> String {
        format!("{}-courier-stream-bytes", self.prefix())
    }

    fn list_key(&self) -> String {
        format!("{}-courier-streams", self.prefix())
    }

    fn consumer_count_key(&self) -> String {
        format!("{}-courier-stream-consumer-count", self.prefix())
    }

    /// KEYS[3..5] of the scripts: the keys about every stream, or on a Redis Cluster (where
    /// the scripts do not touch them) the stream's own hash in their place, in its slot.
    fn every_keys(&self, k: &Keys) -> [String; 3] {
        if self.sharded() {
            return [k.meta.clone(), k.meta.clone(), k.meta.clone()];
        }
        [self.bytes_key(), self.list_key(), self.consumer_count_key()]
    }

    fn sharded(&self) -> bool {
        self.0.cluster.0.sharded
    }

    /// ARGV[1] of the scripts with ENSURE_STREAM: empty on one Redis; on a Redis Cluster what
    /// this node last read of every stream's bytes, the streams and the consumers.
    fn every_arg(&self) -> String {
        if !self.sharded() {
            return String::new();
        }
        let i = &self.0;
        format!(
            "{} {} {}",
            i.disk_total.load(Ordering::Relaxed),
            i.stream_total.load(Ordering::Relaxed),
            i.consumer_total.load(Ordering::Relaxed)
        )
    }

    /// A script's answer, less what it changed of every stream's counts on a Redis Cluster,
    /// which this applies: to the keys about every stream (in other slots, so as commands of
    /// their own, after the script) and to what this node knows of them.
    fn settle(&self, v: Rv, stream: &str) -> Rv {
        if !self.sharded() {
            return v;
        }
        let Rv::Array(mut items) = v else {
            return v;
        };
        if items.len() != 4 {
            return Rv::Nil;
        }
        let consumers = int(&items[3]).unwrap_or(0);
        let listed = int(&items[2]) == Some(1);
        let bytes = int(&items[1]).unwrap_or(0);
        self.apply_counts(stream, bytes, listed, consumers);
        items.swap_remove(0)
    }

    /// On a Redis Cluster, counts what a write changed of every stream's bytes, streams and
    /// consumers: at once in what this node knows, and in Redis by commands of their own.
    fn apply_counts(&self, stream: &str, bytes: i64, listed: bool, consumers: i64) {
        let i = &self.0;
        let add = |n: &AtomicU64, d: i64| {
            let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add_signed(d))
            });
        };
        add(&i.disk_total, bytes);
        add(&i.stream_total, i64::from(listed));
        add(&i.consumer_total, consumers);
        let Ok(mut conn) = self.conn() else { return };
        let mut cmds = Vec::new();
        if bytes != 0 {
            cmds.push(
                redis::cmd("INCRBY")
                    .arg(self.bytes_key())
                    .arg(bytes)
                    .clone(),
            );
        }
        if listed {
            cmds.push(redis::cmd("SADD").arg(self.list_key()).arg(stream).clone());
        }
        if consumers != 0 {
            let key = self.consumer_count_key();
            cmds.push(redis::cmd("INCRBY").arg(key).arg(consumers).clone());
        }
        if cmds.is_empty() {
            return;
        }
        let stream = stream.to_owned();
        tokio::spawn(async move {
            for cmd in cmds {
                if let Err(e) = cmd.exec_async(&mut conn).await {
                    tracing::warn!(stream, error = %e, "the counts of every stream not updated");
                }
            }
        });
    }

    /// On a Redis Cluster, reads the counts of every stream the scripts check limits against.
    async fn read_counts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let bytes: Option<u64> = redis::cmd("GET")
            .arg(self.bytes_key())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        let streams: u64 = redis::cmd("SCARD")
            .arg(self.list_key())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        let consumers: Option<u64> = redis::cmd("GET")
            .arg(self.consumer_count_key())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        let i = &self.0;
        i.disk_total.store(bytes.unwrap_or(0), Ordering::Relaxed);
        i.stream_total.store(streams, Ordering::Relaxed);
        i.consumer_total
            .store(consumers.unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// Which of the nodes with members in `stream`'s consumer groups (`groups`, or every
    /// group) are gone, for GONE's `gone_test`. On one Redis the script asks itself; on a Redis
    /// Cluster this asks first, of the members `wanted` picks by their pending entries and idle
    /// time.
    async fn gone_spec(
        &self,
        conn: &mut Link,
        k: &Keys,
        groups: Option<&str>,
        wanted: impl Fn(i64, i64) -> bool,
    ) -> Result<String, StoreError> {
        if !self.sharded() {
            return Ok(format!("n {}", self.0.cluster.node_channel("")));
        }
        let fail = |e| self.failed(e);
        let groups = match groups {
            Some(g) => vec![g.to_owned()],
            None => {
                let list: Rv = match redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&k.entries)
                    .query_async(conn)
                    .await
                {
                    Ok(list) => list,
                    // No such key: no groups.
                    Err(e) if e.code() == Some("ERR") => Rv::Nil,
                    Err(e) => return Err(fail(e)),
                };
                fields_of(&list)
                    .iter()
                    .filter_map(|f| f.get("name").and_then(text))
                    .collect()
            }
        };
        let mut nodes = Vec::new();
        for group in groups {
            let list: Rv = match redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&k.entries)
                .arg(&group)
                .query_async(conn)
                .await
            {
                Ok(list) => list,
                // Deleted meanwhile: the script that follows says so.
                Err(e) if is_nogroup(&e) || e.code() == Some("ERR") => continue,
                Err(e) => return Err(fail(e)),
            };
            for f in fields_of(&list) {
                let (Some(name), Some(pending), Some(idle)) = (
                    f.get("name").and_then(text),
                    f.get("pending").and_then(int),
                    f.get("idle").and_then(int),
                ) else {
                    continue;
                };
                if name != self.node() && wanted(pending, idle) && !nodes.contains(&name) {
                    nodes.push(name);
                }
            }
        }
        if nodes.is_empty() {
            return Ok("g".to_owned());
        }
        let c = &self.0.cluster;
        let channels: Vec<String> = nodes.iter().map(|n| c.node_channel(n)).collect();
        let counts = c
            .listeners_of(conn, &channels)
            .await
            .ok_or_else(|| StoreError::Unavailable("Redis did not count listeners".into()))?;
        let gone: Vec<String> = nodes
            .into_iter()
            .zip(channels)
            .filter(|(_, ch)| counts.get(ch).copied().unwrap_or(0) == 0)
            .map(|(n, _)| n)
            .collect();
        Ok(format!("g {}", gone.join(" ")))
    }

    /// The channel told of every stream's new entries (the stream's name).
    pub(crate) fn channel(prefix: &str) -> String {
        format!("{prefix}-courier-stream-new")
    }

    /// A failed round trip: `unavailable`, and if the link itself failed, the node takes Redis
    /// for away (so that what follows is answered at once) until its heartbeat sees it back.
    fn failed(&self, e: redis::RedisError) -> StoreError {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            self.0.cluster.lost_redis(&e);
        }
        unavailable(e)
    }

    /// The connection, unless Redis is away: then the answer is `unavailable` at once.
    fn conn(&self) -> Result<Link, StoreError> {
        let c = &self.0.cluster.0;
        match c.streams.get() {
            Some(conn) if c.up.load(Ordering::Relaxed) => Ok(conn.clone()),
            _ => Err(StoreError::Unavailable("Redis is not reachable".into())),
        }
    }

    fn node(&self) -> &str {
        &self.0.cluster.0.uid
    }

    async fn publish_entry(
        &self,
        stream: String,
        entry: NewEntry,
        dead_letter: bool,
    ) -> Result<Appended, StoreError> {
        let (done, answer) = oneshot::channel();
        let done = Box::new(move |r| {
            let _ = done.send(r);
        });
        if let Some(later) = self.queue_publish(stream, entry, dead_letter, done) {
            later.await;
        }
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Queues a publish for the publishing task, or answers it at once if it cannot be;
    /// `Some(future)` when the queue holds `max_queued_bytes` already: driving it queues the
    /// publish once there is room.
    fn queue_publish(
        &self,
        stream: String,
        entry: NewEntry,
        dead_letter: bool,
        done: Box<dyn FnOnce(Result<Appended, StoreError>) + Send>,
    ) -> Option<SendLater> {
        let o = &self.0.options.store;
        let size = entry.size();
        let refused = check_name(&stream).err().or_else(|| {
            (size as usize > o.max_entry_bytes)
                .then(|| StoreError::TooLarge(size as usize, o.max_entry_bytes))
        });
        if let Some(e) = refused.or_else(|| self.conn().err()) {
            done(Err(e));
            return None;
        }
        let units = size.div_ceil(1024).clamp(1, u64::from(queue_capacity(o))) as u32;
        let queue = move |this: &RedisStreams, permit| {
            let request = Publish {
                stream,
                entry,
                dead_letter,
                done,
                _queued: permit,
            };
            if let Err(mpsc::error::SendError(p)) = this.0.publishes.send(request) {
                (p.done)(Err(StoreError::Closed));
            }
        };
        match self.0.queued.clone().try_acquire_many_owned(units) {
            Ok(permit) => {
                queue(self, permit);
                None
            }
            Err(_) => {
                let this = self.clone();
                Some(Box::pin(async move {
                    // The semaphore is never closed.
                    if let Ok(permit) = this.0.queued.clone().acquire_many_owned(units).await {
                        queue(&this, permit);
                    }
                }))
            }
        }
    }

    /// Sends the waiting publishes to Redis: one script per stream for everything queued
    /// meanwhile, the streams' scripts in one round trip, then the next group. Redis appends
    /// (and fsyncs) a group at once, and the node pays one round trip for all of it.
    pub(crate) async fn publish_loop(self, mut rx: mpsc::UnboundedReceiver<Publish>) {
        // One group at a time: groups reach Redis in the order their publishes came, so seqs
        // follow that order (with several in flight, a later group could be applied first).
        // What arrives meanwhile makes the next group.
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, MAX_PUBLISH_BATCH).await > 0 {
            self.clone().publish_group(std::mem::take(&mut batch)).await;
        }
    }

    /// Sends one group of publishes and answers each.
    async fn publish_group(self, batch: Vec<Publish>) {
        let mut groups: Vec<(String, bool, Vec<Publish>)> = Vec::new();
        for p in batch {
            match groups
                .iter_mut()
                .find(|(s, dl, _)| *s == p.stream && *dl == p.dead_letter)
            {
                Some((_, _, list)) => list.push(p),
                None => groups.push((p.stream.clone(), p.dead_letter, vec![p])),
            }
        }
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return fail_groups(groups, &e),
        };
        let (fast, slow): (Vec<Group>, Vec<Group>) = groups
            .into_iter()
            .map(|(stream, dead_letter, list)| {
                let fast = if dead_letter {
                    None
                } else {
                    self.fast_for(&stream, &list)
                };
                (stream, dead_letter, list, fast)
            })
            .partition(|g| g.3.is_some());
        // Separate pipelines: the scripted one is sent again after Redis forgot the script,
        // which must not repeat the plain appends.
        tokio::join!(
            self.append_fast(conn.clone(), fast),
            self.append_scripted(conn, slow)
        );
    }

    /// The stream's [`Fast`] if `list` may go without the script.
    fn fast_for(&self, stream: &str, list: &[Publish]) -> Option<Fast> {
        if list.iter().any(|p| p.entry.id.is_some()) {
            return None;
        }
        let fast = *self.0.fast.lock().get(stream)?;
        if fast.until < Instant::now() {
            return None;
        }
        let max = self.0.options.store.max_disk_bytes;
        let adding: u64 = list.iter().map(|p| p.entry.size()).sum();
        let total = self.0.disk_total.load(Ordering::Relaxed);
        (max == 0 || total + adding <= max).then_some(fast)
    }

    /// Appends groups to simple streams with plain commands: one pipeline for all of them, or
    /// on a Redis Cluster one per stream (a pipeline keeps to one slot).
    async fn append_fast(&self, conn: Link, groups: Vec<Group>) {
        if groups.is_empty() {
            return;
        }
        let sharded = self.sharded();
        let now = courier_server::store::now_ms();
        let mut pipes: Vec<redis::Pipeline> = Vec::new();
        for (stream, _, list, _) in &groups {
            if sharded || pipes.is_empty() {
                // In MULTI/EXEC: Redis reads a connection 16 KiB at a time and, with `appendfsync
                // always`, fsyncs after each read that ran commands; queued, a group is run, and
                // fsynced, once.
                let mut pipe = redis::pipe();
                pipe.atomic();
                pipes.push(pipe);
            }
            let pipe = pipes.last_mut().expect("one at least");
            let k = self.keys(stream);
            let mut grown = 0;
            for p in list {
                let e = &p.entry;
                grown += e.size();
                pipe.cmd("XADD")
                    .arg(&k.entries)
                    .arg("0-*")
                    .arg("e")
                    .arg(&e.event)
                    .arg("d")
                    .arg(e.data.as_ref())
                    .arg("t")
                    .arg(now);
            }
            pipe.cmd("HINCRBY").arg(&k.meta).arg("bytes").arg(grown);
            if !sharded {
                pipe.cmd("INCRBY").arg(self.bytes_key()).arg(grown);
                pipe.cmd("PUBLISH")
                    .arg(Self::channel(self.prefix()))
                    .arg(stream)
                    .ignore();
            }
        }
        // Each group's replies: its ids, its bytes, then (on one Redis) every stream's bytes.
        let sizes = groups
            .iter()
            .map(|(_, _, list, _)| list.len() + if sharded { 1 } else { 2 })
            .collect();
        let per_group = per_group(self.query_each(&conn, &pipes).await, sizes);
        let replicated = match self.0.options.wait_replicas {
            0 => Ok(()),
            n => self.wait_replicas(&mut conn.clone(), n).await,
        };
        for ((stream, dead_letter, list, fast), replies) in groups.into_iter().zip(per_group) {
            let replies = match replies {
                Ok(r) => r,
                Err(e) => {
                    // Redis may come back empty: what this node knew of the streams is unsure.
                    self.0.fast.lock().clear();
                    fail_groups(vec![(stream, dead_letter, list)], &self.failed(e));
                    continue;
                }
            };
            let mut replies = replies.into_iter();
            let mut grown = 0;
            for p in list {
                grown += p.entry.size();
                let seq = replies
                    .next()
                    .as_ref()
                    .and_then(text)
                    .and_then(|id| seq_of(&id));
                let result = match (seq, &replicated) {
                    (None, _) => Err(StoreError::io("Redis: XADD gave no id")),
                    (Some(_), Err(e)) => Err(e.clone()),
                    (Some(seq), Ok(())) => Ok(Appended {
                        seq,
                        duplicate: false,
                    }),
                };
                (p.done)(result);
            }
            let bytes = replies.next().as_ref().and_then(int).unwrap_or(0) as u64;
            if sharded {
                self.apply_counts(&stream, grown as i64, false, 0);
                self.notify(&stream);
            } else if let Some(total) = replies.next().as_ref().and_then(int) {
                self.0.disk_total.store(total as u64, Ordering::Relaxed);
            }
            let max = fast.map_or(0, |f| f.max_bytes);
            if max > 0 && bytes > max {
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.retain(&stream, false).await {
                        tracing::debug!(stream, error = %e, "retention after a publish failed");
                    }
                });
            }
        }
    }

    /// Sends each pipeline, all at once, and answers their replies in order.
    async fn query_each(
        &self,
        conn: &Link,
        pipes: &[redis::Pipeline],
    ) -> Vec<redis::RedisResult<Vec<Rv>>> {
        futures_util::future::join_all(pipes.iter().map(|p| {
            let mut conn = conn.clone();
            async move { p.query_async::<Vec<Rv>>(&mut conn).await }
        }))
        .await
    }

    /// On a Redis Cluster, tells the nodes that `stream` has new entries (on one Redis the
    /// publish does, in the same round trip).
    fn notify(&self, stream: &str) {
        let Ok(mut conn) = self.conn() else { return };
        let mut cmd = self.0.cluster.publish_cmd();
        cmd.arg(Self::channel(self.prefix())).arg(stream);
        tokio::spawn(async move {
            let _: redis::RedisResult<()> = cmd.exec_async(&mut conn).await;
        });
    }

    /// Publishes groups through the publish script: one pipeline for all of them, or on a
    /// Redis Cluster one command per stream (each in its stream's slot).
    async fn append_scripted(&self, mut conn: Link, groups: Vec<Group>) {
        if groups.is_empty() {
            return;
        }
        let sharded = self.sharded();
        let mut pipes: Vec<redis::Pipeline> = Vec::new();
        for (stream, dead_letter, list, _) in &groups {
            if sharded || pipes.is_empty() {
                pipes.push(redis::pipe());
            }
            let pipe = pipes.last_mut().expect("one at least");
            pipe.add_command(self.publish_command(stream, *dead_letter, list));
        }
        let mut results = self.query_each(&conn, &pipes).await;
        let forgot = |r: &redis::RedisResult<Vec<Rv>>| {
            r.as_ref().is_err_and(|e| {
                e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            })
        };
        if results.iter().any(forgot) {
            // Redis restarted and forgot the script: nothing of those groups was done.
            match PUBLISH.load_async(&mut conn).await {
                Ok(_) => {
                    for (i, r) in results.iter_mut().enumerate() {
                        if forgot(r) {
                            *r = pipes[i].query_async(&mut conn).await;
                        }
                    }
                }
                Err(e) => {
                    for r in results.iter_mut().filter(|r| forgot(r)) {
                        *r = Err(e.clone());
                    }
                }
            }
        }
        let replies = per_group(results, vec![1; groups.len()]);
        let replicated = match self.0.options.wait_replicas {
            0 => Ok(()),
            n => self.wait_replicas(&mut conn, n).await,
        };
        for ((stream, dead_letter, list, _), reply) in groups.into_iter().zip(replies) {
            let reply = reply.map(|mut r| r.pop().unwrap_or(Rv::Nil));
            let reply = match reply {
                Ok(r) => self.settle(r, &stream),
                Err(e) => {
                    self.0.fast.lock().clear();
                    fail_groups(vec![(stream, dead_letter, list)], &self.failed(e));
                    continue;
                }
            };
            let about = answer_group(&stream, list, reply, &replicated);
            if sharded && about.is_some() {
                self.notify(&stream);
            }
            let mut fast = self.0.fast.lock();
            match about {
                Some((true, max_bytes, total)) => {
                    self.0.disk_total.store(total, Ordering::Relaxed);
                    let until = Instant::now() + FAST_FOR;
                    fast.insert(stream, Fast { max_bytes, until });
                }
                Some((false, _, total)) => {
                    self.0.disk_total.store(total, Ordering::Relaxed);
                    fast.remove(&stream);
                }
                None => {
                    fast.remove(&stream);
                }
            }
        }
    }

    /// `EVALSHA` of the publish script for the group `list` of `stream`.
    fn publish_command(&self, stream: &str, dead_letter: bool, list: &[Publish]) -> redis::Cmd {
        let o = &self.0.options.store;
        let k = self.keys(stream);
        let mut cmd = redis::cmd("EVALSHA");
        let [bytes, names, _] = self.every_keys(&k);
        cmd.arg(PUBLISH.get_hash()).arg(4 + list.len());
        cmd.arg(&k.entries).arg(&k.meta).arg(bytes).arg(names);
        for p in list {
            match &p.entry.id {
                Some(id) => cmd.arg(self.dedupe_key(&k, id)),
                None => cmd.arg(&k.meta),
            };
        }
        // A dead-letter stream exists whatever `auto_create` and `max_streams` say: losing
        // the entry is worse.
        let (create, max) = if dead_letter {
            (true, 0)
        } else {
            (o.auto_create, o.max_streams)
        };
        cmd.arg(self.every_arg()).arg("").arg("");
        cmd.arg(&stream_args(create, &o.default_stream, max, stream)[..]);
        cmd.arg(o.max_disk_bytes).arg(Self::channel(self.prefix()));
        for p in list {
            cmd.arg(&p.entry.event)
                .arg(p.entry.data.as_ref())
                .arg(p.entry.id.as_deref().unwrap_or(""));
        }
        cmd
    }

    /// `WAIT` for `n` replicas to have everything this connection wrote.
    async fn wait_replicas(&self, conn: &mut Link, n: u32) -> Result<(), StoreError> {
        let timeout = self.0.options.wait_timeout.as_millis() as u64;
        let acked: i64 = redis::cmd("WAIT")
            .arg(n)
            .arg(timeout)
            .query_async(conn)
            .await
            .map_err(|e| self.failed(e))?;
        if acked < i64::from(n) {
            return Err(StoreError::Unavailable(format!(
                "stored, but only {acked} of {n} replicas confirmed it in time; publish again with the same id"
            )));
        }
        Ok(())
    }

    async fn info(&self, name: &str) -> Result<Option<StreamInfo>, StoreError> {
        let mut conn = self.conn()?;
        let k = self.keys(name);
        let numbers: Rv = keys!(STREAM_NUMBERS.prepare_invoke(), &k.entries, &k.meta)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        let Rv::Array(numbers) = numbers else {
            return Ok(None);
        };
        let (meta, consumers): (HashMap<String, String>, Vec<String>) = redis::pipe()
            .hgetall(&k.meta)
            .hkeys(&k.consumers)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        let last = numbers.first().and_then(int).unwrap_or(0) as Seq;
        let len = numbers.get(1).and_then(int).unwrap_or(0) as u64;
        let first = numbers
            .get(2)
            .and_then(text)
            .and_then(|id| seq_of(&id))
            .unwrap_or(last + 1);
        let num = |f: &str| meta.get(f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let config = meta
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default();
        let mut consumers: Vec<String> = consumers
            .into_iter()
            .filter(|c| !c.ends_with("#r") && !c.ends_with("#d"))
            .collect();
        consumers.sort();
        Ok(Some(StreamInfo {
            name: name.to_owned(),
            config,
            first_seq: first,
            last_seq: last,
            entries: len,
            bytes: num("bytes"),
            consumers,
        }))
    }

    /// A stream and its consumers as Redis has them: the settings and counters (the
    /// consumers' hash), and per group its last delivered seq and pending count.
    async fn consumer_state(&self, stream: &str) -> Result<StreamState, StoreError> {
        let Some(info) = self.info(stream).await? else {
            return Err(StoreError::StreamNotFound(stream.to_owned()));
        };
        let mut conn = self.conn()?;
        let k = self.keys(stream);
        let (settings, groups): (HashMap<String, String>, Rv) = redis::pipe()
            .hgetall(&k.consumers)
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&k.entries)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        let mut by_group = HashMap::new();
        if let Rv::Array(groups) = groups {
            for g in groups {
                let fields: Vec<Rv> = match g {
                    Rv::Array(f) => f,
                    Rv::Map(m) => m.into_iter().flat_map(|(a, b)| [a, b]).collect(),
                    _ => continue,
                };
                let (mut name, mut last, mut pending) = (None, 0, 0);
                for kv in fields.chunks(2) {
                    match (text(&kv[0]).as_deref(), kv.get(1)) {
                        (Some("name"), Some(v)) => name = text(v),
                        (Some("last-delivered-id"), Some(v)) => {
                            last = text(v).as_deref().and_then(seq_of).unwrap_or(0);
                        }
                        (Some("pending"), Some(v)) => pending = int(v).unwrap_or(0) as u64,
                        _ => {}
                    }
                }
                if let Some(name) = name {
                    by_group.insert(name, (last, pending));
                }
            }
        }
        Ok(StreamState {
            info,
            settings,
            by_group,
        })
    }

    async fn consumer_records(
        &self,
        stream: &str,
    ) -> Result<Vec<(String, ConsumerRecord)>, StoreError> {
        let st = self.consumer_state(stream).await?;
        let mut conn = self.conn()?;
        let k = self.keys(stream);
        let mut out = Vec::new();
        for (name, config) in st.consumers() {
            let pending: Rv = redis::cmd("XPENDING")
                .arg(&k.entries)
                .arg(name)
                .arg("-")
                .arg("+")
                .arg(100_000)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            let mut map = BTreeMap::new();
            if let Rv::Array(list) = pending {
                for p in list {
                    if let Rv::Array(p) = p
                        && let (Some(id), Some(n)) =
                            (p.first().and_then(text), p.get(3).and_then(int))
                        && let Some(seq) = seq_of(&id)
                    {
                        map.insert(seq, n as u32);
                    }
                }
            }
            let summary = st.summary(name);
            let state = ConsumerState {
                next: summary.delivered + 1,
                pending: map,
                redelivered: summary.redelivered,
                dead_lettered: summary.dead_lettered,
            };
            out.push((name.to_owned(), ConsumerRecord { config, state }));
        }
        Ok(out)
    }

    /// The names of every stream.
    async fn stream_names(&self, conn: &mut Link) -> Result<Vec<String>, StoreError> {
        redis::cmd("SMEMBERS")
            .arg(self.list_key())
            .query_async(conn)
            .await
            .map_err(|e| self.failed(e))
    }

    /// Every stream, with its consumers' numbers (no pending lists: cheap enough for every
    /// scrape of `/metrics`).
    async fn overview(&self) -> Result<Overview, StoreError> {
        let mut conn = self.conn()?;
        let names = self.stream_names(&mut conn).await?;
        let mut streams = Vec::with_capacity(names.len());
        let mut consumers = Vec::new();
        for name in names {
            let st = match self.consumer_state(&name).await {
                Ok(st) => st,
                Err(StoreError::StreamNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            for (c, _) in st.consumers() {
                consumers.push((name.clone(), c.to_owned(), st.summary(c)));
            }
            streams.push(st.info);
        }
        Ok((streams, consumers))
    }

    /// Handles a notice on the streams' channel: `<stream>` has new entries, or (`!<stream>`)
    /// entries a socket left unacknowledged, for this node's runners of that stream.
    pub(crate) fn on_notice(&self, message: &[u8]) {
        let Ok(message) = std::str::from_utf8(message) else {
            return;
        };
        let (stream, scan) = match message.strip_prefix('!') {
            Some(s) => (s, true),
            None => (message, false),
        };
        for ((s, _), h) in self.0.runners.lock().iter() {
            if s == stream {
                if scan {
                    h.scan.store(true, Ordering::Relaxed);
                }
                h.wake.notify_one();
            }
        }
    }

    /// Every runner looks again (Redis is back, and notices may have been missed meanwhile).
    pub(crate) fn wake_all(&self) {
        // Redis may have come back empty: publishes go through the script until it says again.
        self.0.fast.lock().clear();
        for h in self.0.runners.lock().values() {
            h.wake.notify_one();
        }
    }

    fn send(&self, stream: &str, consumer: &str, cmd: Cmd) {
        let key = (stream.to_owned(), consumer.to_owned());
        if let Some(h) = self.0.runners.lock().get(&key) {
            let _ = h.tx.send(cmd);
        }
    }

    /// Creates the declared streams once Redis answers, then applies retention every second
    /// (and on a Redis Cluster reads the counts of every stream).
    pub(crate) async fn maintain(self) {
        let mut declared = self.0.options.declared.clone();
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticks.tick().await;
            if self.conn().is_err() {
                continue;
            }
            if self.sharded()
                && let Err(e) = self.read_counts().await
            {
                tracing::debug!(error = %e, "the counts of every stream not read");
            }
            while let Some((name, config)) = declared.first().cloned() {
                match self.create(name.clone(), config).await {
                    Ok(_) => {
                        declared.remove(0);
                    }
                    Err(e) => {
                        tracing::warn!(stream = name, error = %e, "creating a declared stream failed; trying again");
                        break;
                    }
                }
            }
            if let Err(e) = self.retain_all().await {
                tracing::debug!(error = %e, "stream retention skipped");
            }
        }
    }

    /// Applies every stream's retention, unless another node did within the last second.
    async fn retain_all(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let turn: Option<String> = redis::cmd("SET")
            .arg(format!("{}-courier-stream-retention", self.prefix()))
            .arg(self.node())
            .arg("NX")
            .arg("PX")
            .arg(900)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        if turn.is_none() {
            return Ok(());
        }
        let names = self.stream_names(&mut conn).await?;
        // Once a minute (on average: whichever node's turn it is), gone nodes' members of
        // the consumer groups are forgotten too.
        let forget = rand::random_range(0..60) == 0;
        for name in names {
            self.retain(&name, forget).await?;
        }
        Ok(())
    }

    /// Applies `stream`'s retention now; with `forget`, drops gone nodes' group members.
    async fn retain(&self, stream: &str, forget: bool) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let k = self.keys(stream);
        let [bytes, ..] = self.every_keys(&k);
        let mut inv = keys!(RETAIN.prepare_invoke(), &k.entries, &k.meta, bytes);
        inv.arg(self.every_arg());
        match forget {
            true => {
                let idle = GONE_MEMBER_IDLE_MS as i64;
                let spec = self
                    .gone_spec(&mut conn, &k, None, |pending, i| pending == 0 && i >= idle)
                    .await?;
                inv.arg(spec)
            }
            false => inv.arg(""),
        };
        inv.arg(GONE_MEMBER_IDLE_MS);
        let r: Rv = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        self.settle(r, stream);
        Ok(())
    }

    async fn create(&self, name: String, config: StreamConfig) -> Result<StreamInfo, StoreError> {
        check_name(&name)?;
        self.0.fast.lock().remove(&name);
        if let Some(dlq) = &config.dead_letter {
            check_name(dlq)?;
        }
        let mut conn = self.conn()?;
        let k = self.keys(&name);
        let [bytes, names, _] = self.every_keys(&k);
        let mut inv = keys!(
            CREATE_STREAM.prepare_invoke(),
            &k.entries,
            &k.meta,
            bytes,
            names
        );
        inv.arg(self.every_arg()).arg("").arg("");
        let max = self.0.options.store.max_streams;
        inv.arg(&stream_args(true, &config, max, &name)[..]);
        let r: Rv = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        answer(self.settle(r, &name), &name)?;
        self.info(&name)
            .await?
            .ok_or_else(|| StoreError::StreamNotFound(name))
    }

    fn consumer_invocation<'a>(
        &self,
        script: &'a redis::Script,
        k: &Keys,
    ) -> redis::ScriptInvocation<'a> {
        let [bytes, names, consumers] = self.every_keys(k);
        let mut inv = keys!(
            script.prepare_invoke(),
            &k.entries,
            &k.meta,
            bytes,
            names,
            consumers,
            &k.consumers
        );
        inv.arg(self.every_arg());
        inv
    }
}

impl SharedStreams for RedisStreams {
    fn publish(&self, stream: String, entry: NewEntry, done: PublishCallback) -> Option<SendLater> {
        self.queue_publish(
            stream,
            entry,
            false,
            Box::new(move |r| done(r.map(|a| vec![a]))),
        )
    }

    fn ensure_consumer(
        &self,
        stream: String,
        consumer: String,
        config: ConsumerConfig,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            check_name(&stream)?;
            check_name(&consumer)?;
            let mut conn = this.conn()?;
            let k = this.keys(&stream);
            let o = &this.0.options.store;
            let mut inv = this.consumer_invocation(&ENSURE_CONSUMER, &k);
            inv.arg("").arg("");
            inv.arg(&stream_args(o.auto_create, &o.default_stream, o.max_streams, &stream)[..]);
            let start = match config.start {
                StartPosition::New => "new".to_owned(),
                StartPosition::All => "0".to_owned(),
                StartPosition::Seq(n) => id_of(n.saturating_sub(1)),
            };
            inv.arg(&consumer)
                .arg(serde_json::to_string(&config).expect("settings serialize"))
                .arg(start)
                .arg(o.max_consumers);
            let r: Rv = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| this.failed(e))?;
            let items = answer(this.settle(r, &stream), &stream)?;
            Ok(items.get(1).and_then(int).unwrap_or(0).max(0) as u64)
        })
    }

    fn attach(&self, socket: Socket, stream: &str, consumer: &str) {
        let key = (stream.to_owned(), consumer.to_owned());
        let mut runners = self.0.runners.lock();
        if let Some(h) = runners.get(&key)
            && h.tx.send(Cmd::Attach(socket.clone())).is_ok()
        {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Cmd::Attach(socket));
        let handle = RunnerHandle {
            tx,
            wake: Arc::new(Notify::new()),
            scan: Arc::new(AtomicBool::new(false)),
        };
        runners.insert(key.clone(), handle.clone());
        drop(runners);
        let runner = Runner {
            streams: self.clone(),
            key,
            handle,
            rx,
        };
        tokio::spawn(runner.run());
    }

    fn detach(&self, sid: &Sid, stream: &str, consumer: &str) {
        self.send(stream, consumer, Cmd::Detach(sid.clone()));
    }

    fn delete_consumer(
        &self,
        stream: String,
        consumer: String,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let mut conn = this.conn()?;
            let k = this.keys(&stream);
            let mut inv = this.consumer_invocation(&DELETE_CONSUMER, &k);
            for _ in 0..12 {
                inv.arg("");
            }
            inv.arg(&consumer);
            let r: Rv = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| this.failed(e))?;
            Ok(int(&this.settle(r, &stream)) == Some(1))
        })
    }

    fn create_stream(
        &self,
        name: String,
        config: StreamConfig,
    ) -> BoxFuture<'static, Result<StreamInfo, StoreError>> {
        let this = self.clone();
        Box::pin(async move { this.create(name, config).await })
    }

    fn purge(&self, name: String) -> BoxFuture<'static, Result<u64, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let mut conn = this.conn()?;
            let k = this.keys(&name);
            let [bytes, ..] = this.every_keys(&k);
            let r: Rv = keys!(PURGE.prepare_invoke(), &k.entries, &k.meta, bytes)
                .arg(this.every_arg())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| this.failed(e))?;
            let n = int(&this.settle(r, &name)).unwrap_or(-1);
            if n < 0 {
                return Err(StoreError::StreamNotFound(name));
            }
            Ok(n as u64)
        })
    }

    fn streams(&self) -> BoxFuture<'static, Result<Vec<StreamInfo>, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let mut conn = this.conn()?;
            let names = this.stream_names(&mut conn).await?;
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                if let Some(info) = this.info(&name).await? {
                    out.push(info);
                }
            }
            Ok(out)
        })
    }

    fn stream(&self, name: String) -> BoxFuture<'static, Result<Option<StreamInfo>, StoreError>> {
        let this = self.clone();
        Box::pin(async move { this.info(&name).await })
    }

    fn consumers(
        &self,
        stream: String,
    ) -> BoxFuture<'static, Result<Vec<(String, ConsumerRecord)>, StoreError>> {
        let this = self.clone();
        Box::pin(async move { this.consumer_records(&stream).await })
    }

    fn overview(&self) -> BoxFuture<'static, Result<Overview, StoreError>> {
        let this = self.clone();
        Box::pin(async move { this.overview().await })
    }

    fn read(
        &self,
        stream: String,
        from: Seq,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Entry>, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let mut conn = this.conn()?;
            let k = this.keys(&stream);
            let (exists, r): (bool, Rv) = redis::pipe()
                .exists(&k.meta)
                .cmd("XRANGE")
                .arg(&k.entries)
                .arg(id_of(from))
                .arg("+")
                .arg("COUNT")
                .arg(limit.clamp(1, i64::MAX as usize))
                .query_async(&mut conn)
                .await
                .map_err(|e| this.failed(e))?;
            if !exists {
                return Err(StoreError::StreamNotFound(stream));
            }
            let mut entries = entries_of(&r);
            entries.truncate(limit);
            Ok(entries)
        })
    }
}

/// One consumer with subscribers on this node.
struct Runner {
    streams: RedisStreams,
    key: (String, String),
    handle: RunnerHandle,
    rx: mpsc::UnboundedReceiver<Cmd>,
}

/// An entry out with one of this node's sockets.
struct Held {
    holder: Sid,
    size: u64,
    /// When it is due again, for this node's next look.
    due: Instant,
}

impl Runner {
    async fn run(mut self) {
        let (stream, consumer) = self.key.clone();
        let mut subscribers: Vec<Socket> = Vec::new();
        let mut held: HashMap<Seq, Held> = HashMap::new();
        let mut acks: Vec<Seq> = Vec::new();
        let mut released: Vec<Seq> = Vec::new();
        let mut turn = 0usize;
        let mut config: Option<ConsumerConfig> = None;
        let mut scanned = Instant::now() - SCAN_EVERY;
        let mut failed_at: Option<Instant> = None;
        // Entries of this node's that it does not know it holds are sent again at the first
        // look: at start (left by an earlier runner), and after a failed round trip (a read
        // that Redis did but whose answer never came).
        let mut recover = true;
        // Woken by acks alone: they wait (at most ACK_DELAY, at most ACK_BATCH of them) to go
        // to Redis together, with the read that the room they free allows.
        let mut only_acks = false;
        let mut acks_since: Option<Instant> = None;
        loop {
            while let Ok(cmd) = self.rx.try_recv() {
                let ack =
                    self.on_command(cmd, &mut subscribers, &mut held, &mut acks, &mut released);
                only_acks &= ack;
            }
            if !acks.is_empty() && acks_since.is_none() {
                acks_since = Some(Instant::now());
            }
            subscribers.retain(Socket::connected);
            if subscribers.is_empty() {
                released.extend(held.drain().map(|(seq, _)| seq));
            }
            let retry_wait = failed_at.is_some_and(|t| t.elapsed() < RETRY);
            let acks_wait = only_acks
                && !subscribers.is_empty()
                && acks.len() < ACK_BATCH
                && acks_since.is_some_and(|t| t.elapsed() < ACK_DELAY);
            let mut more = false;
            if !retry_wait && !acks_wait {
                match self
                    .round(
                        &subscribers,
                        &mut held,
                        &mut acks,
                        &mut released,
                        &mut config,
                        &mut scanned,
                        &mut turn,
                        &mut recover,
                    )
                    .await
                {
                    Ok(m) => {
                        more = m;
                        failed_at = None;
                        acks_since = None;
                    }
                    Err(e) => {
                        if failed_at.is_none() {
                            tracing::warn!(stream, consumer, error = %e, "consumer: Redis round trip failed; trying again");
                        }
                        failed_at = Some(Instant::now());
                        recover = true;
                    }
                }
            }
            if subscribers.is_empty() && acks.is_empty() && released.is_empty() {
                let mut runners = self.streams.0.runners.lock();
                if self.rx.is_empty() {
                    if runners
                        .get(&self.key)
                        .is_some_and(|h| h.tx.same_channel(&self.handle.tx))
                    {
                        runners.remove(&self.key);
                    }
                    return;
                }
                continue;
            }
            if more {
                tokio::task::yield_now().await;
                only_acks = false;
                continue;
            }
            let next_due = held.values().map(|h| h.due).min();
            let mut wake = scanned + SCAN_EVERY;
            if let Some(d) = next_due {
                wake = wake.min(d);
            }
            if let Some(t) = acks_since {
                wake = wake.min(t + ACK_DELAY);
            }
            if let Some(t) = failed_at {
                wake = wake.max(t + RETRY);
            }
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        only_acks = self.on_command(cmd, &mut subscribers, &mut held, &mut acks, &mut released);
                    }
                    None => return,
                },
                _ = self.handle.wake.notified() => only_acks = false,
                _ = tokio::time::sleep_until(wake.into()) => only_acks = false,
            }
        }
    }

    fn on_command(
        &self,
        cmd: Cmd,
        subscribers: &mut Vec<Socket>,
        held: &mut HashMap<Seq, Held>,
        acks: &mut Vec<Seq>,
        released: &mut Vec<Seq>,
    ) -> bool {
        match cmd {
            Cmd::Attach(socket) => {
                if !subscribers.iter().any(|s| s.id() == socket.id()) {
                    subscribers.push(socket);
                }
            }
            Cmd::Detach(sid) => {
                subscribers.retain(|s| *s.id() != sid);
                let gone: Vec<Seq> = held
                    .iter()
                    .filter(|(_, h)| h.holder == sid)
                    .map(|(seq, _)| *seq)
                    .collect();
                for seq in gone {
                    held.remove(&seq);
                    released.push(seq);
                }
            }
            Cmd::Acked(seq) => {
                held.remove(&seq);
                acks.push(seq);
                return true;
            }
        }
        false
    }

    /// One round: acks and releases out, due entries claimed and sent again, new ones read
    /// and sent. True if more new entries may be waiting.
    #[allow(clippy::too_many_arguments)]
    async fn round(
        &self,
        subscribers: &[Socket],
        held: &mut HashMap<Seq, Held>,
        acks: &mut Vec<Seq>,
        released: &mut Vec<Seq>,
        cached: &mut Option<ConsumerConfig>,
        scanned: &mut Instant,
        turn: &mut usize,
        recover: &mut bool,
    ) -> Result<bool, StoreError> {
        let (stream, consumer) = &self.key;
        let s = &self.streams;
        let mut conn = s.conn()?;
        let k = s.keys(stream);
        if !acks.is_empty() {
            let ids: Vec<String> = acks.iter().map(|q| id_of(*q)).collect();
            let r: redis::RedisResult<i64> = redis::cmd("XACK")
                .arg(&k.entries)
                .arg(consumer)
                .arg(&ids)
                .query_async(&mut conn)
                .await;
            match r {
                Ok(_) => acks.clear(),
                Err(e) if is_nogroup(&e) => acks.clear(),
                Err(e) => return Err(self.streams.failed(e)),
            }
        }
        let mut scan_now = self.handle.scan.swap(false, Ordering::Relaxed);
        if !released.is_empty() {
            scan_now = true;
            let mut inv = keys!(RELEASE.prepare_invoke(), &k.entries);
            inv.arg(consumer).arg(s.node()).arg(RELEASED_IDLE_MS);
            for q in released.iter() {
                inv.arg(id_of(*q));
            }
            match inv.invoke_async::<i64>(&mut conn).await {
                Ok(_) => {
                    released.clear();
                    // The consumer's subscribers on other nodes look now, not at their next
                    // scan.
                    let _: redis::RedisResult<i64> =
                        s.0.cluster
                            .publish_cmd()
                            .arg(RedisStreams::channel(s.prefix()))
                            .arg(format!("!{stream}"))
                            .query_async(&mut conn)
                            .await;
                }
                Err(e) if is_nogroup(&e) => released.clear(),
                Err(e) => return Err(self.streams.failed(e)),
            }
        }
        if subscribers.is_empty() {
            return Ok(false);
        }
        let config = match cached {
            Some(c) => c.clone(),
            None => {
                let raw: Option<String> = redis::cmd("HGET")
                    .arg(&k.consumers)
                    .arg(consumer)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.streams.failed(e))?;
                // A deleted consumer delivers nothing until it is created again.
                let Some(c) = raw.and_then(|r| serde_json::from_str::<ConsumerConfig>(&r).ok())
                else {
                    return Ok(false);
                };
                *cached = Some(c.clone());
                c
            }
        };
        let now = Instant::now();
        // Entries that were sent long ago and whose ack never came were claimed by whoever
        // looked first (this node or another): they are no longer this node's to count.
        let forget = config.redelivery_wait(config.max_deliver.max(5)) * 2;
        held.retain(|_, h| h.due + forget > now);
        let own_due = held.values().any(|h| h.due <= now);
        if *recover || scan_now || own_due || scanned.elapsed() >= SCAN_EVERY {
            *scanned = now;
            let gone = s
                .gone_spec(&mut conn, &k, Some(consumer), |pending, _| pending > 0)
                .await?;
            let mut inv = keys!(CLAIM_DUE.prepare_invoke(), &k.entries, &k.consumers);
            inv.arg(consumer)
                .arg(s.node())
                .arg(config.ack_wait_ms)
                .arg(config.max_deliver)
                .arg(READ_BATCH)
                .arg(SCAN_PENDING)
                .arg(gone);
            if *recover {
                inv.arg("1");
                for seq in held.keys() {
                    inv.arg(id_of(*seq));
                }
            }
            let claimed: Rv = match inv.invoke_async(&mut conn).await {
                Ok(v) => {
                    *recover = false;
                    v
                }
                Err(e) if is_nogroup(&e) => {
                    *cached = None;
                    return Ok(false);
                }
                Err(e) => return Err(self.streams.failed(e)),
            };
            if let Rv::Array(list) = claimed {
                for c in list {
                    let Rv::Array(c) = c else { continue };
                    let (Some(id), Some(Rv::Array(fields)), Some(n), Some(dead)) = (
                        c.first().and_then(text),
                        c.get(1),
                        c.get(2).and_then(int),
                        c.get(3).and_then(int),
                    ) else {
                        continue;
                    };
                    let Some(entry) = seq_of(&id).and_then(|q| entry_from_fields(q, fields)) else {
                        continue;
                    };
                    held.remove(&entry.seq);
                    if dead == 1 {
                        self.dead_letter(&mut conn, &k, &entry, n as u32).await?;
                        continue;
                    }
                    self.send(subscribers, turn, held, &config, entry, n as u32);
                }
            }
        }
        let bytes: u64 = held.values().map(|h| h.size).sum();
        if bytes >= MAX_BYTES_IN_FLIGHT {
            return Ok(false);
        }
        // As many as fit in the bytes left, guessed from the entries out now (1 KiB each when
        // none are): a read of large entries is smaller.
        let each = match held.len() as u64 {
            0 => 1024,
            n => (bytes / n).max(64),
        };
        let count = ((MAX_BYTES_IN_FLIGHT - bytes) / each).clamp(1, READ_BATCH as u64) as usize;
        let mut inv = keys!(READ_NEW.prepare_invoke(), &k.entries);
        inv.arg(consumer)
            .arg(s.node())
            .arg(config.max_ack_pending)
            .arg(count);
        let fresh: Rv = match inv.invoke_async(&mut conn).await {
            Ok(v) => v,
            Err(e) if is_nogroup(&e) => {
                *cached = None;
                return Ok(false);
            }
            Err(e) => return Err(self.streams.failed(e)),
        };
        let fresh = entries_of(&fresh);
        let full = fresh.len() == count;
        for entry in fresh {
            self.send(subscribers, turn, held, &config, entry, 1);
        }
        Ok(full)
    }

    fn send(
        &self,
        subscribers: &[Socket],
        turn: &mut usize,
        held: &mut HashMap<Seq, Held>,
        config: &ConsumerConfig,
        entry: Entry,
        deliveries: u32,
    ) {
        *turn = turn.wrapping_add(1);
        let socket = &subscribers[*turn % subscribers.len()];
        let tx = self.handle.tx.clone();
        let seq = entry.seq;
        held.insert(
            seq,
            Held {
                holder: socket.id().clone(),
                size: entry.size(),
                due: Instant::now() + config.redelivery_wait(deliveries),
            },
        );
        courier_server::deliver(socket, &self.key.0, &entry, deliveries, move || {
            let _ = tx.send(Cmd::Acked(seq));
        });
        // Counted as a node's own streams count theirs (`courier_deliveries_total`, ...).
        if let Some(stats) = self.streams.0.cluster.0.io.stats() {
            match deliveries {
                1 => stats.deliveries.inc(),
                _ => stats.redeliveries.inc(),
            }
        }
    }

    /// Moves `entry` to the dead-letter stream, then acknowledges it; an error leaves it
    /// pending, to be tried again (dedupe makes a second copy impossible).
    async fn dead_letter(
        &self,
        conn: &mut Link,
        k: &Keys,
        entry: &Entry,
        deliveries: u32,
    ) -> Result<(), StoreError> {
        let (stream, consumer) = &self.key;
        let target = match self.streams.info(stream).await? {
            Some(info) => info.config.dead_letter_of(stream),
            None => format!("{stream}.dlq"),
        };
        let data = json!({
            "stream": stream,
            "consumer": consumer,
            "seq": entry.seq,
            "id": entry.id,
            "deliveries": deliveries,
            "data": serde_json::from_slice::<Value>(&entry.data).unwrap_or(Value::Null),
        });
        let dead = NewEntry {
            event: entry.event.clone(),
            data: Bytes::from(data.to_string()),
            id: Some(format!("{stream}:{consumer}:{}", entry.seq)),
        };
        self.streams.publish_entry(target, dead, true).await?;
        let _: () = redis::pipe()
            .cmd("XACK")
            .arg(&k.entries)
            .arg(consumer)
            .arg(id_of(entry.seq))
            .ignore()
            .cmd("HINCRBY")
            .arg(&k.consumers)
            .arg(format!("{consumer}#d"))
            .arg(1)
            .ignore()
            .query_async(conn)
            .await
            .map_err(|e| self.streams.failed(e))?;
        if let Some(stats) = self.streams.0.cluster.0.io.stats() {
            stats.dead_lettered.inc();
        }
        tracing::info!(
            stream,
            consumer,
            seq = entry.seq,
            deliveries,
            "entry moved to the dead-letter stream"
        );
        Ok(())
    }
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}
