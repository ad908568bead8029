// Starts the processes the end-to-end tests talk to: `courier serve`, Courier's `conformance`
// example and the reference Node server. Every process is bound to port 0 (or to a port it had
// before, for restarts), and the test learns the real address from the `listening on http://ADDR`
// line the process prints on stderr. Every child is killed when the test that started it ends, and
// again (SIGKILL) if the test process exits with children still alive.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const E2E_DIR = path.resolve(here, "..");
export const REPO_ROOT = path.resolve(here, "..", "..", "..");

export const COURIER_BIN = process.env.COURIER_BIN || path.join(REPO_ROOT, "target", "debug", "courier");
export const CONFORMANCE_BIN =
  process.env.COURIER_CONFORMANCE_BIN || path.join(REPO_ROOT, "target", "debug", "examples", "conformance");
export const REFERENCE_SCRIPT = path.join(E2E_DIR, "reference", "conformance.mjs");

const STARTUP_TIMEOUT_MS = 20_000;
const LISTENING_RE = /listening on http:\/\/(\S+)/;
// tracing may colour its output; the address must be read without the escape sequences.
const ANSI_RE = /\x1b\[[0-9;]*[A-Za-z]/g;

const live = new Set();

/** Kills `child` with the others if the test process exits while it is still alive. */
export function track(child) {
  live.add(child);
  child.once("exit", () => live.delete(child));
  child.once("error", () => {
    if (child.pid === undefined) live.delete(child);
  });
}

function killAll() {
  for (const child of live) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    killAll();
    process.kill(process.pid, signal);
  });
}

/**
 * Spawns `command args` and resolves once it printed `listening on http://ADDR` on stderr.
 * Rejects (after killing the process) if it exits first or does not print the line in time; the
 * error carries everything the process wrote on stderr.
 */
export function startProcess(command, args, { name = path.basename(command), env = {}, timeoutMs = STARTUP_TIMEOUT_MS, cleanup } = {}) {
  // Settings come from each test's config file and `env` alone, never from the shell that runs
  // the tests (COURIER_BIN and COURIER_CONFORMANCE_BIN are the harness's own).
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("COURIER_") && k !== "RUST_LOG"),
  );
  const child = spawn(command, args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...inherited, NO_COLOR: "1", ...env },
  });
  track(child);
  let stderr = "";
  let stdout = "";
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stdout.on("data", (chunk) => {
    stdout += chunk;
  });

  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      resolve({ code, signal });
    });
    // a process that could not be started never emits "exit"
    child.once("error", (err) => {
      if (child.pid === undefined) {
        resolve({ code: null, signal: null, error: err.message });
      }
    });
  });
  let exitInfo = null;
  exited.then((info) => {
    exitInfo = info;
    if (cleanup) cleanup();
  });

  const handle = {
    name,
    child,
    pid: child.pid,
    exited,
    stderrText: () => stderr,
    stdoutText: () => stdout,
    get exitInfo() {
      return exitInfo;
    },
    /** Sends a signal without waiting (SIGKILL by default). */
    kill(signal = "SIGKILL") {
      if (exitInfo === null) child.kill(signal);
      return exited;
    },
    /** SIGTERM, then SIGKILL if the process is still there after `graceMs`. Resolves with the exit info. */
    async stop(graceMs = 5000) {
      if (exitInfo !== null) return exitInfo;
      child.kill("SIGTERM");
      const timer = setTimeout(() => {
        if (exitInfo === null) child.kill("SIGKILL");
      }, graceMs);
      const info = await exited;
      clearTimeout(timer);
      return info;
    },
  };

  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (why) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill("SIGKILL");
      exited.then(() => {
        reject(new Error(`${name} ${why}\ncommand: ${command} ${args.join(" ")}\n--- stderr ---\n${stderr}\n--- stdout ---\n${stdout}`));
      });
    };
    const timer = setTimeout(() => fail(`printed no "listening on http://ADDR" line within ${timeoutMs} ms`), timeoutMs);
    child.once("error", (err) => fail(`could not be started: ${err.message}`));
    child.once("exit", (code, signal) => fail(`exited (code ${code}, signal ${signal}) before listening`));
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
      if (settled) return;
      // only whole lines: the address may arrive split across chunks
      const complete = stderr.slice(0, stderr.lastIndexOf("\n") + 1);
      const match = complete.replace(ANSI_RE, "").match(LISTENING_RE);
      if (!match) return;
      settled = true;
      clearTimeout(timer);
      const addr = match[1].replace(/\/$/, "");
      const url = new URL(`http://${addr}`);
      // A server bound to a wildcard address is reached through loopback.
      if (url.hostname === "0.0.0.0") url.hostname = "127.0.0.1";
      if (url.hostname === "[::]") url.hostname = "[::1]";
      const origin = url.origin;
      resolve(Object.assign(handle, { addr, url: origin, host: url.hostname, port: Number(url.port) }));
    });
  });
}

// --- TOML --------------------------------------------------------------------------------------

