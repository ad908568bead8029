// The server side of the Socket.IO admin UI (@socket.io/admin-ui 0.5), driven with the stock
// socket.io-client the way the UI drives it: the login with a bcrypt password, the session id,
// `config`, `all_sockets`, `server_stats` and the live events for a workload, the commands, and
// `readonly` and production mode (docs/observe.md).

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import bcrypt from "bcryptjs";
import { E2E_DIR, once, sleep, startCourier, waitFor } from "./harness.mjs";
import { api, ask, BASE_OPTS, closeSocket, connect, connectError, io, record, waitConnected } from "./clients.mjs";
import { startCluster } from "./cluster.mjs";

const PASSWORD = "correct horse battery staple";
const HASH = bcrypt.hashSync(PASSWORD, 8);
const UI_DIST = path.join(E2E_DIR, "node_modules", "@socket.io", "admin-ui", "ui", "dist");

function adminConfig(extra = {}) {
  return { admin: { enabled: true, username: "ops", password_hash: HASH, ...extra } };
}

/** Connects to /admin as the UI does, with every listener in place before the CONNECT. */
async function admin(t, server, auth = { username: "ops", password: PASSWORD }, opts = {}) {
  const socket = io(server.url + "/admin", { ...BASE_OPTS, autoConnect: false, auth, ...opts });
  t.after(() => closeSocket(socket));
  const got = {};
  for (const ev of [
    "session",
    "config",
    "all_sockets",
    "server_stats",
    "socket_connected",
    "socket_updated",
    "socket_disconnected",
    "room_joined",
    "room_left",
    "event_received",
    "event_sent",
  ]) {
    got[ev] = record(socket, ev);
  }
  socket.connect();
  await waitConnected(socket);
  return { socket, got };
}

const hasEvent = (list, pred) => list.some((args) => pred(...args));

describe("admin UI: login", () => {
  let server;
  before(async () => {
    server = await startCourier({ config: adminConfig() });
  });
  after(() => server?.stop());

  test("the bcrypt password logs in and gets a session id, config and all sockets", async (t) => {
    const user = await connect(t, server.url, "/", { transports: ["websocket"] });
    const { got } = await admin(t, server);
    await waitFor(() => got.session.length && got.config.length && got.all_sockets.length, { what: "login events" });
    assert.match(got.session[0][0], /^[0-9a-f]{16}$/);
    assert.deepEqual(got.config[0][0].supportedFeatures, [
      "EMIT",
      "JOIN",
      "LEAVE",
      "DISCONNECT",
      "MJOIN",
      "MLEAVE",
      "MDISCONNECT",
      "AGGREGATED_EVENTS",
      "ALL_EVENTS",
    ]);
    const listed = got.all_sockets[0][0].find((s) => s.id === user.id);
    assert.ok(listed, "the connected client is listed");
    assert.equal(listed.nsp, "/");
    assert.equal(listed.transport, "websocket");
    assert.deepEqual(listed.rooms, [user.id]);
    assert.equal(listed.clientId, user.io.engine.id.slice(0, 12));
    assert.equal(listed.handshake.query.transport, "websocket");
    assert.equal(typeof listed.handshake.headers, "object");
    assert.ok(!Number.isNaN(Date.parse(listed.handshake.time)));
  });

  test("a wrong password, an unknown user or a made-up session id is refused with invalid credentials", async (t) => {
    for (const auth of [
      { username: "ops", password: "wrong" },
      { username: "root", password: PASSWORD },
      { sessionId: "0123456789abcdef" },
      {},
    ]) {
      const err = await connectError(t, server.url, "/admin", { auth });
      assert.equal(err.message, "invalid credentials", JSON.stringify(auth));
    }
  });

  test("the session id logs in again without the password", async (t) => {
    const first = await admin(t, server);
    await waitFor(() => first.got.session.length, { what: "session" });
    const again = await admin(t, server, { sessionId: first.got.session[0][0] });
    await waitFor(() => again.got.config.length, { what: "config" });
    assert.equal(again.got.session.length, 0, "no new session for a session login");
  });
});

