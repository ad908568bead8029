// The cluster harness: a redis-server of the test's own on a free port (stopped and started again
// on the same port when a test asks), Courier nodes joined to it with `courier serve --redis URL`
// (or the environment, or the config file), and Node socket.io servers on
// `@socket.io/redis-adapter` (reference/cluster.mjs) on the same Redis.
//
// startCluster() returns once every server is ready: each Courier node's /health says
// cluster.redis "up", and Redis lists one subscriber of the namespace's request channel
// (`socket.io-request#/#`, which every server on the redis adapter's wire format subscribes to)
// per server. Everything it started is stopped when the test ends.
//
// Nodes are ordinary harness processes with a data directory of the test's own, so a test can
// stop, kill or restart one on its port (restartNode), or put a proxy of its own in front of
// their `url`s.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { E2E_DIR, restartCourier, sleep, startCourier, startProcess, track, waitFor } from "./harness.mjs";

export const REDIS_BIN = process.env.COURIER_REDIS_SERVER || "redis-server";
export const NODE_CLUSTER_SCRIPT = path.join(E2E_DIR, "reference", "cluster.mjs");
/** The channel every server of namespace "/" subscribes to for requests (fetchSockets, ...). */
export const REQUEST_CHANNEL = "socket.io-request#/#";

const READY_TIMEOUT_MS = 10_000;

// --- a few Redis commands, spoken directly ------------------------------------------------------

/** A free TCP port on 127.0.0.1 (bound to port 0, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// Parses one RESP reply at `at`; returns [value, end] or null while the reply is incomplete.
function parseReply(buf, at = 0) {
  const eol = buf.indexOf("\r\n", at);
  if (eol < 0) return null;
  const kind = String.fromCharCode(buf[at]);
  const line = buf.toString("utf8", at + 1, eol);
  const next = eol + 2;
  switch (kind) {
    case "+":
      return [line, next];
    case "-":
      return [new Error(line), next];
    case ":":
      return [Number(line), next];
    case "$": {
      const len = Number(line);
      if (len < 0) return [null, next];
      if (buf.length < next + len + 2) return null;
      return [buf.toString("utf8", next, next + len), next + len + 2];
    }
    case "*": {
      const count = Number(line);
      if (count < 0) return [null, next];
      const items = [];
      let pos = next;
      for (let i = 0; i < count; i++) {
        const item = parseReply(buf, pos);
        if (!item) return null;
        items.push(item[0]);
        pos = item[1];
      }
      return [items, pos];
    }
    default:
      throw new Error(`unexpected reply from Redis: ${JSON.stringify(buf.toString())}`);
  }
}

/** Sends one command to the Redis on `port` over a fresh connection; resolves with its reply. */
export function redisCommand(port, args, { timeoutMs = 2000 } = {}) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    let buf = Buffer.alloc(0);
    const done = (err, value) => {
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => done(new Error(`Redis on ${port} did not answer ${args[0]} in ${timeoutMs} ms`)), timeoutMs);
    socket.once("error", (err) => done(err));
    socket.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      let reply;
      try {
        reply = parseReply(buf);
      } catch (err) {
        return done(err);
      }
      if (!reply) return;
      if (reply[0] instanceof Error) done(reply[0]);
      else done(null, reply[0]);
    });
    const parts = args.map(String);
    socket.write(`*${parts.length}\r\n${parts.map((p) => `$${Buffer.byteLength(p)}\r\n${p}\r\n`).join("")}`);
  });
}

// --- redis-server -----------------------------------------------------------------------------

/**
 * A redis-server of the test's own, bound to 127.0.0.1: no persistence unless `aof`. `stop()`
 * and `start()` take it away and bring it back on the same port (an empty Redis, as after a
 * restart without persistence, or what the append-only file kept).
 */
export class RedisServer {
  /** With `aof`, every write is in an append-only file fsynced before Redis answers, and a
   * restart (stop, then start) finds it all again. */
  constructor(port, { aof = false, args = [] } = {}) {
    this.aof = aof;
    this.extraArgs = args;
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
    this.dir = mkdtempSync(path.join(tmpdir(), "courier-e2e-redis-"));
    this.child = null;
    this.output = "";
  }

