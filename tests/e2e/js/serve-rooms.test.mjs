// `courier serve`: rooms joined by clients, client-to-client relay (binary included) and the HTTP
// API's emit / sockets endpoints, all seen through the stock socket.io-client.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { once, sleep, startCourier, waitFor } from "./harness.mjs";
import { api, ask, BASE_OPTS, closeSocket, connect, io, listedSids, normalizeBinary, record, waitConnected } from "./clients.mjs";

describe("rooms and relay", () => {
  let server;
  before(async () => {
    server = await startCourier();
  });
  after(() => server?.stop());

  test("courier:join / courier:leave answer every room of the socket, sorted, own sid included", async (t) => {
    const socket = await connect(t, server.url);
    assert.deepEqual(await ask(socket, "courier:join", "zeta"), { ok: true, rooms: ["zeta", socket.id].sort() });
    assert.deepEqual(await ask(socket, "courier:join", ["beta", "alpha", "zeta"]), {
      ok: true,
      rooms: ["alpha", "beta", "zeta", socket.id].sort(),
    });
    assert.deepEqual(await ask(socket, "courier:leave", "beta"), { ok: true, rooms: ["alpha", "zeta", socket.id].sort() });
    assert.deepEqual(await ask(socket, "courier:leave", ["alpha", "zeta"]), { ok: true, rooms: [socket.id] });
  });

  test("relay: an event reaches the other members of a shared room with binary attachments intact", async (t) => {
    const [alice, bob, carol] = await Promise.all([
      connect(t, server.url, "/", { transports: ["websocket"] }),
      connect(t, server.url, "/", { transports: ["polling"] }),
      connect(t, server.url, "/"),
    ]);
    await ask(alice, "courier:join", "room-1");
    await ask(bob, "courier:join", "room-1");
    await ask(carol, "courier:join", "room-2");
    const carolGot = record(carol, "chat");
    const aliceGot = record(alice, "chat");

    const blob = Buffer.from([0, 1, 2, 3, 254, 255]);
    const big = Buffer.alloc(70_000, 7);
    const args = [
      "hello",
      42,
      blob,
      { nested: { buf: Buffer.from("nested"), list: [Buffer.from([9]), 1, null, { deep: big }] } },
      [Buffer.from("in an array"), "text", true],
    ];
    const received = once(bob, "chat", 5000);
    const ack = await ask(alice, "chat", ...args);
    assert.deepEqual(ack, { ok: true, recipients: 1 });
    const got = await received;
    assert.deepEqual(normalizeBinary(got), args);

    // and the other way round, from the polling client to the websocket one
    const back = once(alice, "chat", 5000);
    assert.deepEqual(await ask(bob, "chat", Buffer.from("pong")), { ok: true, recipients: 1 });
    assert.deepEqual(normalizeBinary(await back), [Buffer.from("pong")]);

    await sleep(200);
    assert.deepEqual(carolGot, [], "a socket in another room gets nothing");
    assert.equal(aliceGot.length, 1, "the sender does not get its own event back");
  });

  test("relay without an ack, to several rooms, each recipient once", async (t) => {
    const [sender, r1, r2, both] = await Promise.all([1, 2, 3, 4].map(() => connect(t, server.url)));
    await ask(sender, "courier:join", ["x", "y"]);
    await ask(r1, "courier:join", "x");
    await ask(r2, "courier:join", "y");
    await ask(both, "courier:join", ["x", "y"]);
    const logs = [r1, r2, both].map((s) => record(s, "ping-all"));
    sender.emit("ping-all", 1);
    sender.emit("ping-all", 2);
    const ack = await ask(sender, "ping-all", 3);
    assert.deepEqual(ack, { ok: true, recipients: 3 });
    await sleep(200);
    for (const log of logs) assert.deepEqual(log, [[1], [2], [3]], "in order, each exactly once");
  });

  test("a burst of relayed events arrives complete and in order, polling to websocket and back", async (t) => {
    const [poller, wser] = await Promise.all([
      connect(t, server.url, "/", { transports: ["polling"] }),
      connect(t, server.url, "/", { transports: ["websocket"] }),
    ]);
    await ask(poller, "courier:join", "burst");
    await ask(wser, "courier:join", "burst");
    const atWs = record(wser, "seq");
    const atPoller = record(poller, "seq");
    for (let i = 0; i < 200; i++) {
      poller.emit("seq", i, i % 10 === 0 ? Buffer.from([i]) : `n${i}`);
      wser.emit("seq", i, i % 10 === 0 ? Buffer.from([i]) : `n${i}`);
    }
    // an ack after the burst: the server handles a connection's packets in order
    await ask(poller, "seq", "end");
    await ask(wser, "seq", "end");
    const expected = [...Array.from({ length: 200 }, (_, i) => [i, i % 10 === 0 ? Buffer.from([i]) : `n${i}`]), ["end"]];
    await waitFor(() => atWs.length >= 201 && atPoller.length >= 201, { what: "the whole burst", ms: 8000 });
    assert.deepEqual(normalizeBinary(atWs), expected);
    assert.deepEqual(normalizeBinary(atPoller), expected);
  });

  test("a broadcast reaches every member of a large room exactly once", async (t) => {
    const members = await Promise.all(
      Array.from({ length: 20 }, (_, i) => connect(t, server.url, "/", { transports: [i % 2 ? "websocket" : "polling"] })),
    );
    await Promise.all(members.map((m) => ask(m, "courier:join", "crowd")));
    const logs = members.map((m) => record(m, "crowd-news"));
    const res = await api(server, "POST", "/api/v1/emit", { namespace: "/", rooms: ["crowd"], event: "crowd-news", data: [{ big: "x".repeat(10_000) }] });
    assert.equal(res.body.recipients, 20);
    const relay = await ask(members[0], "crowd-news", "from a member");
    assert.deepEqual(relay, { ok: true, recipients: 19 });
    await waitFor(() => logs.slice(1).every((l) => l.length === 2), { what: "every member to get both events" });
    await sleep(100);
    assert.equal(logs[0].length, 1, "the relaying member does not get its own event");
    for (const log of logs.slice(1)) assert.deepEqual(log, [[{ big: "x".repeat(10_000) }], ["from a member"]]);
  });

  test("a large binary attachment (600 KB) is relayed intact over polling and websocket", async (t) => {
    const [poller, wser] = await Promise.all([
      connect(t, server.url, "/", { transports: ["polling"] }),
      connect(t, server.url, "/", { transports: ["websocket"] }),
    ]);
    await ask(poller, "courier:join", "big");
    await ask(wser, "courier:join", "big");
    const blob = Buffer.alloc(600_000);
    for (let i = 0; i < blob.length; i++) blob[i] = (i * 31 + 7) & 0xff;
    const atWs = once(wser, "file", 10000);
    assert.deepEqual(await ask(poller, "file", "name.bin", blob), { ok: true, recipients: 1 });
    const [name, got] = normalizeBinary(await atWs);
    assert.equal(name, "name.bin");
    assert.ok(got.equals(blob), "the websocket client got the same bytes");
    const atPoller = once(poller, "file", 10000);
    assert.deepEqual(await ask(wser, "file", "back.bin", blob), { ok: true, recipients: 1 });
    const [, back] = normalizeBinary(await atPoller);
    assert.ok(back.equals(blob), "the polling client got the same bytes");
  });

  test("events sent while the connection upgrades arrive complete and in order", async (t) => {
    const receiver = await connect(t, server.url, "/", { transports: ["websocket"] });
    await ask(receiver, "courier:join", "upgrade-traffic");
    const got = record(receiver, "tick");
    const sender = io(server.url, { ...BASE_OPTS, transports: ["polling", "websocket"] });
    t.after(() => closeSocket(sender));
    const upgraded = once(sender.io.engine, "upgrade", 8000);
    // Emits made before the connection is up are buffered by the client and sent in order once it
    // is, so the join comes first and the ticks flow from the first moment, across the upgrade.
    sender.emit("courier:join", "upgrade-traffic");
    let n = 0;
    let done = false;
    upgraded.then(() => {
      done = true;
    });
    while (!done && n < 5000) {
      sender.emit("tick", n++);
      await new Promise((resolve) => setImmediate(resolve));
      if (n % 20 === 0) await sleep(1);
    }
    const duringUpgrade = n;
    for (let i = 0; i < 20; i++) sender.emit("tick", n++);
    t.diagnostic(`${duringUpgrade} events sent before the upgrade completed`);
    await waitConnected(sender);
    assert.equal(sender.io.engine.transport.name, "websocket");
    await ask(sender, "tick", "end");
    await waitFor(() => got.length >= n + 1, { what: `all ${n + 1} ticks`, ms: 8000 });
    assert.deepEqual(got, [...Array.from({ length: n }, (_, i) => [i]), ["end"]]);
  });

  test("courier:join without an ack still joins", async (t) => {
    const socket = await connect(t, server.url);
    socket.emit("courier:join", "silent-join");
    await waitFor(async () => (await listedSids(server, "/", "silent-join")).includes(socket.id), {
      what: "the socket to be listed in the room",
    });
  });

  test("a volatile HTTP emit reaches connected clients", async (t) => {
    const socket = await connect(t, server.url, "/", { transports: ["websocket"] });
    const got = once(socket, "blip", 5000);
    const res = await api(server, "POST", "/api/v1/emit", { namespace: "/", rooms: [socket.id], event: "blip", data: [1], volatile: true });
    assert.equal(res.status, 200);
    assert.deepEqual(await got, [1]);
  });

  test("a socket that shares no room with anyone reaches nobody (its own sid room does not count)", async (t) => {
    const [loner, other] = await Promise.all([connect(t, server.url), connect(t, server.url)]);
    const otherGot = record(other, "shout");
    assert.deepEqual(await ask(loner, "shout", "anyone?"), { ok: true, recipients: 0 });
    await sleep(150);
    assert.deepEqual(otherGot, []);
  });

  test("errors come back in the ack", async (t) => {
    const socket = await connect(t, server.url);
    const unknown = await ask(socket, "courier:frobnicate", {});
    assert.equal(unknown.ok, false);
    assert.equal(unknown.error.code, "unknown_event");
    assert.equal(typeof unknown.error.message, "string");
    const bad = await ask(socket, "courier:join", 12);
    assert.equal(bad.ok, false);
    assert.equal(bad.error.code, "bad_request");
    const badList = await ask(socket, "courier:join", ["ok", { not: "a room" }]);
    assert.equal(badList.ok, false);
    assert.equal(badList.error.code, "bad_request");
    // a refused join changes nothing
    assert.deepEqual(await ask(socket, "courier:join", []), { ok: true, rooms: [socket.id] });
  });

  test("HTTP emit to a room, with except, to the whole namespace, and to one sid", async (t) => {
    const [a, b, c] = await Promise.all([1, 2, 3].map(() => connect(t, server.url)));
    await ask(a, "courier:join", ["blue", "vip"]);
    await ask(b, "courier:join", "blue");
    const logs = [a, b, c].map((s) => record(s, "note"));
    const emit = (body) => api(server, "POST", "/api/v1/emit", { namespace: "/", event: "note", ...body });

    let res = await emit({ rooms: ["blue"], data: ["to blue", { n: 1 }] });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.recipients, 2);

    res = await emit({ rooms: ["blue"], except: ["vip"], data: ["blue but not vip"] });
    assert.equal(res.body.recipients, 1);

    res = await emit({ rooms: [c.id], data: ["to c only"] });
    assert.equal(res.body.recipients, 1);

    await sleep(200);
    const before = logs.map((l) => l.length);
    res = await emit({ rooms: [], data: ["to everyone"] });
    // other tests' sockets may share this server's namespace, so at least our three
    assert.ok(res.body.recipients >= 3, JSON.stringify(res.body));
    res = await emit({ except: [a.id], data: ["everyone but a"] });
    assert.ok(res.body.recipients >= 2, JSON.stringify(res.body));

    await sleep(200);
    assert.deepEqual(before, [1, 2, 1]);
    assert.deepEqual(logs[0], [["to blue", { n: 1 }], ["to everyone"]]);
    assert.deepEqual(logs[1], [["to blue", { n: 1 }], ["blue but not vip"], ["to everyone"], ["everyone but a"]]);
    assert.deepEqual(logs[2], [["to c only"], ["to everyone"], ["everyone but a"]]);
  });

  test("GET /api/v1/sockets lists the namespace's sockets with their rooms and transport", async (t) => {
    const [a, b] = await Promise.all([
      connect(t, server.url, "/", { transports: ["websocket"] }),
      connect(t, server.url, "/", { transports: ["polling"] }),
    ]);
    await ask(a, "courier:join", ["listing", "other"]);
    await ask(b, "courier:join", "listing");
    const res = await api(server, "GET", "/api/v1/sockets?namespace=/&room=listing");
    assert.equal(res.status, 200);
    const sockets = [...res.body.sockets].sort((x, y) => (x.sid < y.sid ? -1 : 1));
    const expected = [
      { sid: a.id, rooms: ["listing", "other", a.id].sort(), transport: "websocket", sub: null },
      { sid: b.id, rooms: ["listing", b.id].sort(), transport: "polling", sub: null },
    ].sort((x, y) => (x.sid < y.sid ? -1 : 1));
    assert.deepEqual(
      sockets.map((s) => ({ ...s, rooms: [...s.rooms].sort() })),
      expected,
    );
    const all = await listedSids(server, "/");
    assert.ok(all.includes(a.id) && all.includes(b.id));
    assert.deepEqual(await listedSids(server, "/", "nobody-here"), []);
  });

  test("HTTP API errors are JSON with a 4xx status", async () => {
    const badJson = await api(server, "POST", "/api/v1/emit", "{not json");
    assert.equal(badJson.status, 400);
    assert.equal(badJson.body.error.code, "bad_request");
    const noEvent = await api(server, "POST", "/api/v1/emit", { namespace: "/", data: [] });
    assert.equal(noEvent.status, 400);
    assert.equal(noEvent.body.error.code, "bad_request");
    const unknown = await api(server, "GET", "/api/v1/nothing-here");
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error.code, "not_found");
  });
});

