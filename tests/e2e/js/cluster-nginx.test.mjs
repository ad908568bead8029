// The nginx snippet of docs/cluster.md, as written there, in front of three nodes: round robin,
// no sticky sessions. A stock socket.io-client connects over polling, upgrades to WebSocket, and
// works; another stays on polling, its requests spread over the nodes.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { io } from "socket.io-client";
import { REPO_ROOT, track, withTimeout } from "./harness.mjs";
import { api, ask } from "./clients.mjs";
import { freePort, startCluster, waitForwarding } from "./cluster.mjs";

const NGINX = ["/usr/sbin/nginx", "/usr/bin/nginx"].find((p) => spawnSync(p, ["-v"]).status === 0);

/** The ```nginx block of docs/cluster.md. */
function snippet() {
  const doc = readFileSync(path.join(REPO_ROOT, "docs", "cluster.md"), "utf8");
  const m = doc.match(/```nginx\n([\s\S]*?)```/);
  assert.ok(m, "docs/cluster.md has an nginx snippet");
  return m[1];
}

/** Runs the snippet with its upstream servers replaced by `nodes` and its port by a free one. */
async function startNginx(t, nodes) {
  assert.ok(NGINX, "nginx is installed (.ci/run installs it)");
  const dir = mkdtempSync(path.join(tmpdir(), "courier-e2e-nginx-"));
  const port = await freePort();
  const servers = nodes.map((n) => `    server ${new URL(n.url).host};`).join("\n");
  const site = snippet()
    .replace(/( *server \d+\.\d+\.\d+\.\d+:\d+;\n)+/, `${servers}\n`)
    .replace("listen 80;", `listen 127.0.0.1:${port};`);
  assert.ok(site.includes(new URL(nodes[2].url).host) && site.includes(String(port)), site);
  const conf = [
    // One process: killing it leaves no worker behind.
    "master_process off;",
    `error_log ${dir}/error.log warn;`,
    `pid ${dir}/nginx.pid;`,
    "events {}",
    "http {",
    "  log_format upstream '$upstream_addr $request_uri';",
    `  access_log ${dir}/access.log upstream;`,
    `  client_body_temp_path ${dir}; proxy_temp_path ${dir};`,
    site,
    "}",
  ].join("\n");
  writeFileSync(path.join(dir, "nginx.conf"), conf);
  const child = spawn(NGINX, ["-p", dir, "-c", path.join(dir, "nginx.conf"), "-g", "daemon off;"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  track(child);
  let stderr = "";
  child.stderr.on("data", (c) => (stderr += c));
  t.after(() => {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const res = await fetch(`${url}/health`);
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`nginx did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url, accessLog: () => readFileSync(path.join(dir, "access.log"), "utf8") };
}

function connected(socket) {
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    }),
    10_000,
    "connect",
  );
}

test("the nginx snippet of docs/cluster.md: clients upgrade to WebSocket or stay on polling through round robin, and work", async (t) => {
  const cluster = await startCluster(t, { courier: 3, config: { engine: { ping_interval_ms: 300, ping_timeout_ms: 3000 } } });
  await waitForwarding(cluster.nodes);
  const lb = await startNginx(t, cluster.nodes);
  const upgraded = io(lb.url, { forceNew: true, reconnection: false });
  const polling = io(lb.url, { forceNew: true, reconnection: false, transports: ["polling"] });
  t.after(() => {
    upgraded.close();
    polling.close();
  });
  await Promise.all([connected(upgraded), connected(polling)]);
  await withTimeout(
    new Promise((resolve) => {
      if (upgraded.io.engine.transport.name === "websocket") resolve();
      upgraded.io.engine.once("upgrade", resolve);
    }),
    10_000,
    "the upgrade to websocket",
  );
  for (const s of [upgraded, polling]) assert.equal((await ask(s, "courier:join", "lobby")).ok, true);
  const got = new Promise((resolve) => polling.once("chat", resolve));
  upgraded.emit("chat", "through nginx");
  assert.equal(await withTimeout(got, 5000, "the relay"), "through nginx");
  // Several ping rounds later both are still connected, with the same ids.
  const ids = [upgraded.id, polling.id];
  await new Promise((r) => setTimeout(r, 1500));
  assert.deepEqual([upgraded.id, polling.id], ids);
  assert.equal(upgraded.connected && polling.connected, true);
  const res = await api(cluster.nodes[1], "POST", "/api/v1/emit", { event: "news", data: [1], rooms: ["lobby"] });
  assert.equal(res.body.recipients, 2);
  // nginx did spread one polling session's requests over the nodes.
  const sid = polling.io.engine.id;
  const nodes = new Set(
    lb
      .accessLog()
      .split("\n")
      .filter((l) => l.includes(sid))
      .map((l) => l.split(" ")[0]),
  );
  assert.equal(nodes.size, 3, `nodes that served ${sid}: ${[...nodes]}`);
});
