// Courier nodes and a Node socket.io server on `@socket.io/redis-adapter` 8.x sharing one Redis:
// a Node application and Courier make one cluster. Events cross both ways, rooms span both kinds
// of server, and each side lists and moves the other's sockets with its own tools (fetchSockets
// and socketsJoin on Node, GET /api/v1/sockets and the emit API on Courier). The Node server is
// reference/cluster.mjs; cluster-reference.test.mjs shows the same scenarios between Node servers.

import { test } from "node:test";
import assert from "node:assert/strict";
import { once, waitFor, withTimeout } from "./harness.mjs";
import { api, ask, connect, listedSids, normalizeBinary, record } from "./clients.mjs";
import { nodeControl, startCluster } from "./cluster.mjs";

/** One Node server and two Courier nodes on one Redis: {node, courierA, courierB}. */
async function mixedCluster(t) {
  const cluster = await startCluster(t, { courier: 2, node: 1 });
  return { node: cluster.nodeServers[0], courierA: cluster.nodes[0], courierB: cluster.nodes[1], cluster };
}

async function emit(courier, body) {
  const res = await api(courier, "POST", "/api/v1/emit", { namespace: "/", ...body });
  assert.equal(res.status, 200, `emit on ${courier.url}: ${JSON.stringify(res.body)}`);
  return res.body;
}

let sentinels = 0;
/**
 * Sends a sentinel to `socket` alone from `from` (a Courier node, or the Node server) and waits for
 * it: Redis keeps one publisher's messages in order, so what `from` sent before has arrived too.
 */
async function settle(from, socket, { viaNode = false } = {}) {
  const token = ++sentinels;
  const got = new Promise((resolve) => {
    const listener = (n) => {
      if (n !== token) return;
      socket.off("sentinel", listener);
      resolve();
    };
    socket.on("sentinel", listener);
  });
  const body = { rooms: [socket.id], event: "sentinel", data: [token] };
  if (viaNode) await nodeControl(from, "emit", body);
  else await emit(from, body);
  await withTimeout(got, 5000, `the sentinel to ${socket.id}`);
}

test("interop: the Node server's io.emit reaches Courier's clients on both nodes", async (t) => {
  const { node, courierA, courierB } = await mixedCluster(t);
  const clients = await Promise.all([
    connect(t, courierA.url, "/", { transports: ["websocket"] }),
    connect(t, courierB.url, "/", { transports: ["polling"] }),
    connect(t, node.url),
  ]);
  const got = clients.map((c) => once(c, "news"));
  await nodeControl(node, "emit", { event: "news", data: ["from node", { n: 1, list: [true, null] }] });
  for (const g of got) assert.deepEqual(await g, ["from node", { n: 1, list: [true, null] }]);
});

test("interop: the Node server's io.to(room).emit reaches the room's members on Courier, and only them", async (t) => {
  const { node, courierA, courierB } = await mixedCluster(t);
  const [member, outsider, memberB] = await Promise.all([
    connect(t, courierA.url),
    connect(t, courierA.url),
    connect(t, courierB.url),
  ]);
  await ask(member, "courier:join", "parcel-9");
  await ask(memberB, "courier:join", "parcel-9");
  const outside = record(outsider, "status");
  const got = [member, memberB].map((s) => once(s, "status"));
  await nodeControl(node, "emit", { event: "status", data: ["delivered"], rooms: ["parcel-9"] });
  for (const g of got) assert.deepEqual(await g, ["delivered"]);
  await settle(node, outsider, { viaNode: true });
  assert.deepEqual(outside, []);
});

test("interop: the Node server's emit carries binary attachments to Courier's clients", async (t) => {
  const { node, courierA } = await mixedCluster(t);
  const client = await connect(t, courierA.url);
  await ask(client, "courier:join", "files");
  const nodeClient = await connect(t, node.url);
  await ask(nodeClient, "join", "files");
  const got = once(client, "upload");
  const args = [Buffer.from([0, 1, 254, 255]), { nested: Buffer.alloc(20_000, 3) }];
  // a Node client's event, relayed by the Node server to its rooms on every server
  await ask(nodeClient, "upload", ...args);
  assert.deepEqual(normalizeBinary(await got), args);
});

test("interop: Courier's API emit reaches the Node server's clients", async (t) => {
  const { node, courierA, courierB } = await mixedCluster(t);
  const [onNode, onA] = await Promise.all([connect(t, node.url), connect(t, courierA.url)]);
  const got = [onNode, onA].map((c) => once(c, "news"));
  const answer = await emit(courierB, { event: "news", data: ["from courier", { n: 2 }] });
  assert.ok(answer.recipients >= 1, JSON.stringify(answer));
  for (const g of got) assert.deepEqual(await g, ["from courier", { n: 2 }]);
});

test("interop: Courier's API emit to a room reaches the room's members on the Node server, and only them", async (t) => {
  const { node, courierA } = await mixedCluster(t);
  const [member, outsider] = await Promise.all([connect(t, node.url), connect(t, node.url)]);
  assert.deepEqual(await ask(member, "join", "orders"), { ok: true, rooms: ["orders", member.id].sort() });
  const outside = record(outsider, "order");
  const got = once(member, "order");
  await emit(courierA, { rooms: ["orders"], event: "order", data: [{ id: 7 }] });
  assert.deepEqual(await got, [{ id: 7 }]);
  await settle(courierA, outsider);
  assert.deepEqual(outside, []);
});

