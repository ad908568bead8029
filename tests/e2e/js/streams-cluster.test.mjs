// Durable streams on a hub of three `courier serve --redis` nodes on one Redis: the tests of
// streams.suite.mjs, with every test's sockets and API calls spread over the nodes round robin
// (a publisher on one node, a subscriber on another, the API answering from a third).

import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "./clients.mjs";
import { health, startHub } from "./cluster.mjs";
import { streamSuite } from "./streams.suite.mjs";

test("the hub: three nodes up on one Redis, and consecutive clients and API calls go to different nodes", async (t) => {
  const hub = await startHub(t);
  assert.equal(hub.nodes.length, 3);
  const ids = [];
  for (const node of hub.nodes) {
    const h = await health(node);
    assert.equal(h.cluster?.redis, "up", JSON.stringify(h));
    ids.push(h.cluster.node);
  }
  assert.equal(new Set(ids).size, 3, `three distinct node ids: ${ids}`);
  const urls = [hub.url, hub.url, hub.url, hub.url];
  assert.deepEqual(urls, [...hub.nodes.map((n) => n.url), hub.nodes[0].url]);
  const sockets = [];
  for (let k = 0; k < 3; k++) sockets.push(await connect(t, hub.url, "/", { transports: ["websocket"] }));
  assert.deepEqual(sockets.map((s) => hub.nodeOf(s)), [1, 2, 0]);
});

streamSuite("cluster");
