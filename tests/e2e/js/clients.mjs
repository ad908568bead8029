// Helpers for the end-to-end tests that use the stock socket.io-client against `courier serve`.

import { io, Manager } from "socket.io-client";
import { once, waitFor, withTimeout } from "./harness.mjs";

export { io, Manager };

/** Options every test client starts from: no shared managers, quick reconnects, no stray retries. */
export const BASE_OPTS = {
  forceNew: true,
  reconnection: false,
  reconnectionDelay: 100,
  reconnectionDelayMax: 300,
  randomizationFactor: 0,
  timeout: 5000,
};

/** Closes a socket and its manager whatever state they are in. */
export function closeSocket(socket) {
  try {
    socket.io.reconnection(false);
    socket.disconnect();
    socket.io.engine?.close();
  } catch {
    // already closed
  }
}

/**
 * Creates a client for `url + nsp` and waits for "connect". Rejects with the connect_error if the
 * server refuses it. The socket is closed when the test `t` ends.
 */
export async function connect(t, url, nsp = "/", opts = {}) {
  const socket = io(url + nsp, { ...BASE_OPTS, ...opts });
  t.after(() => closeSocket(socket));
  await waitConnected(socket);
  return socket;
}

/** Resolves on "connect", rejects on "connect_error" (with the server's error) or after `ms`. */
export function waitConnected(socket, ms = 8000) {
  if (socket.connected) return Promise.resolve(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`socket ${socket.nsp} did not connect within ${ms} ms`));
    }, ms);
    const onConnect = () => {
      cleanup();
      resolve(socket);
    };
    const onError = (err) => {
      cleanup();
      reject(err);
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("connect_error", onError);
    };
    socket.on("connect", onConnect);
    socket.on("connect_error", onError);
  });
}

/** Creates a client that is expected to be refused; resolves with the connect_error. */
export async function connectError(t, url, nsp = "/", opts = {}) {
  const socket = io(url + nsp, { ...BASE_OPTS, ...opts });
  t.after(() => closeSocket(socket));
  const outcome = await Promise.race([
    once(socket, "connect", 8000).then(() => ({ connected: true })),
    once(socket, "connect_error", 8000).then(([err]) => ({ err })),
  ]);
  if (outcome.connected) throw new Error(`${nsp} connected although it should have been refused`);
  return outcome.err;
}

/** emitWithAck with a deadline. */
export function ask(socket, event, ...args) {
  return withTimeout(socket.timeout(5000).emitWithAck(event, ...args), 6000, `ack for ${event}`);
}

/** Collects every `event` a socket receives (each entry is the array of its arguments). */
export function record(socket, event) {
  const got = [];
  socket.on(event, (...args) => {
    if (typeof args[args.length - 1] === "function") args.pop();
    got.push(args);
  });
  return got;
}

/** Turns every binary value (Buffer, ArrayBuffer, typed array) into a plain Buffer, recursively. */
export function normalizeBinary(value) {
  if (Buffer.isBuffer(value)) return Buffer.from(value);
  if (value instanceof ArrayBuffer) return Buffer.from(value);
  if (ArrayBuffer.isView(value)) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (Array.isArray(value)) return value.map(normalizeBinary);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalizeBinary(v)]));
  }
  return value;
}

/** Calls Courier's HTTP API; returns {status, body} (body parsed as JSON when it is JSON). */
export async function api(server, method, path, body, { token } = {}) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(server.url + path, {
    method,
    headers,
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  return { status: res.status, body: parsed };
}

/** The sids `GET /api/v1/sockets` lists for a namespace (and room), sorted. */
export async function listedSids(server, namespace = "/", room) {
  const query = new URLSearchParams({ namespace });
  if (room !== undefined) query.set("room", room);
  const res = await api(server, "GET", `/api/v1/sockets?${query}`);
  if (res.status !== 200) throw new Error(`GET /api/v1/sockets answered ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.sockets.map((s) => s.sid).sort();
}

// --- durable streams ---------------------------------------------------------------------------

/** `courier:subscribe` with an ack; resolves with the answer ({ok, stream, consumer, pending}). */
export function subscribe(socket, stream, consumer, options = {}) {
  return ask(socket, "courier:subscribe", { stream, consumer, ...options });
}

/** `courier:publish` with an ack; resolves with the answer ({ok, seq, duplicate}). */
export function clientPublish(socket, stream, event, data, id) {
  return ask(socket, "courier:publish", { stream, event, data, ...(id === undefined ? {} : { id }) });
}

/**
 * Records the stream deliveries of `event` a socket receives, each as {data, meta, ack, args}
 * (`args`: every argument but the ack callback). With `autoAck` (the default) each delivery is
 * acknowledged as it arrives; otherwise the test calls `ack()` itself.
 */
export function deliveries(socket, event, { autoAck = true } = {}) {
  const got = [];
  socket.on(event, (...args) => {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : undefined;
    got.push({ data: args[0], meta: args[1], ack, args });
    if (autoAck && ack) ack();
  });
  return got;
}

/** The seqs of recorded deliveries, in arrival order. */
export const seqsOf = (list) => list.map((d) => d.meta.seq);

/** Waits until `list` holds at least `n` entries; returns it. A timeout says how many came. */
export function waitCount(list, n, ms = 5000, what = "deliveries") {
  return waitFor(() => list.length >= n && list, { ms, what: `${n} ${what}` }).catch((err) => {
    // the count when the wait gave up, and the seqs when these are stream deliveries
    const seqs = list.every((d) => d?.meta?.seq !== undefined) ? `: seqs ${JSON.stringify(seqsOf(list))}` : "";
    throw new Error(`${err.message} (have ${list.length}${seqs})`);
  });
}

/** `[1, 2, ..., n]` shifted to start at `from`. */
export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** `POST /api/v1/streams/{stream}/publish`; resolves with {seq, duplicate}, throws unless 200. */
export async function publish(server, stream, event, data, id) {
  const res = await api(server, "POST", `/api/v1/streams/${encodeURIComponent(stream)}/publish`, {
    event,
    data,
    ...(id === undefined ? {} : { id }),
  });
  if (res.status !== 200) throw new Error(`publish to ${stream} answered ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

/** `GET /api/v1/streams/{stream}`, throws unless 200. */
export async function streamInfo(server, stream) {
  const res = await api(server, "GET", `/api/v1/streams/${encodeURIComponent(stream)}`);
  if (res.status !== 200) throw new Error(`GET stream ${stream} answered ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

/** `GET /api/v1/streams/{stream}/consumers/{consumer}`, throws unless 200. */
export async function consumerInfo(server, stream, consumer) {
  const res = await api(
    server,
    "GET",
    `/api/v1/streams/${encodeURIComponent(stream)}/consumers/${encodeURIComponent(consumer)}`,
  );
  if (res.status !== 200) {
    throw new Error(`GET consumer ${stream}/${consumer} answered ${res.status} ${JSON.stringify(res.body)}`);
  }
  return res.body;
}