test("interop: a room spans both kinds of server, and clients' events are relayed both ways", async (t) => {
  const { node, courierA, courierB } = await mixedCluster(t);
  const [onA, onB, onNode] = await Promise.all([connect(t, courierA.url), connect(t, courierB.url), connect(t, node.url)]);
  await ask(onA, "courier:join", "mixed");
  await ask(onB, "courier:join", "mixed");
  await ask(onNode, "join", "mixed");

  // relayed by Courier node A to the Node server's client and to node B's
  let got = [onB, onNode].map((s) => once(s, "chat"));
  assert.equal((await ask(onA, "chat", "from a courier client")).ok, true);
  for (const g of got) assert.deepEqual(await g, ["from a courier client"]);

  // relayed by the Node server to both Courier nodes' clients
  got = [onA, onB].map((s) => once(s, "chat"));
  assert.deepEqual(await ask(onNode, "chat", "from a node client"), { ok: true });
  for (const g of got) assert.deepEqual(await g, ["from a node client"]);
});

test("interop: fetchSockets on the Node server lists Courier's sockets with their rooms", async (t) => {
  const { node, courierA, courierB } = await mixedCluster(t);
  const [onA, onB, onNode] = await Promise.all([connect(t, courierA.url), connect(t, courierB.url), connect(t, node.url)]);
  await ask(onA, "courier:join", ["blue", "green"]);
  await ask(onB, "courier:join", "blue");
  const { sockets } = await nodeControl(node, "sockets");
  const byId = Object.fromEntries(sockets.map((s) => [s.id, s.rooms]));
  assert.deepEqual(byId, {
    [onA.id]: [onA.id, "blue", "green"].sort(),
    [onB.id]: [onB.id, "blue"].sort(),
    [onNode.id]: [onNode.id],
  });
  const inBlue = await nodeControl(node, "sockets", { rooms: ["blue"] });
  assert.deepEqual(inBlue.sockets.map((s) => s.id).sort(), [onA.id, onB.id].sort());
});

test("interop: GET /api/v1/sockets on Courier lists the Node server's sockets with their rooms", async (t) => {
  const { node, courierA, courierB } = await mixedCluster(t);
  const [onNode, onB] = await Promise.all([connect(t, node.url), connect(t, courierB.url)]);
  await ask(onNode, "join", ["kitchen", "hall"]);
  const res = await api(courierA, "GET", "/api/v1/sockets?namespace=%2F");
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const byId = Object.fromEntries(res.body.sockets.map((s) => [s.sid, [...s.rooms].sort()]));
  assert.deepEqual(byId, {
    [onNode.id]: [onNode.id, "hall", "kitchen"].sort(),
    [onB.id]: [onB.id],
  });
  assert.deepEqual(await listedSids(courierA, "/", "kitchen"), [onNode.id]);
});

test("interop: socketsJoin from the Node server puts a Courier socket in a room Courier then emits to", async (t) => {
  const { node, courierA, courierB } = await mixedCluster(t);
  const onB = await connect(t, courierB.url);
  await nodeControl(node, "join", { rooms: [onB.id], room: "vip" });
  await waitFor(async () => (await listedSids(courierB, "/", "vip")).includes(onB.id), {
    what: "node B to list its socket in room vip",
  });
  const got = once(onB, "perk");
  const answer = await emit(courierA, { rooms: ["vip"], event: "perk", data: ["free tea"] });
  assert.equal(answer.recipients, 1);
  assert.deepEqual(await got, ["free tea"]);
});

test("interop: Courier's emit with ack_timeout_ms collects the acks of the Node server's clients", async (t) => {
  const { node, courierA, courierB } = await mixedCluster(t);
  const [onNode, onB] = await Promise.all([connect(t, node.url), connect(t, courierB.url)]);
  onNode.on("quote", (item, ack) => ack({ from: "node", item }));
  onB.on("quote", (item, ack) => ack({ from: "courier", item }));
  const answer = await emit(courierA, { event: "quote", data: ["tea"], ack_timeout_ms: 3000 });
  assert.equal(answer.recipients, 2, JSON.stringify(answer));
  assert.equal(answer.timeouts, 0, JSON.stringify(answer));
  // Node's adapter passes on an ack's first argument without saying which socket sent it.
  const bySid = Object.fromEntries(answer.acks.map((a) => [a.sid, a.args]));
  assert.deepEqual(bySid, {
    null: [{ from: "node", item: "tea" }],
    [onB.id]: [{ from: "courier", item: "tea" }],
  });
});

test("interop: the Node server's emitWithAck collects the acks of Courier's clients", async (t) => {
  const { node, courierA, courierB } = await mixedCluster(t);
  const clients = await Promise.all([connect(t, courierA.url), connect(t, courierB.url), connect(t, node.url)]);
  for (const c of clients) c.on("question", (q, ack) => ack(`${c.id}:${q}`));
  const { responses, error } = await nodeControl(node, "emit-ack", { event: "question", data: ["q"], timeout_ms: 3000 });
  assert.equal(error, undefined, `emitWithAck failed: ${error}`);
  assert.deepEqual([...responses].sort(), clients.map((c) => `${c.id}:q`).sort());
});

test("interop: disconnectSockets from the Node server disconnects Courier's sockets in the room", async (t) => {
  const { node, courierA, courierB } = await mixedCluster(t);
  const [kicked, kept] = await Promise.all([connect(t, courierA.url), connect(t, courierB.url)]);
  await ask(kicked, "courier:join", "kick-me");
  const reason = once(kicked, "disconnect");
  await nodeControl(node, "disconnect", { rooms: ["kick-me"] });
  assert.equal((await reason)[0], "io server disconnect");
  await settle(courierB, kept);
  assert.equal(kept.connected, true);
});
