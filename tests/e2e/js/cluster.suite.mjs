// `courier serve --redis URL`: three Courier nodes on one Redis (cluster.test.mjs) or on a Redis
// Cluster of three masters (cluster-rediscluster.test.mjs), stock socket.io-client spread over
// them. Whatever node a client is on and whatever node a backend calls, a room is cluster-wide:
// the HTTP API's emit (with its acks), listing and disconnect, and the relay of client events, all
// reach every node. With Redis away each node serves its own clients, and it rejoins the others
// by itself when Redis is back on its port.

import { test } from "node:test";
import assert from "node:assert/strict";
import { once, startCourier, waitFor, withTimeout } from "./harness.mjs";
import { api, ask, connect, listedSids, normalizeBinary, record } from "./clients.mjs";
import { health, startCluster, waitRedisState } from "./cluster.mjs";

/** POST /api/v1/emit on `node`; returns the answer's body, failing unless it is 200. */
async function emit(node, body) {
  const res = await api(node, "POST", "/api/v1/emit", { namespace: "/", ...body });
  assert.equal(res.status, 200, `emit on ${node.url}: ${JSON.stringify(res.body)}`);
  return res.body;
}

/** Resolves with the arguments of the first `event` on `socket` whose first argument is `value`. */
function nextWith(socket, event, value) {
  return withTimeout(
    new Promise((resolve) => {
      const listener = (...args) => {
        if (args[0] !== value) return;
        socket.off(event, listener);
        resolve(args);
      };
      socket.on(event, listener);
    }),
    5000,
    `${event} ${JSON.stringify(value)}`,
  );
}

let sentinels = 0;
/**
 * Emits a sentinel from `node` to `socket` alone and waits for it. Redis hands one publisher's
 * messages to each subscriber in order, so once the sentinel is in, whatever `node` sent before it
 * has arrived too: a test asserts that something did NOT arrive without sleeping and hoping.
 */
async function settle(node, socket) {
  const token = ++sentinels;
  const got = new Promise((resolve) => {
    const listener = (n) => {
      if (n !== token) return;
      socket.off("sentinel", listener);
      resolve();
    };
    socket.on("sentinel", listener);
  });
  await emit(node, { rooms: [socket.id], event: "sentinel", data: [token] });
  await withTimeout(got, 5000, `the sentinel from ${node.url} to ${socket.id}`);
}

