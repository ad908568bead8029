#!/usr/bin/env node
// A Node socket.io 4.8 server on `@socket.io/redis-adapter` 8.x (classic pub/sub, key prefix
// `socket.io`), for Courier's cluster tests: a peer that Courier's nodes must interoperate with on
// one Redis, and the baseline that shows the cluster harness works before Courier's own cluster
// does.
//
//   node reference/cluster.mjs --redis redis://127.0.0.1:PORT [--port N | --listen HOST:PORT]
//
// It connects to Redis and waits until its subscriptions are in place, then listens and prints
// `listening on http://HOST:PORT` on stderr. SIGINT / SIGTERM close it and exit 0.
//
// Clients of this server behave as they would on Courier: "join" / "leave" (a room name or an
// array of them, acked with {ok, rooms}) change the socket's rooms, and any other event is relayed
// to the sender's rooms (acked with {ok: true}). Tests drive the server side over HTTP, so that no
// control socket shows up among the cluster's sockets:
//
//   POST /node/emit        {event, data: [..], rooms?, except?}  io.to(rooms).except(..).emit
//   POST /node/emit-ack    {event, data, rooms?, timeout_ms}     .timeout(ms).emitWithAck
//                          -> {responses: [[args..]..], error?}
//   POST /node/sockets     {rooms?}                              fetchSockets -> {sockets: [{id, rooms}]}
//   POST /node/join        {rooms?, room}                        io.in(rooms).socketsJoin(room)
//   POST /node/leave       {rooms?, room}                        io.in(rooms).socketsLeave(room)
//   POST /node/disconnect  {rooms?, close?}                      io.in(rooms).disconnectSockets(close)
//   GET  /node/health      {redis: "up" | "down", uid}
//
// `rooms` may hold socket ids (every socket is in the room of its own id).

import http from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

function parseArgs(argv) {
  let host = "127.0.0.1";
  let port = 0;
  let redis = null;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--redis") {
      redis = argv[++i];
    } else if (arg === "--port") {
      port = Number(argv[++i]);
    } else if (arg === "--listen") {
      const value = argv[++i];
      const idx = value.lastIndexOf(":");
      host = value.slice(0, idx).replace(/^\[|\]$/g, "");
      port = Number(value.slice(idx + 1));
    } else {
      usage(`unknown argument: ${arg}`);
    }
  }
  if (!redis) usage("--redis is required");
  if (!Number.isInteger(port) || port < 0 || port > 65535) usage("invalid port");
  return { host, port, redis };
}

function usage(why) {
  console.error(`usage: cluster.mjs --redis URL [--port N | --listen HOST:PORT]\n${why}`);
  process.exit(2);
}

const log = (msg) => process.stderr.write(`node cluster server: ${msg}\n`);

const { host, port, redis: redisUrl } = parseArgs(process.argv.slice(2));

// Reconnect quickly and forever: the tests stop Redis and start it again on the same port.
const pubClient = createClient({
  url: redisUrl,
  socket: { reconnectStrategy: (retries) => Math.min(50 + retries * 50, 500) },
});
const subClient = pubClient.duplicate();
let redisUp = false;
for (const [name, client] of [
  ["pub", pubClient],
  ["sub", subClient],
]) {
  client.on("error", (err) => {
    if (redisUp) log(`redis ${name} client: ${err.message}`);
    redisUp = false;
  });
  client.on("ready", () => {
    redisUp = pubClient.isReady && subClient.isReady;
  });
}
await Promise.all([pubClient.connect(), subClient.connect()]);
redisUp = true;
const subId = await subClient.sendCommand(["CLIENT", "ID"]);

const httpServer = http.createServer(control);
const io = new Server(httpServer, { cors: { origin: "*" } });
io.adapter(createAdapter(pubClient, subClient, { key: "socket.io" }));

// The adapter subscribes without telling when Redis has confirmed; wait until Redis lists the
// subscriptions of our subscriber connection, so that nothing published after we announce
// ourselves is missed.
await waitSubscribed();