function tomlValue(value) {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error(`cannot write ${value} in TOML`);
    return String(value);
  }
  if (typeof value === "boolean") return value ? "true" : "false";
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(", ")}]`;
  if (value && typeof value === "object") {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    return `{ ${entries.map(([k, v]) => `${k} = ${tomlValue(v)}`).join(", ")} }`;
  }
  throw new Error(`unsupported TOML value ${JSON.stringify(value)}`);
}

/** Writes `{section: {key: value}}` as a TOML document (only what Courier's config needs). */
export function toToml(config) {
  const lines = [];
  for (const [section, entries] of Object.entries(config)) {
    if (entries === null || typeof entries !== "object" || Array.isArray(entries)) {
      throw new Error(`top-level TOML entries must be tables, got ${section}`);
    }
    lines.push(`[${section}]`);
    for (const [key, value] of Object.entries(entries)) {
      if (value === undefined) continue;
      lines.push(`${key} = ${tomlValue(value)}`);
    }
    lines.push("");
  }
  return lines.join("\n");
}

function mergeConfig(base, extra) {
  const out = {};
  for (const src of [base, extra]) {
    for (const [section, entries] of Object.entries(src || {})) {
      out[section] = { ...(out[section] || {}), ...entries };
    }
  }
  return out;
}

// Short timings so that shutdowns and reconnections stay quick in tests. Recovery is off unless a
// test turns it on: with recovery, every broadcast carries its offset as an extra last argument
// (as with the reference server), and the suites for other features compare arguments exactly.
const TEST_DEFAULTS = {
  server: { shutdown_grace_ms: 1000, log: "info" },
  recovery: { enabled: false },
};

/**
 * Starts `courier serve` with `config` (sections as in docs/serve.md) written to a fresh TOML file
 * and a fresh data directory, `args` after the others. `listen` defaults to 127.0.0.1:0. Returns the process handle with
 * {url, port, stop(), kill(signal), stderrText()}; its data directory and config are removed once it
 * has exited. With a test context `t`, the process is stopped when the test ends.
 */
export async function startCourier({ config = {}, listen = "127.0.0.1:0", env = {}, args: extraArgs = [], dataDir, t } = {}) {
  const workDir = mkdtempSync(path.join(tmpdir(), "courier-e2e-"));
  const configPath = path.join(workDir, "courier.toml");
  const ownDataDir = dataDir === undefined;
  const dir = ownDataDir ? path.join(workDir, "data") : dataDir;
  writeFileSync(configPath, toToml(mergeConfig(TEST_DEFAULTS, config)));
  const args = ["serve", "--listen", listen, "--config", configPath, "--data-dir", dir, ...extraArgs];
  let server;
  try {
    server = await startProcess(COURIER_BIN, args, {
      name: "courier serve",
      env,
      cleanup: () => rmSync(workDir, { recursive: true, force: true }),
    });
  } catch (err) {
    rmSync(workDir, { recursive: true, force: true });
    throw err;
  }
  server.configPath = configPath;
  server.dataDir = dir;
  server.config = config;
  server.ownDataDir = ownDataDir;
  server.env = env;
  server.args = extraArgs;
  if (t) t.after(() => server.stop());
  return server;
}

/** A data directory that outlives the servers using it (for restarts); removed when `t` ends. */
export function makeDataDir(t) {
  const dir = mkdtempSync(path.join(tmpdir(), "courier-e2e-data-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Stops `server` with `signal` (SIGTERM waits for the graceful exit, SIGKILL kills it) and starts
 * it again on the same port, data directory and config. The server must have been started with
 * a `dataDir` of the test's own (see makeDataDir): its own one is removed when it exits.
 */
export async function restartCourier(server, { t, signal = "SIGTERM", config = server.config } = {}) {
  if (server.ownDataDir) throw new Error("restartCourier needs a server started with an explicit dataDir");
  if (signal === "SIGKILL") await server.kill("SIGKILL");
  else await server.stop();
  const next = await startCourier({
    t,
    config,
    env: server.env,
    args: server.args,
    listen: `127.0.0.1:${server.port}`,
    dataDir: server.dataDir,
  });
  if (next.port !== server.port) throw new Error(`restarted on port ${next.port}, not ${server.port}`);
  return next;
}

/** Starts Courier's conformance example in `socketio` or `engineio` mode on a free port. */
export async function startConformance(mode = "socketio", { t } = {}) {
  const server = await startProcess(CONFORMANCE_BIN, [mode, "--listen", "127.0.0.1:0"], {
    name: `conformance ${mode}`,
  });
  if (t) t.after(() => server.stop());
  return server;
}

/** Starts the reference Node server (npm socket.io / engine.io) in `socketio` or `engineio` mode. */
export async function startReference(mode = "socketio", { t } = {}) {
  const server = await startProcess(process.execPath, [REFERENCE_SCRIPT, mode, "--port", "0"], {
    name: `reference ${mode}`,
  });
  if (t) t.after(() => server.stop());
  return server;
}

// --- small helpers shared by the test files ---------------------------------------------------

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with the arguments of the first `event` emitted by `emitter`, or rejects after `ms`. */
export function once(emitter, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`timed out after ${ms} ms waiting for "${event}"`));
    }, ms);
    const listener = (...args) => {
      clearTimeout(timer);
      resolve(args);
    };
    emitter.once(event, listener);
  });
}

/** Polls `predicate` until it returns a truthy value (which is returned) or `ms` elapses. */
export async function waitFor(predicate, { ms = 5000, every = 25, what = "condition" } = {}) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

/** Resolves with a promise's value, or rejects with `what` after `ms`. */
export function withTimeout(promise, ms, what = "operation") {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}
