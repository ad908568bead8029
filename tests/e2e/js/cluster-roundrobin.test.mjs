// Three Courier nodes behind a round-robin proxy without sticky sessions (proxy.mjs): every request
// goes to the next node, whatever session it belongs to, and the nodes forward what belongs to a
// session another node owns. Stock socket.io-client over polling, over polling then WebSocket,
// and through the loss of a node killed with SIGKILL.

import { test } from "node:test";
import assert from "node:assert/strict";
import { once, waitFor } from "./harness.mjs";
import { api, ask, connect, listedSids, record } from "./clients.mjs";
import { health, probeForwarding, startCluster, waitForwarding } from "./cluster.mjs";
import { startRoundRobinProxy, targetsOf } from "./proxy.mjs";

// Short heartbeats, so that a few seconds hold many ping rounds (each a GET and a POST over
// polling); the timeout leaves room for two shared cores.
const PING_INTERVAL_MS = 300;
const CONFIG = { engine: { ping_interval_ms: PING_INTERVAL_MS, ping_timeout_ms: 3000 } };

/**
 * A cluster of three nodes that all forward to each other, a proxy in front of them, and each
 * node's id by its URL.
 */
async function balanced(t) {
  const cluster = await startCluster(t, { config: CONFIG });
  await waitForwarding(cluster.nodes);
  const proxy = await startRoundRobinProxy(() => cluster.nodes, { t });
  const ids = {};
  for (const node of cluster.nodes) ids[node.url] = (await health(node)).cluster.node;
  return { cluster, proxy, ids };
}

/** The node whose id starts the Engine.IO sid `sid`. */
function ownerOf(nodes, ids, sid) {
  const owner = nodes.find((n) => sid.startsWith(ids[n.url]));
  assert.ok(owner, `sid ${sid} starts with the id of no node (${JSON.stringify(ids)})`);
  return owner;
}

/** POST /api/v1/emit on `node`; returns the answer's body, failing unless it is 200. */
async function emit(node, body) {
  const res = await api(node, "POST", "/api/v1/emit", { namespace: "/", ...body });
  assert.equal(res.status, 200, `emit on ${node.url}: ${JSON.stringify(res.body)}`);
  return res.body;
}

/** Counts the pings the client's engine receives. */
function pings(socket) {
  const seen = { count: 0 };
  socket.io.on("ping", () => seen.count++);
  return seen;
}

/** The requests of session `sid` the proxy did not see answered 200 (or 101 for an upgrade). */
function failures(proxy, sid) {
  return proxy.log.filter((e) => e.sid === sid && e.status !== 200 && e.status !== 101);
}

test("polling through a round-robin proxy: one session's requests land on every node and all of them work", async (t) => {
  const { cluster, proxy, ids } = await balanced(t);
  const socket = await connect(t, proxy.url, "/", { transports: ["polling"] });
  const sid = socket.io.engine.id;
  const owner = ownerOf(cluster.nodes, ids, sid);
  const drops = record(socket, "disconnect");
  const beats = pings(socket);

  // an ack from the hub
  const ack = await ask(socket, "chat", "anyone?");
  assert.equal(ack.ok, true, JSON.stringify(ack));

  // an emit from each node's API
  for (const [i, node] of cluster.nodes.entries()) {
    const got = once(socket, "news");
    assert.equal((await emit(node, { event: "news", data: [`via node ${i}`] })).recipients, 1);
    assert.deepEqual(await got, [`via node ${i}`]);
  }

  // a room shared with a client on another node, relayed both ways
  const other = cluster.nodes.find((n) => n !== owner);
  const peer = await connect(t, other.url, "/", { transports: ["websocket"] });
  assert.deepEqual(await ask(socket, "courier:join", "lobby"), { ok: true, rooms: ["lobby", socket.id].sort() });
  await ask(peer, "courier:join", "lobby");
  const atSocket = once(socket, "chat");
  // (a relay's ack counts the recipients on the sender's node only)
  assert.equal((await ask(peer, "chat", "hello from", other.url)).ok, true);
  assert.deepEqual(await atSocket, ["hello from", other.url]);
  const atPeer = once(peer, "chat");
  assert.equal((await ask(socket, "chat", "hello back")).ok, true);
  assert.deepEqual(await atPeer, ["hello back"]);

  // heartbeats go on, every GET and POST on whichever node, and the session is never dropped
  const start = beats.count;
  await waitFor(() => beats.count >= start + 8, { ms: 20_000, what: `8 more pings (have ${beats.count - start})` });
  assert.deepEqual(drops, [], "the socket stayed connected");
  assert.equal(socket.io.engine.id, sid, "the same Engine.IO session throughout");
  assert.equal(socket.io.engine.transport.name, "polling");
  assert.deepEqual([...targetsOf(proxy, sid, "polling")].sort(), cluster.nodes.map((n) => n.url).sort(),
    "the session's requests reached every node");
  assert.deepEqual(failures(proxy, sid), [], "every request of the session was answered 200");

  // and it still works after all that
  const late = once(socket, "news");
  await emit(cluster.nodes[2], { event: "news", data: ["still here"] });
  assert.deepEqual(await late, ["still here"]);
});

