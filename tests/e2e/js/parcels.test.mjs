// The parcel service example (examples/parcels) end to end: `courier serve` with the example's
// own courier.toml, and its vendor.mjs and driver.mjs scripts as child processes, read through
// the lines they print. A vendor announces parcels and goes offline, two drivers deliver them,
// and the vendor, started again, reports every delivery it missed. A driver stopped in the middle
// of its round hands its parcels back and the other driver delivers them.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { COURIER_BIN, REPO_ROOT, startProcess, waitFor } from "./harness.mjs";
import { api } from "./clients.mjs";

const EXAMPLE_DIR = path.join(REPO_ROOT, "examples", "parcels");
const EXAMPLE_CONFIG = path.join(EXAMPLE_DIR, "courier.toml");
// The backend's API token in the example's courier.toml.
const API_TOKEN = "parcel-demo-api-token";

function requireExamplePackages() {
  const client = path.join(EXAMPLE_DIR, "node_modules", "socket.io-client", "package.json");
  assert.ok(existsSync(client), `socket.io-client is not installed for the example: run "npm ci" in ${EXAMPLE_DIR}`);
}

/** `courier serve` with the example's config, on port 0 and a fresh data directory. */
async function startHub(t) {
  const dataDir = mkdtempSync(path.join(tmpdir(), "courier-parcels-"));
  const hub = await startProcess(
    COURIER_BIN,
    ["serve", "--config", EXAMPLE_CONFIG, "--listen", "127.0.0.1:0", "--data-dir", dataDir],
    { name: "courier serve (parcels)", cleanup: () => rmSync(dataDir, { recursive: true, force: true }) },
  );
  t.after(() => hub.stop());
  return hub;
}

const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * Runs one of the example's scripts. Returns {lines(), matches(re), waitLines(re, n), interrupt()}:
 * `waitLines` resolves with the first n matches of `re` in what it printed, `interrupt` sends
 * SIGINT and resolves with the exit code (SIGKILL after 5 s, and the code is then null).
 */
function runScript(t, script, args, hub) {
  const name = `${script} ${args.join(" ")}`;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("COURIER_")));
  const child = spawn(process.execPath, [script, ...args], {
    cwd: EXAMPLE_DIR,
    env: { ...env, COURIER_URL: hub.url },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk) => (stdout += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
  });
  const lines = () => stdout.split("\n").filter((l) => l !== "");
  const matches = (re) => lines().map((l) => l.match(re)).filter(Boolean);
  const handle = {
    name,
    lines,
    matches,
    output: () => `--- ${name}: stdout ---\n${stdout}--- stderr ---\n${stderr}`,
    async waitLines(re, n, ms = 15_000) {
      try {
        await waitFor(() => matches(re).length >= n, { ms, what: `${n} lines matching ${re} from ${name}` });
      } catch (err) {
        err.message += `\n${handle.output()}`;
        throw err;
      }
      return matches(re).slice(0, n);
    },
    async interrupt() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGINT");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      const { code } = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  t.after(() => handle.interrupt());
  return handle;
}

const ANNOUNCED = /announced (\S+) for pickup/;
const DRIVER_DELIVERED = /^\[(\S+)\] delivered (\S+) to /;
const VENDOR_DELIVERED = /^\[(\S+)\] DELIVERED (\S+) by (\S+) at .*\(while this vendor was offline\)$/;
const VENDOR_IN_TRANSIT = /^\[(\S+)\] (\S+) is in transit with (\S+) since/;

/** parcel -> driver, from the drivers' "delivered" lines (fails on a parcel delivered twice). */
function deliveriesBy(drivers) {
  const by = new Map();
  for (const d of drivers) {
    for (const [, driver, parcel] of d.matches(DRIVER_DELIVERED)) {
      assert.ok(!by.has(parcel), `${parcel} delivered by ${by.get(parcel)} and again by ${driver}`);
      by.set(parcel, driver);
    }
  }
  return by;
}

