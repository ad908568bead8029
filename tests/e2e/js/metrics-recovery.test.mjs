// The recovery counters of GET /metrics, with socket.io-client's connection state recovery:
// a recovered drop, and attempts that start afresh (docs/observe.md).

import { test } from "node:test";
import assert from "node:assert/strict";
import { once, startCourier, waitFor } from "./harness.mjs";
import { api, ask, connect } from "./clients.mjs";

const RECONNECTING = { reconnection: true, reconnectionDelay: 300, reconnectionDelayMax: 300 };

/** The value of one sample of the scrape (`name{labels}`), or undefined. */
async function sample(server, series) {
  const res = await fetch(server.url + "/metrics");
  assert.equal(res.status, 200);
  const line = (await res.text()).split("\n").find((l) => l.startsWith(series + " "));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

test("a recovered drop and a refused attempt are counted", async (t) => {
  const server = await startCourier({ t, config: { recovery: { enabled: true } } });
  const socket = await connect(t, server.url, "/", { ...RECONNECTING, transports: ["websocket"] });
  await ask(socket, "courier:join", "news");
  const got = [];
  socket.on("news", (n) => got.push(n));
  await api(server, "POST", "/api/v1/emit", { rooms: ["news"], event: "news", data: [1] });
  await waitFor(() => got.length === 1, { what: "the first broadcast" });

  const back = once(socket, "connect", 8000);
  await api(server, "POST", "/api/v1/disconnect", { rooms: [socket.id], close: true });
  await back;
  assert.equal(socket.recovered, true);
  assert.equal(await sample(server, "courier_recovery_attempts_total"), 1);
  assert.equal(await sample(server, "courier_recovery_recovered_total"), 1);

  // A made-up private id: the client starts afresh, counted as an unknown session.
  const stranger = await connect(t, server.url, "/", { transports: ["websocket"], auth: { pid: "nobody", offset: "1" } });
  assert.equal(stranger.recovered, false);
  assert.equal(await sample(server, 'courier_recovery_refused_total{cause="unknown_session"}'), 1);
  assert.equal(await sample(server, "courier_recovery_attempts_total"), 2);
  assert.equal(await sample(server, "courier_recovery_recovered_total"), 1);
});