describe("features turned off", () => {
  test("client_rooms = false and client_relay = false answer forbidden", async (t) => {
    const server = await startCourier({ t, config: { hub: { client_rooms: false, client_relay: false } } });
    const [a, b] = await Promise.all([connect(t, server.url), connect(t, server.url)]);
    const join = await ask(a, "courier:join", "room");
    assert.equal(join.ok, false);
    assert.equal(join.error.code, "forbidden");
    const leave = await ask(a, "courier:leave", "room");
    assert.equal(leave.error.code, "forbidden");
    // rooms can still be used by the backend: the HTTP API reaches sockets by sid
    const bGot = record(b, "chat");
    const relay = await ask(a, "chat", "hi");
    assert.equal(relay.ok, false);
    assert.equal(relay.error.code, "forbidden");
    await sleep(150);
    assert.deepEqual(bGot, []);
    const res = await api(server, "POST", "/api/v1/emit", { namespace: "/", rooms: [b.id], event: "chat", data: ["from backend"] });
    assert.equal(res.body.recipients, 1);
    await sleep(150);
    assert.deepEqual(bGot, [["from backend"]]);
  });

  test("api.token protects the HTTP API", async (t) => {
    const server = await startCourier({ t, config: { api: { token: "backend-secret" } } });
    const body = { namespace: "/", event: "x", data: [] };
    const none = await api(server, "POST", "/api/v1/emit", body);
    assert.equal(none.status, 401);
    assert.equal(none.body.error.code, "missing_token");
    const wrong = await api(server, "POST", "/api/v1/emit", body, { token: "nope" });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.error.code, "invalid_token");
    const right = await api(server, "POST", "/api/v1/emit", body, { token: "backend-secret" });
    assert.equal(right.status, 200);
    assert.deepEqual(right.body, { recipients: 0 });
    const sockets = await api(server, "GET", "/api/v1/sockets?namespace=/");
    assert.equal(sockets.status, 401);
  });
});
