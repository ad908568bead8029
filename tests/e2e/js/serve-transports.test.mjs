// `courier serve` with the stock socket.io-client: each transport, the upgrade, and /health.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { once, startCourier, waitFor } from "./harness.mjs";
import { api, ask, closeSocket, connect, io, BASE_OPTS, waitConnected } from "./clients.mjs";

async function socketsOf(server, namespace = "/") {
  const res = await api(server, "GET", `/api/v1/sockets?namespace=${encodeURIComponent(namespace)}`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.sockets;
}

describe("transports", () => {
  let server;
  before(async () => {
    server = await startCourier();
  });
  after(() => server?.stop());

  test("HTTP long-polling only", async (t) => {
    const socket = await connect(t, server.url, "/", { transports: ["polling"] });
    assert.equal(socket.io.engine.transport.name, "polling");
    assert.equal(typeof socket.id, "string");
    const ack = await ask(socket, "courier:join", "lobby");
    assert.deepEqual(ack, { ok: true, rooms: ["lobby", socket.id].sort() });
    const listed = (await socketsOf(server)).find((s) => s.sid === socket.id);
    assert.ok(listed, "the polling socket is listed by GET /api/v1/sockets");
    assert.equal(listed.transport, "polling");
  });

  test("WebSocket only", async (t) => {
    const socket = await connect(t, server.url, "/", { transports: ["websocket"] });
    assert.equal(socket.io.engine.transport.name, "websocket");
    const ack = await ask(socket, "courier:join", ["b", "a"]);
    assert.deepEqual(ack, { ok: true, rooms: ["a", "b", socket.id].sort() });
    const listed = (await socketsOf(server)).find((s) => s.sid === socket.id);
    assert.equal(listed?.transport, "websocket");
  });

  test("polling first, then upgraded to WebSocket, session kept", async (t) => {
    const socket = io(server.url, { ...BASE_OPTS, transports: ["polling", "websocket"] });
    t.after(() => closeSocket(socket));
    // the engine exists as soon as the manager opens (synchronously, autoConnect)
    const upgraded = once(socket.io.engine, "upgrade", 8000);
    await waitConnected(socket);
    const idBefore = socket.id;
    const engineIdBefore = socket.io.engine.id;
    await ask(socket, "courier:join", "before-upgrade");
    const [transport] = await upgraded;
    assert.equal(transport.name, "websocket");
    assert.equal(socket.io.engine.transport.name, "websocket");
    assert.equal(socket.id, idBefore, "the Socket.IO session survives the upgrade");
    assert.equal(socket.io.engine.id, engineIdBefore, "the Engine.IO session survives the upgrade");
    // rooms joined over polling are still there, and the socket answers over the websocket
    const ack = await ask(socket, "courier:join", "after-upgrade");
    assert.deepEqual(ack, { ok: true, rooms: ["after-upgrade", "before-upgrade", socket.id].sort() });
    await waitFor(async () => (await socketsOf(server)).find((s) => s.sid === socket.id)?.transport === "websocket", {
      what: "GET /api/v1/sockets to report the websocket transport",
    });
  });

  test("server-sent events reach clients on every transport", async (t) => {
    const clients = await Promise.all([
      connect(t, server.url, "/", { transports: ["polling"] }),
      connect(t, server.url, "/", { transports: ["websocket"] }),
      connect(t, server.url, "/"),
    ]);
    const got = clients.map((c) => once(c, "news", 5000));
    const res = await api(server, "POST", "/api/v1/emit", {
      namespace: "/",
      rooms: clients.map((c) => c.id),
      event: "news",
      data: ["hello", { n: 1 }],
    });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.recipients, 3);
    for (const args of await Promise.all(got)) assert.deepEqual(args, ["hello", { n: 1 }]);
  });
});

describe("GET /health", () => {
  test("reports ok and counts live connections", async (t) => {
    const server = await startCourier({ t });
    const first = await api(server, "GET", "/health");
    assert.equal(first.status, 200);
    const idle = { tail_bytes: 0, tail_entries: 0, recovery_bytes: 0, recovery_events: 0, recovery_kept: 0, recovery_unpersisted: 0 };
    assert.deepEqual(first.body, { status: "ok", connections: 0, memory: idle });

    const a = await connect(t, server.url, "/", { transports: ["websocket"] });
    await connect(t, server.url, "/", { transports: ["polling"] });
    const two = await api(server, "GET", "/health");
    assert.deepEqual(two.body, { status: "ok", connections: 2, memory: idle });

    closeSocket(a);
    await waitFor(async () => (await api(server, "GET", "/health")).body.connections === 1, {
      what: "/health to count one connection after a client left",
    });
  });
});