function roomNames(arg) {
  if (typeof arg === "string") return [arg];
  if (Array.isArray(arg) && arg.every((r) => typeof r === "string")) return arg;
  return null;
}

io.on("connection", (socket) => {
  const answerRooms = () => ({ ok: true, rooms: [...socket.rooms].sort() });
  socket.on("join", (arg, ack) => {
    const rooms = roomNames(arg);
    if (rooms) socket.join(rooms);
    if (typeof ack === "function") ack(rooms ? answerRooms() : { ok: false });
  });
  socket.on("leave", (arg, ack) => {
    const rooms = roomNames(arg);
    for (const r of rooms || []) socket.leave(r);
    if (typeof ack === "function") ack(rooms ? answerRooms() : { ok: false });
  });
  socket.onAny((event, ...args) => {
    if (event === "join" || event === "leave") return;
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    const rooms = [...socket.rooms].filter((r) => r !== socket.id);
    if (rooms.length > 0) socket.to(rooms).emit(event, ...args);
    if (ack) ack({ ok: true });
  });
});

function target(body) {
  let op = io;
  if (Array.isArray(body.rooms) && body.rooms.length > 0) op = op.to(body.rooms);
  if (Array.isArray(body.except) && body.except.length > 0) op = op.except(body.except);
  return op;
}

const routes = {
  "POST /node/emit": async (body) => {
    target(body).emit(body.event, ...(body.data || []));
    return { ok: true };
  },
  "POST /node/emit-ack": async (body) => {
    try {
      const responses = await target(body)
        .timeout(body.timeout_ms ?? 2000)
        .emitWithAck(body.event, ...(body.data || []));
      return { responses };
    } catch (err) {
      return { responses: [], error: err.message };
    }
  },
  "POST /node/sockets": async (body) => {
    const sockets = await target(body).fetchSockets();
    return { sockets: sockets.map((s) => ({ id: s.id, rooms: [...s.rooms].sort() })) };
  },
  "POST /node/join": async (body) => {
    target(body).socketsJoin(body.room);
    return { ok: true };
  },
  "POST /node/leave": async (body) => {
    target(body).socketsLeave(body.room);
    return { ok: true };
  },
  "POST /node/disconnect": async (body) => {
    target(body).disconnectSockets(!!body.close);
    return { ok: true };
  },
  "GET /node/health": async () => ({ redis: redisUp ? "up" : "down", uid: io.of("/").adapter.uid }),
};

// socket.io answers its own path first; everything else comes here.
function control(req, res) {
  const route = routes[`${req.method} ${req.url.split("?")[0]}`];
  if (!route) {
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: "no such route" }));
    return;
  }
  let text = "";
  req.setEncoding("utf8");
  req.on("data", (chunk) => {
    text += chunk;
  });
  req.on("end", async () => {
    let status = 200;
    let answer;
    try {
      answer = await route(text ? JSON.parse(text) : {});
    } catch (err) {
      status = 500;
      answer = { error: err.message };
    }
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(answer));
  });
}

async function waitSubscribed() {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const info = String(await pubClient.sendCommand(["CLIENT", "LIST", "ID", String(subId)]));
    const sub = Number(/\bsub=(\d+)/.exec(info)?.[1] ?? 0);
    const psub = Number(/\bpsub=(\d+)/.exec(info)?.[1] ?? 0);
    // the event pattern, and the request and response channels
    if (psub >= 1 && sub >= 2) return;
    if (Date.now() > deadline) throw new Error(`the adapter did not subscribe in time (${info.trim()})`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

httpServer.listen(port, host, () => {
  const addr = httpServer.address();
  const shown = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  log(`adapter ${io.of("/").adapter.uid} on ${redisUrl}; listening on http://${shown}:${addr.port}`);
});

let closing = false;
function shutdown() {
  if (closing) return;
  closing = true;
  io.close();
  httpServer.closeAllConnections?.();
  Promise.allSettled([pubClient.disconnect(), subClient.disconnect()]).then(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
