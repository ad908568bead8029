// Durable streams on a cluster (`courier serve --redis URL`), where one node is not the whole
// story: a consumer's socket moving between nodes, a node killed while its sockets held
// deliveries, and Redis itself killed and restarted (append-only file) under load. The tests
// every single node passes also run on three nodes (streams-cluster.test.mjs); these are the
// ones only a cluster has.

import { test } from "node:test";
import assert from "node:assert/strict";
import { sleep, waitFor } from "./harness.mjs";
import { api, closeSocket, connect, consumerInfo, deliveries, publish, range, seqsOf, streamInfo, subscribe } from "./clients.mjs";
import { startCluster, startCourierNode, startRedis, waitRedisState } from "./cluster.mjs";

const WS = { transports: ["websocket"] };

/** Waits until `list` has `n` deliveries; a timeout says which seqs had come. */
async function waitSeqs(list, n, what, ms = 5000) {
  await waitFor(() => list.length >= n, { ms, what: `${n} ${what}` }).catch((err) => {
    throw new Error(`${err.message}; got seqs ${JSON.stringify(seqsOf(list))}`);
  });
}

// Every test runs on one redis-server, then on a Redis Cluster of three masters (but the one
// with a replica, which is about one Redis).
for (const redisCluster of [false, true]) {
  const on = redisCluster ? " (on a Redis Cluster)" : "";
  const start = (t, options = {}) => startCluster(t, { ...options, redisCluster });

  test(`a consumer's socket that moves to another node resumes where it was: nothing acked again, nothing skipped${on}`, async (t) => {
    const { nodes } = await start(t);
    const first = await connect(t, nodes[1].url, "/", WS);
    const got = deliveries(first, "e", { autoAck: false });
    assert.equal((await subscribe(first, "moves", "c", { from: "all" })).ok, true);
    for (let i = 1; i <= 5; i++) await publish(nodes[0], "moves", "e", i);
    await waitFor(() => got.length >= 5, { what: "5 deliveries on node 1" });
    for (const d of got.slice(0, 3)) d.ack();
    await waitFor(async () => (await consumerInfo(nodes[2], "moves", "c")).ack_floor === 3, { what: "acks of 1..3 in Redis" });
    closeSocket(first);
    for (let i = 6; i <= 10; i++) await publish(nodes[2], "moves", "e", i);

    const second = await connect(t, nodes[2].url, "/", WS);
    const after = deliveries(second, "e");
    const answer = await subscribe(second, "moves", "c");
    assert.deepEqual(answer, { ok: true, stream: "moves", consumer: "c", pending: 7 });
    await waitSeqs(after, 7, "deliveries on node 2");
    await sleep(300);
    assert.deepEqual(
      seqsOf(after).sort((a, b) => a - b),
      range(4, 10),
      "exactly what was not acked: 4 and 5 again, then 6..10",
    );
    for (const d of after) assert.equal(d.meta.deliveries, d.meta.seq <= 5 ? 2 : 1, `deliveries of ${d.meta.seq}`);
    // New entries keep their order after the ones sent again.
    const fresh = seqsOf(after).filter((s) => s > 5);
    assert.deepEqual(fresh, range(6, 10));
    await waitFor(async () => (await consumerInfo(nodes[0], "moves", "c")).ack_floor === 10, { what: "everything acked" });
  });

  test(`what a node killed with SIGKILL held unacked goes at once to the consumer's socket on another node${on}`, async (t) => {
    const cluster = await start(t);
    const { nodes } = cluster;
    const doomed = await connect(t, nodes[0].url, "/", WS);
    const held = deliveries(doomed, "job", { autoAck: false });
    // An ack_wait far beyond the test's waits: the takeover comes from the node being gone.
    assert.equal((await subscribe(doomed, "jobs", "workers", { from: "all", ack_wait_ms: 60_000 })).ok, true);
    for (let i = 1; i <= 4; i++) await publish(nodes[2], "jobs", "job", i);
    await waitSeqs(held, 4, "jobs on the doomed node's worker");

    const survivor = await connect(t, nodes[1].url, "/", WS);
    const taken = deliveries(survivor, "job");
    assert.equal((await subscribe(survivor, "jobs", "workers")).ok, true);
    await sleep(300);
    assert.equal(taken.length, 0, "nothing is taken from a node that is alive before its ack_wait");
    await nodes[0].kill("SIGKILL");
    await waitSeqs(taken, 4, "jobs on the survivor", 5000);
    assert.deepEqual(seqsOf(taken).sort((a, b) => a - b), range(1, 4));
    for (const d of taken) assert.equal(d.meta.deliveries, 2);
    await publish(nodes[2], "jobs", "job", 5);
    await waitSeqs(taken, 5, "jobs, a new one after the takeover");
    await waitFor(
      async () => {
        const c = await consumerInfo(nodes[1], "jobs", "workers");
        return c.pending === 0 && c.ack_floor === 5;
      },
      { what: "everything acked, nothing pending" },
    );
    assert.equal(taken.length, 5, "each job once on the survivor");
  });

  test(`Redis killed and restarted under load: publishes answer unavailable at once, then everything resumes; nothing confirmed is lost or stored twice${on}`, async (t) => {
    const cluster = await start(t, { aof: true });
    const { nodes, redis } = cluster;
    const consumer = await connect(t, nodes[1].url, "/", WS);
    const got = deliveries(consumer, "tick");
    assert.equal((await subscribe(consumer, "ticks", "watcher", { from: "all", ack_wait_ms: 1000 })).ok, true);

    const confirmed = new Map(); // id -> seq
    const failures = [];
    let stop = false;
    let n = 0;
    const publisher = async (node) => {
      while (!stop) {
        const id = `m${++n}`;
        // Retried with the same id until confirmed: dedupe makes a retry safe.
        for (;;) {
          const started = Date.now();
          let res;
          try {
            res = await api(node, "POST", "/api/v1/streams/ticks/publish", { event: "tick", data: id, id });
          } catch (err) {
            res = { status: 0, body: String(err) };
          }
          if (res.status === 200) {
            if (confirmed.has(id)) assert.equal(confirmed.get(id), res.body.seq, `${id} confirmed at two seqs`);
            confirmed.set(id, res.body.seq);
            break;
          }
          failures.push({ status: res.status, code: res.body?.error?.code, ms: Date.now() - started });
          await sleep(50);
        }
      }
    };
    const publishers = [publisher(nodes[0]), publisher(nodes[2])];
    await waitFor(() => confirmed.size >= 50, { ms: 10_000, what: "50 publishes before Redis goes" });
    await redis.stop("SIGKILL");
    await waitFor(() => failures.length >= 6, { ms: 10_000, what: "publishes refused while Redis is away" });
    await redis.start();
    await Promise.all(nodes.map((node) => waitRedisState(node, "up")));
    const before = confirmed.size;
    await waitFor(() => confirmed.size >= before + 50, { ms: 15_000, what: "50 publishes after Redis is back" });
    stop = true;
    await Promise.all(publishers);

    const refused = failures.filter((f) => f.status !== 0);
    assert.ok(refused.length > 0, "some publishes were answered while Redis was away");
    for (const f of refused) {
      assert.equal(f.status, 503, JSON.stringify(f));
      assert.equal(f.code, "unavailable", JSON.stringify(f));
    }
    const slowest = Math.max(...failures.map((f) => f.ms));
    assert.ok(slowest < 2500, `a refused publish took ${slowest} ms`);

    const seqs = [...confirmed.values()];
    assert.equal(new Set(seqs).size, seqs.length, "no seq confirmed for two messages");
    const info = await streamInfo(nodes[2], "ticks");
    assert.equal(info.entries, confirmed.size, "every message stored once");
    await waitFor(() => new Set(seqsOf(got)).size >= confirmed.size, {
      ms: 15_000,
      what: `every confirmed entry delivered (have ${new Set(seqsOf(got)).size} of ${confirmed.size})`,
    });
    const delivered = new Map(got.map((d) => [d.meta.seq, d.data]));
    for (const [id, seq] of confirmed) assert.equal(delivered.get(seq), id, `seq ${seq} delivered with its data`);
  });

  test(`with cluster.wait_replicas a publish is confirmed once a replica has it, and answered unavailable when none does in time${on}`, { skip: redisCluster }, async (t) => {
    const primary = await startRedis({ t, aof: true });
    const replica = await startRedis({ t, args: ["--replicaof", "127.0.0.1", String(primary.port)] });
    await waitFor(async () => (await replica.command("INFO", "replication")).includes("master_link_status:up"), {
      ms: 10_000,
      what: "the replica in sync with the primary",
    });
    const node = await startCourierNode(primary, { config: { cluster: { wait_replicas: 1, wait_timeout_ms: 300 } } });
    t.after(() => node.stop());
    assert.deepEqual(await publish(node, "safe", "e", 1, "a"), { seq: 1, duplicate: false });
    assert.equal(await replica.command("XLEN", "socket.io-courier-stream#{safe}"), 1, "on the replica when confirmed");

    await replica.stop("SIGKILL");
    const started = Date.now();
    const res = await api(node, "POST", "/api/v1/streams/safe/publish", { event: "e", data: 2, id: "b" });
    assert.equal(res.status, 503, JSON.stringify(res.body));
    assert.equal(res.body.error.code, "unavailable");
    assert.match(res.body.error.message, /replica/);
    assert.ok(Date.now() - started < 2000, "answered after the wait, not hanging");
    // It was stored on the primary: the same id again is that entry, not a second one.
    assert.deepEqual(await publish(node, "safe", "e", 2, "b"), { seq: 2, duplicate: true });
    assert.equal((await streamInfo(node, "safe")).entries, 2);
  });

  test(`any node's /metrics and dashboard show the cluster's streams and consumers, read from Redis${on}`, async (t) => {
    const { nodes } = await start(t, { config: { dashboard: { enabled: true } } });
    const worker = await connect(t, nodes[1].url, "/", WS);
    const got = deliveries(worker, "job", { autoAck: false });
    assert.equal((await subscribe(worker, "seen", "workers", { from: "all" })).ok, true);
    for (let i = 1; i <= 5; i++) await publish(nodes[0], "seen", "job", i);
    await waitSeqs(got, 5, "jobs");
    for (const d of got.slice(0, 2)) d.ack();
    await waitFor(async () => (await consumerInfo(nodes[2], "seen", "workers")).pending === 3, { what: "3 pending" });

    const res = await fetch(`${nodes[2].url}/metrics`, { signal: AbortSignal.timeout(5000) });
    assert.equal(res.status, 200);
    const text = await res.text();
    const sample = (name, labels) => {
      const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
      return line === undefined ? undefined : Number(line.split(" ").pop());
    };
    assert.equal(sample("courier_stream_entries", 'stream="seen"'), 5, "entries on the node that published none");
    assert.equal(sample("courier_stream_last_seq", 'stream="seen"'), 5);
    assert.equal(sample("courier_consumer_pending", 'stream="seen",consumer="workers"'), 3);
    assert.equal(sample("courier_consumer_waiting", 'stream="seen",consumer="workers"'), 0);

    const summary = await api(nodes[2], "GET", "/dashboard/api/summary");
    assert.equal(summary.status, 200);
    const seen = summary.body.streams.find((s) => s.name === "seen");
    assert.equal(seen?.entries, 5, JSON.stringify(summary.body.streams));
    assert.deepEqual(
      seen.consumers.map((c) => [c.name, c.delivered, c.pending]),
      [["workers", 5, 3]],
    );
  });

  test(`a work queue over three nodes: each node's workers get their share of max_ack_pending, not the first node all of it${on}`, async (t) => {
    const { nodes } = await start(t);
    const workers = [];
    for (const node of nodes) {
      const socket = await connect(t, node.url, "/", WS);
      workers.push(deliveries(socket, "task", { autoAck: false }));
      assert.equal((await subscribe(socket, "backlog", "pool", { from: "all", max_ack_pending: 30 })).ok, true);
    }
    // Every node has read for the group (finding nothing) before the backlog arrives.
    await sleep(300);
    for (let i = 1; i <= 90; i++) await publish(nodes[i % 3], "backlog", "task", i);
    await waitFor(() => workers.reduce((n, w) => n + w.length, 0) >= 30, { what: "30 tasks out" });
    await sleep(500);
    assert.deepEqual(workers.map((w) => w.length), [10, 10, 10], "30 in flight, a third on each node");
    // Acks free room, and the rest of the backlog flows to all of them.
    for (const w of workers) for (const d of w) d.ack();
    await waitFor(
      async () => {
        for (const w of workers) for (const d of w) d.ack();
        return (await consumerInfo(nodes[0], "backlog", "pool")).ack_floor === 90;
      },
      { ms: 10_000, what: "all 90 acked" },
    );
    const seqs = workers.flatMap((w) => seqsOf(w)).sort((a, b) => a - b);
    assert.deepEqual(seqs, range(1, 90), "each task once");
  });
}
