// `courier serve`: static and dynamic namespaces, unknown ones, several namespaces over one
// connection (socket.io-client's Manager), leaving one namespace, and token authentication.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { once, sleep, startCourier, waitFor } from "./harness.mjs";
import { api, ask, BASE_OPTS, closeSocket, connect, connectError, listedSids, Manager, record, waitConnected } from "./clients.mjs";

describe("namespaces", () => {
  let server;
  before(async () => {
    server = await startCourier({
      config: { hub: { namespaces: ["/", "/admin"], namespace_patterns: ["^/team-[0-9]+$"] } },
    });
  });
  after(() => server?.stop());

  test("a static extra namespace accepts clients and keeps its rooms apart", async (t) => {
    const admin = await connect(t, server.url, "/admin");
    const main = await connect(t, server.url, "/");
    await ask(admin, "courier:join", "ops");
    await ask(main, "courier:join", "ops");
    const adminGot = record(admin, "alert");
    const mainGot = record(main, "alert");
    const res = await api(server, "POST", "/api/v1/emit", { namespace: "/admin", rooms: ["ops"], event: "alert", data: ["disk"] });
    assert.equal(res.body.recipients, 1);
    await sleep(150);
    assert.deepEqual(adminGot, [["disk"]]);
    assert.deepEqual(mainGot, [], "a room of / with the same name is another room");
    assert.deepEqual(await listedSids(server, "/admin", "ops"), [admin.id]);
  });

  test("a namespace matching namespace_patterns is created on first use", async (t) => {
    const first = await connect(t, server.url, "/team-42");
    const second = await connect(t, server.url, "/team-42", { transports: ["websocket"] });
    await ask(first, "courier:join", "standup");
    await ask(second, "courier:join", "standup");
    const got = once(second, "msg", 5000);
    assert.deepEqual(await ask(first, "msg", "hello team"), { ok: true, recipients: 1 });
    assert.deepEqual(await got, ["hello team"]);
    assert.deepEqual(await listedSids(server, "/team-42"), [first.id, second.id].sort());
  });

  test("an unknown namespace is refused with Invalid namespace", async (t) => {
    for (const nsp of ["/nope", "/team-x", "/team-42/extra", "/admin2"]) {
      const err = await connectError(t, server.url, nsp);
      assert.equal(err.message, "Invalid namespace", `connecting to ${nsp}`);
    }
  });

  test("several namespaces share one connection (same engine id) and leaving one keeps the others", async (t) => {
    const manager = new Manager(server.url, { ...BASE_OPTS });
    const main = manager.socket("/");
    const admin = manager.socket("/admin");
    const team = manager.socket("/team-7");
    t.after(() => {
      for (const s of [main, admin, team]) closeSocket(s);
    });
    await Promise.all([main, admin, team].map((s) => waitConnected(s)));
    const engineId = manager.engine.id;
    assert.equal(typeof engineId, "string");
    for (const s of [main, admin, team]) assert.equal(s.io.engine.id, engineId);
    assert.equal(new Set([main.id, admin.id, team.id]).size, 3, "one socket id per namespace");
    assert.deepEqual(await listedSids(server, "/admin"), [admin.id]);

    const health = await api(server, "GET", "/health");
    assert.equal(health.status, 200);

    // leave /admin: the connection and the other namespaces stay
    const mainDisconnects = record(main, "disconnect");
    const [reason] = await Promise.all([once(admin, "disconnect", 5000), Promise.resolve(admin.disconnect())]);
    assert.deepEqual(reason.slice(0, 1), ["io client disconnect"]);
    await waitFor(async () => (await listedSids(server, "/admin")).length === 0, {
      what: "the server to forget the socket that left /admin",
    });
    assert.equal(main.connected, true);
    assert.equal(team.connected, true);
    assert.equal(manager.engine.readyState, "open");
    assert.equal(manager.engine.id, engineId, "still the same connection");
    assert.deepEqual(await ask(main, "courier:join", "still-here"), { ok: true, rooms: ["still-here", main.id].sort() });
    assert.deepEqual(await ask(team, "courier:join", "also"), { ok: true, rooms: ["also", team.id].sort() });
    assert.deepEqual(mainDisconnects, []);

    // joining /admin again on the same connection works
    admin.connect();
    await waitConnected(admin);
    assert.equal(admin.io.engine.id, engineId);
    assert.deepEqual(await listedSids(server, "/admin"), [admin.id]);
  });
});

