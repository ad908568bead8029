// Connection state recovery across nodes: a socket.io-client that drops from one Courier node and
// comes back through another gets `socket.recovered === true`, its id, its rooms and every
// broadcast it missed, whichever node emitted them; also when its first node was killed.
//
// A TCP proxy in the test stands between the client and the cluster: the test cuts the client's
// connection, holds the reconnection while broadcasts are emitted, then lets it through to
// another node.

import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { io } from "socket.io-client";
import { withTimeout } from "./harness.mjs";
import { api, ask, listedSids } from "./clients.mjs";
import { startCluster } from "./cluster.mjs";

// The harness turns recovery off by default; `courier serve` has it on.
const RECOVERY = { recovery: { enabled: true } };

/**
 * A TCP proxy on 127.0.0.1 to `target` (a node's URL). `cut()` ends every connection through it;
 * while `hold()` is on, new connections wait; `release(url)` sends them (and later ones) to `url`.
 */
async function startProxy(t, target) {
  let upstream = new URL(target);
  let held = null;
  const sockets = new Set();
  const pipe = (client) => {
    const server = net.connect(Number(upstream.port), upstream.hostname);
    sockets.add(server);
    client.pipe(server).pipe(client);
    const end = () => {
      client.destroy();
      server.destroy();
    };
    client.on("error", end).on("close", end);
    server.on("error", end).on("close", end);
  };
  const listener = net.createServer((client) => {
    sockets.add(client);
    client.pause();
    if (held) held.push(client);
    else pipe(client);
  });
  await new Promise((resolve) => listener.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    for (const s of sockets) s.destroy();
    listener.close();
  });
  return {
    url: `http://127.0.0.1:${listener.address().port}`,
    hold() {
      held = [];
    },
    cut() {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    /** Resolves once a connection is waiting. */
    async waiting(ms = 8000) {
      const deadline = Date.now() + ms;
      while (!held || held.length === 0) {
        if (Date.now() > deadline) throw new Error("no reconnection reached the proxy");
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    release(url) {
      upstream = new URL(url);
      const waiting = held || [];
      held = null;
      for (const c of waiting) {
        pipe(c);
        c.resume();
      }
    },
  };
}

/** A socket.io-client through `url` that reconnects on its own, over WebSocket. */
function client(t, url) {
  const socket = io(url, {
    forceNew: true,
    transports: ["websocket"],
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    randomizationFactor: 0,
    timeout: 5000,
  });
  t.after(() => socket.close());
  return socket;
}

function connected(socket, ms = 10_000) {
  return withTimeout(new Promise((resolve) => socket.once("connect", resolve)), ms, "connect");
}

/** Records the first argument of every `event`. */
function record(socket, event) {
  const got = [];
  socket.on(event, (v) => got.push(v));
  return got;
}

async function emit(node, body) {
  const res = await api(node, "POST", "/api/v1/emit", { namespace: "/", ...body });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

async function until(what, check, ms = 8000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Connects a client to node `from` through a proxy, puts it in room "team", lets it receive one
 * broadcast, cuts it off and holds its reconnection. Returns what the recovery tests need.
 */
async function awayClient(t, cluster, from) {
  const proxy = await startProxy(t, cluster.nodes[from].url);
  const socket = client(t, proxy.url);
  await connected(socket);
  const news = record(socket, "news");
  assert.equal((await ask(socket, "courier:join", "team")).ok, true);
  await emit(cluster.nodes[2], { rooms: ["team"], event: "news", data: ["before"] });
  await until("the first broadcast", () => news.length === 1);
  const id = socket.id;
  proxy.hold();
  proxy.cut();
  await proxy.waiting();
  return { proxy, socket, news, id };
}

// Every test runs on one redis-server, then on a Redis Cluster of three masters, where logged
// broadcasts go on the namespace's sharded channel and the log sits in its slot.
for (const redisCluster of [false, true]) {
  const on = redisCluster ? " (on a Redis Cluster)" : "";
  const start = (t, options = {}) => startCluster(t, { ...options, redisCluster });

  test(`recovery across nodes: a client that drops from A and comes back through B gets its id, rooms and every broadcast it missed, from any node${on}`, async (t) => {
    const cluster = await start(t, { courier: 3, config: RECOVERY });
    const [a, b, c] = cluster.nodes;
    const { proxy, socket, news, id } = await awayClient(t, cluster, 0);
    // Missed while away: one from each node, to its room and to everyone, and one not for it.
    await emit(a, { rooms: ["team"], event: "news", data: ["from A"] });
    await emit(b, { event: "news", data: ["from B, to all"] });
    await emit(c, { rooms: ["others"], event: "news", data: ["not for it"] });
    await emit(c, { rooms: ["team"], event: "news", data: ["from C"] });
    const back = connected(socket);
    proxy.release(b.url);
    await back;
    assert.equal(socket.recovered, true);
    assert.equal(socket.id, id);
    await until("the missed broadcasts", () => news.length === 4);
    assert.deepEqual(news, ["before", "from A", "from B, to all", "from C"]);
    // Still in its room, now on B, and listed there.
    await emit(c, { rooms: ["team"], event: "news", data: ["after"] });
    await until("a broadcast after recovery", () => news.length === 5);
    assert.equal(news[4], "after");
    const listed = await listedSids(a);
    assert.ok(listed.includes(id), `${id} in ${JSON.stringify(listed)}`);
  });

  test(`recovery across nodes: a client of a node killed with SIGKILL is recovered by another${on}`, async (t) => {
    const cluster = await start(t, { courier: 3, config: RECOVERY });
    const [a, b, c] = cluster.nodes;
    const { proxy, socket, news, id } = await awayClient(t, cluster, 0);
    await a.kill("SIGKILL");
    await emit(c, { rooms: ["team"], event: "news", data: ["while A was dead"] });
    const back = connected(socket);
    proxy.release(b.url);
    await back;
    assert.equal(socket.recovered, true);
    assert.equal(socket.id, id);
    await until("the missed broadcast", () => news.length === 2);
    assert.deepEqual(news, ["before", "while A was dead"]);
    await emit(b, { rooms: ["team"], event: "news", data: ["after"] });
    await until("a broadcast after recovery", () => news.length === 3);
  });

  test(`recovery across nodes: a session is recovered once; a second client with the same pid starts afresh${on}`, async (t) => {
    const cluster = await start(t, { courier: 2, config: RECOVERY });
    const [, b] = cluster.nodes;
    const { proxy, socket, id } = await awayClient(t, { nodes: [cluster.nodes[0], b, b] }, 0);
    const back = connected(socket);
    proxy.release(b.url);
    await back;
    assert.equal(socket.recovered, true);
    // Another client presenting the same private id once the first holds the session.
    const copy = io(b.url, { forceNew: true, transports: ["websocket"], reconnection: false });
    t.after(() => copy.close());
    copy.auth = { pid: socket._pid, offset: socket._lastOffset };
    await connected(copy);
    assert.equal(copy.recovered, false);
    assert.notEqual(copy.id, id);
  });

  test(`recovery across nodes: with Redis stopped, a node still delivers its broadcasts to its own clients${on}`, async (t) => {
    const cluster = await start(t, { courier: 2, config: RECOVERY });
    const [a] = cluster.nodes;
    const socket = client(t, a.url);
    await connected(socket);
    const news = record(socket, "news");
    await cluster.redis.stop();
    await until("the node to see Redis gone", async () => (await api(a, "GET", "/health")).body.cluster.redis === "down");
    assert.equal((await emit(a, { event: "news", data: ["local"] })).recipients, 1);
    await until("the local broadcast", () => news.length === 1);
    assert.equal(news[0], "local");
  });

  test(`recovery across nodes: the clients of a node stopped gracefully are recovered by the others${on}`, async (t) => {
    const cluster = await start(t, { courier: 3, config: RECOVERY });
    const [a, b, c] = cluster.nodes;
    const proxy = await startProxy(t, a.url);
    const socket = client(t, proxy.url);
    await connected(socket);
    const news = record(socket, "news");
    assert.equal((await ask(socket, "courier:join", "team")).ok, true);
    const id = socket.id;
    // Connected when A shuts down: A hands the session over as it closes the connection.
    proxy.hold();
    await a.stop();
    await proxy.waiting();
    await emit(c, { rooms: ["team"], event: "news", data: ["while A was gone"] });
    const back = connected(socket);
    proxy.release(b.url);
    await back;
    assert.equal(socket.recovered, true);
    assert.equal(socket.id, id);
    await until("the missed broadcast", () => news.length === 1);
    assert.deepEqual(news, ["while A was gone"]);
  });
}
