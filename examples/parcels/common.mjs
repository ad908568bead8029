// What vendor.mjs and driver.mjs share: a connection to the Courier hub with a fresh token each
// time, a durable subscription renewed on every (re)connection, publishing until the hub
// confirms, and a clean exit on Ctrl-C. Nothing here is specific to Courier beyond three reserved
// events (courier:subscribe, courier:publish, courier:unsubscribe): the client is the stock
// socket.io-client.

import { io } from "socket.io-client";
import { tokenFor } from "./tokens.mjs";

export const HUB_URL = process.env.COURIER_URL || "http://127.0.0.1:3000";

export function log(who, message) {
  console.log(`[${who}] ${message}`);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Vendor and driver names become part of stream names: keep them simple. */
export function checkName(name, what) {
  if (!name || !/^[a-z0-9][a-z0-9-]{0,40}$/.test(name)) {
    console.error(`usage: give the ${what} a name of lower-case letters, digits and dashes (got ${JSON.stringify(name)})`);
    process.exit(2);
  }
  return name;
}

/**
 * Connects to the hub as `who` in `role`; socket.io-client reconnects on its own whenever the hub
 * goes away, and calls `auth` again each time, so a reconnection always brings a fresh token.
 */
export function connect(who, role) {
  const socket = io(HUB_URL, {
    reconnectionDelayMax: 2000,
    auth: (cb) => cb({ token: tokenFor(role, who) }),
  });
  let unreachable = false;
  socket.on("connect_error", (err) => {
    if (err.message === "unauthorized") {
      log(who, `the hub refused our token (${err.data?.code}): ${err.data?.message}`);
      return;
    }
    if (!unreachable) log(who, `cannot reach the hub at ${HUB_URL} (${err.message}); retrying`);
    unreachable = true;
  });
  socket.on("connect", () => {
    unreachable = false;
    log(who, `connected to the hub at ${HUB_URL}${socket.recovered ? " (session recovered)" : ""}`);
  });
  socket.on("disconnect", (reason) => {
    if (reason !== "io client disconnect") log(who, `lost the hub (${reason}); reconnecting`);
  });
  return socket;
}

/**
 * Subscribes to a durable stream now and after every reconnection (a subscription ends with
 * its connection). `onSubscribed(answer)` runs after each successful subscribe; answer.pending
 * is the number of entries waiting for this consumer.
 */
export function keepSubscribed(socket, who, request, onSubscribed) {
  const subscribe = async () => {
    for (let attempt = 1; socket.connected; attempt++) {
      try {
        const answer = await socket.timeout(5000).emitWithAck("courier:subscribe", request);
        if (answer?.ok) {
          await onSubscribed(answer);
          return;
        }
        log(who, `subscribe to ${request.stream} refused: ${answer?.error?.code} ${answer?.error?.message}`);
      } catch {
        // no answer in time: try again while connected
      }
      await sleep(Math.min(5000, 250 * attempt));
    }
  };
  socket.on("connect", subscribe);
}

/**
 * Publishes `data` to `stream` and resolves with the hub's confirmation {seq, duplicate} once
 * the entry is on disk. Retries (same id, so a retry is never stored twice) while the hub is
 * unreachable or busy; gives up with an error if `stillWanted()` turns false.
 */
export async function publish(socket, stream, event, data, id, stillWanted = () => true) {
  for (let attempt = 1; ; attempt++) {
    let answer;
    try {
      answer = await socket.timeout(5000).emitWithAck("courier:publish", { stream, event, data, id });
    } catch {
      answer = { ok: false, error: { code: "timeout" } };
    }
    if (answer?.ok) return answer;
    const code = answer?.error?.code;
    if (!["timeout", "unavailable", "storage_failure"].includes(code)) {
      throw new Error(`publish to ${stream} refused: ${code} ${answer?.error?.message ?? ""}`);
    }
    if (!stillWanted()) throw new Error(`publish to ${stream} abandoned`);
    await sleep(Math.min(5000, 250 * attempt));
  }
}

/** Runs `cleanup` once on Ctrl-C (SIGINT) or SIGTERM, then exits 0 (at most 3 s later). */
export function onShutdown(cleanup) {
  let done = false;
  const stop = async () => {
    if (done) return;
    done = true;
    setTimeout(() => process.exit(0), 3000).unref();
    try {
      await cleanup();
    } finally {
      process.exit(0);
    }
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
