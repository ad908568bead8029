// `courier serve`: connection state recovery seen from the stock socket.io-client (docs/streams.md,
// "Connection state recovery"). After a lost connection the client comes back with the same
// socket id, its rooms, its stream subscriptions and every room broadcast it missed, and sees
// `socket.recovered === true`; after a restart, with nothing received before the drop, and on
// every drop, not only the first. Not after the window, nor after the client left on purpose.
//
// socket.io-client keeps the session id and the last offset in private fields (`_pid`,
// `_lastOffset`); the tests read them to check what goes over the wire.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { makeDataDir, once, restartCourier, sleep, startCourier, waitFor } from "./harness.mjs";
import {
  api,
  ask,
  BASE_OPTS,
  closeSocket,
  connect,
  consumerInfo,
  deliveries,
  io,
  listedSids,
  publish,
  record,
  seqsOf,
  subscribe,
  waitConnected,
  waitCount,
} from "./clients.mjs";

/** Recovery is off in the harness's defaults; these tests turn it on (merged into `config`). */
function startHub(t, { config = {}, ...rest } = {}) {
  return startCourier({ t, ...rest, config: { ...config, recovery: { enabled: true, ...config.recovery } } });
}

const RECONNECTING = { reconnection: true, reconnectionDelay: 300, reconnectionDelayMax: 300 };

/** HTTP emit of `event` with `args` to `rooms` of "/"; returns the number of recipients. */
async function emit(server, rooms, event, ...args) {
  const res = await api(server, "POST", "/api/v1/emit", { namespace: "/", rooms, event, data: args });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.recipients;
}

/** Closes the socket's whole connection from the server (`close: true`): a recoverable drop. */
async function drop(server, socket) {
  const disconnected = once(socket, "disconnect", 5000);
  const res = await api(server, "POST", "/api/v1/disconnect", { namespace: "/", rooms: [socket.id], close: true });
  assert.deepEqual(res.body, { disconnected: 1 });
  const [reason] = await disconnected;
  assert.equal(reason, "transport close");
}

/** Waits for the socket's next "connect" (an automatic reconnection). */
function reconnected(socket, ms = 8000) {
  return once(socket, "connect", ms);
}

/** Asserts each received event is (data, offset) with a string offset; returns the data. */
function dataWithOffsets(got, what = "broadcast") {
  for (const args of got) {
    assert.equal(args.length, 2, `${what}: (data, offset), got ${JSON.stringify(args)}`);
    assert.equal(typeof args[1], "string", `${what}: the offset is a string, got ${JSON.stringify(args)}`);
  }
  const offsets = got.map((a) => a[1]);
  assert.equal(new Set(offsets).size, offsets.length, `${what}: distinct offsets ${JSON.stringify(offsets)}`);
  return got.map((a) => a[0]);
}

async function joinRoom(socket, room) {
  const answer = await ask(socket, "courier:join", room);
  assert.equal(answer.ok, true, JSON.stringify(answer));
}

