// Durable streams used from the stock socket.io-client and over the HTTP API, as docs/streams.md
// describes them: subscribe, deliveries as (data, meta, ack), publish and dedupe, resuming a
// consumer, start positions, redelivery and dead letters, back-pressure, work queues, order under
// concurrent publishing, restarts, the stream API, and the answer every bad request gets in its ack.
//
// streamSuite(mode) declares the tests; each entry file runs them in one mode:
// - "single" (streams.test.mjs): "the server" of a test is one `courier serve` node;
// - "cluster" (streams-cluster.test.mjs): it is a hub of three nodes on a redis-server of the
//   test's own (startHub in cluster.mjs), each with the test's config. Each read of `server.url`
//   gives the next node, so consecutive sockets and API calls land on different nodes: a
//   publisher on one node, a subscriber on another, the API answering from a third. A restart
//   restarts one node, the one the test's client was on; what lives in Redis survives it;
// - "redis-cluster" (streams-rediscluster.test.mjs): the same hub on a Redis Cluster of three
//   masters of the test's own, so that streams are spread over its shards.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { makeDataDir, restartCourier, sleep, startCourier, waitFor } from "./harness.mjs";
import { startHub } from "./cluster.mjs";
import {
  api,
  ask,
  clientPublish,
  closeSocket,
  connect,
  consumerInfo,
  deliveries,
  listedSids,
  publish,
  range,
  seqsOf,
  streamInfo,
  subscribe,
  waitConnected,
  waitCount,
} from "./clients.mjs";

/** What "the server" is in each mode. */
export const MODES = {
  single: "one node",
  cluster: "three nodes on one Redis",
  "redis-cluster": "three nodes on a Redis Cluster of three masters",
};

const WS = { transports: ["websocket"] };

/** Asserts that `list` gets nothing more for `ms`. */
async function quiet(list, ms = 400, what = "deliveries") {
  const n = list.length;
  await sleep(ms);
  assert.equal(
    list.length,
    n,
    `no more ${what}; then came ${JSON.stringify(list.slice(n).map((d) => d.meta ?? d))}`,
  );
}

/** Waits until GET consumer satisfies `predicate`; returns the consumer. */
function consumerWhen(server, stream, consumer, predicate, what) {
  return waitFor(
    async () => {
      const c = await consumerInfo(server, stream, consumer);
      return predicate(c) && c;
    },
    { what: what ?? `consumer ${stream}/${consumer}` },
  );
}

/** Publishes `count` entries over HTTP, at most `parallel` at a time; returns the answers in order of i. */
async function publishMany(server, stream, event, count, { parallel = 32, data = (i) => ({ i }) } = {}) {
  const answers = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      answers[i] = await publish(server, stream, event, data(i + 1));
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  return answers;
}

/** Asserts the shape of an error answered in an ack. */
function assertAckError(answer, code, what) {
  assert.equal(answer?.ok, false, `${what}: ${JSON.stringify(answer)}`);
  assert.deepEqual(Object.keys(answer).sort(), ["error", "ok"], what);
  assert.deepEqual(Object.keys(answer.error).sort(), ["code", "message"], what);
  assert.equal(answer.error.code, code, `${what}: ${JSON.stringify(answer)}`);
  assert.equal(typeof answer.error.message, "string", what);
  assert.ok(answer.error.message.length > 0, `${what}: an empty message`);
}

/** Asserts an HTTP API error: the status and {"error":{"code","message"}}. */
function assertApiError(res, status, code, what) {
  assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
  assert.equal(typeof res.body, "object", `${what}: a JSON body, got ${JSON.stringify(res.body)}`);
  assert.deepEqual(Object.keys(res.body), ["error"], what);
  assert.equal(res.body.error.code, code, `${what}: ${JSON.stringify(res.body)}`);
  assert.equal(typeof res.body.error.message, "string", what);
}