test("default transports through a round-robin proxy: the upgrade to WebSocket, on a node that does not own the session, works", async (t) => {
  const { cluster, proxy, ids } = await balanced(t);
  // Which node an upgrade lands on depends on the turn it comes in: connect clients until one's
  // upgrade went to another node than the session's owner (tunnelled there), and keep them all.
  const clients = [];
  let tunnelled = null;
  for (let attempt = 0; attempt < 9 && !tunnelled; attempt++) {
    const socket = await connect(t, proxy.url);
    const sid = socket.io.engine.id;
    await waitFor(() => socket.io.engine.transport.name === "websocket", { ms: 10_000, what: `client ${attempt} to upgrade` });
    const upgrade = proxy.log.find((e) => e.sid === sid && e.transport === "websocket");
    assert.ok(upgrade, `the proxy saw the upgrade of ${sid}`);
    assert.equal(upgrade.status, 101, `the upgrade of ${sid} was answered 101: ${JSON.stringify(upgrade)}`);
    clients.push(socket);
    if (!sid.startsWith(ids[upgrade.target])) tunnelled = socket;
  }
  assert.ok(tunnelled, "in 9 clients, one upgrade landed on a node that does not own the session");

  for (const socket of clients) {
    const sid = socket.io.engine.id;
    const drops = record(socket, "disconnect");
    const beats = pings(socket);
    const ack = await ask(socket, "chat", "over websocket");
    assert.equal(ack.ok, true, JSON.stringify(ack));
    await waitFor(() => beats.count >= 3, { ms: 10_000, what: `3 pings over the WebSocket of ${sid}` });
    assert.deepEqual(drops, []);
    assert.equal(socket.io.engine.id, sid);
    assert.deepEqual(failures(proxy, sid), [], `every request of ${sid} was answered 200 or 101`);
  }

  // every client gets an emit from each node's API, and the tunnelled one relays to the others
  const logs = clients.map((c) => record(c, "news"));
  for (const [i, node] of cluster.nodes.entries()) {
    assert.equal((await emit(node, { event: "news", data: [i] })).recipients, clients.length);
  }
  await waitFor(() => logs.every((l) => l.length === 3), { what: "three emits at every client" });
  for (const log of logs) assert.deepEqual(log.map((a) => a[0]).sort(), [0, 1, 2]);

  for (const c of clients) await ask(c, "courier:join", "upgraded");
  const others = clients.filter((c) => c !== tunnelled);
  const got = others.map((c) => once(c, "chat"));
  assert.equal((await ask(tunnelled, "chat", "through the tunnel")).ok, true);
  for (const g of got) assert.deepEqual(await g, ["through the tunnel"]);
});