describe("admin UI: what it is told", () => {
  let server;
  before(async () => {
    server = await startCourier({ config: adminConfig({ server_id: "hub-a" }) });
  });
  after(() => server?.stop());

  test("a client's life arrives as socket, room and event reports", async (t) => {
    const { got } = await admin(t, server);
    await waitFor(() => got.config.length, { what: "config" });
    const user = await connect(t, server.url, "/", { transports: ["polling", "websocket"] });
    await waitFor(() => hasEvent(got.socket_connected, (s) => s.id === user.id), { what: "socket_connected" });
    const [connected, at] = got.socket_connected.find(([s]) => s.id === user.id);
    assert.equal(connected.nsp, "/");
    assert.ok(!Number.isNaN(Date.parse(at)), `a date: ${at}`);
    await waitFor(
      () => hasEvent(got.socket_updated, (s) => s.id === user.id && s.transport === "websocket"),
      { what: "socket_updated on upgrade" },
    );

    await ask(user, "courier:join", "room-1");
    await waitFor(() => hasEvent(got.room_joined, (nsp, room, id) => nsp === "/" && room === "room-1" && id === user.id), {
      what: "room_joined",
    });
    user.emit("hello", { n: 1 }, "two");
    await waitFor(
      () =>
        hasEvent(got.event_received, (nsp, id, args) => nsp === "/" && id === user.id && args[0] === "hello"),
      { what: "event_received" },
    );
    const [, , args] = got.event_received.find(([, id, a]) => id === user.id && a[0] === "hello");
    assert.deepEqual(args, ["hello", { n: 1 }, "two"]);
    await ask(user, "courier:leave", "room-1");
    await waitFor(() => hasEvent(got.room_left, (nsp, room, id) => room === "room-1" && id === user.id), { what: "room_left" });

    // A stream delivery is an event sent to that socket alone.
    user.on("job", (_data, _meta, ack) => ack());
    await ask(user, "courier:subscribe", { stream: "jobs", consumer: "w" });
    await api(server, "POST", "/api/v1/streams/jobs/publish", { event: "job", data: { j: 1 } });
    await waitFor(
      () => hasEvent(got.event_sent, (nsp, id, a) => id === user.id && a[0] === "job" && a[1].j === 1 && a[2].seq === 1),
      { what: "event_sent for a delivery" },
    );

    const sid = user.id;
    user.disconnect();
    await waitFor(
      () => hasEvent(got.socket_disconnected, (nsp, id, reason) => id === sid && reason === "client namespace disconnect"),
      { what: "socket_disconnected" },
    );
    // The UI's own namespace is not reported to it as events.
    assert.ok(!got.event_received.some(([nsp]) => nsp === "/admin"));
  });

  test("server_stats every two seconds with this node's numbers", async (t) => {
    const { got } = await admin(t, server);
    await connect(t, server.url, "/", { transports: ["websocket"] });
    await waitFor(() => got.server_stats.length >= 2, { ms: 7000, what: "two server_stats" });
    const [stats] = got.server_stats.at(-1);
    assert.equal(stats.serverId, "hub-a");
    assert.equal(typeof stats.hostname, "string");
    assert.equal(typeof stats.pid, "number");
    assert.ok(stats.uptime > 0);
    assert.ok(stats.clientsCount >= 2, `clients: ${stats.clientsCount}`);
    assert.equal(typeof stats.pollingClientsCount, "number");
    const root = stats.namespaces.find((n) => n.name === "/");
    assert.ok(root && root.socketsCount >= 1, JSON.stringify(stats.namespaces));
    const all = got.server_stats.flatMap(([s]) => s.aggregatedEvents);
    for (const type of ["rawConnection", "packetsIn", "packetsOut", "bytesIn", "bytesOut"]) {
      assert.ok(all.some((e) => e.type === type && e.count > 0), `an aggregated ${type}`);
    }
    for (const e of all) assert.equal(e.timestamp % 1000, 0);
  });
});

describe("admin UI: commands", () => {
  let server;
  before(async () => {
    server = await startCourier({ config: adminConfig() });
  });
  after(() => server?.stop());

  const roomsOf = async (sid) => {
    const { body } = await api(server, "GET", "/api/v1/sockets");
    return body.sockets.find((s) => s.sid === sid)?.rooms;
  };

  test("emit to a room, join, leave and disconnect act on the sockets", async (t) => {
    const { socket: ui } = await admin(t, server);
    const [a, b] = await Promise.all([connect(t, server.url), connect(t, server.url)]);
    await ask(a, "courier:join", "team");
    const aGot = record(a, "greeting");
    const bGot = record(b, "greeting");

    ui.emit("emit", "/", "team", "greeting", "hi", { from: "ops" });
    await waitFor(() => aGot.length === 1, { what: "greeting to the room" });
    assert.deepEqual(aGot[0], ["hi", { from: "ops" }]);
    ui.emit("emit", "/", null, "greeting", "everyone");
    await waitFor(() => aGot.length === 2 && bGot.length === 1, { what: "greeting to the namespace" });
    assert.deepEqual(bGot, [["everyone"]]);

    ui.emit("join", "/", "vip", b.id);
    await waitFor(async () => (await roomsOf(b.id))?.includes("vip"), { what: "b joins vip" });
    assert.ok(!(await roomsOf(a.id)).includes("vip"), "only b joined");
    ui.emit("join", "/", "all-hands");
    await waitFor(async () => (await roomsOf(a.id))?.includes("all-hands") && (await roomsOf(b.id))?.includes("all-hands"), {
      what: "everyone joins",
    });
    ui.emit("leave", "/", "vip", b.id);
    await waitFor(async () => !(await roomsOf(b.id))?.includes("vip"), { what: "b leaves vip" });

    const bReason = once(b, "disconnect");
    ui.emit("_disconnect", "/", false, b.id);
    assert.equal((await bReason)[0], "io server disconnect");
    assert.ok(a.connected, "only b was disconnected");
    const aReason = once(a, "disconnect");
    ui.emit("_disconnect", "/", true, "team");
    assert.equal((await aReason)[0], "transport close");
  });
});