describe("recovered", () => {
  for (const transport of ["websocket", "polling"]) {
    test(`after a transport drop: same id, rooms kept, missed broadcasts in order (${transport})`, async (t) => {
      const server = await startHub(t);
      const socket = await connect(t, server.url, "/", { ...RECONNECTING, transports: [transport] });
      assert.equal(typeof socket._pid, "string", "the CONNECT answer carries a pid");
      assert.equal(socket.recovered, false);
      await joinRoom(socket, "news");
      const got = record(socket, "news");
      assert.equal(await emit(server, ["news"], "news", { n: 1 }), 1);
      await waitCount(got, 1, 5000, "broadcasts");
      const id = socket.id;

      const back = reconnected(socket);
      await drop(server, socket);
      for (const n of [2, 3, 4]) assert.equal(await emit(server, ["news"], "news", { n }), 0, "nobody in the room meanwhile");
      await back;
      assert.equal(socket.recovered, true);
      assert.equal(socket.id, id);
      await waitCount(got, 4, 5000, "broadcasts");
      await sleep(200);
      assert.deepEqual(dataWithOffsets(got), [1, 2, 3, 4].map((n) => ({ n })));
      assert.equal(socket._lastOffset, got[3][1], "the client keeps the last offset it saw");

      // still in its room without joining again
      assert.deepEqual(await listedSids(server, "/", "news"), [id]);
      assert.equal(await emit(server, ["news"], "news", { n: 5 }), 1);
      await waitCount(got, 5, 5000, "broadcasts");
      assert.deepEqual(got[4][0], { n: 5 });
      const listed = (await api(server, "GET", "/api/v1/sockets?namespace=/")).body.sockets;
      assert.deepEqual(listed.map((s) => s.sid), [id]);
      assert.deepEqual([...listed[0].rooms].sort(), [id, "news"].sort());
    });
  }

  for (const [signal, barrier] of [["SIGTERM", false], ["SIGKILL", true], ["SIGKILL", false]]) {
    const how = signal === "SIGTERM" ? "" : barrier ? " once the store wrote the session" : " right after a broadcast";
    test(`after a restart (${signal}${how}; started again on the same port and data dir)`, async (t) => {
      const dataDir = makeDataDir(t);
      let server = await startHub(t, { dataDir });
      const socket = await connect(t, server.url, "/", { transports: ["websocket"] });
      await joinRoom(socket, "ops");
      const got = record(socket, "alert");
      await emit(server, ["ops"], "alert", "before");
      await waitCount(got, 1, 5000, "broadcasts");
      const id = socket.id;
      // Sessions and the broadcast log are written with the store's next batch; a confirmed
      // publish means that batch is on disk.
      if (barrier) await publish(server, "barrier", "b", {});

      const disconnected = once(socket, "disconnect", 8000);
      server = await restartCourier(server, { t, signal });
      const [reason] = await disconnected;
      assert.equal(reason, "transport close", "a shutdown or a crash is a recoverable disconnect");
      // missed: emitted after the restart, before the client is back
      assert.equal(await emit(server, ["ops"], "alert", "missed-1"), 0);
      assert.equal(await emit(server, ["ops"], "alert", "missed-2"), 0);
      socket.connect();
      await waitConnected(socket);
      assert.equal(socket.recovered, true);
      assert.equal(socket.id, id);
      await waitCount(got, 3, 5000, "broadcasts");
      assert.equal(await emit(server, ["ops"], "alert", "after"), 1, "the room survived the restart");
      await waitCount(got, 4, 5000, "broadcasts");
      await sleep(200);
      assert.deepEqual(dataWithOffsets(got), ["before", "missed-1", "missed-2", "after"]);
    });
  }

  // A polling client whose next GET finds the server gone reports "transport error": recoverable too.
  for (const transport of ["websocket", "polling"]) {
    test(`after a restart, with the client's own automatic reconnection (${transport})`, async (t) => {
      const dataDir = makeDataDir(t);
      let server = await startHub(t, { dataDir });
      const socket = await connect(t, server.url, "/", { ...RECONNECTING, transports: [transport] });
      await joinRoom(socket, "ops");
      const got = record(socket, "alert");
      const id = socket.id;
      const back = reconnected(socket, 15000);
      server = await restartCourier(server, { t, signal: "SIGTERM" });
      await back;
      assert.equal(socket.recovered, true);
      assert.equal(socket.id, id);
      assert.equal(await emit(server, ["ops"], "alert", "after"), 1);
      await waitCount(got, 1, 5000, "broadcasts");
      assert.deepEqual(dataWithOffsets(got), ["after"]);
    });
  }

  test("after a ping timeout", async (t) => {
    const server = await startHub(t, { config: { engine: { ping_interval_ms: 300, ping_timeout_ms: 300 } } });
    const socket = await connect(t, server.url, "/", { ...RECONNECTING, transports: ["websocket"] });
    await joinRoom(socket, "r");
    const got = record(socket, "m");
    const id = socket.id;
    // The client stops seeing pings, so it stops answering them: both sides time out.
    const transport = socket.io.engine.transport;
    const onPacket = transport.onPacket.bind(transport);
    transport.onPacket = (packet) => {
      if (packet.type !== "ping") onPacket(packet);
    };
    const [reason] = await once(socket, "disconnect", 5000);
    assert.ok(["ping timeout", "transport close"].includes(reason), reason);
    await emit(server, ["r"], "m", "missed");
    await reconnected(socket);
    assert.equal(socket.recovered, true);
    assert.equal(socket.id, id);
    await waitCount(got, 1, 5000, "broadcasts");
    assert.deepEqual(dataWithOffsets(got), ["missed"]);
  });

  test("a client that had received nothing before the drop", async (t) => {
    const server = await startHub(t);
    // sent before the client existed: never part of what it missed
    await emit(server, [], "news", "old");
    const socket = await connect(t, server.url, "/", { ...RECONNECTING, transports: ["websocket"] });
    const got = record(socket, "news");
    await joinRoom(socket, "news");
    assert.equal(socket._lastOffset, undefined, "nothing received, no offset");
    const id = socket.id;
    const back = reconnected(socket);
    await drop(server, socket);
    await emit(server, ["news"], "news", "missed");
    await back;
    assert.equal(socket.recovered, true);
    assert.equal(socket.id, id);
    await waitCount(got, 1, 5000, "broadcasts");
    await sleep(300);
    assert.deepEqual(dataWithOffsets(got), ["missed"]);
  });

  test("on the second and third drop too", async (t) => {
    const server = await startHub(t);
    const socket = await connect(t, server.url, "/", { ...RECONNECTING, transports: ["websocket"] });
    await joinRoom(socket, "r");
    const got = record(socket, "m");
    const id = socket.id;
    let n = 0;
    for (const round of [1, 2, 3]) {
      const back = reconnected(socket);
      await drop(server, socket);
      await emit(server, ["r"], "m", ++n);
      await emit(server, ["r"], "m", ++n);
      await back;
      assert.equal(socket.recovered, true, `drop ${round}`);
      assert.equal(socket.id, id, `drop ${round}`);
      await waitCount(got, n, 5000, `broadcasts after drop ${round}`);
      // and one while connected
      assert.equal(await emit(server, ["r"], "m", ++n), 1, `drop ${round}: back in the room`);
      await waitCount(got, n, 5000, `broadcasts after drop ${round}`);
    }
    await sleep(200);
    assert.deepEqual(dataWithOffsets(got), Array.from({ length: n }, (_, k) => k + 1));
  });

  test("two namespaces on one connection each get back exactly the broadcasts meant for them", async (t) => {
    const server = await startHub(t, { config: { hub: { namespaces: ["/", "/other"] } } });
    const root = await connect(t, server.url, "/", { ...RECONNECTING, transports: ["websocket"] });
    const other = root.io.socket("/other");
    t.after(() => closeSocket(other));
    other.connect();
    await waitConnected(other);
    await joinRoom(root, "r");
    await joinRoom(other, "r");
    const gotRoot = record(root, "missed");
    const gotOther = record(other, "missed");
    const [rootId, otherId] = [root.id, other.id];
    const back = Promise.all([reconnected(root), reconnected(other)]);
    await drop(server, root);
    const send = (namespace, rooms, except, tag) =>
      api(server, "POST", "/api/v1/emit", { namespace, rooms, except, event: "missed", data: [tag] });
    await send("/", ["r"], [], "root: room r");
    await send("/other", ["r"], [], "other: room r");
    await send("/", [], [], "root: everyone");
    await send("/", [rootId], [], "root: its own id");
    await send("/", ["r"], [rootId], "root: room r except it");
    await send("/", ["elsewhere"], [], "root: another room");
    await send("/other", [], ["r"], "other: everyone except room r");
    await send("/other", [otherId], [], "other: its own id");
    await back;
    assert.deepEqual([root.recovered, other.recovered], [true, true]);
    assert.deepEqual([root.id, other.id], [rootId, otherId]);
    await waitCount(gotRoot, 3, 5000, "broadcasts on /");
    await waitCount(gotOther, 2, 5000, "broadcasts on /other");
    await sleep(300);
    assert.deepEqual(dataWithOffsets(gotRoot, "/"), ["root: room r", "root: everyone", "root: its own id"]);
    assert.deepEqual(dataWithOffsets(gotOther, "/other"), ["other: room r", "other: its own id"]);
  });

  test("after a restart, a recovered socket on another namespace keeps its stream subscription", async (t) => {
    const dataDir = makeDataDir(t);
    let server = await startHub(t, { dataDir, config: { hub: { namespaces: ["/", "/jobs"] } } });
    const root = await connect(t, server.url, "/", { transports: ["websocket"] });
    const jobs = root.io.socket("/jobs");
    t.after(() => closeSocket(jobs));
    jobs.connect();
    await waitConnected(jobs);
    const got = deliveries(jobs, "job");
    await subscribe(jobs, "work", "w");
    await publish(server, "work", "job", 1);
    await waitCount(got, 1);
    const id = jobs.id;
    const disconnected = once(jobs, "disconnect", 8000);
    server = await restartCourier(server, { t, signal: "SIGTERM" });
    await disconnected;
    await publish(server, "work", "job", 2);
    root.connect();
    jobs.connect();
    await waitConnected(jobs);
    assert.equal(jobs.recovered, true);
    assert.equal(jobs.id, id);
    await publish(server, "work", "job", 3);
    await waitCount(got, 3);
    await sleep(200);
    assert.deepEqual(seqsOf(got), [1, 2, 3]);
  });

  test("past [recovery] memory_bytes: the older missed broadcasts come back from disk, also after a restart", async (t) => {
    // About eight 1 KB broadcasts fit in memory; the drop misses thirty.
    const dataDir = makeDataDir(t);
    let server = await startHub(t, { dataDir, config: { recovery: { memory_bytes: 9000 } } });
    const socket = await connect(t, server.url, "/", { transports: ["websocket"] });
    await joinRoom(socket, "news");
    const got = record(socket, "news");
    await emit(server, ["news"], "news", 0);
    await waitCount(got, 1, 5000, "broadcasts");
    const id = socket.id;
    await drop(server, socket);
    const health = async () => (await api(server, "GET", "/health")).body.memory;
    const pad = "p".repeat(1000);
    for (let n = 1; n <= 30; n++) {
      assert.equal(await emit(server, ["news"], "news", { n, pad }), 0);
      // One at a time onto disk: a broadcast leaves memory only once it is there, and one the
      // store has not written yet is dropped past the budget (tested in the store's own tests).
      await waitFor(async () => (await health()).recovery_unpersisted === 0, { what: "the broadcast on disk" });
    }
    const memory = await health();
    assert.ok(memory.recovery_events < 20 && memory.recovery_kept >= 31, JSON.stringify(memory));
    assert.ok(memory.recovery_bytes <= 9000, JSON.stringify(memory));

    server = await restartCourier(server, { t, signal: "SIGTERM" });
    socket.connect();
    await waitConnected(socket);
    assert.equal(socket.recovered, true);
    assert.equal(socket.id, id);
    await waitCount(got, 31, 8000, "broadcasts");
    await sleep(200);
    const data = dataWithOffsets(got);
    assert.deepEqual(data.slice(1).map((d) => d.n), Array.from({ length: 30 }, (_, i) => i + 1));
  });

  test("stream subscriptions come back with the session; what was unacked comes again", async (t) => {
    const server = await startHub(t);
    const socket = await connect(t, server.url, "/", { ...RECONNECTING, transports: ["websocket"] });
    const got = deliveries(socket, "job", { autoAck: false });
    await subscribe(socket, "jobs", "w");
    await publish(server, "jobs", "job", 1);
    await publish(server, "jobs", "job", 2);
    await waitCount(got, 2);
    got[0].ack();
    await waitFor(async () => (await consumerInfo(server, "jobs", "w")).ack_floor === 1, { what: "the ack of seq 1" });
    const back = reconnected(socket);
    await drop(server, socket);
    await publish(server, "jobs", "job", 3);
    await back;
    assert.equal(socket.recovered, true);
    await publish(server, "jobs", "job", 4);
    let acked = 1;
    await waitFor(
      () => {
        for (; acked < got.length; acked++) got[acked].ack();
        return got.length >= 5;
      },
      { what: `seqs 2 (again), 3 and 4 without subscribing again (have ${JSON.stringify(seqsOf(got))})` },
    );
    await sleep(300);
    assert.deepEqual(
      got.map((d) => [d.meta.seq, d.meta.deliveries]),
      [[1, 1], [2, 1], [2, 2], [3, 1], [4, 1]],
    );
    // deliveries are not broadcasts: no offset argument
    assert.ok(got.every((d) => d.args.length === 2), JSON.stringify(got.map((d) => d.args)));
  });
});

