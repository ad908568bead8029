// The baseline for the cluster suites: two Node socket.io servers on `@socket.io/redis-adapter`
// (reference/cluster.mjs) and one Redis, started by the same harness as Courier's nodes. What
// passes here is what the adapter's wire format does between its own servers, and it shows the
// harness itself works: Redis started on a free port, servers subscribed before a test begins,
// Redis stopped and started again on its port.

import { test } from "node:test";
import assert from "node:assert/strict";
import { once, sleep, waitFor } from "./harness.mjs";
import { ask, connect, record } from "./clients.mjs";
import { nodeControl, startCluster } from "./cluster.mjs";

const twoNodeServers = (t) => startCluster(t, { courier: 0, node: 2 });

test("reference: io.emit on one Node server reaches the clients of the other", async (t) => {
  const { nodeServers: [a, b] } = await twoNodeServers(t);
  const [onA, onB] = await Promise.all([connect(t, a.url), connect(t, b.url, "/", { transports: ["polling"] })]);
  const gotA = once(onA, "news");
  const gotB = once(onB, "news");
  await nodeControl(a, "emit", { event: "news", data: ["hello", { n: 1 }] });
  assert.deepEqual(await gotA, ["hello", { n: 1 }]);
  assert.deepEqual(await gotB, ["hello", { n: 1 }]);
});

test("reference: a room spans both Node servers, and a client's relay reaches the other server", async (t) => {
  const { nodeServers: [a, b] } = await twoNodeServers(t);
  const [inA, inB, outB] = await Promise.all([connect(t, a.url), connect(t, b.url), connect(t, b.url)]);
  assert.equal((await ask(inA, "join", "lobby")).ok, true);
  assert.equal((await ask(inB, "join", "lobby")).ok, true);
  const outside = record(outB, "chat");
  const atB = once(inB, "chat");
  assert.deepEqual(await ask(inA, "chat", "hi", Buffer.from([1, 2, 3])), { ok: true });
  const [text, bytes] = await atB;
  assert.equal(text, "hi");
  assert.deepEqual(Buffer.from(bytes), Buffer.from([1, 2, 3]));

  const fromServer = once(inA, "chat");
  await nodeControl(b, "emit", { event: "chat", data: ["from b"], rooms: ["lobby"] });
  assert.deepEqual(await fromServer, ["from b"]);
  await sleep(200);
  assert.deepEqual(outside, [], "a client outside the room gets nothing");
});

test("reference: fetchSockets on one Node server lists the sockets of both, with their rooms", async (t) => {
  const { nodeServers: [a, b] } = await twoNodeServers(t);
  const [onA, onB] = await Promise.all([connect(t, a.url), connect(t, b.url)]);
  await ask(onB, "join", ["x", "y"]);
  const { sockets } = await nodeControl(a, "sockets");
  const byId = Object.fromEntries(sockets.map((s) => [s.id, s.rooms]));
  assert.deepEqual(Object.keys(byId).sort(), [onA.id, onB.id].sort());
  assert.deepEqual(byId[onB.id], [onB.id, "x", "y"].sort());
});

test("reference: socketsJoin by socket id on one Node server moves a socket of the other", async (t) => {
  const { nodeServers: [a, b] } = await twoNodeServers(t);
  const onB = await connect(t, b.url);
  await nodeControl(a, "join", { rooms: [onB.id], room: "moved" });
  await waitFor(async () => {
    const { sockets } = await nodeControl(a, "sockets", { rooms: ["moved"] });
    return sockets.some((s) => s.id === onB.id);
  }, { what: "the socket to be in room moved" });
  const got = once(onB, "ping-moved");
  await nodeControl(a, "emit", { event: "ping-moved", data: [1], rooms: ["moved"] });
  assert.deepEqual(await got, [1]);
});

test("reference: emitWithAck on one Node server collects the acks of the other's clients", async (t) => {
  const { nodeServers: [a, b] } = await twoNodeServers(t);
  const clients = await Promise.all([connect(t, a.url), connect(t, b.url), connect(t, b.url)]);
  for (const c of clients) c.on("question", (q, ack) => ack(`${c.id}:${q}`));
  const { responses, error } = await nodeControl(a, "emit-ack", { event: "question", data: ["q"], timeout_ms: 3000 });
  assert.equal(error, undefined);
  assert.deepEqual(responses.sort(), clients.map((c) => `${c.id}:q`).sort());
});

test("reference: Node servers resubscribe by themselves after Redis comes back on its port", async (t) => {
  const { redis, nodeServers: [a, b] } = await twoNodeServers(t);
  const onB = await connect(t, b.url);
  const news = record(onB, "news");
  await redis.stop();
  await waitFor(async () => (await nodeControl(a, "health")).redis === "down", { what: "server a to see Redis down" });
  await redis.start();
  await redis.waitSubscribers(2);
  // a published event is lost while a server is still reconnecting; ask again until one arrives
  await waitFor(
    async () => {
      await nodeControl(a, "emit", { event: "news", data: ["back"] });
      return news.length > 0;
    },
    { ms: 10_000, every: 200, what: "an emit from a to reach b's client after the restart" },
  );
  assert.deepEqual(news[0], ["back"]);
});