describe("admin UI: readonly and production", () => {
  test("readonly offers no commands and ignores them", async (t) => {
    const server = await startCourier({ config: adminConfig({ readonly: true }), t });
    const { socket: ui, got } = await admin(t, server);
    await waitFor(() => got.config.length, { what: "config" });
    assert.deepEqual(got.config[0][0].supportedFeatures, ["AGGREGATED_EVENTS", "ALL_EVENTS"]);
    const user = await connect(t, server.url);
    const seen = record(user, "greeting");
    ui.emit("emit", "/", null, "greeting", "hi");
    ui.emit("_disconnect", "/", true);
    await sleep(500);
    assert.deepEqual(seen, []);
    assert.ok(user.connected);
  });

  test("production mode sends aggregated numbers only", async (t) => {
    const server = await startCourier({ config: adminConfig({ mode: "production" }), t });
    const { got } = await admin(t, server);
    await waitFor(() => got.config.length, { what: "config" });
    assert.ok(!got.config[0][0].supportedFeatures.includes("ALL_EVENTS"));
    const user = await connect(t, server.url);
    user.emit("hello");
    await waitFor(() => got.server_stats.length >= 1, { ms: 5000, what: "server_stats" });
    await sleep(300);
    assert.equal(got.all_sockets.length, 0);
    assert.equal(got.socket_connected.length, 0);
    assert.equal(got.event_received.length, 0);
  });

  test("with recovery on, reports are not logged for recovery (no offset argument)", async (t) => {
    const server = await startCourier({ config: { ...adminConfig(), recovery: { enabled: true } }, t });
    const { got } = await admin(t, server);
    const user = await connect(t, server.url);
    await waitFor(() => got.server_stats.length >= 1 && hasEvent(got.socket_connected, (s) => s.id === user.id), {
      ms: 5000,
      what: "reports",
    });
    assert.equal(got.server_stats[0].length, 1, "server_stats has one argument");
    assert.equal(got.socket_connected.find(([s]) => s.id === user.id).length, 2, "socket and date only");
  });

  test("no password hash, no admin UI: the hub refuses to start", async () => {
    await assert.rejects(startCourier({ config: { admin: { enabled: true } } }), /password_hash/);
  });
});

describe("admin UI: its built files served by the hub", () => {
  test("--admin-ui serves ui/dist at /admin/", async (t) => {
    const server = await startCourier({ args: ["--admin-ui", UI_DIST], t });
    const index = await fetch(server.url + "/admin/");
    assert.equal(index.status, 200);
    assert.match(index.headers.get("content-type"), /^text\/html/);
    assert.equal(await index.text(), readFileSync(path.join(UI_DIST, "index.html"), "utf8"));
    const js = readdirSync(path.join(UI_DIST, "js")).find((f) => f.endsWith(".js"));
    const asset = await fetch(`${server.url}/admin/js/${js}`);
    assert.equal(asset.status, 200);
    assert.match(asset.headers.get("content-type"), /^text\/javascript/);
    assert.equal((await fetch(server.url + "/admin/js/../../index.html")).status, 404);
  });
});

describe("admin UI: a cluster", () => {
  test("every node reports under its own server id to a UI on any node, and commands reach every node", async (t) => {
    const cluster = await startCluster(t, { courier: 2, config: adminConfig() });
    const [a, b] = cluster.nodes;
    const { socket: ui, got } = await admin(t, a);
    const onB = await connect(t, b.url, "/", { transports: ["websocket"] });
    await waitFor(() => new Set(got.server_stats.map(([s]) => s.serverId)).size === 2, {
      ms: 8000,
      what: "server_stats from both nodes",
    });
    const ids = [...new Set(got.server_stats.map(([s]) => s.serverId))];
    assert.ok(ids.every((id) => id.includes("#")), `host#node ids: ${ids}`);
    // What happens on node b reaches the UI on node a.
    await waitFor(() => hasEvent(got.socket_connected, (s) => s.id === onB.id), { what: "b's socket_connected" });
    onB.emit("ping-b");
    await waitFor(() => hasEvent(got.event_received, (nsp, id, args) => id === onB.id && args[0] === "ping-b"), {
      what: "b's event_received",
    });
    // A command given on node a acts on node b's socket.
    const seen = record(onB, "greeting");
    ui.emit("emit", "/", onB.id, "greeting", "from a");
    await waitFor(() => seen.length === 1, { what: "the greeting on node b" });
    assert.deepEqual(seen[0], ["from a"]);
  });
});
