// A client that emits thousands of acked requests at once, without waiting for the answers: the
// hub must slow its reading down rather than queue without bound, answer every request, and keep
// the client connected, over WebSocket and long-polling alike.
//
// What broke: publishes answered from the store's commit were not counted as running work, so a
// flood over long-polling (thousands of packets in one POST) produced acks faster than GETs took
// them, the client's outbound queue overflowed, and the hub disconnected it.

import { test } from "node:test";
import assert from "node:assert/strict";
import { startCourier, withTimeout } from "./harness.mjs";
import { api, connect } from "./clients.mjs";

const N = 8000;
// Backpressure is the subject here, not the per-connection rate limit (auth.test.mjs has that).
const UNLIMITED = { limits: { events_per_second: 0 } };

for (const transport of ["websocket", "polling"]) {
  test(`a flood of ${N} courier:publish over ${transport} is answered in full`, async (t) => {
    const server = await startCourier({ t, config: UNLIMITED });
    const socket = await connect(t, server.url, "/", { transports: [transport] });
    const reasons = [];
    socket.on("disconnect", (reason) => reasons.push(reason));
    const seqs = new Set();
    await withTimeout(
      new Promise((resolve, reject) => {
        for (let i = 0; i < N; i++) {
          socket.emit("courier:publish", { stream: "flood", event: "e", data: { i } }, (r) => {
            if (!r.ok) reject(new Error(JSON.stringify(r)));
            seqs.add(r.seq);
            if (seqs.size === N) resolve();
          });
        }
      }),
      60_000,
      `${N} publish acks`,
    );
    assert.deepEqual(reasons, [], "the client stayed connected");
    assert.equal(Math.min(...seqs), 1);
    assert.equal(Math.max(...seqs), N);
    const info = await api(server, "GET", "/api/v1/streams/flood");
    assert.equal(info.body.entries, N);
  });
}

test(`a flood of ${N} relayed events with acks over polling is answered in full`, async (t) => {
  const server = await startCourier({ t, config: UNLIMITED });
  const socket = await connect(t, server.url, "/", { transports: ["polling"] });
  const reasons = [];
  socket.on("disconnect", (reason) => reasons.push(reason));
  let answered = 0;
  await withTimeout(
    new Promise((resolve) => {
      for (let i = 0; i < N; i++) {
        socket.emit("note", i, () => {
          if (++answered === N) resolve();
        });
      }
    }),
    60_000,
    `${N} relay acks`,
  );
  assert.deepEqual(reasons, []);
});
