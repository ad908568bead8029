// Access control with the stock socket.io-client: JWT identities (HS256, RS256, ES256, a JWKS),
// permissions on rooms, streams and consumers, expiry and refresh, HTTP API scopes, rate limits.
// Tokens are minted here with npm `jsonwebtoken` and keys this file generates.

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac, generateKeyPairSync } from "node:crypto";
import { writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import jwt from "jsonwebtoken";
import bcrypt from "bcryptjs";

import { startCourier, sleep, once, waitFor } from "./harness.mjs";
import {
  io,
  BASE_OPTS,
  closeSocket,
  connect,
  connectError,
  ask,
  api,
  record,
  subscribe,
  clientPublish,
  deliveries,
} from "./clients.mjs";

const now = () => Math.floor(Date.now() / 1000);
const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** A JWT built by hand: for what `jsonwebtoken` refuses to sign (alg none, HMAC with a PEM). */
function handMade(header, claims, sign) {
  const body = `${b64url(header)}.${b64url(claims)}`;
  return `${body}.${sign ? sign(body) : ""}`;
}

const keysDir = mkdtempSync(path.join(tmpdir(), "courier-auth-keys-"));
after(() => rmSync(keysDir, { recursive: true, force: true }));

function keyPair(kind) {
  const pair =
    kind === "rsa"
      ? generateKeyPairSync("rsa", { modulusLength: 2048 })
      : generateKeyPairSync("ec", { namedCurve: "P-256" });
  const pem = pair.publicKey.export({ type: "spki", format: "pem" });
  const file = path.join(keysDir, `${kind}-${Math.random().toString(36).slice(2)}.pem`);
  writeFileSync(file, pem);
  return { ...pair, pem, file };
}

const SECRET = "a-secret-only-the-hub-and-its-backend-know";
const ADMIN_PASSWORD = "an operator's password";
const ADMIN_HASH = bcrypt.hashSync(ADMIN_PASSWORD, 8);

/** A token for `sub`, signed with `key` (HS256 with SECRET by default). */
function mint(sub, claims = {}, { key = SECRET, algorithm = "HS256", ...options } = {}) {
  return jwt.sign({ sub, exp: now() + 300, ...claims }, key, { algorithm, ...options });
}

/** The code of a refused CONNECT (`data.code`), or "connected". */
async function outcome(t, server, token, opts = {}) {
  const socket = io(server.url, { ...BASE_OPTS, auth: token === undefined ? {} : { token }, ...opts });
  t.after(() => closeSocket(socket));
  const [kind, arg] = await Promise.race([
    once(socket, "connect", 8000).then(() => ["connect"]),
    once(socket, "connect_error", 8000).then(([err]) => ["error", err]),
  ]);
  if (kind === "connect") return "connected";
  assert.equal(arg.message, "unauthorized");
  return arg.data.code;
}

describe("tokens", () => {
  const rsa = keyPair("rsa");
  const ec = keyPair("ec");
  const otherRsa = keyPair("rsa");
  const otherEc = keyPair("ec");
  const claims = { iss: "parcel-auth", aud: "courier" };

  /** Every refusal a hub must make, for tokens signed with `sign(claims, options)`. */
  async function checkAll(t, server, sign, wrongKey) {
    assert.equal(await outcome(t, server, sign(claims)), "connected");
    assert.equal(await outcome(t, server, sign({ ...claims, exp: now() - 60 })), "expired_token");
    assert.equal(await outcome(t, server, sign({ ...claims, nbf: now() + 60 })), "invalid_token");
    assert.equal(await outcome(t, server, sign({ ...claims, iss: "someone-else" })), "invalid_token");
    assert.equal(await outcome(t, server, sign({ ...claims, aud: "another-hub" })), "invalid_token");
    assert.equal(await outcome(t, server, wrongKey(claims)), "invalid_token");
    const none = handMade({ alg: "none", typ: "JWT" }, { sub: "u", exp: now() + 60, ...claims });
    assert.equal(await outcome(t, server, none), "invalid_token");
    assert.equal(await outcome(t, server, "not-a-jwt"), "invalid_token");
    assert.equal(await outcome(t, server, undefined), "missing_token");
  }

  const config = (auth) => ({ auth: { issuer: "parcel-auth", audience: "courier", leeway_ms: 1000, ...auth } });

  test("HS256, HS384, HS512 with a secret", async (t) => {
    const server = await startCourier({ t, config: config({ jwt_secret: SECRET }) });
    for (const algorithm of ["HS256", "HS384", "HS512"]) {
      await checkAll(
        t,
        server,
        (c) => mint("u", c, { algorithm }),
        (c) => mint("u", c, { key: "not-the-secret", algorithm }),
      );
    }
  });

  test("RS256 with a public key; HS256 signed with that public key as secret is refused", async (t) => {
    const server = await startCourier({ t, config: config({ jwt_public_key_file: rsa.file }) });
    await checkAll(
      t,
      server,
      (c) => mint("u", c, { key: rsa.privateKey, algorithm: "RS256" }),
      (c) => mint("u", c, { key: otherRsa.privateKey, algorithm: "RS256" }),
    );
    assert.equal(await outcome(t, server, mint("u", claims, { key: rsa.privateKey, algorithm: "PS256" })), "connected");
    // The classic confusion: the public key is public, so an HMAC made with it proves nothing.
    const confused = handMade({ alg: "HS256", typ: "JWT" }, { sub: "u", exp: now() + 60, ...claims }, (body) =>
      createHmac("sha256", rsa.pem).update(body).digest("base64url"),
    );
    assert.equal(await outcome(t, server, confused), "invalid_token");
  });

  test("ES256 with an EC public key", async (t) => {
    const server = await startCourier({ t, config: config({ jwt_public_key_file: ec.file }) });
    await checkAll(
      t,
      server,
      (c) => mint("u", c, { key: ec.privateKey, algorithm: "ES256" }),
      (c) => mint("u", c, { key: otherEc.privateKey, algorithm: "ES256" }),
    );
    // An RSA-signed token is not checked against an EC key.
    assert.equal(await outcome(t, server, mint("u", claims, { key: rsa.privateKey, algorithm: "RS256" })), "invalid_token");
  });

  test("a JWKS: the token's kid picks its key", async (t) => {
    const jwk = (pair, kid, alg) => ({ ...pair.publicKey.export({ format: "jwk" }), kid, alg, use: "sig" });
    const file = path.join(keysDir, "keys.jwks.json");
    writeFileSync(file, JSON.stringify({ keys: [jwk(rsa, "rsa-1", "RS256"), jwk(ec, "ec-1", "ES256")] }));
    const server = await startCourier({ t, config: config({ jwks_file: file }) });
    const rs = (c) => mint("u", c, { key: rsa.privateKey, algorithm: "RS256", keyid: "rsa-1" });
    const es = (c) => mint("u", c, { key: ec.privateKey, algorithm: "ES256", keyid: "ec-1" });
    await checkAll(t, server, rs, (c) => mint("u", c, { key: otherRsa.privateKey, algorithm: "RS256", keyid: "rsa-1" }));
    assert.equal(await outcome(t, server, es(claims)), "connected");
    // The right key under the wrong kid, and a kid the set does not have.
    assert.equal(
      await outcome(t, server, mint("u", claims, { key: ec.privateKey, algorithm: "ES256", keyid: "rsa-1" })),
      "invalid_token",
    );
    assert.equal(
      await outcome(t, server, mint("u", claims, { key: rsa.privateKey, algorithm: "RS256", keyid: "rsa-9" })),
      "invalid_token",
    );
  });
});

// The parcel service: two vendors with disjoint grants, a backend with the static API token.
const vendor = (v) => ({
  rooms: [`parcel.${v}.*`],
  publish: [`orders.${v}`],
  subscribe: [`orders.${v}`],
});

for (const transport of ["websocket", "polling"]) {
  describe(`permissions over ${transport}`, () => {
    let server;
    before(async () => {
      server = await startCourier({
        config: {
          auth: { jwt_secret: SECRET },
          api: { token: "backend" },
          admin: { enabled: true, username: "ops", password_hash: ADMIN_HASH },
        },
      });
    });
    after(() => server?.stop());

    const opts = { transports: [transport] };
    const user = (t, v) => connect(t, server.url, "/", { ...opts, auth: { token: mint(`vendor-${v}`, { courier: vendor(v) }) } });

    test("every operation on the other vendor's rooms, streams and consumers is refused, nothing leaks", async (t) => {
      const a = await user(t, "a");
      const b = await user(t, "b");
      const forbidden = (answer, what) => {
        assert.equal(answer.ok, false, `${what}: ${JSON.stringify(answer)}`);
        assert.equal(answer.error.code, "forbidden", what);
      };
      // Each joins its own parcel room.
      assert.equal((await ask(a, "courier:join", "parcel.a.1")).ok, true);
      assert.equal((await ask(b, "courier:join", "parcel.b.1")).ok, true);
      const got = { a: record(a, "update"), b: record(b, "update") };
      const entries = { a: deliveries(a, "order"), b: deliveries(b, "order") };

      for (const [me, other, them] of [
        [a, "b", b],
        [b, "a", a],
      ]) {
        const mine = other === "a" ? "b" : "a";
        forbidden(await ask(me, "courier:join", `parcel.${other}.1`), "join the other's room");
        // A list with one forbidden room joins none of them.
        forbidden(await ask(me, "courier:join", [`parcel.${mine}.2`, `parcel.${other}.2`]), "join a mixed list");
        assert.deepEqual((await ask(me, "courier:join", [])).rooms.includes(`parcel.${mine}.2`), false);
        forbidden(await clientPublish(me, `orders.${other}`, "order", { forged: true }), "publish to the other's stream");
        forbidden(await clientPublish(me, `orders.new-${mine}`, "order", {}), "create a stream by publishing");
        forbidden(await subscribe(me, `orders.${other}`, `vendor-${mine}`, { from: "all" }), "subscribe to the other's stream");
        forbidden(await subscribe(me, `orders.${mine}`, `vendor-${other}`, { from: "all" }), "use the other's consumer");
        assert.ok(them.connected);
      }

      // What each may do, done: so that a hub refusing everything fails this test.
      for (const [me, v] of [
        [a, "a"],
        [b, "b"],
      ]) {
        assert.equal((await clientPublish(me, `orders.${v}`, "order", { v, n: 1 })).ok, true);
        assert.equal((await subscribe(me, `orders.${v}`, `vendor-${v}`, { from: "all" })).ok, true);
        assert.deepEqual(await ask(me, "update", { from: v }), { ok: true, recipients: 0 });
      }
      const emit = (room, data) =>
        api(server, "POST", "/api/v1/emit", { namespace: "/", rooms: [room], event: "update", data: [data] }, { token: "backend" });
      assert.equal((await emit("parcel.a.1", { for: "a" })).body.recipients, 1);
      assert.equal((await emit("parcel.b.1", { for: "b" })).body.recipients, 1);
      await waitFor(() => entries.a.length >= 1 && entries.b.length >= 1 && got.a.length >= 1 && got.b.length >= 1, {
        what: "each vendor's own deliveries",
      });
      await sleep(200);
      const leaks =
        entries.a.filter((e) => e.data.v !== "a").length +
        entries.b.filter((e) => e.data.v !== "b").length +
        got.a.filter(([d]) => d.for !== "a").length +
        got.b.filter(([d]) => d.for !== "b").length;
      assert.equal(leaks, 0, JSON.stringify({ got, entries: { a: entries.a.map((e) => e.data), b: entries.b.map((e) => e.data) } }));
      // Nothing was stored by the refused publishes.
      for (const v of ["a", "b"]) {
        const info = await api(server, "GET", `/api/v1/streams/orders.${v}`, undefined, { token: "backend" });
        assert.equal(info.body.last_seq, 1, `orders.${v}: ${JSON.stringify(info.body)}`);
        const created = await api(server, "GET", `/api/v1/streams/orders.new-${v}`, undefined, { token: "backend" });
        assert.equal(created.status, 404);
      }
      // The API lists who is who.
      const listed = await api(server, "GET", "/api/v1/sockets?namespace=/", undefined, { token: "backend" });
      const subs = Object.fromEntries(listed.body.sockets.map((s) => [s.sid, s.sub]));
      assert.equal(subs[a.id], "vendor-a");
      assert.equal(subs[b.id], "vendor-b");
    });

    test("a relay reaches only rooms the sender may be in, not one a server operator put it in", async (t) => {
      const a = await user(t, "a");
      const a2 = await user(t, "a");
      const b = await user(t, "b");
      for (const s of [a, a2]) assert.equal((await ask(s, "courier:join", "parcel.a.7")).ok, true);
      assert.equal((await ask(b, "courier:join", "parcel.b.7")).ok, true);
      // The admin UI's `join` command puts vendor-a into vendor-b's room, past the grants.
      const ui = io(server.url + "/admin", { ...BASE_OPTS, auth: { username: "ops", password: ADMIN_PASSWORD } });
      t.after(() => closeSocket(ui));
      await once(ui, "connect", 8000);
      ui.emit("join", "/", "parcel.b.7", a.id);
      const rooms = async () => (await api(server, "GET", "/api/v1/sockets?namespace=/", undefined, { token: "backend" })).body.sockets.find((s) => s.sid === a.id).rooms;
      await waitFor(async () => (await rooms()).includes("parcel.b.7"), { what: "vendor-a put in parcel.b.7" });
      const seen = { a2: record(a2, "note"), b: record(b, "note") };
      assert.deepEqual(await ask(a, "note", "for a2"), { ok: true, recipients: 1 });
      await waitFor(() => seen.a2.length === 1, { what: "the relay to a2" });
      // In no room it may send to: refused.
      assert.equal((await ask(a, "courier:leave", "parcel.a.7")).ok, true);
      assert.equal((await ask(a, "note", "to b?")).error.code, "forbidden");
      await sleep(150);
      assert.deepEqual(seen.a2.map(([d]) => d), ["for a2"]);
      assert.deepEqual(seen.b, [], "vendor-b got vendor-a's relay");
    });
  });
}

describe("identities", () => {
  test("[auth.default] grants {sub}-templated rooms and streams; a sub cannot widen them", async (t) => {
    const server = await startCourier({
      t,
      config: {
        auth: { jwt_secret: SECRET, default: { rooms: ["user.{sub}"], subscribe: ["inbox.{sub}"], publish: ["inbox.{sub}"] } },
      },
    });
    const u = await connect(t, server.url, "/", { auth: { token: mint("7") } });
    assert.equal((await ask(u, "courier:join", "user.7")).ok, true);
    assert.equal((await ask(u, "courier:join", "user.8")).error.code, "forbidden");
    assert.equal((await clientPublish(u, "inbox.7", "note", {})).ok, true);
    assert.equal((await subscribe(u, "inbox.7", "7")).ok, true);
    // A subject of `*` is the literal `*`.
    const star = await connect(t, server.url, "/", { auth: { token: mint("*") } });
    assert.equal((await ask(star, "courier:join", "user.7")).error.code, "forbidden");
    assert.equal((await ask(star, "courier:join", "user.*")).ok, true);
  });

  test("connections_per_sub caps one subject's sockets", async (t) => {
    const server = await startCourier({ t, config: { auth: { jwt_secret: SECRET }, limits: { connections_per_sub: 2 } } });
    const token = mint("driver-1");
    const first = await connect(t, server.url, "/", { auth: { token } });
    await connect(t, server.url, "/", { auth: { token } });
    const err = await connectError(t, server.url, "/", { auth: { token } });
    assert.equal(err.message, "too many connections");
    assert.equal(err.data.code, "too_many_connections");
    await connect(t, server.url, "/", { auth: { token: mint("driver-2") } });
    first.disconnect();
    await waitFor(async () => (await outcome(t, server, token)) === "connected", { what: "a slot freed" });
  });

  test("an expiring token closes the connection; the auth callback refreshes it and recovery brings the session back", async (t) => {
    const server = await startCourier({
      t,
      config: {
        recovery: { enabled: true },
        auth: { jwt_secret: SECRET, leeway_ms: 0, default: { rooms: ["user.{sub}"] } },
        api: { token: "backend" },
      },
    });
    const lifetime = 3;
    let minted = 0;
    const socket = io(server.url, {
      ...BASE_OPTS,
      reconnection: true,
      auth: (cb) => {
        minted += 1;
        cb({ token: mint("courier-user", { exp: now() + (minted === 1 ? lifetime : 300) }) });
      },
    });
    t.after(() => closeSocket(socket));
    const got = record(socket, "parcel");
    await once(socket, "connect", 8000);
    const firstId = socket.id;
    const connectedAt = Date.now();
    assert.equal((await ask(socket, "courier:join", "user.courier-user")).ok, true);
    const [reason] = await once(socket, "disconnect", (lifetime + 3) * 1000);
    assert.equal(reason, "transport close");
    assert.ok(Date.now() - connectedAt >= (lifetime - 1.5) * 1000, "closed before the token expired");
    // Sent while the client is away: recovery replays it.
    const sent = await api(server, "POST", "/api/v1/emit", { namespace: "/", rooms: ["user.courier-user"], event: "parcel", data: ["moved"] }, { token: "backend" });
    assert.equal(sent.status, 200);
    await once(socket, "connect", 8000);
    assert.equal(minted, 2, "the auth callback gave a fresh token");
    assert.equal(socket.recovered, true);
    assert.equal(socket.id, firstId);
    await waitFor(() => got.length === 1, { what: "the missed parcel event" });
    assert.equal(got[0][0], "moved");
    const listed = await api(server, "GET", "/api/v1/sockets?namespace=/&room=user.courier-user", undefined, { token: "backend" });
    assert.deepEqual(listed.body.sockets.map((s) => s.sid), [firstId]);
  });

  test("a lost session is recovered only by the same subject", async (t) => {
    const server = await startCourier({
      t,
      config: { recovery: { enabled: true }, auth: { jwt_secret: SECRET, default: { rooms: ["user.{sub}"] } } },
    });
    /** Alice's session, lost: her socket id and private session id. */
    const lostSession = async () => {
      const alice = await connect(t, server.url, "/", { auth: { token: mint("alice") } });
      assert.equal((await ask(alice, "courier:join", "user.alice")).ok, true);
      const { _pid: pid, id } = alice;
      assert.ok(pid, "the client has a recovery pid");
      alice.io.engine.close();
      await sleep(100);
      return { pid, id };
    };
    /** A client presenting `pid` with a token for `sub`. */
    const claim = async (sub, pid) => {
      const s = io(server.url, { ...BASE_OPTS, autoConnect: false, auth: { token: mint(sub) } });
      t.after(() => closeSocket(s));
      s._pid = pid;
      s.connect();
      await once(s, "connect", 8000);
      return s;
    };
    const first = await lostSession();
    const mallory = await claim("mallory", first.pid);
    assert.equal(mallory.recovered, false);
    assert.notEqual(mallory.id, first.id);
    assert.deepEqual((await ask(mallory, "courier:join", [])).rooms, [mallory.id]);
    // The same subject does get it back: the refusal above is about the subject.
    const second = await lostSession();
    const alice = await claim("alice", second.pid);
    assert.equal(alice.recovered, true);
    assert.equal(alice.id, second.id);
    assert.deepEqual((await ask(alice, "courier:join", [])).rooms, ["user.alice", alice.id].sort());
  });

  test("subscriptions_per_socket caps one socket's subscriptions", async (t) => {
    const server = await startCourier({
      t,
      config: { auth: { jwt_secret: SECRET }, limits: { subscriptions_per_socket: 2 } },
    });
    const s = await connect(t, server.url, "/", {
      auth: { token: mint("w", { courier: { subscribe: ["jobs.>"], publish: ["jobs.>"] } }) },
    });
    assert.equal((await subscribe(s, "jobs.1", "w")).ok, true);
    assert.equal((await subscribe(s, "jobs.2", "w")).ok, true);
    assert.equal((await subscribe(s, "jobs.2", "w")).ok, true, "subscribing again is not one more");
    const third = await subscribe(s, "jobs.3", "w");
    assert.equal(third.error.code, "too_many_subscriptions");
  });
});

describe("HTTP API scopes", () => {
  let server;
  before(async () => {
    server = await startCourier({ config: { auth: { jwt_secret: SECRET }, api: { token: "static-api-token" } } });
    const res = await api(server, "PUT", "/api/v1/streams/jobs", {}, { token: "static-api-token" });
    assert.equal(res.status, 200, JSON.stringify(res.body));
  });
  after(() => server?.stop());

  const routes = [
    ["read", "GET", "/api/v1/sockets?namespace=/"],
    ["read", "GET", "/api/v1/streams"],
    ["read", "GET", "/api/v1/streams/jobs"],
    ["read", "GET", "/api/v1/streams/jobs/consumers"],
    ["read", "GET", "/api/v1/streams/jobs/consumers/nobody"],
    ["emit", "POST", "/api/v1/emit", { namespace: "/", event: "e", data: [] }],
    ["emit", "POST", "/api/v1/disconnect", { namespace: "/", rooms: ["nobody"] }],
    ["publish", "POST", "/api/v1/streams/jobs/publish", { event: "job", data: {} }],
    ["manage", "PUT", "/api/v1/streams/other", {}],
    ["manage", "POST", "/api/v1/streams/jobs/purge", {}],
    ["manage", "DELETE", "/api/v1/streams/jobs/consumers/nobody"],
  ];

  test("every route against every scope", async () => {
    for (const scope of ["emit", "publish", "read", "manage"]) {
      const token = mint("backend", { courier: { api: [scope] } });
      for (const [needs, method, route, body] of routes) {
        const res = await api(server, method, route, body, { token });
        if (needs === scope) {
          assert.ok(![401, 403].includes(res.status), `${scope} token, ${method} ${route}: ${res.status} ${JSON.stringify(res.body)}`);
        } else {
          assert.equal(res.status, 403, `${scope} token, ${method} ${route}`);
          assert.equal(res.body.error.code, "forbidden");
        }
      }
    }
    const all = mint("ops", { courier: { api: ["emit", "publish", "read", "manage"] } });
    for (const [, method, route, body] of routes) {
      for (const token of [all, "static-api-token"]) {
        const res = await api(server, method, route, body, { token });
        assert.ok(![401, 403].includes(res.status), `${method} ${route}: ${res.status}`);
      }
      assert.equal((await api(server, method, route, body)).status, 401);
      const bad = await api(server, method, route, body, { token: "garbage" });
      assert.equal(bad.status, 401);
      assert.equal(bad.body.error.code, "invalid_token");
      const expired = await api(server, method, route, body, { token: mint("ops", { exp: now() - 3600, courier: { api: ["read"] } }) });
      assert.equal(expired.body.error.code, "expired_token");
    }
    // A client token without API scopes opens no route.
    const client = mint("vendor-a", { courier: vendor("a") });
    assert.equal((await api(server, "GET", "/api/v1/streams", undefined, { token: client })).status, 403);
  });
});

describe("limits and protected mode", () => {
  test("a flooding client is refused with rate_limited, then cut off, while a neighbour is answered as usual", async (t) => {
    const server = await startCourier({
      t,
      config: { limits: { events_per_second: 200, event_burst: 200, rate_limit_disconnect: 1500 } },
    });
    const flooder = await connect(t, server.url, "/", { transports: ["websocket"] });
    const neighbour = await connect(t, server.url, "/", { transports: ["websocket"] });
    const answers = { ok: 0, rate_limited: 0, other: 0 };
    const closed = once(flooder, "disconnect", 20000);
    const flood = (async () => {
      for (let i = 0; i < 4000 && flooder.connected; i++) {
        flooder.timeout(15000).emit("flood", i, (err, answer) => {
          if (err) return;
          if (answer.ok) answers.ok += 1;
          else if (answer.error?.code === "rate_limited") answers.rate_limited += 1;
          else answers.other += 1;
        });
        if (i % 200 === 199) await sleep(1);
      }
    })();
    const latencies = [];
    for (let i = 0; i < 20; i++) {
      const started = performance.now();
      assert.equal((await ask(neighbour, "courier:join", `room-${i}`)).ok, true);
      latencies.push(performance.now() - started);
      await sleep(20);
    }
    await flood;
    const [reason] = await closed;
    assert.equal(reason, "transport close");
    assert.equal(answers.other, 0);
    assert.ok(answers.ok >= 200 && answers.ok < 1500, JSON.stringify(answers));
    assert.ok(answers.rate_limited > 0, JSON.stringify(answers));
    assert.ok(Math.max(...latencies) < 1000, `neighbour latencies ${latencies.map(Math.round)}`);
    assert.ok(neighbour.connected);
    assert.match(server.stderrText(), /rate limited/);
  });

  test("with no authentication configured the hub says it is in protected mode and serves loopback clients", async (t) => {
    const server = await startCourier({ t });
    assert.match(server.stderrText(), /PROTECTED MODE/);
    assert.match(server.stderrText(), /allow_anonymous = true/);
    await connect(t, server.url, "/");
    assert.equal((await api(server, "GET", "/api/v1/streams")).status, 200);
    const open = await startCourier({ t, config: { auth: { allow_anonymous: true } } });
    assert.doesNotMatch(open.stderrText(), /PROTECTED MODE/);
  });
});