test("a vendor that was offline while drivers delivered learns of every delivery when it comes back", { timeout: 60_000 }, async (t) => {
  requireExamplePackages();
  const hub = await startHub(t);

  // The vendor announces six parcels and goes offline before any driver is on duty.
  const vendor = runScript(t, "vendor.mjs", ["acme", "--announce", "6"], hub);
  const announced = (await vendor.waitLines(ANNOUNCED, 6)).map((m) => m[1]);
  await vendor.waitLines(/6 parcels announced; waiting for drivers/, 1);
  assert.equal(new Set(announced).size, 6, vendor.output());
  assert.equal(await vendor.interrupt(), 0, `the vendor exits cleanly on SIGINT\n${vendor.output()}`);
  assert.match(vendor.lines().at(-1), /closing/);

  // Two drivers share the queue and deliver everything.
  const bob = runScript(t, "driver.mjs", ["bob", "--drive-ms", "100"], hub);
  const alice = runScript(t, "driver.mjs", ["alice", "--drive-ms", "100"], hub);
  await waitFor(() => deliveriesBy([bob, alice]).size >= 6, { ms: 20_000, what: "six deliveries" }).catch((err) => {
    throw new Error(`${err.message}\n${bob.output()}\n${alice.output()}`);
  });
  const delivered = deliveriesBy([bob, alice]);
  assert.deepEqual([...delivered.keys()].sort(), [...announced].sort());
  const queue = await api(hub, "GET", "/api/v1/streams/parcels.ready/consumers/drivers", undefined, { token: API_TOKEN });
  assert.equal(queue.status, 200, JSON.stringify(queue.body));
  assert.equal(queue.body.pending, 0, `no parcel left with the drivers: ${JSON.stringify(queue.body)}`);
  assert.equal(queue.body.waiting, 0, `no parcel left at the depot: ${JSON.stringify(queue.body)}`);
  const statuses = await api(hub, "GET", "/api/v1/streams/parcels.status.acme", undefined, { token: API_TOKEN });
  assert.equal(statuses.status, 200, JSON.stringify(statuses.body));
  assert.equal(statuses.body.entries, 12, `one in-transit and one delivered per parcel: ${JSON.stringify(statuses.body)}`);

  // The vendor comes back and reports each delivery it missed, with the driver who made it.
  const back = runScript(t, "vendor.mjs", ["acme"], hub);
  await back.waitLines(VENDOR_DELIVERED, 6);
  const reported = new Map(back.matches(VENDOR_DELIVERED).map(([, , parcel, driver]) => [parcel, driver]));
  assert.deepEqual([...reported.keys()].sort(), [...announced].sort(), back.output());
  for (const [parcel, driver] of reported) assert.equal(driver, delivered.get(parcel), `${parcel}\n${back.output()}`);
  const inTransit = new Set(back.matches(VENDOR_IN_TRANSIT).map((m) => m[2]));
  assert.deepEqual([...inTransit].sort(), [...announced].sort(), `every parcel was reported in transit\n${back.output()}`);
  await waitFor(
    async () => {
      const desk = await api(hub, "GET", "/api/v1/streams/parcels.status.acme/consumers/desk", undefined, { token: API_TOKEN });
      return desk.body.pending === 0 && desk.body.waiting === 0 && desk.body.ack_floor === 12;
    },
    { ms: 5000, what: "the vendor's acks of all twelve updates" },
  );

  for (const p of [back, bob, alice]) {
    assert.equal(await p.interrupt(), 0, `${p.name} exits cleanly on SIGINT\n${p.output()}`);
  }
  assert.match(bob.lines().at(-1), /off duty/);
  assert.match(back.lines().at(-1), /closing/);
});

test("a driver that goes off duty mid-round hands its parcels back and the other driver delivers them", { timeout: 60_000 }, async (t) => {
  requireExamplePackages();
  const hub = await startHub(t);

  // A slow driver alone on duty picks up parcels (at most 4 are out with drivers at once).
  const slow = runScript(t, "driver.mjs", ["slow", "--drive-ms", "60000"], hub);
  await slow.waitLines(/on duty/, 1);
  const vendor = runScript(t, "vendor.mjs", ["corner-shop", "--announce", "5"], hub);
  const announced = (await vendor.waitLines(ANNOUNCED, 5)).map((m) => m[1]);
  await slow.waitLines(/picked up /, 4);
  await slow.waitLines(/in transit to /, 1);
  assert.equal(await slow.interrupt(), 0, `the driver exits cleanly on SIGINT\n${slow.output()}`);
  assert.match(slow.lines().at(-1), /off duty, 4 parcels handed back to the depot/);

  // A fast driver takes over; the vendor, online all along, sees every parcel delivered.
  const fast = runScript(t, "driver.mjs", ["fast", "--drive-ms", "50"], hub);
  await fast.waitLines(DRIVER_DELIVERED, 5, 20_000);
  assert.deepEqual([...deliveriesBy([slow, fast]).keys()].sort(), [...announced].sort());
  assert.ok(fast.matches(/\(handed over, attempt 2\)/).length >= 4, fast.output());
  const LIVE_DELIVERED = /^\[corner-shop\] DELIVERED (\S+) by fast at /;
  await vendor.waitLines(LIVE_DELIVERED, 5);
  assert.deepEqual(vendor.matches(LIVE_DELIVERED).map((m) => m[1]).sort(), [...announced].sort());
  // The slow driver's in-transit report is kept: the vendor saw the handover.
  await vendor.waitLines(/is in transit with slow since/, 1);

  for (const p of [vendor, fast]) {
    assert.equal(await p.interrupt(), 0, `${p.name} exits cleanly on SIGINT\n${p.output()}`);
  }
});
