// The rules of `courier serve` that the cluster scenarios use, on the reference Socket.IO server:
// "courier:join" (a room name or an array of them, acked with {ok, rooms}) adds the socket to
// rooms, and any other event is relayed to the sender's rooms, the sender excluded (acked with
// {ok: true} when asked). With --redis it is one node of a cluster on `@socket.io/redis-adapter`
// 8.x (classic pub/sub, key `socket.io`: the channels Courier's nodes use); without, a single
// node on the in-memory adapter. Default settings otherwise.
//
// node cluster.js [--redis redis://HOST:PORT] [HOST:PORT] (default 127.0.0.1:0) waits until its
// Redis subscriptions are in place, then prints "listening on http://HOST:PORT".
"use strict";
const http = require("http");
const { Server } = require("socket.io");

async function main() {
  const argv = process.argv.slice(2);
  let redisUrl = null;
  let listen = "127.0.0.1:0";
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--redis") redisUrl = argv[++i];
    else listen = argv[i];
  }
  const [host, port] = listen.split(":");
  const server = http.createServer();
  const io = new Server(server, { serveClient: false });

  if (redisUrl) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pub = createClient({ url: redisUrl });
    const sub = pub.duplicate();
    for (const c of [pub, sub]) c.on("error", (e) => console.error(`redis: ${e.message}`));
    await Promise.all([pub.connect(), sub.connect()]);
    const subId = await sub.sendCommand(["CLIENT", "ID"]);
    io.adapter(createAdapter(pub, sub, { key: "socket.io" }));
    // The adapter subscribes without saying when Redis has confirmed: wait until Redis lists the
    // pattern (broadcasts) and the two request channels on our subscriber connection.
    for (;;) {
      const info = String(await pub.sendCommand(["CLIENT", "LIST", "ID", String(subId)]));
      const psub = Number(/\bpsub=(\d+)/.exec(info)?.[1] ?? 0);
      const subs = Number(/\bsub=(\d+)/.exec(info)?.[1] ?? 0);
      if (psub >= 1 && subs >= 2) break;
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  io.on("connection", (socket) => {
    socket.onAny((event, ...args) => {
      const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
      if (event === "courier:join") {
        const arg = args[0];
        const rooms = typeof arg === "string" ? [arg] : Array.isArray(arg) ? arg : [];
        socket.join(rooms);
        if (ack) ack({ ok: true, rooms: [...socket.rooms] });
        return;
      }
      const rooms = [...socket.rooms].filter((r) => r !== socket.id);
      if (rooms.length > 0) socket.to(rooms).emit(event, ...args);
      if (ack) ack({ ok: true });
    });
  });

  server.listen(Number(port), host, () => {
    const a = server.address();
    const mode = redisUrl ? `cluster node on ${redisUrl}` : "single node";
    console.error(`node socket.io (${mode}) listening on http://${a.address}:${a.port}`);
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