describe("multiplexing over long-polling", () => {
  test("acks on three namespaces sharing one polling connection", async (t) => {
    const server = await startCourier({ t, config: { hub: { namespaces: ["/", "/a", "/b"] } } });
    const manager = new Manager(server.url, { ...BASE_OPTS, transports: ["polling"] });
    const sockets = ["/", "/a", "/b"].map((nsp) => manager.socket(nsp));
    t.after(() => sockets.forEach(closeSocket));
    await Promise.all(sockets.map((s) => waitConnected(s)));
    assert.equal(manager.engine.transport.name, "polling");
    const answers = await Promise.all(
      sockets.flatMap((s) => Array.from({ length: 10 }, (_, i) => ask(s, "courier:join", `room-${i}`))),
    );
    assert.equal(answers.length, 30);
    for (const answer of answers) assert.equal(answer.ok, true);
    for (const s of sockets) {
      const rooms = (await ask(s, "courier:join", [])).rooms;
      assert.deepEqual(rooms, [...Array.from({ length: 10 }, (_, i) => `room-${i}`), s.id].sort());
    }
    const health = await api(server, "GET", "/health");
    assert.equal(health.body.connections, 1, "one connection for the three namespaces");
  });
});

describe("server-side disconnect of one namespace on a shared connection", () => {
  test("close:false on /admin leaves / connected on the same connection; close:true ends both", async (t) => {
    const server = await startCourier({ t, config: { hub: { namespaces: ["/", "/admin"] } } });
    const manager = new Manager(server.url, { ...BASE_OPTS, transports: ["websocket"] });
    const main = manager.socket("/");
    const admin = manager.socket("/admin");
    t.after(() => {
      closeSocket(main);
      closeSocket(admin);
    });
    await Promise.all([waitConnected(main), waitConnected(admin)]);
    const engineId = manager.engine.id;
    const mainDisconnects = record(main, "disconnect");

    const kicked = once(admin, "disconnect", 5000);
    const res = await api(server, "POST", "/api/v1/disconnect", { namespace: "/admin", rooms: [], close: false });
    assert.deepEqual(res.body, { disconnected: 1 });
    assert.equal((await kicked)[0], "io server disconnect");
    await sleep(200);
    assert.deepEqual(mainDisconnects, []);
    assert.equal(main.connected, true);
    assert.equal(manager.engine.id, engineId);
    assert.deepEqual(await ask(main, "courier:join", "r"), { ok: true, rooms: ["r", main.id].sort() });

    const closed = once(main, "disconnect", 5000);
    const res2 = await api(server, "POST", "/api/v1/disconnect", { namespace: "/", rooms: [], close: true });
    assert.deepEqual(res2.body, { disconnected: 1 });
    assert.equal((await closed)[0], "transport close");
  });
});

describe("auth_tokens", () => {
  let server;
  before(async () => {
    server = await startCourier({ config: { hub: { namespaces: ["/", "/private"], auth_tokens: ["s3cret", "other-token"] } } });
  });
  after(() => server?.stop());

  test("a client without a token, or with a wrong one, is refused with unauthorized", async (t) => {
    for (const [nsp, auth, code] of [
      ["/", undefined, "missing_token"],
      ["/", { token: "wrong" }, "invalid_token"],
      ["/", { token: "" }, "missing_token"],
      ["/private", { nottoken: "s3cret" }, "missing_token"],
      ["/private", { token: 12 }, "missing_token"],
    ]) {
      const err = await connectError(t, server.url, nsp, auth === undefined ? {} : { auth });
      assert.equal(err.message, "unauthorized", `${nsp} with ${JSON.stringify(auth)}`);
      assert.equal(err.data.code, code, `${nsp} with ${JSON.stringify(auth)}`);
    }
  });

  test("the right token connects, on any namespace", async (t) => {
    const a = await connect(t, server.url, "/", { auth: { token: "s3cret" } });
    const b = await connect(t, server.url, "/private", { auth: { token: "other-token" }, transports: ["websocket"] });
    assert.equal(a.connected && b.connected, true);
    assert.deepEqual(await ask(b, "courier:join", "r"), { ok: true, rooms: ["r", b.id].sort() });
  });

  test("a refused namespace does not close the connection of the others", async (t) => {
    const manager = new Manager(server.url, { ...BASE_OPTS });
    const good = manager.socket("/", { auth: { token: "s3cret" } });
    const bad = manager.socket("/private", { auth: { token: "wrong" } });
    t.after(() => {
      closeSocket(good);
      closeSocket(bad);
    });
    const [badErr] = await Promise.all([once(bad, "connect_error", 5000), waitConnected(good)]);
    assert.equal(badErr[0].message, "unauthorized");
    await sleep(100);
    assert.equal(good.connected, true);
    assert.deepEqual(await ask(good, "courier:join", "x"), { ok: true, rooms: ["x", good.id].sort() });
  });

  test("COURIER_HUB_AUTH_TOKENS overrides the config file", async (t) => {
    const envServer = await startCourier({
      t,
      config: { hub: { auth_tokens: ["from-file"] } },
      env: { COURIER_HUB_AUTH_TOKENS: "from-env,second" },
    });
    // Both tokens of the list count, not just one of them.
    await connect(t, envServer.url, "/", { auth: { token: "from-env" } });
    await connect(t, envServer.url, "/", { auth: { token: "second" } });
    const err = await connectError(t, envServer.url, "/", { auth: { token: "from-file" } });
    assert.equal(err.message, "unauthorized");
  });
});