test("a node that has just joined: the others forward requests of its sessions at once", async (t) => {
  const cluster = await startCluster(t, { courier: 2, config: CONFIG });
  await waitForwarding(cluster.nodes);
  const proxy = await startRoundRobinProxy(() => cluster.nodes, { t });
  // The new node is ready as far as it can tell (its /health says Redis "up", Redis lists it as a
  // subscriber), so a load balancer sends it clients at once; their requests that land on the
  // older nodes must be forwarded to it as well.
  const joined = await cluster.addNode();
  const answers = [];
  for (const via of cluster.nodes.slice(0, 2)) answers.push({ via: via.url, ...(await probeForwarding(joined, via)) });
  assert.deepEqual(answers.filter((a) => a.status !== 200), [],
    `a noop POSTed to the older nodes for a session on the new node ${joined.url} is forwarded and answered 200`);

  proxy.handshakesTo = joined.url;
  const socket = await connect(t, proxy.url, "/", { transports: ["polling"] });
  const ack = await ask(socket, "chat", "on the new node");
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.deepEqual(failures(proxy, socket.io.engine.id), []);
});

test("a node killed with SIGKILL: its clients reconnect through the proxy to the others, get emits, and leave the listing", async (t) => {
  const { cluster, proxy, ids } = await balanced(t);
  const victim = cluster.nodes[1];
  const survivors = cluster.nodes.filter((n) => n !== victim);
  // Over each transport, a client whose session starts (and so lives) on each node: every later
  // request of theirs goes round, through the victim too.
  const clients = [];
  for (const transports of [["polling"], ["websocket"], undefined]) {
    for (const node of cluster.nodes) {
      proxy.handshakesTo = node.url;
      const socket = await connect(t, proxy.url, "/", { reconnection: true, ...(transports ? { transports } : {}) });
      if (!transports) await waitFor(() => socket.io.engine.transport.name === "websocket", { ms: 10_000, what: "the upgrade" });
      socket.firstId = socket.id;
      assert.equal(ownerOf(cluster.nodes, ids, socket.io.engine.id), node, "the session lives where it started");
      clients.push(socket);
    }
  }
  proxy.handshakesTo = null;
  const victims = clients.filter((c) => c.io.engine.id.startsWith(ids[victim.url]));
  assert.equal(victims.length, 3);
  await waitFor(async () => (await listedSids(survivors[0])).length === clients.length, { what: "every client listed" });

  await victim.kill("SIGKILL");

  // The victim's clients come back with new sessions on the survivors. (Others may reconnect too:
  // a request the proxy had sent through the victim dies with it.)
  const survivorIds = survivors.map((n) => ids[n.url]);
  await waitFor(
    () => victims.every((c) => c.connected && c.id !== c.firstId && survivorIds.some((id) => c.io.engine.id.startsWith(id))),
    { ms: 20_000, what: "the victim's clients to reconnect to a survivor" },
  );
  await waitFor(() => clients.every((c) => c.connected), { ms: 20_000, what: "every client to be connected" });
  assert.ok(proxy.refused[victim.url] > 0, "the proxy found the victim refusing connections and skipped it");

  // an emit on a survivor reaches every client, the victim's included
  const logs = clients.map((c) => record(c, "after"));
  await waitFor(
    async () => {
      await emit(survivors[0], { event: "after", data: ["you made it"] });
      return logs.every((l) => l.length > 0);
    },
    { ms: 10_000, every: 250, what: "an emit from a survivor to reach every client" },
  );
  for (const log of logs) assert.deepEqual(log[0], ["you made it"]);

  // the survivors list exactly the sockets now connected: none of the victim's old ones
  for (const node of survivors) {
    let listed = [];
    await waitFor(
      async () => {
        listed = await listedSids(node);
        return listed.join() === clients.map((c) => c.id).sort().join();
      },
      { ms: 10_000, what: `${node.url} to list the connected sockets alone` },
    ).catch((err) => {
      throw new Error(`${err.message}; listed ${listed}, connected ${clients.map((c) => c.id).sort()}`);
    });
    for (const c of victims) assert.ok(!listed.includes(c.firstId), `${node.url} no longer lists ${c.firstId}`);
  }
});
