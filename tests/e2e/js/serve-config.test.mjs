// `courier serve` settings as a client sees them: the handshake carries the engine settings, the
// endpoint path and transports are honoured, CORS answers as configured, and the precedence is
// flags > environment > config file > defaults.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { startCourier } from "./harness.mjs";
import { api, ask, connect, connectError } from "./clients.mjs";
import { PollingSession, request, eioUrl, WsConn, wsUrl } from "./raw.mjs";

describe("settings", () => {
  test("defaults reach the handshake", async (t) => {
    const server = await startCourier({ t });
    const session = new PollingSession(server.url, "/socket.io/");
    const res = await session.handshake();
    assert.equal(res.status, 200, res.text);
    const { sid, ...open } = session.open;
    assert.equal(typeof sid, "string");
    assert.deepEqual(open, { upgrades: ["websocket"], pingInterval: 25000, pingTimeout: 20000, maxPayload: 1000000 });
    // no CORS headers unless origins are configured
    const withOrigin = await request(eioUrl(server.url, "/socket.io/", { EIO: "4", transport: "polling" }), {
      headers: { origin: "http://elsewhere.example" },
    });
    assert.equal(withOrigin.headers["access-control-allow-origin"], undefined);
  });

  test("engine settings from the config file reach the handshake, the environment wins over the file", async (t) => {
    const server = await startCourier({
      t,
      config: { engine: { ping_interval_ms: 5000, ping_timeout_ms: 4000, max_payload: 4096 } },
      env: { COURIER_ENGINE_PING_INTERVAL_MS: "1234" },
    });
    const session = new PollingSession(server.url, "/socket.io/");
    await session.handshake();
    assert.equal(session.open.pingInterval, 1234, "environment over file");
    assert.equal(session.open.pingTimeout, 4000, "file over default");
    assert.equal(session.open.maxPayload, 4096);
    const big = await session.post("4" + "x".repeat(5000));
    assert.equal(big.status, 413, "a POST over max_payload is refused");
  });

  test("the --listen flag wins over COURIER_SERVER_LISTEN and the file", async (t) => {
    // both of these would fail to bind or clash; the flag (127.0.0.1:0) must be the one used
    const server = await startCourier({
      t,
      config: { server: { listen: "127.0.0.1:1" } },
      env: { COURIER_SERVER_LISTEN: "127.0.0.1:1" },
    });
    assert.notEqual(server.port, 1);
    assert.equal((await api(server, "GET", "/health")).status, 200);
  });

  test("a custom Engine.IO path", async (t) => {
    const server = await startCourier({ t, config: { server: { path: "/realtime/" } } });
    const socket = await connect(t, server.url, "/", { path: "/realtime/" });
    assert.deepEqual(await ask(socket, "courier:join", "p"), { ok: true, rooms: ["p", socket.id].sort() });
    const wrongPath = await request(eioUrl(server.url, "/socket.io/", { EIO: "4", transport: "polling" }));
    assert.notEqual(wrongPath.status, 200, "the default path is not served");
  });

  test("transports = [websocket]: polling is refused, websocket works without upgrades", async (t) => {
    const server = await startCourier({ t, config: { engine: { transports: ["websocket"] } } });
    const polling = await request(eioUrl(server.url, "/socket.io/", { EIO: "4", transport: "polling" }));
    assert.equal(polling.status, 400);
    assert.deepEqual(polling.json, { code: 0, message: "Transport unknown" });
    const ws = await WsConn.open(wsUrl(server.url, "/socket.io/"));
    const open = JSON.parse((await ws.next()).slice(1));
    ws.close();
    assert.deepEqual(open.upgrades, []);
    const err = await connectError(t, server.url, "/", { transports: ["polling"] });
    assert.ok(err instanceof Error);
    await connect(t, server.url, "/", { transports: ["websocket"] });
  });

  test("transports = [polling]: no upgrade is offered and the client stays on polling", async (t) => {
    const server = await startCourier({ t, config: { engine: { transports: ["polling"] } } });
    const session = new PollingSession(server.url, "/socket.io/");
    await session.handshake();
    assert.deepEqual(session.open.upgrades, []);
    const socket = await connect(t, server.url, "/");
    await ask(socket, "courier:join", "x");
    assert.equal(socket.io.engine.transport.name, "polling");
  });

  test("cors.origins lists the allowed origins", async (t) => {
    const server = await startCourier({ t, config: { cors: { origins: ["http://app.example"], credentials: true } } });
    const url = eioUrl(server.url, "/socket.io/", { EIO: "4", transport: "polling" });
    const allowed = await request(url, { headers: { origin: "http://app.example" } });
    assert.equal(allowed.status, 200);
    assert.equal(allowed.headers["access-control-allow-origin"], "http://app.example");
    assert.equal(allowed.headers["access-control-allow-credentials"], "true");
    const preflight = await request(url, {
      method: "OPTIONS",
      headers: { origin: "http://app.example", "access-control-request-method": "POST" },
    });
    assert.ok(preflight.status >= 200 && preflight.status < 300, `preflight answered ${preflight.status}`);
    assert.equal(preflight.headers["access-control-allow-origin"], "http://app.example");
    const other = await request(url, { headers: { origin: "http://evil.example" } });
    assert.notEqual(other.headers["access-control-allow-origin"], "http://evil.example");
    assert.notEqual(other.headers["access-control-allow-origin"], "*");
  });
});