// What a socket got before a marker broadcast that it certainly receives: a replay would come
// before the marker (it follows the CONNECT answer), so nothing late can slip past the check.
async function beforeMarker(server, socket, got) {
  await joinRoom(socket, "news");
  await emit(server, ["news"], "news", "marker");
  await waitFor(() => got.some((a) => a[0] === "marker"), { what: "the marker broadcast" });
  return got.map((a) => a[0]).filter((v) => v !== "marker");
}

describe("not recovered", () => {
  test("after the window: new id, nothing replayed, rooms gone", async (t) => {
    const server = await startHub(t, { config: { recovery: { window_ms: 1000 } } });
    const socket = await connect(t, server.url, "/", { transports: ["websocket"] });
    await joinRoom(socket, "news");
    const got = record(socket, "news");
    await emit(server, ["news"], "news", 1);
    await waitCount(got, 1, 5000, "broadcasts");
    const id = socket.id;
    await drop(server, socket);
    await emit(server, ["news"], "news", 2);
    await sleep(1600); // past the 1000 ms window
    socket.connect();
    await waitConnected(socket);
    assert.equal(socket.recovered, false);
    assert.notEqual(socket.id, id);
    assert.equal(typeof socket._pid, "string", "a new session to recover later");
    assert.deepEqual(await listedSids(server, "/", "news"), []);
    assert.equal(await emit(server, ["news"], "news", 3), 0);
    assert.deepEqual(await beforeMarker(server, socket, got), [1], "nothing replayed");
  });

  test("when more was missed than [recovery] max_events keeps: a new session, not one with a gap", async (t) => {
    const server = await startHub(t, { config: { recovery: { max_events: 3 } } });
    const socket = await connect(t, server.url, "/", { transports: ["websocket"] });
    await joinRoom(socket, "news");
    const got = record(socket, "news");
    await emit(server, ["news"], "news", 0);
    await waitCount(got, 1, 5000, "broadcasts");
    const id = socket.id;
    await drop(server, socket);
    for (const n of [1, 2, 3, 4, 5]) await emit(server, ["news"], "news", n);
    socket.connect();
    await waitConnected(socket);
    const received = await beforeMarker(server, socket, got);
    assert.equal(socket.recovered, false, `recovered with only ${JSON.stringify(received)} of 0..5`);
    assert.notEqual(socket.id, id);
    assert.deepEqual(received, [0]);
  });

  test("after a client-side socket.disconnect()", async (t) => {
    const server = await startHub(t);
    const socket = await connect(t, server.url, "/", { transports: ["websocket"] });
    await joinRoom(socket, "news");
    const got = record(socket, "news");
    await emit(server, ["news"], "news", 1);
    await waitCount(got, 1, 5000, "broadcasts");
    const id = socket.id;
    const pid = socket._pid;
    socket.disconnect();
    await waitFor(async () => (await listedSids(server)).length === 0, { what: "the socket to be gone" });
    await emit(server, ["news"], "news", 2);
    // socket.io-client still sends its pid and offset; the server must not honour them
    socket.connect();
    await waitConnected(socket);
    assert.equal(socket.recovered, false);
    assert.notEqual(socket.id, id);
    assert.notEqual(socket._pid, pid);
    assert.deepEqual(await listedSids(server, "/", "news"), []);
    assert.deepEqual(await beforeMarker(server, socket, got), [1]);
  });

  test("with [recovery] enabled = false: no pid, no offsets, a new session after a drop", async (t) => {
    const server = await startHub(t, { config: { recovery: { enabled: false } } });
    const socket = await connect(t, server.url, "/", { ...RECONNECTING, transports: ["websocket"] });
    assert.equal(socket._pid, undefined, "no pid in the CONNECT answer");
    await joinRoom(socket, "news");
    const got = record(socket, "news");
    await emit(server, ["news"], "news", { n: 1 }, "two");
    await waitCount(got, 1, 5000, "broadcasts");
    assert.deepEqual(got[0], [{ n: 1 }, "two"], "exactly the emitted arguments");
    const id = socket.id;
    const back = reconnected(socket);
    await drop(server, socket);
    await emit(server, ["news"], "news", "missed");
    await back;
    assert.notEqual(socket.recovered, true);
    assert.notEqual(socket.id, id);
    assert.equal((await beforeMarker(server, socket, got)).length, 1, "nothing replayed");
  });
});