/** Declares the stream tests against "the server" of `mode` (a key of MODES). */
export function streamSuite(mode) {
  if (!Object.hasOwn(MODES, mode)) throw new Error(`unknown mode ${mode}; one of ${Object.keys(MODES)}`);
  const cluster = mode !== "single";
  const redisCluster = mode === "redis-cluster";

  /**
   * Starts the server of a test: one node, or a hub of three (each node with `config`). One node
   * that is to be restarted gets a data directory of the test's own; cluster nodes always have one.
   */
  async function startServer(t, { config = {}, restartable = false } = {}) {
    if (cluster) return startHub(t, { config, redisCluster });
    return startCourier({ t, config, ...(restartable ? { dataDir: makeDataDir(t) } : {}) });
  }

  /**
   * Stops the server with `signal` and starts it again; resolves with the server to use from then
   * on. In cluster mode only the node `socket` was opened on restarts, while the others go on.
   */
  async function restartServer(t, server, { signal, socket }) {
    if (!cluster) return restartCourier(server, { t, signal });
    await server.restartNode(server.nodeOf(socket), { signal });
    return server;
  }

  describe(`durable streams on ${MODES[mode]}`, () => {
    describe("subscribe and deliveries", () => {
      for (const transport of ["websocket", "polling"]) {
        test(`subscribe, a delivery as (data, meta, ack), the ack clears it (${transport})`, async (t) => {
          const server = await startServer(t);
          const socket = await connect(t, server.url, "/", { transports: [transport] });
          const got = deliveries(socket, "order", { autoAck: false });
          assert.deepEqual(await subscribe(socket, "orders", "vendor-7"), {
            ok: true,
            stream: "orders",
            consumer: "vendor-7",
            pending: 0,
          });

          assert.deepEqual(await publish(server, "orders", "order", { n: 1, items: ["a", "b"] }, "order-1"), {
            seq: 1,
            duplicate: false,
          });
          await waitCount(got, 1);
          const [first] = got;
          assert.deepEqual(first.data, { n: 1, items: ["a", "b"] });
          assert.deepEqual(first.meta, { stream: "orders", seq: 1, id: "order-1", deliveries: 1 });
          assert.equal(typeof first.ack, "function", "the delivery asks for an ack");
          assert.equal(first.args.length, 2, "(data, meta) and the ack callback, nothing more");

          let c = await consumerInfo(server, "orders", "vendor-7");
          assert.equal(c.pending, 1, JSON.stringify(c));
          assert.equal(c.delivered, 1, JSON.stringify(c));
          assert.equal(c.ack_floor, 0, JSON.stringify(c));
          first.ack();
          c = await consumerWhen(server, "orders", "vendor-7", (c) => c.pending === 0, "the ack to clear the entry");
          assert.equal(c.ack_floor, 1, JSON.stringify(c));
          assert.equal(c.waiting, 0, JSON.stringify(c));
          assert.equal(c.redelivered, 0, JSON.stringify(c));

          // An array is one argument, not spread; an entry without an id has meta.id null.
          await publish(server, "orders", "order", [1, "two", null]);
          await waitCount(got, 2);
          assert.deepEqual(got[1].data, [1, "two", null]);
          assert.deepEqual(got[1].meta, { stream: "orders", seq: 2, id: null, deliveries: 1 });
          got[1].ack();
          await consumerWhen(server, "orders", "vendor-7", (c) => c.pending === 0 && c.ack_floor === 2);
          await quiet(got, 300);
        });
      }

      test("courier:publish answers {ok, seq, duplicate} and subscribers get the entry", async (t) => {
        const server = await startServer(t);
        const publisher = await connect(t, server.url, "/", WS);
        const reader = await connect(t, server.url, "/", { transports: ["polling"] });
        const own = deliveries(publisher, "note");
        const got = deliveries(reader, "note");
        assert.equal((await subscribe(reader, "notes", "reader")).ok, true);

        assert.deepEqual(await clientPublish(publisher, "notes", "note", { text: "hi" }), {
          ok: true,
          seq: 1,
          duplicate: false,
        });
        assert.deepEqual(await clientPublish(publisher, "notes", "note", [1, 2], "n-2"), {
          ok: true,
          seq: 2,
          duplicate: false,
        });
        // data may be left out
        assert.deepEqual(await ask(publisher, "courier:publish", { stream: "notes", event: "note" }), {
          ok: true,
          seq: 3,
          duplicate: false,
        });
        await waitCount(got, 3);
        assert.deepEqual(
          got.map((d) => [d.data, d.meta]),
          [
            [{ text: "hi" }, { stream: "notes", seq: 1, id: null, deliveries: 1 }],
            [[1, 2], { stream: "notes", seq: 2, id: "n-2", deliveries: 1 }],
            [null, { stream: "notes", seq: 3, id: null, deliveries: 1 }],
          ],
        );
        const info = await streamInfo(server, "notes");
        assert.equal(info.name, "notes");
        assert.equal(info.first_seq, 1);
        assert.equal(info.last_seq, 3);
        assert.equal(info.entries, 3);
        assert.deepEqual(info.consumers, ["reader"]);
        await quiet(own, 200);
        assert.equal(own.length, 0, "the publisher is not subscribed and gets nothing");
      });

      // sync = "interval" may lose the last interval to a power loss, never to a crash of the process.
      for (const sync of ["always", "interval"]) {
        test(`a publish is confirmed only once durable: everything confirmed survives a SIGKILL (sync = "${sync}")`, async (t) => {
          let server = await startServer(t, { restartable: true, config: { store: { sync, sync_interval_ms: 1000 } } });
          const socket = await connect(t, server.url, "/", WS);
          const answers = await Promise.all(range(1, 40).map((i) => clientPublish(socket, "durable", "e", { i })));
          assert.ok(answers.every((a) => a.ok === true && a.duplicate === false), JSON.stringify(answers));
          assert.deepEqual(answers.map((a) => a.seq).sort((a, b) => a - b), range(1, 40));
          const last = await publish(server, "durable", "e", { i: 41 });
          assert.equal(last.seq, 41);
          // killed the moment the last confirmation arrived (in a cluster: the node of the socket)
          server = await restartServer(t, server, { signal: "SIGKILL", socket });
          const info = await streamInfo(server, "durable");
          assert.equal(info.entries, 41, JSON.stringify(info));
          assert.equal(info.last_seq, 41, JSON.stringify(info));

          const reader = await connect(t, server.url, "/", WS);
          const got = deliveries(reader, "e");
          assert.equal((await subscribe(reader, "durable", "check", { from: "all" })).pending, 41);
          await waitCount(got, 41);
          const bySeq = new Map(answers.map((a, k) => [a.seq, k + 1]));
          bySeq.set(41, 41);
          assert.deepEqual(seqsOf(got), range(1, 41));
          for (const d of got) assert.deepEqual(d.data, { i: bySeq.get(d.meta.seq) }, `seq ${d.meta.seq}`);
        });
      }

      test("dedupe by id: the same id is confirmed again with its seq and duplicate:true, stored once", async (t) => {
        const server = await startServer(t);
        const socket = await connect(t, server.url, "/", WS);
        assert.deepEqual(await publish(server, "payments", "paid", { amount: 5 }, "pay-1"), { seq: 1, duplicate: false });
        assert.deepEqual(await publish(server, "payments", "paid", { amount: 5 }, "pay-1"), { seq: 1, duplicate: true });
        // the data of a duplicate does not matter: the first one is kept
        assert.deepEqual(await publish(server, "payments", "paid", { amount: 999 }, "pay-1"), { seq: 1, duplicate: true });
        assert.deepEqual(await clientPublish(socket, "payments", "paid", { amount: 5 }, "pay-1"), {
          ok: true,
          seq: 1,
          duplicate: true,
        });
        assert.deepEqual(await clientPublish(socket, "payments", "paid", { amount: 7 }, "pay-2"), {
          ok: true,
          seq: 2,
          duplicate: false,
        });
        assert.deepEqual(await publish(server, "payments", "paid", { amount: 7 }, "pay-2"), { seq: 2, duplicate: true });
        // many copies at once still make one entry
        const burst = await Promise.all(range(1, 20).map(() => clientPublish(socket, "payments", "paid", { amount: 9 }, "pay-3")));
        assert.deepEqual(new Set(burst.map((a) => a.seq)), new Set([3]), JSON.stringify(burst));
        assert.equal(burst.filter((a) => a.duplicate === false).length, 1, "exactly one of the copies is the original");
        // ids are per stream
        assert.deepEqual(await publish(server, "refunds", "paid", { amount: 5 }, "pay-1"), { seq: 1, duplicate: false });

        const info = await streamInfo(server, "payments");
        assert.equal(info.entries, 3, JSON.stringify(info));
        assert.equal(info.last_seq, 3, JSON.stringify(info));
        const got = deliveries(socket, "paid");
        await subscribe(socket, "payments", "audit", { from: "all" });
        await waitCount(got, 3);
        await quiet(got, 300);
        assert.deepEqual(
          got.map((d) => [d.meta.seq, d.meta.id, d.data]),
          [
            [1, "pay-1", { amount: 5 }],
            [2, "pay-2", { amount: 7 }],
            [3, "pay-3", { amount: 9 }],
          ],
        );
      });

      test("data round-trips unchanged: every JSON type, nesting, unicode, over HTTP and courier:publish", async (t) => {
        const server = await startServer(t);
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "v");
        await subscribe(socket, "values", "c");
        const values = [
          0,
          -1.5,
          1e21,
          true,
          false,
          null,
          "",
          "héllo \u2028 \"quoted\" \\ 🚀",
          [],
          {},
          [1, [2, [3, { deep: [null, { "": "empty key" }] }]]],
          { "ключ": "значение", emoji: "😀", n: 9007199254740991 },
        ];
        for (const [k, v] of values.entries()) {
          if (k % 2 === 0) await publish(server, "values", "v", v);
          else assert.equal((await clientPublish(socket, "values", "v", v)).ok, true);
        }
        await waitCount(got, values.length);
        assert.deepEqual(got.map((d) => d.data), values);
        assert.deepEqual(seqsOf(got), values.map((_, k) => k + 1));
      });

      test("one socket on two consumers gets each entry once per consumer; subscribing twice changes nothing", async (t) => {
        const server = await startServer(t);
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "e");
        await subscribe(socket, "shared", "c1");
        await subscribe(socket, "shared", "c2");
        assert.deepEqual(await subscribe(socket, "shared", "c1"), { ok: true, stream: "shared", consumer: "c1", pending: 0 });
        await publish(server, "shared", "e", "x");
        await waitCount(got, 2);
        await quiet(got, 300);
        assert.deepEqual(seqsOf(got), [1, 1]);
        await consumerWhen(server, "shared", "c1", (c) => c.ack_floor === 1);
        await consumerWhen(server, "shared", "c2", (c) => c.ack_floor === 1);
      });

      test("a subscription on another namespace is served on that namespace", async (t) => {
        const server = await startServer(t, { config: { hub: { namespaces: ["/", "/orders"] } } });
        const root = await connect(t, server.url, "/", WS);
        const nsp = root.io.socket("/orders");
        t.after(() => closeSocket(nsp));
        nsp.connect();
        await waitConnected(nsp);
        const onRoot = deliveries(root, "e");
        const onNsp = deliveries(nsp, "e");
        await subscribe(nsp, "ns-stream", "c");
        await publish(server, "ns-stream", "e", { n: 1 });
        await waitCount(onNsp, 1);
        await consumerWhen(server, "ns-stream", "c", (c) => c.ack_floor === 1, "the ack on /orders");
        assert.equal(onRoot.length, 0);
      });

      test("binary data in courier:publish is kept or refused, never replaced by a placeholder", async (t) => {
        // socket.io-client sends a Buffer as a binary attachment with a {_placeholder, num} marker
        // in the JSON; storing the marker would confirm an entry whose bytes are gone.
        const server = await startServer(t);
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "file");
        await subscribe(socket, "files", "reader");
        const answer = await ask(socket, "courier:publish", { stream: "files", event: "file", data: { name: "a", bytes: Buffer.from([1, 2, 3]) } });
        if (answer.ok === false) {
          assertAckError(answer, "bad_request", "a binary publish that is refused");
          return;
        }
        await waitCount(got, 1);
        const bytes = got[0].data?.bytes;
        assert.ok(
          bytes !== undefined && !bytes._placeholder && Buffer.from(bytes).equals(Buffer.from([1, 2, 3])),
          `publish answered ${JSON.stringify(answer)}; the subscriber got ${JSON.stringify(got[0].data)}`,
        );
      });

      test("courier:unsubscribe stops deliveries; the consumer keeps its place", async (t) => {
        const server = await startServer(t);
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "msg");
        await subscribe(socket, "inbox", "me");
        await publish(server, "inbox", "msg", 1);
        await waitCount(got, 1);
        assert.deepEqual(await ask(socket, "courier:unsubscribe", { stream: "inbox" }), { ok: true, removed: 1 });
        assert.deepEqual(await ask(socket, "courier:unsubscribe", { stream: "inbox" }), { ok: true, removed: 0 });
        await publish(server, "inbox", "msg", 2);
        await quiet(got, 400);
        assert.equal((await consumerInfo(server, "inbox", "me")).waiting, 1);
        assert.equal((await subscribe(socket, "inbox", "me")).pending, 1);
        await waitCount(got, 2);
        assert.deepEqual(seqsOf(got), [1, 2]);
      });
    });

    describe("consumers", () => {
      test("a consumer resumes on a new socket: exactly the missed entries, in order, nothing acked again", async (t) => {
        const server = await startServer(t);
        const first = await connect(t, server.url, "/", WS);
        const before = deliveries(first, "tick");
        assert.equal((await subscribe(first, "ticks", "dash")).pending, 0);
        for (const i of range(1, 5)) await publish(server, "ticks", "tick", { i });
        await waitCount(before, 5);
        await consumerWhen(server, "ticks", "dash", (c) => c.ack_floor === 5 && c.pending === 0, "the five acks");
        closeSocket(first);
        await waitFor(async () => (await listedSids(server)).length === 0, { what: "the first socket to be gone" });

        for (const i of range(6, 10)) await publish(server, "ticks", "tick", { i });
        const c = await consumerInfo(server, "ticks", "dash");
        assert.equal(c.waiting, 5, JSON.stringify(c));
        assert.equal(c.pending, 0, JSON.stringify(c));

        const second = await connect(t, server.url, "/", { transports: ["polling"] });
        const after = deliveries(second, "tick");
        // `from` only applies when a consumer is created: "all" does not rewind an existing one
        assert.deepEqual(await subscribe(second, "ticks", "dash", { from: "all" }), {
          ok: true,
          stream: "ticks",
          consumer: "dash",
          pending: 5,
        });
        await waitCount(after, 5);
        await quiet(after, 400);
        assert.deepEqual(
          after.map((d) => [d.meta.seq, d.data.i, d.meta.deliveries]),
          range(6, 10).map((i) => [i, i, 1]),
        );
      });

      test('start positions: from "all", "new" (the default) and a seq', async (t) => {
        const server = await startServer(t);
        for (const i of range(1, 5)) await publish(server, "feed", "item", { i });
        const [a, b, c, d] = await Promise.all([1, 2, 3, 4].map(() => connect(t, server.url, "/", WS)));
        const [all, fresh, dflt, mid] = [a, b, c, d].map((s) => deliveries(s, "item"));
        assert.deepEqual(await subscribe(a, "feed", "from-all", { from: "all" }), {
          ok: true,
          stream: "feed",
          consumer: "from-all",
          pending: 5,
        });
        assert.equal((await subscribe(b, "feed", "from-new", { from: "new" })).pending, 0);
        assert.equal((await subscribe(c, "feed", "by-default")).pending, 0);
        assert.equal((await subscribe(d, "feed", "from-3", { from: 3 })).pending, 3);
        await waitCount(all, 5);
        await waitCount(mid, 3);
        await publish(server, "feed", "item", { i: 6 });
        await waitCount(all, 6);
        await waitCount(fresh, 1);
        await waitCount(dflt, 1);
        await waitCount(mid, 4);
        await quiet(all, 300);
        assert.deepEqual(seqsOf(all), range(1, 6));
        assert.deepEqual(seqsOf(fresh), [6]);
        assert.deepEqual(seqsOf(dflt), [6]);
        assert.deepEqual(seqsOf(mid), range(3, 6));
        assert.deepEqual(mid.map((x) => x.data.i), range(3, 6));
      });

      test("an unacked entry is sent again after ack_wait_ms with deliveries incremented; a stale ack is harmless", async (t) => {
        const server = await startServer(t);
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "job", { autoAck: false });
        await subscribe(socket, "jobs", "worker", { ack_wait_ms: 300 });
        await publish(server, "jobs", "job", { n: 1 }, "job-1");
        await waitCount(got, 1);
        const firstAt = Date.now();
        await waitCount(got, 2, 3000, "deliveries (a redelivery)");
        const waited = Date.now() - firstAt;
        assert.ok(waited >= 200, `redelivered after ${waited} ms, ack_wait_ms is 300`);
        assert.deepEqual(got[1].data, { n: 1 });
        assert.deepEqual(got[1].meta, { stream: "jobs", seq: 1, id: "job-1", deliveries: 2 });
        got[1].ack();
        let c = await consumerWhen(server, "jobs", "worker", (c) => c.pending === 0, "the ack of the redelivery");
        assert.equal(c.redelivered, 1, JSON.stringify(c));
        assert.equal(c.config.ack_wait_ms, 300, JSON.stringify(c));
        // the ack of the first attempt arrives late: the entry is not pending any more
        got[0].ack();
        await quiet(got, 900);
        c = await consumerInfo(server, "jobs", "worker");
        assert.equal(c.pending, 0, JSON.stringify(c));
        assert.equal(c.ack_floor, 1, JSON.stringify(c));
        assert.equal(c.dead_lettered, 0, JSON.stringify(c));
        // and the consumer goes on normally
        await publish(server, "jobs", "job", { n: 2 });
        await waitCount(got, 3);
        assert.deepEqual(got[2].meta, { stream: "jobs", seq: 2, id: null, deliveries: 1 });
        assert.equal(socket.connected, true);
      });

      test("after max_deliver attempts an entry moves to <stream>.dlq", async (t) => {
        const server = await startServer(t);
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "mail", { autoAck: false });
        await subscribe(socket, "outbox", "sender", { ack_wait_ms: 150, max_deliver: 3 });
        await publish(server, "outbox", "mail", { to: "x@example.com" }, "m-1");
        await waitCount(got, 3, 5000);
        assert.deepEqual(got.map((d) => [d.meta.seq, d.meta.deliveries]), [[1, 1], [1, 2], [1, 3]]);
        const dlq = await waitFor(
          async () => {
            const res = await api(server, "GET", "/api/v1/streams/outbox.dlq");
            return res.status === 200 && res.body.entries === 1 && res.body;
          },
          { what: "the entry in outbox.dlq" },
        );
        assert.equal(dlq.name, "outbox.dlq");
        const c = await consumerWhen(server, "outbox", "sender", (c) => c.dead_lettered === 1);
        assert.equal(c.pending, 0, JSON.stringify(c));
        assert.equal((await streamInfo(server, "outbox")).entries, 1, "the entry stays in its stream");
        await quiet(got, 700);

        // the dead-letter stream is an ordinary stream: its entry keeps the event name and the data
        const inspector = await connect(t, server.url, "/", WS);
        const dead = deliveries(inspector, "mail");
        await subscribe(inspector, "outbox.dlq", "inspect", { from: "all" });
        await waitCount(dead, 1);
        assert.equal(dead[0].meta.stream, "outbox.dlq");
        assert.ok(JSON.stringify(dead[0].data).includes('"to":"x@example.com"'), JSON.stringify(dead[0].data));
      });

      test("a stream's dead_letter setting names its dead-letter stream", async (t) => {
        const server = await startServer(t);
        const put = await api(server, "PUT", "/api/v1/streams/alerts", { dead_letter: "graveyard" });
        assert.equal(put.status, 200, JSON.stringify(put.body));
        assert.equal(put.body.config.dead_letter, "graveyard");
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "alert", { autoAck: false });
        await subscribe(socket, "alerts", "pager", { ack_wait_ms: 100, max_deliver: 1 });
        await publish(server, "alerts", "alert", { level: "high" });
        await waitCount(got, 1);
        await waitFor(async () => (await api(server, "GET", "/api/v1/streams/graveyard")).body?.entries === 1, {
          what: "the entry in graveyard",
        });
        assert.equal((await api(server, "GET", "/api/v1/streams/alerts.dlq")).status, 404);
        await quiet(got, 300);
        assert.equal(got.length, 1, "max_deliver 1: one attempt only");
      });

      test("with streams.auto_create = false an entry past max_deliver still reaches <stream>.dlq", async (t) => {
        const server = await startServer(t, { config: { streams: { auto_create: false } } });
        assert.equal((await api(server, "PUT", "/api/v1/streams/strict", {})).status, 200);
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "e", { autoAck: false });
        await subscribe(socket, "strict", "w", { ack_wait_ms: 100, max_deliver: 1 });
        await publish(server, "strict", "e", { keep: "me" });
        await waitCount(got, 1);
        await consumerWhen(server, "strict", "w", (c) => c.pending === 0, "the entry to leave the consumer");
        const dlq = await api(server, "GET", "/api/v1/streams/strict.dlq");
        assert.equal(
          dlq.status === 200 && dlq.body.entries,
          1,
          `the consumer reports dead_lettered ${(await consumerInfo(server, "strict", "w")).dead_lettered}, ` +
            `GET strict.dlq answered ${dlq.status} ${JSON.stringify(dlq.body)}`,
        );
      });

      test("max_ack_pending: a client that never acks has exactly that many in flight", async (t) => {
        const server = await startServer(t);
        await publishMany(server, "backlog", "row", 50);
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "row", { autoAck: false });
        const sub = await subscribe(socket, "backlog", "slow", { from: "all", max_ack_pending: 5 });
        assert.equal(sub.pending, 50);
        await waitCount(got, 5);
        await quiet(got, 600);
        assert.deepEqual(seqsOf(got), range(1, 5));
        let c = await consumerInfo(server, "backlog", "slow");
        assert.equal(c.pending, 5, JSON.stringify(c));
        assert.equal(c.waiting, 45, JSON.stringify(c));
        assert.equal(c.config.max_ack_pending, 5, JSON.stringify(c));

        got[0].ack();
        got[1].ack();
        await waitCount(got, 7);
        await quiet(got, 400);
        assert.deepEqual(seqsOf(got), range(1, 7), "two acks make room for two more");

        // acking everything drains the rest, in order
        let acked = 2;
        await waitFor(
          () => {
            for (; acked < got.length; acked++) got[acked].ack();
            return got.length === 50;
          },
          { ms: 10000, what: "all 50 rows" },
        );
        got[49].ack();
        assert.deepEqual(seqsOf(got), range(1, 50));
        assert.ok(got.every((d) => d.meta.deliveries === 1));
        c = await consumerWhen(server, "backlog", "slow", (c) => c.pending === 0 && c.ack_floor === 50);
        assert.equal(c.waiting, 0);
      });

      test("max_ack_pending is per consumer: a work queue of three shares it", async (t) => {
        const server = await startServer(t);
        const workers = await Promise.all([1, 2, 3].map(() => connect(t, server.url, "/", WS)));
        const got = workers.map((w) => deliveries(w, "row", { autoAck: false }));
        for (const w of workers) await subscribe(w, "rows", "pool", { max_ack_pending: 4 });
        await publishMany(server, "rows", "row", 20);
        await waitFor(() => got.flat().length >= 4, { what: "4 deliveries" });
        await sleep(500);
        assert.deepEqual(got.flat().map((d) => d.meta.seq).sort((a, b) => a - b), [1, 2, 3, 4]);
        const c = await consumerInfo(server, "rows", "pool");
        assert.equal(c.pending, 4, JSON.stringify(c));
        assert.equal(c.waiting, 16, JSON.stringify(c));
      });

      test("a work queue: three sockets on one consumer get each entry exactly once in total", async (t) => {
        const server = await startServer(t);
        const workers = await Promise.all([WS, { transports: ["polling"] }, WS].map((o) => connect(t, server.url, "/", o)));
        const got = workers.map((w) => deliveries(w, "task"));
        for (const w of workers) assert.equal((await subscribe(w, "tasks", "pool")).ok, true);
        await publishMany(server, "tasks", "task", 90);
        await waitFor(() => got.flat().length >= 90, { what: "90 deliveries in total" });
        await sleep(300);
        const all = got.flat().map((d) => d.meta.seq);
        assert.equal(all.length, 90, "no entry twice");
        assert.deepEqual([...all].sort((a, b) => a - b), range(1, 90));
        for (const [k, list] of got.entries()) {
          const seqs = seqsOf(list);
          assert.ok(seqs.length > 0, `worker ${k} got a share`);
          assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `worker ${k} got its share in order`);
        }
        const c = await consumerWhen(server, "tasks", "pool", (c) => c.pending === 0 && c.ack_floor === 90);
        assert.equal(c.redelivered, 0, JSON.stringify(c));
      });

      test("a work queue: what a worker held when it left goes to the others", async (t) => {
        const server = await startServer(t);
        const [a, b, quitter] = await Promise.all([1, 2, 3].map(() => connect(t, server.url, "/", WS)));
        const gotA = deliveries(a, "task");
        const gotB = deliveries(b, "task");
        const held = deliveries(quitter, "task", { autoAck: false });
        // The leaving worker joins first and holds the first ten: on a cluster, whichever node
        // reads first takes a whole burst for its own worker (it once left none of 30 to it).
        await subscribe(quitter, "tasks", "pool");
        await publishMany(server, "tasks", "task", 10);
        await waitFor(() => held.length >= 10, { what: "10 deliveries held" });
        for (const w of [a, b]) await subscribe(w, "tasks", "pool");
        await publishMany(server, "tasks", "task", 20);
        await waitFor(() => gotA.length + gotB.length + held.length >= 30, { what: "30 deliveries" });
        const heldSeqs = seqsOf(held);
        assert.ok(range(1, 10).every((seq) => heldSeqs.includes(seq)), "the leaving worker holds the first ten");
        // The others' acks are on their way while the deliveries arrive: checking at once raced
        // them (it failed once in a full run, 29 pending for 10 held).
        await consumerWhen(server, "tasks", "pool", (c) => c.pending === heldSeqs.length);

        closeSocket(quitter);
        await waitFor(() => gotA.length + gotB.length >= 30, { what: "the held entries to reach the other workers" });
        await sleep(300);
        const others = [...gotA, ...gotB];
        assert.equal(others.length, 30, "each entry once to the remaining workers");
        assert.deepEqual(others.map((d) => d.meta.seq).sort((x, y) => x - y), range(1, 30));
        for (const d of others) {
          assert.equal(d.meta.deliveries, heldSeqs.includes(d.meta.seq) ? 2 : 1, `seq ${d.meta.seq}`);
        }
        await consumerWhen(server, "tasks", "pool", (c) => c.pending === 0 && c.ack_floor === 30);
      });

      test("a work queue: what a worker held when it unsubscribed goes to the others", async (t) => {
        const server = await startServer(t);
        const [keeper, leaver] = await Promise.all([1, 2].map(() => connect(t, server.url, "/", WS)));
        const kept = deliveries(keeper, "task");
        const held = deliveries(leaver, "task", { autoAck: false });
        await subscribe(keeper, "jobs", "pool");
        await subscribe(leaver, "jobs", "pool");
        // One at a time, until the leaving worker holds some: on a cluster, a node that reads
        // first may take a whole burst for its own worker.
        let n = 0;
        while ((n < 10 || held.length === 0) && n < 100) {
          await publish(server, "jobs", "task", ++n);
          await waitFor(() => kept.length + held.length >= n, { what: `${n} deliveries` });
        }
        assert.ok(held.length > 0, "the leaving worker got a share");
        const heldSeqs = seqsOf(held);
        assert.deepEqual(await ask(leaver, "courier:unsubscribe", { stream: "jobs" }), { ok: true, removed: 1 });
        await waitFor(() => kept.length >= n, { what: "the entries the other worker held" });
        await sleep(200);
        assert.deepEqual(seqsOf(kept).sort((a, b) => a - b), range(1, n));
        for (const d of kept) assert.equal(d.meta.deliveries, heldSeqs.includes(d.meta.seq) ? 2 : 1, `seq ${d.meta.seq}`);
        assert.equal(held.length, heldSeqs.length, "nothing more for the worker that left");
      });

      test("order per consumer: 1000 entries published concurrently arrive in seq order, none missing", async (t) => {
        const server = await startServer(t);
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "n");
        await subscribe(socket, "firehose", "ordered");
        const answers = await publishMany(server, "firehose", "n", 1000, { parallel: 64 });
        assert.deepEqual(answers.map((a) => a.seq).sort((a, b) => a - b), range(1, 1000), "every publish got its own seq");
        await waitCount(got, 1000, 20000);
        await quiet(got, 300);
        const seqs = seqsOf(got);
        for (let k = 1; k < seqs.length; k++) {
          assert.ok(seqs[k] > seqs[k - 1], `seq ${seqs[k]} after ${seqs[k - 1]} at position ${k}`);
        }
        assert.deepEqual(seqs, range(1, 1000));
        const iOf = new Map(answers.map((a, k) => [a.seq, k + 1]));
        for (const d of got) assert.equal(d.data.i, iOf.get(d.meta.seq), `seq ${d.meta.seq}`);
      });

      for (const signal of ["SIGTERM", "SIGKILL"]) {
        test(`consumers and entries survive a restart (${signal}): only what was not acked comes again`, async (t) => {
          let server = await startServer(t, { restartable: true });
          const socket = await connect(t, server.url, "/", WS);
          const got = deliveries(socket, "line", { autoAck: false });
          await subscribe(socket, "ledger", "books", { from: "all" });
          for (const i of range(1, 10)) await publish(server, "ledger", "line", { i });
          await waitCount(got, 10);
          for (const d of got.slice(0, 4)) d.ack();
          await consumerWhen(server, "ledger", "books", (c) => c.ack_floor === 4 && c.pending === 6, "acks of 1..4");
          // A consumer's position is saved with the store's next write; a publish confirmed after
          // the acks were visible makes sure that write happened before the kill.
          await publish(server, "barrier", "b", {});
          closeSocket(socket);

          // in a cluster: the node the subscriber was on
          server = await restartServer(t, server, { signal, socket });
          const info = await streamInfo(server, "ledger");
          assert.equal(info.entries, 10, JSON.stringify(info));
          assert.deepEqual(info.consumers, ["books"]);
          let c = await consumerInfo(server, "ledger", "books");
          assert.equal(c.ack_floor, 4, JSON.stringify(c));
          assert.equal(c.pending, 6, JSON.stringify(c));
          for (const i of range(11, 12)) await publish(server, "ledger", "line", { i });

          const again = await connect(t, server.url, "/", WS);
          const after = deliveries(again, "line");
          assert.equal((await subscribe(again, "ledger", "books")).pending, 8);
          await waitCount(after, 8);
          await quiet(after, 400);
          assert.deepEqual(
            after.map((d) => [d.meta.seq, d.data.i]),
            range(5, 12).map((i) => [i, i]),
          );
          // 5..10 had been delivered once before the restart
          assert.deepEqual(after.map((d) => d.meta.deliveries), [2, 2, 2, 2, 2, 2, 1, 1]);
          c = await consumerWhen(server, "ledger", "books", (c) => c.pending === 0 && c.ack_floor === 12);
          assert.equal(c.waiting, 0);
        });
      }
    });

    describe("HTTP API", () => {
      test("stream list, info, consumers, consumer, delete consumer, purge", async (t) => {
        const server = await startServer(t);
        const socket = await connect(t, server.url, "/", WS);
        deliveries(socket, "ev");
        for (const i of range(1, 3)) await publish(server, "alpha", "ev", { i });
        await subscribe(socket, "alpha", "c1", { from: "all" });
        await subscribe(socket, "alpha", "c2", { from: 3, ack_wait_ms: 1234, max_deliver: 7, max_ack_pending: 9 });
        assert.equal((await api(server, "PUT", "/api/v1/streams/beta", {})).status, 200);

        const list = await api(server, "GET", "/api/v1/streams");
        assert.equal(list.status, 200);
        assert.deepEqual(list.body.streams.map((s) => s.name).sort(), ["alpha", "beta"]);
        const alpha = await streamInfo(server, "alpha");
        assert.deepEqual(Object.keys(alpha).sort(), ["bytes", "config", "consumers", "entries", "first_seq", "last_seq", "name"]);
        assert.deepEqual(list.body.streams.find((s) => s.name === "alpha"), alpha);
        assert.equal(alpha.first_seq, 1);
        assert.equal(alpha.last_seq, 3);
        assert.equal(alpha.entries, 3);
        assert.ok(alpha.bytes > 0, JSON.stringify(alpha));
        assert.deepEqual([...alpha.consumers].sort(), ["c1", "c2"]);
        const beta = await streamInfo(server, "beta");
        assert.equal(beta.entries, 0);
        assert.equal(beta.last_seq, 0);

        await consumerWhen(server, "alpha", "c1", (c) => c.ack_floor === 3);
        const consumers = await api(server, "GET", "/api/v1/streams/alpha/consumers");
        assert.equal(consumers.status, 200);
        assert.deepEqual(consumers.body.consumers.map((c) => c.name).sort(), ["c1", "c2"]);
        const c2 = await consumerWhen(server, "alpha", "c2", (c) => c.ack_floor === 3);
        assert.deepEqual(Object.keys(c2).sort(), [
          "ack_floor",
          "config",
          "dead_lettered",
          "delivered",
          "name",
          "pending",
          "redelivered",
          "waiting",
        ]);
        assert.equal(c2.name, "c2");
        assert.equal(c2.delivered, 3);
        assert.equal(c2.pending, 0);
        assert.equal(c2.waiting, 0);
        assert.equal(c2.config.ack_wait_ms, 1234);
        assert.equal(c2.config.max_deliver, 7);
        assert.equal(c2.config.max_ack_pending, 9);
        // options apply when a consumer is created; subscribing again with others changes nothing
        await subscribe(socket, "alpha", "c2", { from: "all", ack_wait_ms: 5, max_deliver: 1, max_ack_pending: 1 });
        const again = await consumerInfo(server, "alpha", "c2");
        assert.deepEqual(again.config, c2.config);
        assert.equal(again.delivered, 3);

        const del = await api(server, "DELETE", "/api/v1/streams/alpha/consumers/c1");
        assert.equal(del.status, 200, JSON.stringify(del.body));
        assert.deepEqual(del.body, { deleted: true });
        assertApiError(await api(server, "GET", "/api/v1/streams/alpha/consumers/c1"), 404, "consumer_not_found", "deleted consumer");
        assertApiError(await api(server, "DELETE", "/api/v1/streams/alpha/consumers/c1"), 404, "consumer_not_found", "deleted twice");
        assert.deepEqual((await streamInfo(server, "alpha")).consumers, ["c2"]);

        const purge = await api(server, "POST", "/api/v1/streams/alpha/purge");
        assert.equal(purge.status, 200, JSON.stringify(purge.body));
        assert.deepEqual(purge.body, { purged: 3 });
        const purged = await streamInfo(server, "alpha");
        assert.equal(purged.entries, 0, JSON.stringify(purged));
        assert.equal(purged.bytes, 0, JSON.stringify(purged));
        // seqs only grow, even across a purge
        assert.deepEqual(await publish(server, "alpha", "ev", { i: 4 }), { seq: 4, duplicate: false });
        assert.equal((await streamInfo(server, "alpha")).first_seq, 4);
      });

      test("a consumer deleted while a socket is subscribed starts afresh when created again", async (t) => {
        const server = await startServer(t);
        const old = await connect(t, server.url, "/", WS);
        const before = deliveries(old, "e");
        await subscribe(old, "resettable", "c");
        await publish(server, "resettable", "e", 1);
        await publish(server, "resettable", "e", 2);
        await waitCount(before, 2);
        await consumerWhen(server, "resettable", "c", (c) => c.ack_floor === 2);
        const del = await api(server, "DELETE", "/api/v1/streams/resettable/consumers/c");
        assert.deepEqual(del.body, { deleted: true });
        assertApiError(await api(server, "GET", "/api/v1/streams/resettable/consumers/c"), 404, "consumer_not_found", "deleted");

        const fresh = await connect(t, server.url, "/", WS);
        const after = deliveries(fresh, "e");
        const mark = before.length;
        assert.deepEqual(await subscribe(fresh, "resettable", "c", { from: "all" }), {
          ok: true,
          stream: "resettable",
          consumer: "c",
          pending: 2,
        });
        // whichever socket the new consumer uses, it starts from seq 1
        const seen = () => [...before.slice(mark), ...after].map((d) => d.meta.seq).sort((a, b) => a - b);
        await waitFor(() => seen().length >= 2, { ms: 3000, what: `seqs 1 and 2 for the new consumer (got ${JSON.stringify(seen())})` }).catch(
          (err) => {
            throw new Error(
              `${err.message}; the old socket got ${JSON.stringify(seqsOf(before.slice(mark)))}, the new one ${JSON.stringify(seqsOf(after))}`,
            );
          },
        );
        assert.deepEqual(seen(), [1, 2]);
      });

      test("the dedupe window: after dedupe_window_ms the same id makes a new entry", async (t) => {
        const server = await startServer(t);
        assert.equal((await api(server, "PUT", "/api/v1/streams/short", { dedupe_window_ms: 300 })).status, 200);
        assert.deepEqual(await publish(server, "short", "e", 1, "X"), { seq: 1, duplicate: false });
        assert.deepEqual(await publish(server, "short", "e", 1, "X"), { seq: 1, duplicate: true });
        await sleep(600);
        assert.deepEqual(await publish(server, "short", "e", 1, "X"), { seq: 2, duplicate: false });
      });

      test("retention by age: max_age_ms", async (t) => {
        const server = await startServer(t);
        const put = await api(server, "PUT", "/api/v1/streams/aging", { max_age_ms: 300 });
        assert.equal(put.body.config.max_age_ms, 300);
        await publish(server, "aging", "e", 1);
        await publish(server, "aging", "e", 2);
        const info = await waitFor(
          async () => {
            const s = await streamInfo(server, "aging");
            return s.entries === 0 && s;
          },
          { ms: 5000, what: "entries older than 300 ms to go" },
        );
        assert.equal(info.last_seq, 2);
        assert.deepEqual(await publish(server, "aging", "e", 3), { seq: 3, duplicate: false });
      });

      test("PUT a stream's config: retention by count applies", async (t) => {
        const server = await startServer(t);
        for (const i of range(1, 5)) await publish(server, "capped", "ev", { i });
        const put = await api(server, "PUT", "/api/v1/streams/capped", { max_entries: 3, dedupe_window_ms: 1000 });
        assert.equal(put.status, 200, JSON.stringify(put.body));
        assert.equal(put.body.name, "capped");
        assert.equal(put.body.config.max_entries, 3);
        assert.equal(put.body.config.dedupe_window_ms, 1000);
        assert.equal((await streamInfo(server, "capped")).config.max_entries, 3);
        await publish(server, "capped", "ev", { i: 6 });
        const info = await waitFor(
          async () => {
            const s = await streamInfo(server, "capped");
            return s.entries === 3 && s;
          },
          { what: "the stream to keep 3 entries" },
        );
        assert.equal(info.first_seq, 4, JSON.stringify(info));
        assert.equal(info.last_seq, 6, JSON.stringify(info));
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "ev");
        await subscribe(socket, "capped", "late", { from: "all" });
        await waitCount(got, 3);
        assert.deepEqual(seqsOf(got), [4, 5, 6]);
      });

      test("names with spaces and non-ASCII characters work over HTTP and from clients", async (t) => {
        const server = await startServer(t);
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "e");
        const name = "café orders #1";
        await subscribe(socket, name, "équipe 2");
        await publish(server, name, "e", "x");
        await waitCount(got, 1);
        assert.equal(got[0].meta.stream, name);
        assert.equal((await streamInfo(server, name)).name, name);
        await consumerWhen(server, name, "équipe 2", (c) => c.ack_floor === 1);
      });

      test("PUT refuses what it cannot apply: an invalid dead_letter name, a body that is not an object", async (t) => {
        // An accepted invalid dead_letter name makes every later dead-lettering fail; an array body
        // is read positionally (or as "all defaults") and silently changes the config.
        const server = await startServer(t);
        assert.equal((await api(server, "PUT", "/api/v1/streams/cfg", { max_entries: 10 })).status, 200);
        const cases = [
          [{ dead_letter: "a/b" }, 400, "invalid_name"],
          [{ dead_letter: "" }, 400, "invalid_name"],
          [{ dead_letter: "x".repeat(129) }, 400, "invalid_name"],
          ["[]", 400, "bad_request"],
          ["[5, 6]", 400, "bad_request"],
          ['"max_entries"', 400, "bad_request"],
        ];
        const outcomes = [];
        for (const [body, status, code] of cases) {
          const res = await api(server, "PUT", "/api/v1/streams/cfg", body);
          const ok = res.status === status && res.body?.error?.code === code;
          if (!ok) outcomes.push(`PUT ${JSON.stringify(body)} answered ${res.status} ${JSON.stringify(res.body)}`);
        }
        assert.deepEqual(outcomes, [], "each should be refused");
        const info = await streamInfo(server, "cfg");
        assert.equal(info.config.max_entries, 10, `the config is unchanged: ${JSON.stringify(info.config)}`);
        assert.equal(info.config.dead_letter, null);
      });

      test("errors: 404 unknown stream or consumer, 400 bad JSON or invalid name, 413 over max_entry_bytes", async (t) => {
        const server = await startServer(t, { config: { store: { max_entry_bytes: 1000 }, engine: { max_payload: 10000 } } });
        await publish(server, "known", "ev", {});
        const long = "s".repeat(129);
        const cases = [
          ["GET", "/api/v1/streams/unknown", undefined, 404, "stream_not_found"],
          ["GET", "/api/v1/streams/unknown/consumers", undefined, 404, "stream_not_found"],
          ["GET", "/api/v1/streams/unknown/consumers/c", undefined, 404, "stream_not_found"],
          ["GET", "/api/v1/streams/known/consumers/nobody", undefined, 404, "consumer_not_found"],
          ["DELETE", "/api/v1/streams/known/consumers/nobody", undefined, 404, "consumer_not_found"],
          ["POST", "/api/v1/streams/unknown/purge", undefined, 404, "stream_not_found"],
          ["POST", "/api/v1/streams/known/publish", "{not json", 400, "bad_request"],
          ["POST", "/api/v1/streams/known/publish", "[]", 400, "bad_request"],
          ["POST", "/api/v1/streams/known/publish", { data: 1 }, 400, "bad_request"],
          ["POST", "/api/v1/streams/known/publish", { event: 5 }, 400, "bad_request"],
          ["POST", "/api/v1/streams/known/publish", { event: "ev", id: 5 }, 400, "bad_request"],
          ["POST", "/api/v1/streams/known/publish", { event: "ev", surprise: true }, 400, "bad_request"],
          ["POST", "/api/v1/streams/known/publish", { event: "connect" }, 400, "bad_request"],
          ["POST", "/api/v1/streams/known/publish", { event: "" }, 400, "bad_request"],
          ["POST", `/api/v1/streams/${long}/publish`, { event: "ev" }, 400, "invalid_name"],
          ["POST", "/api/v1/streams/a%2Fb/publish", { event: "ev" }, 400, "invalid_name"],
          ["POST", "/api/v1/streams/tab%09name/publish", { event: "ev" }, 400, "invalid_name"],
          ["PUT", "/api/v1/streams/known", "{not json", 400, "bad_request"],
          ["PUT", "/api/v1/streams/known", { max_entries: "many" }, 400, "bad_request"],
          ["PUT", `/api/v1/streams/${long}`, {}, 400, "invalid_name"],
          ["POST", "/api/v1/streams/known/publish", { event: "ev", data: "x".repeat(2000) }, 413, "too_large"],
          // a body over the server's max_payload is refused before it is read
          ["POST", "/api/v1/streams/known/publish", { event: "ev", data: "x".repeat(20000) }, 413, "payload_too_large"],
        ];
        for (const [method, path, body, status, code] of cases) {
          const res = await api(server, method, path, body);
          assertApiError(res, status, code, `${method} ${path.slice(0, 60)} ${JSON.stringify(body)?.slice(0, 60)}`);
        }
        const known = await streamInfo(server, "known");
        assert.equal(known.entries, 1, `nothing was stored by the bad requests: ${JSON.stringify(known)}`);
        assert.deepEqual((await api(server, "GET", "/api/v1/streams")).body.streams.map((s) => s.name), ["known"]);
        // just under the limit is fine
        assert.equal((await publish(server, "known", "ev", "x".repeat(900))).seq, 2);
      });
    });

    describe("bad input is answered in the ack", () => {
      test("malformed courier:subscribe / publish / unsubscribe: bad_request, invalid_name, too_large", async (t) => {
        const server = await startServer(t, { config: { store: { max_entry_bytes: 1000 } } });
        const socket = await connect(t, server.url, "/", WS);
        const long = "n".repeat(129);
        const cases = [
          ["courier:subscribe", [], "bad_request"],
          ["courier:subscribe", ["orders"], "bad_request"],
          ["courier:subscribe", [42], "bad_request"],
          ["courier:subscribe", [null], "bad_request"],
          ["courier:subscribe", [["orders", "c"]], "bad_request"],
          ["courier:subscribe", [{}], "bad_request"],
          ["courier:subscribe", [{ stream: "orders" }], "bad_request"],
          ["courier:subscribe", [{ consumer: "c" }], "bad_request"],
          ["courier:subscribe", [{ stream: 1, consumer: "c" }], "bad_request"],
          ["courier:subscribe", [{ stream: "orders", consumer: ["c"] }], "bad_request"],
          ["courier:subscribe", [{ stream: "orders", consumer: "c", from: "later" }], "bad_request"],
          ["courier:subscribe", [{ stream: "orders", consumer: "c", from: -1 }], "bad_request"],
          ["courier:subscribe", [{ stream: "orders", consumer: "c", ack_wait_ms: "soon" }], "bad_request"],
          ["courier:subscribe", [{ stream: "orders", consumer: "c", max_deliver: -2 }], "bad_request"],
          ["courier:subscribe", [{ stream: "orders", consumer: "c", surprise: 1 }], "bad_request"],
          ["courier:subscribe", [{ stream: long, consumer: "c" }], "invalid_name"],
          ["courier:subscribe", [{ stream: "orders", consumer: "" }], "invalid_name"],
          ["courier:subscribe", [{ stream: "orders", consumer: "a\nb" }], "invalid_name"],
          ["courier:subscribe", [{ stream: "a/b", consumer: "c" }], "invalid_name"],
          ["courier:publish", [], "bad_request"],
          ["courier:publish", ["orders"], "bad_request"],
          ["courier:publish", [{ stream: "orders" }], "bad_request"],
          ["courier:publish", [{ event: "e", data: 1 }], "bad_request"],
          ["courier:publish", [{ stream: "orders", event: 5 }], "bad_request"],
          ["courier:publish", [{ stream: "orders", event: "e", id: 5 }], "bad_request"],
          ["courier:publish", [{ stream: "orders", event: "e", surprise: 1 }], "bad_request"],
          ["courier:publish", [{ stream: "orders", event: "" }], "bad_request"],
          ["courier:publish", [{ stream: "orders", event: "connect" }], "bad_request"],
          ["courier:publish", [{ stream: "orders", event: "disconnect" }], "bad_request"],
          ["courier:publish", [{ stream: "orders", event: "connect_error" }], "bad_request"],
          ["courier:publish", [{ stream: long, event: "e" }], "invalid_name"],
          ["courier:publish", [{ stream: "orders", event: "e", data: "x".repeat(2000) }], "too_large"],
          ["courier:unsubscribe", [], "bad_request"],
          ["courier:unsubscribe", ["orders"], "bad_request"],
          ["courier:unsubscribe", [{}], "bad_request"],
          ["courier:unsubscribe", [{ stream: 3 }], "bad_request"],
          ["courier:unsubscribe", [{ stream: "orders", surprise: 1 }], "bad_request"],
          ["courier:nothing", [{ stream: "orders" }], "unknown_event"],
        ];
        for (const [event, args, code] of cases) {
          const answer = await ask(socket, event, ...args);
          assertAckError(answer, code, `${event} ${JSON.stringify(args).slice(0, 80)}`);
        }
        assert.equal(socket.connected, true, "bad input never costs the connection");
        const res = await api(server, "GET", "/api/v1/streams/orders");
        assert.ok(res.status === 404 || res.body.entries === 0, `nothing was stored: ${JSON.stringify(res.body)}`);
        // and the socket still works
        assert.deepEqual(await clientPublish(socket, "orders", "e", "x".repeat(900)), { ok: true, seq: 1, duplicate: false });
        assert.equal((await subscribe(socket, "orders", "c", { from: "all" })).pending, 1);
      });

      test("streams.auto_create = false: an unknown stream is stream_not_found until declared", async (t) => {
        const server = await startServer(t, { config: { streams: { auto_create: false } } });
        const socket = await connect(t, server.url, "/", WS);
        assertAckError(await subscribe(socket, "ghost", "c"), "stream_not_found", "subscribe");
        assertAckError(await clientPublish(socket, "ghost", "e", 1), "stream_not_found", "courier:publish");
        assertApiError(
          await api(server, "POST", "/api/v1/streams/ghost/publish", { event: "e" }),
          404,
          "stream_not_found",
          "HTTP publish",
        );
        assert.deepEqual((await api(server, "GET", "/api/v1/streams")).body, { streams: [] });
        assert.equal((await api(server, "PUT", "/api/v1/streams/ghost", {})).status, 200);
        const got = deliveries(socket, "e");
        assert.deepEqual(await subscribe(socket, "ghost", "c"), { ok: true, stream: "ghost", consumer: "c", pending: 0 });
        assert.deepEqual(await clientPublish(socket, "ghost", "e", 1), { ok: true, seq: 1, duplicate: false });
        await waitCount(got, 1);
      });

      test("hub.client_publish = false: courier:publish is forbidden, HTTP publish still reaches subscribers", async (t) => {
        const server = await startServer(t, { config: { hub: { client_publish: false } } });
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "e");
        assertAckError(await clientPublish(socket, "s", "e", 1), "forbidden", "courier:publish");
        assert.equal((await subscribe(socket, "s", "c")).ok, true);
        await publish(server, "s", "e", 2);
        await waitCount(got, 1);
        assert.deepEqual(got.map((d) => [d.meta.seq, d.data]), [[1, 2]], "the forbidden publish stored nothing");
      });

      test("hub.client_subscribe = false: courier:subscribe is forbidden, courier:publish still works", async (t) => {
        const server = await startServer(t, { config: { hub: { client_subscribe: false } } });
        const socket = await connect(t, server.url, "/", WS);
        const got = deliveries(socket, "e");
        assertAckError(await subscribe(socket, "s", "c", { from: "all" }), "forbidden", "courier:subscribe");
        assert.deepEqual(await clientPublish(socket, "s", "e", 1), { ok: true, seq: 1, duplicate: false });
        await quiet(got, 300);
        assert.equal((await api(server, "GET", "/api/v1/streams/s/consumers/c")).status, 404, "no consumer was created");
      });
    });
  });
}