/** Every sid GET /api/v1/sockets on `node` lists, with its rooms: {sid: [rooms]}. */
async function listing(node, room) {
  const query = new URLSearchParams({ namespace: "/" });
  if (room !== undefined) query.set("room", room);
  const res = await api(node, "GET", `/api/v1/sockets?${query}`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return Object.fromEntries(res.body.sockets.map((s) => [s.sid, [...s.rooms].sort()]));
}

const sorted = (list) => [...list].sort();

/**
 * Declares the tests on a cluster of Courier nodes on one redis-server, or with `redisCluster` on
 * a Redis Cluster of three masters.
 */
export function clusterSuite({ redisCluster = false } = {}) {
  const start = (t, options = {}) => startCluster(t, { ...options, redisCluster });
  // --- joining the cluster ----------------------------------------------------------------------

  test("health: every node says Redis is up and names itself, each with an id of its own", async (t) => {
    const { nodes } = await start(t);
    const ids = [];
    for (const node of nodes) {
      const body = await health(node);
      assert.equal(body.status, "ok");
      assert.equal(body.cluster?.redis, "up", JSON.stringify(body));
      assert.equal(typeof body.cluster.node, "string", JSON.stringify(body));
      assert.notEqual(body.cluster.node, "");
      ids.push(body.cluster.node);
    }
    assert.equal(new Set(ids).size, 3, `three different node ids: ${ids}`);
  });

  test("health: a hub started without --redis has no cluster section", { skip: redisCluster }, async (t) => {
    const server = await startCourier({ t });
    const body = await health(server);
    assert.equal(body.status, "ok");
    assert.equal("cluster" in body, false, JSON.stringify(body));
  });

  test("COURIER_CLUSTER_REDIS_URL joins a node to the cluster as --redis does", async (t) => {
    const cluster = await start(t, { courier: 1 });
    const byEnv = await cluster.addNode({ via: "env" });
    const [onFlag, onEnv] = await Promise.all([connect(t, cluster.nodes[0].url), connect(t, byEnv.url)]);
    const got = once(onFlag, "news");
    assert.equal((await emit(byEnv, { event: "news", data: ["from the env node"] })).recipients, 2);
    assert.deepEqual(await got, ["from the env node"]);
    // The first emit reached onEnv too, and may still be on its way.
    const back = nextWith(onEnv, "news", "from the flag node");
    await emit(cluster.nodes[0], { event: "news", data: ["from the flag node"] });
    assert.deepEqual(await back, ["from the flag node"]);
  });

  test("[cluster] redis_url in the config file joins a node to the cluster as --redis does", async (t) => {
    const cluster = await start(t, { courier: 1 });
    const byConfig = await cluster.addNode({ via: "config" });
    const [onFlag, onConfig] = await Promise.all([connect(t, cluster.nodes[0].url), connect(t, byConfig.url)]);
    const got = once(onFlag, "news");
    assert.equal((await emit(byConfig, { event: "news", data: ["from the config node"] })).recipients, 2);
    assert.deepEqual(await got, ["from the config node"]);
    const back = nextWith(onConfig, "news", "from the flag node");
    await emit(cluster.nodes[0], { event: "news", data: ["from the flag node"] });
    assert.deepEqual(await back, ["from the flag node"]);
  });

  // --- the HTTP API's emit ----------------------------------------------------------------------

  test("emit through any node's API reaches the clients of every node, over either transport", async (t) => {
    const { nodes } = await start(t);
    const clients = await Promise.all([
      connect(t, nodes[0].url, "/", { transports: ["websocket"] }),
      connect(t, nodes[1].url, "/", { transports: ["polling"] }),
      connect(t, nodes[2].url),
    ]);
    const logs = clients.map((c) => record(c, "news"));
    for (const [i, node] of nodes.entries()) {
      const answer = await emit(node, { event: "news", data: [`via node ${i}`, { i }] });
      assert.deepEqual(answer, { recipients: 3 }, `the answer of node ${i} counts the sockets of every node`);
    }
    const expected = nodes.map((_, i) => [`via node ${i}`, { i }]);
    await waitFor(() => logs.every((l) => l.length >= 3), { what: "three events at every client" });
    for (const [i, log] of logs.entries()) {
      await settle(nodes[0], clients[i]);
      assert.deepEqual(sorted(log.map(JSON.stringify)), sorted(expected.map(JSON.stringify)), `client on node ${i}: each event once`);
    }
  });

  test("emit to a room reaches its members on every node, and no one else", async (t) => {
    const { nodes } = await start(t);
    const [memberA, outsiderA, outsiderB, memberC] = await Promise.all([
      connect(t, nodes[0].url),
      connect(t, nodes[0].url),
      connect(t, nodes[1].url),
      connect(t, nodes[2].url),
    ]);
    await ask(memberA, "courier:join", "parcel-7");
    await ask(memberC, "courier:join", "parcel-7");
    const outside = [outsiderA, outsiderB].map((s) => record(s, "status"));
    const got = [memberA, memberC].map((s) => once(s, "status"));
    const answer = await emit(nodes[1], { rooms: ["parcel-7"], event: "status", data: ["in-transit"] });
    assert.equal(answer.recipients, 2);
    for (const g of got) assert.deepEqual(await g, ["in-transit"]);
    await settle(nodes[1], outsiderA);
    await settle(nodes[1], outsiderB);
    assert.deepEqual(outside, [[], []], "sockets outside the room get nothing");
  });

  test("emit with except leaves out the excepted room's members on every node", async (t) => {
    const { nodes } = await start(t);
    const clients = await Promise.all(nodes.map((n) => connect(t, n.url)));
    await Promise.all(clients.map((c) => ask(c, "courier:join", "everyone")));
    await ask(clients[2], "courier:join", "muted");
    const logs = clients.map((c) => record(c, "note"));
    const answer = await emit(nodes[0], { rooms: ["everyone"], except: ["muted"], event: "note", data: [1] });
    assert.equal(answer.recipients, 2);
    await waitFor(() => logs[0].length === 1 && logs[1].length === 1, { what: "the note on nodes 0 and 1" });
    await settle(nodes[0], clients[2]);
    assert.deepEqual(logs, [[[1]], [[1]], []]);
  });

  test("emit with ack_timeout_ms: the acks of sockets on every node come back in the answer", async (t) => {
    const { nodes } = await start(t);
    const clients = await Promise.all(nodes.map((n) => connect(t, n.url)));
    clients.forEach((c, i) => c.on("quote", (item, ack) => ack({ node: i, item, price: 10 + i })));
    const started = Date.now();
    const answer = await emit(nodes[1], { event: "quote", data: ["tea"], ack_timeout_ms: 4000 });
    assert.ok(Date.now() - started < 3500, "the answer does not wait for the timeout once every ack is in");
    assert.equal(answer.recipients, 3);
    assert.equal(answer.timeouts, 0);
    const bySid = (x, y) => (x.sid < y.sid ? -1 : 1);
    const expected = clients.map((c, i) => ({ sid: c.id, args: [{ node: i, item: "tea", price: 10 + i }] }));
    assert.deepEqual([...answer.acks].sort(bySid), expected.sort(bySid));
  });

  test("emit with ack_timeout_ms: a socket on another node that never answers counts as a timeout", async (t) => {
    const { nodes } = await start(t);
    const [answersA, silentB, answersC] = await Promise.all(nodes.map((n) => connect(t, n.url)));
    answersA.on("poll", (ack) => ack("a"));
    answersC.on("poll", (ack) => ack("c"));
    let silentSaw = 0;
    silentB.on("poll", () => {
      silentSaw++; // receives it, never calls back
    });
    const answer = await emit(nodes[0], { event: "poll", data: [], ack_timeout_ms: 800 });
    assert.equal(answer.recipients, 3);
    assert.equal(answer.timeouts, 1);
    assert.deepEqual(sorted(answer.acks.map((a) => `${a.sid}=${a.args[0]}`)), sorted([`${answersA.id}=a`, `${answersC.id}=c`]));
    assert.equal(silentSaw, 1, "the silent socket did get the event");
  });

  // --- rooms joined by clients, and relay -------------------------------------------------------

  test("courier:join on one node, relay from another: a room spans the cluster", async (t) => {
    const { nodes } = await start(t);
    const [sender, memberB, memberC, outsiderC] = await Promise.all([
      connect(t, nodes[0].url),
      connect(t, nodes[1].url, "/", { transports: ["polling"] }),
      connect(t, nodes[2].url),
      connect(t, nodes[2].url),
    ]);
    for (const s of [sender, memberB, memberC]) {
      assert.deepEqual(await ask(s, "courier:join", "lobby"), { ok: true, rooms: sorted(["lobby", s.id]) });
    }
    const atSender = record(sender, "chat");
    const outside = record(outsiderC, "chat");
    const got = [memberB, memberC].map((s) => once(s, "chat"));
    const ack = await ask(sender, "chat", "hello", { from: "node 0" });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    for (const g of got) assert.deepEqual(await g, ["hello", { from: "node 0" }]);

    // and back, from a member on node 1 to the others
    const back = once(sender, "chat");
    const atC = once(memberC, "chat");
    await ask(memberB, "chat", "hi back");
    assert.deepEqual(await back, ["hi back"]);
    assert.deepEqual(await atC, ["hi back"]);

    await settle(nodes[0], sender);
    await settle(nodes[0], outsiderC);
    assert.deepEqual(atSender, [["hi back"]], "the sender does not get its own event back");
    assert.deepEqual(outside, [], "a socket outside the room gets nothing");
  });

  test("relay across nodes keeps binary attachments intact", async (t) => {
    const { nodes } = await start(t);
    const [sender, receiver] = await Promise.all([
      connect(t, nodes[0].url, "/", { transports: ["websocket"] }),
      connect(t, nodes[1].url, "/", { transports: ["polling"] }),
    ]);
    await ask(sender, "courier:join", "files");
    await ask(receiver, "courier:join", "files");
    const args = [
      Buffer.from([0, 1, 2, 254, 255]),
      { name: "scan.png", parts: [Buffer.alloc(50_000, 7), { deep: Buffer.from("nested") }] },
      "caption",
    ];
    const got = once(receiver, "upload");
    await ask(sender, "upload", ...args);
    assert.deepEqual(normalizeBinary(await got), args);
  });

  test("courier:leave on one node takes the socket out of the room cluster-wide", async (t) => {
    const { nodes } = await start(t);
    const [sender, leaver, stayer] = await Promise.all(nodes.map((n) => connect(t, n.url)));
    for (const s of [sender, leaver, stayer]) await ask(s, "courier:join", "team");
    // Both receive the first relay (from different nodes, at different times) before going on.
    const first = [once(leaver, "update"), once(stayer, "update")];
    await ask(sender, "update", 1);
    assert.deepEqual(await Promise.all(first), [[1], [1]]);

    assert.deepEqual(await ask(leaver, "courier:leave", "team"), { ok: true, rooms: [leaver.id] });
    const log = record(leaver, "update");
    const atStayer = once(stayer, "update");
    await ask(sender, "update", 2);
    assert.deepEqual(await atStayer, [2]);
    const answer = await emit(nodes[0], { rooms: ["team"], event: "update", data: [3] });
    assert.equal(answer.recipients, 2, "the sender and the one that stayed");
    await settle(nodes[0], leaver);
    assert.deepEqual(log, [], "after leaving, neither relays nor emits to the room arrive");
  });

  // --- listing and disconnecting ----------------------------------------------------------------

  test("GET /api/v1/sockets on any node lists the sockets of every node with their rooms", async (t) => {
    const { nodes } = await start(t);
    const clients = await Promise.all([
      connect(t, nodes[0].url),
      connect(t, nodes[1].url, "/", { transports: ["polling"] }),
      connect(t, nodes[2].url),
    ]);
    await ask(clients[1], "courier:join", ["red", "blue"]);
    await ask(clients[2], "courier:join", "red");
    const expected = {
      [clients[0].id]: [clients[0].id],
      [clients[1].id]: sorted(["red", "blue", clients[1].id]),
      [clients[2].id]: sorted(["red", clients[2].id]),
    };
    for (const [i, node] of nodes.entries()) {
      assert.deepEqual(await listing(node), expected, `the listing of node ${i}`);
      assert.deepEqual(await listedSids(node, "/", "red"), sorted([clients[1].id, clients[2].id]), `room red on node ${i}`);
    }
  });

  test("a socket that disconnects from its node leaves the listing of every node", async (t) => {
    const { nodes } = await start(t);
    const [stays, goes] = await Promise.all([connect(t, nodes[0].url), connect(t, nodes[1].url)]);
    await waitFor(async () => (await listedSids(nodes[2])).length === 2, { what: "both sockets listed on node 2" });
    goes.disconnect();
    for (const [i, node] of nodes.entries()) {
      await waitFor(async () => {
        const sids = await listedSids(node);
        return sids.length === 1 && sids[0] === stays.id;
      }, { what: `node ${i} to list only the socket still connected` });
    }
  });

  test("POST /api/v1/disconnect on one node disconnects the room's sockets on every node", async (t) => {
    const { nodes } = await start(t);
    const [keptA, kickedB, kickedC, keptC] = await Promise.all([
      connect(t, nodes[0].url),
      connect(t, nodes[1].url),
      connect(t, nodes[2].url),
      connect(t, nodes[2].url),
    ]);
    await ask(kickedB, "courier:join", "kick-me");
    await ask(kickedC, "courier:join", "kick-me");
    const reasons = Promise.all([kickedB, kickedC].map((s) => once(s, "disconnect")));
    const res = await api(nodes[0], "POST", "/api/v1/disconnect", { namespace: "/", rooms: ["kick-me"] });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual((await reasons).map((r) => r[0]), ["io server disconnect", "io server disconnect"]);
    await settle(nodes[0], keptA);
    await settle(nodes[0], keptC);
    assert.equal(keptA.connected && keptC.connected, true, "sockets outside the room stay connected");
    await waitFor(async () => (await listedSids(nodes[1])).join() === sorted([keptA.id, keptC.id]).join(), {
      what: "the listing to hold only the sockets left",
    });
  });

  test("POST /api/v1/disconnect with close:true closes the connections of sockets on other nodes", async (t) => {
    const { nodes } = await start(t);
    const [onB, onC] = await Promise.all([
      connect(t, nodes[1].url, "/", { transports: ["websocket"] }),
      connect(t, nodes[2].url, "/", { transports: ["polling"] }),
    ]);
    await ask(onB, "courier:join", "closing");
    await ask(onC, "courier:join", "closing");
    const reasons = Promise.all([onB, onC].map((s) => once(s, "disconnect")));
    const res = await api(nodes[0], "POST", "/api/v1/disconnect", { namespace: "/", rooms: ["closing"], close: true });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual((await reasons).map((r) => r[0]), ["transport close", "transport close"]);
  });

  // --- Redis away and back ----------------------------------------------------------------------

  test("Redis stopped: every node says so in /health and keeps serving its own clients", async (t) => {
    const { redis, nodes } = await start(t);
    const [onA, otherA] = await Promise.all([connect(t, nodes[0].url), connect(t, nodes[0].url)]);
    await redis.stop();
    for (const node of nodes) await waitRedisState(node, "down");

    // the API answers at once and reaches the node's own clients
    const got = once(onA, "local");
    const started = Date.now();
    const answer = await emit(nodes[0], { event: "local", data: ["still here"] });
    assert.ok(Date.now() - started < 3000, `emit answered in ${Date.now() - started} ms`);
    assert.ok(answer.recipients >= 2, JSON.stringify(answer));
    assert.deepEqual(await got, ["still here"]);

    // and clients of one node still share rooms there
    await ask(onA, "courier:join", "local-room");
    await ask(otherA, "courier:join", "local-room");
    const relayed = once(otherA, "chat");
    await ask(onA, "chat", "no redis needed");
    assert.deepEqual(await relayed, ["no redis needed"]);
  });

  test("Redis back on its port: the nodes reconnect and resubscribe by themselves, and emits cross nodes again", async (t) => {
    const { redis, nodes } = await start(t);
    const clients = await Promise.all(nodes.map((n) => connect(t, n.url)));
    const logs = clients.map((c) => record(c, "after"));
    await redis.stop();
    for (const node of nodes) await waitRedisState(node, "down");
    await redis.start();
    for (const node of nodes) await waitRedisState(node, "up", { ms: 10_000 });
    await redis.waitSubscribers(3, { ms: 10_000 });
    // an event published while a node was still resubscribing is lost for it: send until all have one
    await waitFor(
      async () => {
        await emit(nodes[0], { event: "after", data: ["back"] });
        return logs.every((l) => l.length > 0);
      },
      { ms: 10_000, every: 250, what: "an emit from node 0 to reach the clients of every node" },
    );
    for (const log of logs) assert.deepEqual(log[0], ["back"]);
  });

  test("a room joined before Redis went away spans the nodes again once it is back", async (t) => {
    const { redis, nodes } = await start(t);
    const [sender, member] = await Promise.all([connect(t, nodes[0].url), connect(t, nodes[1].url)]);
    await ask(sender, "courier:join", "kept");
    await ask(member, "courier:join", "kept");
    await redis.stop();
    await waitRedisState(nodes[1], "down");
    await redis.start();
    for (const node of nodes) await waitRedisState(node, "up", { ms: 10_000 });
    await redis.waitSubscribers(3, { ms: 10_000 });
    const log = record(member, "chat");
    await waitFor(
      async () => {
        await ask(sender, "chat", "still a room");
        return log.length > 0;
      },
      { ms: 10_000, every: 250, what: "a relay from node 0 to reach the member on node 1" },
    );
    assert.deepEqual(log[0], ["still a room"]);
    const answer = await emit(nodes[2], { rooms: ["kept"], event: "chat", data: ["from node 2"] });
    assert.equal(answer.recipients, 2);
  });

  test("emit through a node with no socket in a namespace from a pattern reaches that namespace's sockets on the others", async (t) => {
    const cluster = await start(t, { courier: 2, config: { hub: { namespace_patterns: ["^/shop-[0-9]+$"] } } });
    const [a, b] = cluster.nodes;
    const onB = await connect(t, b.url, "/shop-7");
    const got = once(onB, "price");
    // B made the namespace when the client came and then subscribed to its channel: the emit
    // counts the nodes listening there, so it must not come before (it did, once, on a busy
    // machine).
    await cluster.redis.waitSubscribers(1, { channel: "socket.io#/shop-7#" });
    const answer = await api(a, "POST", "/api/v1/emit", { namespace: "/shop-7", event: "price", data: [12] });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.recipients, 1);
    assert.deepEqual(await got, [12]);
  });
}