describe("offsets", () => {
  test("only recoverable broadcasts carry an offset", async (t) => {
    const server = await startHub(t);
    const socket = await connect(t, server.url, "/", { transports: ["websocket"] });
    const got = record(socket, "e");
    socket.on("asked", (x, ack) => ack(x));
    // a namespace broadcast
    await emit(server, [], "e", "ns");
    await waitCount(got, 1, 5000, "events");
    // volatile: not recoverable
    const volatile = await api(server, "POST", "/api/v1/emit", { event: "e", data: ["volatile"], volatile: true });
    assert.equal(volatile.body.recipients, 1);
    await waitCount(got, 2, 5000, "events");
    // with an ack request: not a broadcast to replay either
    const asked = await api(server, "POST", "/api/v1/emit", { event: "asked", data: ["q"], ack_timeout_ms: 2000 });
    assert.deepEqual(asked.body.acks, [{ sid: socket.id, args: ["q"] }], "no offset argument reached the handler");
    assert.equal(typeof got[0][1], "string");
    assert.deepEqual(got[1], ["volatile"]);
  });

  test("a second client connecting with the offsets of a live session does not take it over", async (t) => {
    const server = await startHub(t);
    const first = await connect(t, server.url, "/", { transports: ["websocket"] });
    await joinRoom(first, "r");
    // a forged CONNECT with someone else's pid while that session is still connected
    const intruder = io(server.url, { ...BASE_OPTS, transports: ["websocket"] });
    t.after(() => closeSocket(intruder));
    intruder._pid = first._pid;
    await waitConnected(intruder);
    assert.notEqual(intruder.id, first.id);
    assert.equal(intruder.recovered, false);
    assert.equal(first.connected, true);
    assert.deepEqual(await listedSids(server, "/", "r"), [first.id]);
  });
});
