// `courier serve`: the disconnect reasons a stock client sees, and its automatic reconnection when
// the server closes the connection or goes away and comes back on the same port.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { once, sleep, startCourier, waitFor } from "./harness.mjs";
import { api, ask, BASE_OPTS, closeSocket, connect, io, listedSids, waitConnected } from "./clients.mjs";

const RECONNECTING = { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 300 };

describe("disconnects", () => {
  test("HTTP disconnect with close:false: io server disconnect, and no reconnection", async (t) => {
    const server = await startCourier({ t });
    const socket = await connect(t, server.url, "/", RECONNECTING);
    const other = await connect(t, server.url, "/");
    let attempts = 0;
    socket.io.on("reconnect_attempt", () => attempts++);
    const disconnected = once(socket, "disconnect", 5000);
    const res = await api(server, "POST", "/api/v1/disconnect", { namespace: "/", rooms: [socket.id], close: false });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(res.body, { disconnected: 1 });
    const [reason] = await disconnected;
    assert.equal(reason, "io server disconnect");
    await sleep(700);
    assert.equal(socket.connected, false);
    assert.equal(attempts, 0, "the client does not try to reconnect");
    assert.equal(other.connected, true, "only the targeted socket is disconnected");
    assert.deepEqual(await listedSids(server, "/"), [other.id]);
  });

  test("HTTP disconnect of a room's sockets, close:false", async (t) => {
    const server = await startCourier({ t });
    const [a, b, c] = await Promise.all([1, 2, 3].map(() => connect(t, server.url)));
    await ask(a, "courier:join", "kick-me");
    await ask(b, "courier:join", "kick-me");
    const reasons = Promise.all([a, b].map((s) => once(s, "disconnect", 5000)));
    const res = await api(server, "POST", "/api/v1/disconnect", { namespace: "/", rooms: ["kick-me"], close: false });
    assert.deepEqual(res.body, { disconnected: 2 });
    assert.deepEqual((await reasons).map((r) => r[0]), ["io server disconnect", "io server disconnect"]);
    assert.equal(c.connected, true);
  });

  test("HTTP disconnect with close:true: transport close, then the client reconnects by itself", async (t) => {
    const server = await startCourier({ t });
    for (const transports of [["websocket"], ["polling"]]) {
      const socket = await connect(t, server.url, "/", { ...RECONNECTING, transports });
      const firstId = socket.id;
      const disconnected = once(socket, "disconnect", 5000);
      const reconnected = once(socket.io, "reconnect", 8000);
      const res = await api(server, "POST", "/api/v1/disconnect", { namespace: "/", rooms: [socket.id], close: true });
      assert.deepEqual(res.body, { disconnected: 1 });
      const [reason, details] = await disconnected;
      assert.equal(reason, "transport close", `over ${transports} (${details?.message ?? ""} ${details?.description ?? ""})`);
      await reconnected;
      await waitConnected(socket);
      assert.notEqual(socket.id, firstId, "a new session");
      assert.deepEqual(await ask(socket, "courier:join", "back"), { ok: true, rooms: ["back", socket.id].sort() });
      closeSocket(socket);
    }
  });

  test("close:true closes the whole connection, every namespace on it", async (t) => {
    const server = await startCourier({ t, config: { hub: { namespaces: ["/", "/other"] } } });
    const main = await connect(t, server.url, "/", { transports: ["websocket"] });
    const other = main.io.socket("/other");
    t.after(() => closeSocket(other));
    await waitConnected(other);
    const reasons = Promise.all([main, other].map((s) => once(s, "disconnect", 5000)));
    const res = await api(server, "POST", "/api/v1/disconnect", { namespace: "/", rooms: [main.id], close: true });
    assert.deepEqual(res.body, { disconnected: 1 });
    assert.deepEqual((await reasons).map((r) => r[0]), ["transport close", "transport close"]);
  });

  test("server killed and restarted on the same port: transport close, then automatic reconnection", async (t) => {
    let server = await startCourier({ t });
    const port = server.port;
    const socket = io(server.url, { ...BASE_OPTS, ...RECONNECTING, transports: ["websocket"] });
    t.after(() => closeSocket(socket));
    await waitConnected(socket);
    const firstId = socket.id;
    const disconnected = once(socket, "disconnect", 5000);
    await server.kill("SIGKILL");
    const [reason] = await disconnected;
    assert.equal(reason, "transport close");
    // the client keeps trying while the server is down
    await once(socket.io, "reconnect_error", 5000);
    server = await startCourier({ t, listen: `127.0.0.1:${port}` });
    assert.equal(server.port, port, server.stderrText());
    await once(socket.io, "reconnect", 10000);
    await waitConnected(socket);
    assert.notEqual(socket.id, firstId);
    assert.deepEqual(await ask(socket, "courier:join", "again"), { ok: true, rooms: ["again", socket.id].sort() });
  });

  test("io client disconnect: the client leaves, the server forgets it", async (t) => {
    const server = await startCourier({ t });
    const socket = await connect(t, server.url, "/", { transports: ["websocket"] });
    const sid = socket.id;
    assert.deepEqual(await listedSids(server, "/"), [sid]);
    const disconnected = once(socket, "disconnect", 5000);
    socket.disconnect();
    const [reason] = await disconnected;
    assert.equal(reason, "io client disconnect");
    await waitFor(async () => (await listedSids(server, "/")).length === 0, { what: "the socket to be gone from the API" });
    await waitFor(async () => (await api(server, "GET", "/health")).body.connections === 0, {
      what: "/health to count no connection",
    });
  });

  test("SIGTERM: clients are disconnected and the process exits 0", async (t) => {
    const server = await startCourier({ t });
    const sockets = await Promise.all([
      connect(t, server.url, "/", { transports: ["websocket"] }),
      connect(t, server.url, "/", { transports: ["polling"] }),
    ]);
    const disconnected = Promise.all(sockets.map((s) => once(s, "disconnect", 8000)));
    const started = Date.now();
    server.kill("SIGTERM");
    // A polling client whose next GET finds the listener closed reports "transport error"; the
    // reference Node server behaves the same way on shutdown.
    const reasons = (await disconnected).map((r) => r[0]);
    assert.equal(reasons[0], "transport close", "the websocket client");
    assert.ok(["transport close", "transport error"].includes(reasons[1]), `the polling client: ${reasons[1]}`);
    const { code, signal } = await server.exited;
    assert.equal(signal, null);
    assert.equal(code, 0);
    assert.ok(Date.now() - started < 5000, "within the shutdown grace period and a margin");
  });
});
