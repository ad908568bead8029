// `courier serve`: a backend emits over HTTP with `ack_timeout_ms` and gets the clients' ack
// callback arguments (or the count of clients that did not answer in time) in the HTTP answer.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startCourier } from "./harness.mjs";
import { api, ask, connect } from "./clients.mjs";

describe("server-to-client acks through POST /api/v1/emit", () => {
  let server;
  before(async () => {
    server = await startCourier();
  });
  after(() => server?.stop());

  test("every recipient answers: the HTTP answer carries each sid's ack arguments", async (t) => {
    const [ws, polling] = await Promise.all([
      connect(t, server.url, "/", { transports: ["websocket"] }),
      connect(t, server.url, "/", { transports: ["polling"] }),
    ]);
    for (const s of [ws, polling]) {
      await ask(s, "courier:join", "askers");
      s.on("question", (a, b, callback) => {
        callback({ sum: a + b, me: s.id }, "second arg", [1, null]);
      });
    }
    const started = Date.now();
    const res = await api(server, "POST", "/api/v1/emit", {
      namespace: "/",
      rooms: ["askers"],
      event: "question",
      data: [2, 3],
      ack_timeout_ms: 3000,
    });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.ok(Date.now() - started < 2500, "the answer does not wait for the timeout once every ack is in");
    assert.equal(res.body.recipients, 2);
    assert.equal(res.body.timeouts, 0);
    const acks = [...res.body.acks].sort((x, y) => (x.sid < y.sid ? -1 : 1));
    const expected = [ws, polling]
      .map((s) => ({ sid: s.id, args: [{ sum: 5, me: s.id }, "second arg", [1, null]] }))
      .sort((x, y) => (x.sid < y.sid ? -1 : 1));
    assert.deepEqual(acks, expected);
  });

  test("a client that never answers counts as a timeout after ack_timeout_ms", async (t) => {
    const [answers, silent] = await Promise.all([connect(t, server.url), connect(t, server.url)]);
    await ask(answers, "courier:join", "mixed");
    await ask(silent, "courier:join", "mixed");
    answers.on("poll", (callback) => callback("yes"));
    let silentSaw = 0;
    silent.on("poll", () => {
      silentSaw++; // receives the event, never calls back
    });
    const started = Date.now();
    const res = await api(server, "POST", "/api/v1/emit", {
      namespace: "/",
      rooms: ["mixed"],
      event: "poll",
      data: [],
      ack_timeout_ms: 600,
    });
    const elapsed = Date.now() - started;
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.recipients, 2);
    assert.equal(res.body.timeouts, 1);
    assert.deepEqual(res.body.acks, [{ sid: answers.id, args: ["yes"] }]);
    assert.equal(silentSaw, 1, "the silent client did get the event");
    assert.ok(elapsed >= 550, `answered after ${elapsed} ms, before the ack timeout`);
    assert.ok(elapsed < 3000, `answered after ${elapsed} ms`);
  });

  test("no recipient: answers at once with nothing to wait for", async () => {
    const res = await api(server, "POST", "/api/v1/emit", {
      namespace: "/",
      rooms: ["room-without-members"],
      event: "poll",
      data: [],
      ack_timeout_ms: 5000,
    });
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { recipients: 0, acks: [], timeouts: 0 });
  });

  test("without ack_timeout_ms the answer has no acks", async (t) => {
    const socket = await connect(t, server.url);
    const calls = [];
    socket.on("fire", (...args) => {
      calls.push(typeof args[args.length - 1] === "function" ? "with ack" : args);
    });
    const res = await api(server, "POST", "/api/v1/emit", { namespace: "/", rooms: [socket.id], event: "fire", data: [1] });
    assert.deepEqual(res.body, { recipients: 1 });
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(calls, [[1]], "the event arrived, without an ack request");
  });
});