  get running() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts redis-server and resolves once it answers PING; rejects with its output if it exits. */
  async start() {
    if (this.running) throw new Error("redis-server is already running");
    const persistence = this.aof ? ["--appendonly", "yes", "--appendfsync", "always"] : ["--appendonly", "no"];
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", ...persistence];
    args.push("--dir", this.dir, "--daemonize", "no", "--protected-mode", "no", ...this.extraArgs);
    const child = spawn(REDIS_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    track(child);
    this.child = child;
    let output = "";
    for (const stream of [child.stdout, child.stderr]) {
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        output += chunk;
        this.output += chunk;
      });
    }
    const exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => resolve({ code, signal }));
      child.once("error", (err) => resolve({ error: err.message }));
    });
    this.exited = exited;
    let gone = null;
    exited.then((info) => {
      gone = info;
    });
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (gone) {
        throw new Error(`redis-server on port ${this.port} exited (${JSON.stringify(gone)}) before answering PING\n${output}`);
      }
      try {
        if ((await redisCommand(this.port, ["PING"], { timeoutMs: 500 })) === "PONG") return this;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new Error(`redis-server on port ${this.port} did not answer PING within ${READY_TIMEOUT_MS} ms\n${output}`);
      }
      await sleep(20);
    }
  }

  /** Stops redis-server (SIGTERM by default, or SIGKILL) and waits until it has exited. */
  async stop(signal = "SIGTERM") {
    if (!this.running) return;
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    this.child.kill(signal);
    await this.exited;
    clearTimeout(timer);
  }

  /** Stops it and removes its directory; it cannot be started again. */
  async close() {
    await this.stop("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }

  command(...args) {
    return redisCommand(this.port, args);
  }

  /** How many connections are subscribed to `channel`. */
  async subscribers(channel = REQUEST_CHANNEL) {
    const reply = await this.command("PUBSUB", "NUMSUB", channel);
    return Number(reply[1]);
  }

  /** Waits until Redis lists at least `count` subscribers of `channel`. */
  waitSubscribers(count, { channel = REQUEST_CHANNEL, ms = READY_TIMEOUT_MS } = {}) {
    let seen = 0;
    return waitFor(
      async () => {
        seen = await this.subscribers(channel).catch(() => 0);
        return seen >= count;
      },
      { ms, every: 25, what: `${count} subscribers of ${channel} in Redis (servers on the cluster)` },
    ).catch((err) => {
      throw new Error(`${err.message}; Redis lists ${seen}`);
    });
  }
}

/** Starts a redis-server on a free port; it is removed when the test `t` ends. */
export async function startRedis({ t, aof = false, args = [] } = {}) {
  // The port is free when chosen but may be taken before redis-server binds it: try another.
  for (let attempt = 1; ; attempt++) {
    const redis = new RedisServer(await freePort(), { aof, args });
    try {
      await redis.start();
      if (t) t.after(() => redis.close());
      return redis;
    } catch (err) {
      await redis.close();
      if (attempt >= 3 || !/in use/i.test(err.message)) throw err;
    }
  }
}

// --- a Redis Cluster ----------------------------------------------------------------------------

export const REDIS_CLI_BIN = process.env.COURIER_REDIS_CLI || "redis-cli";

/**
 * A Redis Cluster of the test's own: `masters` redis-servers with `--cluster-enabled yes` on free
 * ports of 127.0.0.1, joined by `redis-cli --cluster create` (the 16,384 slots split between
 * them, no replicas). `url` is the `redis-cluster://` URL Courier nodes take. Subscribers are
 * counted over every server (sharded channels live on the server of their slot).
 */
export class RedisCluster {
  constructor(servers) {
    this.servers = servers;
    this.url = `redis-cluster://${servers.map((s) => `127.0.0.1:${s.port}`).join(",")}`;
  }

  /** With `aof`, each server keeps an append-only file fsynced before it answers. */
  static async start({ masters = 3, aof = false } = {}) {
    const servers = [];
    try {
      for (let i = 0; i < masters; i++) {
        // The cluster bus listens on the port + 10000: both must be free.
        let port;
        do port = await freePort();
        while (port > 55000);
        const server = new RedisServer(port, {
          aof,
          args: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"],
        });
        servers.push(server);
        await server.start();
      }
      const create = ["--cluster", "create", ...servers.map((s) => `127.0.0.1:${s.port}`), "--cluster-yes"];
      const out = await new Promise((resolve, reject) => {
        const child = spawn(REDIS_CLI_BIN, create, { stdio: ["ignore", "pipe", "pipe"] });
        let text = "";
        child.stdout.on("data", (c) => (text += c));
        child.stderr.on("data", (c) => (text += c));
        child.once("error", reject);
        child.once("exit", (code) => (code === 0 ? resolve(text) : reject(new Error(`redis-cli --cluster create exited ${code}\n${text}`))));
      });
      const cluster = new RedisCluster(servers);
      await cluster.ready(out);
      return cluster;
    } catch (err) {
      await Promise.all(servers.map((s) => s.close()));
      throw err;
    }
  }

  /** Waits until every server says cluster_state:ok. */
  ready(detail = "") {
    return waitFor(
      async () => {
        for (const s of this.servers) {
          const info = await s.command("CLUSTER", "INFO").catch(() => "");
          if (!String(info).includes("cluster_state:ok")) return false;
        }
        return true;
      },
      { ms: 20_000, every: 100, what: `the Redis Cluster ready (cluster_state:ok on every server)\n${detail}` },
    );
  }

  /** Stops every server (their data is gone; the cluster's layout stays in their nodes.conf). */
  async stop(signal = "SIGTERM") {
    await Promise.all(this.servers.map((s) => s.stop(signal)));
  }

  /** Starts every server again on its port, and waits until the cluster is ready. */
  async start() {
    for (const s of this.servers) await s.start();
    await this.ready();
    return this;
  }

  async close() {
    await Promise.all(this.servers.map((s) => s.close()));
  }

  /** How many connections are subscribed to the sharded `channel`, over every server. */
  async subscribers(channel = REQUEST_CHANNEL) {
    let n = 0;
    for (const s of this.servers) {
      const reply = await s.command("PUBSUB", "SHARDNUMSUB", channel);
      n += Number(reply[1]);
    }
    return n;
  }

  waitSubscribers(count, options) {
    return RedisServer.prototype.waitSubscribers.call(this, count, options);
  }
}

// --- Courier nodes and Node servers -----------------------------------------------------------

/** GET /health of a Courier node, parsed. */
export async function health(server) {
  const res = await fetch(`${server.url}/health`, { signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`GET /health answered ${res.status}: ${await res.text()}`);
  return res.json();
}

/** Waits until a Courier node's /health says cluster.redis is `state` ("up" or "down"). */
export async function waitRedisState(server, state, { ms = READY_TIMEOUT_MS } = {}) {
  let last;
  try {
    return await waitFor(
      async () => {
        last = await health(server).catch((err) => ({ error: err.message }));
        return last.cluster?.redis === state && last;
      },
      { ms, every: 50, what: `cluster.redis "${state}" in /health of ${server.url}` },
    );
  } catch (err) {
    throw new Error(`${err.message}; last answer ${JSON.stringify(last)}`);
  }
}

/**
 * Starts a Courier node on `redis`. `via` says how it is told: "flag" (--redis URL), "env"
 * (COURIER_CLUSTER_REDIS_URL) or "config" ([cluster] redis_url). Resolves once /health says the
 * node is up on Redis. It has a data directory of its own that outlives it (for restarts); the
 * caller stops it and removes `node.clusterDir`.
 */
export async function startCourierNode(redis, { config = {}, env = {}, via = "flag" } = {}) {
  const dataDir = mkdtempSync(path.join(tmpdir(), "courier-e2e-node-"));
  const opts = { config, env, dataDir };
  if (via === "flag") opts.args = ["--redis", redis.url];
  else if (via === "env") opts.env = { ...env, COURIER_CLUSTER_REDIS_URL: redis.url };
  else if (via === "config") opts.config = { ...config, cluster: { ...(config.cluster || {}), redis_url: redis.url } };
  else throw new Error(`unknown way to join the cluster: ${via}`);
  let node;
  try {
    node = await startCourier(opts);
    node.clusterDir = dataDir;
    await waitRedisState(node, "up");
  } catch (err) {
    await node?.kill("SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
  return node;
}

/** Starts reference/cluster.mjs (socket.io on the redis adapter) on `redis`; the caller stops it. */
export function startNodeServer(redis) {
  return startProcess(process.execPath, [NODE_CLUSTER_SCRIPT, "--redis", redis.url, "--port", "0"], {
    name: "node cluster server",
  });
}

/** Calls a control route of a Node cluster server (`POST /node/<what>`); resolves with its answer. */
export async function nodeControl(server, what, body = {}) {
  const res = await fetch(`${server.url}/node/${what}`, {
    method: what === "health" ? "GET" : "POST",
    headers: what === "health" ? {} : { "content-type": "application/json" },
    body: what === "health" ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const answer = await res.json();
  if (res.status !== 200) throw new Error(`/node/${what} answered ${res.status}: ${JSON.stringify(answer)}`);
  return answer;
}

/**
 * Starts a Redis, `courier` Courier nodes and `node` Node servers on it, and waits until all of
 * them are subscribed. Everything is stopped when `t` ends. Returns
 * {redis, nodes: [Courier nodes], nodeServers: [Node servers], servers: [all], addNode({via}),
 * restartNode(i, {signal})}.
 */
export async function startCluster(t, { courier = 3, node = 0, config = {}, env = {}, aof = false, redisCluster = false } = {}) {
  const redis = redisCluster ? await RedisCluster.start({ aof }) : await startRedis({ aof });
  const cluster = { redis, nodes: [], nodeServers: [] };
  t.after(async () => {
    await Promise.all([...cluster.nodes, ...cluster.nodeServers].map((s) => s.stop()));
    for (const n of cluster.nodes) rmSync(n.clusterDir, { recursive: true, force: true });
    await redis.close();
  });
  // One after another: the servers share two cores, and a failure names the one that failed.
  for (let i = 0; i < courier; i++) cluster.nodes.push(await startCourierNode(redis, { config, env }));
  for (let i = 0; i < node; i++) cluster.nodeServers.push(await startNodeServer(redis));
  await redis.waitSubscribers(courier + node);

  Object.defineProperty(cluster, "servers", { get: () => [...cluster.nodes, ...cluster.nodeServers] });
  /** Starts one more Courier node (told of Redis `via` "flag", "env" or "config") and waits for it. */
  cluster.addNode = async ({ via = "flag" } = {}) => {
    const next = await startCourierNode(redis, { config, env, via });
    cluster.nodes.push(next);
    await redis.waitSubscribers(cluster.nodes.length + cluster.nodeServers.length);
    return next;
  };
  /** Stops node `i` (SIGTERM, or SIGKILL) and starts it again on its port and data directory. */
  cluster.restartNode = async (i, { signal = "SIGTERM" } = {}) => {
    const old = cluster.nodes[i];
    const next = await restartCourier(old, { signal });
    next.clusterDir = old.clusterDir;
    cluster.nodes[i] = next;
    await waitRedisState(next, "up");
    await redis.waitSubscribers(cluster.nodes.length + cluster.nodeServers.length);
    return next;
  };
  return cluster;
}

// --- forwarding between nodes -----------------------------------------------------------------

/** Opens an Engine.IO polling session on `node` (a bare handshake); resolves with its sid. */
async function handshake(node) {
  const res = await fetch(`${node.url}/socket.io/?EIO=4&transport=polling`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  if (res.status !== 200 || !text.startsWith("0")) throw new Error(`handshake on ${node.url} answered ${res.status} ${text}`);
  return JSON.parse(text.slice(1)).sid;
}

/** POSTs Engine.IO packets for `sid` to `node`; resolves with {status, body}. */
async function postPackets(node, sid, packets) {
  const res = await fetch(`${node.url}/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`, {
    method: "POST",
    headers: { "content-type": "text/plain;charset=UTF-8" },
    body: packets,
    signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, body: await res.text() };
}

/**
 * Whether `via` forwards requests of a session `owner` made: a session is opened on `owner`, a
 * noop (packet 6) for it is POSTed to `via`, and the session is closed again. Resolves with the
 * answer `via` gave ({status, body}, 200 when forwarded).
 */
export async function probeForwarding(owner, via) {
  const sid = await handshake(owner);
  try {
    return await postPackets(via, sid, "6");
  } finally {
    await postPackets(owner, sid, "1").catch(() => {});
  }
}

/**
 * Waits until every node forwards to every other one: each node learns the others' addresses
 * from Redis on its own schedule, so a node that has just started may not know the latest.
 */
export async function waitForwarding(nodes, { ms = READY_TIMEOUT_MS } = {}) {
  for (const owner of nodes) {
    for (const via of nodes) {
      if (via === owner) continue;
      let last;
      await waitFor(
        async () => {
          last = await probeForwarding(owner, via).catch((err) => ({ error: err.message }));
          return last.status === 200;
        },
        { ms, every: 50, what: `${via.url} to forward requests of sessions on ${owner.url}` },
      ).catch((err) => {
        throw new Error(`${err.message}; last answer ${JSON.stringify(last)}`);
      });
    }
  }
}

// --- a hub: many nodes used as one server -----------------------------------------------------

/**
 * Starts a cluster of `courier` Courier nodes (startCluster, each with `config`) and returns it as
 * a hub: an object the helpers of clients.mjs take wherever they take one server. Each read of
 * `hub.url` gives the next node's URL, round robin, so consecutive sockets and API calls land on
 * different nodes: a subscriber on one node, the publish on the next, the consumer's state read
 * from the third. Everything is stopped when `t` ends.
 *
 * `hub.nodes` are the nodes, `hub.nodeOf(socket)` the index of the node a client socket was
 * opened on, `hub.restartNode(i, {signal})` stops node `i` and starts it again on its port (the
 * hub keeps working through it; what lives in Redis survives).
 */
export async function startHub(t, { courier = 3, config = {}, env = {}, redisCluster = false } = {}) {
  const cluster = await startCluster(t, { courier, config, env, redisCluster });
  let next = 0;
  return {
    cluster,
    redis: cluster.redis,
    get nodes() {
      return cluster.nodes;
    },
    get url() {
      const node = cluster.nodes[next % cluster.nodes.length];
      next += 1;
      return node.url;
    },
    nodeOf(socket) {
      const origin = new URL(socket.io.uri).origin;
      const i = cluster.nodes.findIndex((n) => n.url === origin);
      if (i < 0) throw new Error(`socket on ${origin} is on none of the nodes ${cluster.nodes.map((n) => n.url)}`);
      return i;
    },
    restartNode: (i, { signal = "SIGTERM" } = {}) => cluster.restartNode(i, { signal }),
  };
}
