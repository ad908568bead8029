// A cluster on a Redis that wants TLS and a password: `rediss://:PASSWORD@HOST:PORT`. Nodes join,
// broadcasts cross them; a wrong password keeps a node alone and says so.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startCourier, track, withTimeout } from "./harness.mjs";
import { api, connect } from "./clients.mjs";
import { freePort, health, waitRedisState } from "./cluster.mjs";

const PASSWORD = "s3cret-pass";

/** A redis-server with TLS only (a self-signed certificate) and a password. */
async function startTlsRedis(t) {
  const dir = mkdtempSync(path.join(tmpdir(), "courier-e2e-tls-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const made = spawnSync("openssl", [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
    "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"),
  ]);
  assert.equal(made.status, 0, `openssl: ${made.stderr}`);
  const port = await freePort();
  const child = spawn("redis-server", [
    "--port", "0", "--tls-port", String(port), "--bind", "127.0.0.1",
    "--tls-cert-file", path.join(dir, "cert.pem"), "--tls-key-file", path.join(dir, "key.pem"),
    "--tls-ca-cert-file", path.join(dir, "cert.pem"), "--tls-auth-clients", "no",
    "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", dir,
  ], { stdio: ["ignore", "pipe", "pipe"] });
  track(child);
  t.after(() => child.kill("SIGKILL"));
  let out = "";
  await withTimeout(
    new Promise((resolve, reject) => {
      child.stdout.on("data", (c) => {
        out += c;
        if (out.includes("Ready to accept connections")) resolve();
      });
      child.once("exit", () => reject(new Error(`redis-server exited: ${out}`)));
    }),
    10_000,
    "redis-server with TLS",
  );
  return { port, url: (password) => `rediss://:${password}@127.0.0.1:${port}/#insecure` };
}

async function node(t, url) {
  const n = await startCourier({ t, args: ["--redis", url] });
  return n;
}

test("rediss:// with a password: nodes join over TLS and broadcasts cross them", async (t) => {
  const redis = await startTlsRedis(t);
  const a = await node(t, redis.url(PASSWORD));
  const b = await node(t, redis.url(PASSWORD));
  await Promise.all([waitRedisState(a, "up"), waitRedisState(b, "up")]);
  const onB = await connect(t, b.url);
  const got = new Promise((resolve) => onB.once("news", resolve));
  const res = await api(a, "POST", "/api/v1/emit", { event: "news", data: ["over tls"] });
  assert.equal(res.body.recipients, 1);
  assert.equal(await withTimeout(got, 5000, "the broadcast"), "over tls");
});

test("rediss:// with a wrong password: the node serves alone and says Redis is down", async (t) => {
  const redis = await startTlsRedis(t);
  const n = await node(t, redis.url("wrong"));
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal((await health(n)).cluster.redis, "down");
  const s = await connect(t, n.url);
  const got = new Promise((resolve) => s.once("news", resolve));
  assert.equal((await api(n, "POST", "/api/v1/emit", { event: "news", data: ["alone"] })).body.recipients, 1);
  assert.equal(await withTimeout(got, 5000, "the local broadcast"), "alone");
  assert.match(n.stderrText(), /Redis unreachable/);
});
