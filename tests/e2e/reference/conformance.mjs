#!/usr/bin/env node
// The reference server for Courier's differential tests: the npm `socket.io` 4.8 server (or the bare
// `engine.io` server it is built on) configured like Courier's `conformance` example, so that the
// same raw-protocol scenario can be played against both and the answers compared.
//
//   node reference/conformance.mjs [socketio|engineio] [--port N | --listen HOST:PORT]
//
// Once bound it prints `listening on http://HOST:PORT` on stderr, like Courier does.
// SIGINT / SIGTERM close it and exit 0.

import http from "node:http";
import { createRequire } from "node:module";
import { Server as SocketIoServer } from "socket.io";

const require = createRequire(import.meta.url);
// The engine.io package that socket.io itself depends on (not a separately chosen version).
const engineRequire = createRequire(require.resolve("socket.io"));
const engine = engineRequire("engine.io");

// Settings shared with Courier's conformance example.
const PING_INTERVAL = 300;
const PING_TIMEOUT = 200;
const MAX_PAYLOAD = 1_000_000;
const CONNECT_TIMEOUT = 1000;
const UPGRADE_TIMEOUT = 1000;

function parseArgs(argv) {
  let mode = "socketio";
  let host = "127.0.0.1";
  let port = 0;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "socketio" || arg === "engineio") {
      mode = arg;
    } else if (arg === "--port") {
      port = Number(argv[++i]);
    } else if (arg.startsWith("--port=")) {
      port = Number(arg.slice("--port=".length));
    } else if (arg === "--listen" || arg.startsWith("--listen=")) {
      const value = arg === "--listen" ? argv[++i] : arg.slice("--listen=".length);
      const idx = value.lastIndexOf(":");
      host = value.slice(0, idx).replace(/^\[|\]$/g, "");
      port = Number(value.slice(idx + 1));
    } else {
      console.error(`usage: conformance.mjs [socketio|engineio] [--port N | --listen HOST:PORT]\nunknown argument: ${arg}`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error("invalid port");
    process.exit(2);
  }
  return { mode, host, port };
}

function serveSocketIo(httpServer) {
  const io = new SocketIoServer(httpServer, {
    pingInterval: PING_INTERVAL,
    pingTimeout: PING_TIMEOUT,
    maxHttpBufferSize: MAX_PAYLOAD,
    connectTimeout: CONNECT_TIMEOUT,
    upgradeTimeout: UPGRADE_TIMEOUT,
    cors: { origin: "*" },
  });
  const onConnection = (socket) => {
    socket.emit("auth", socket.handshake.auth);
    socket.on("message", (...args) => {
      socket.emit("message-back", ...args);
    });
    socket.on("message-with-ack", (...args) => {
      const callback = args.pop();
      if (typeof callback === "function") {
        callback(...args);
      }
    });
    // the server ends this socket (and only this one) of the connection
    socket.on("server-disconnect", () => {
      socket.disconnect();
    });
  };
  io.of("/").on("connection", onConnection);
  io.of("/custom").on("connection", onConnection);
  return () => io.close();
}

function serveEngineIo(httpServer) {
  const eio = new engine.Server({
    pingInterval: PING_INTERVAL,
    pingTimeout: PING_TIMEOUT,
    maxHttpBufferSize: MAX_PAYLOAD,
    upgradeTimeout: UPGRADE_TIMEOUT,
    cors: { origin: "*" },
  });
  eio.attach(httpServer, { path: "/engine.io/" });
  eio.on("connection", (socket) => {
    socket.on("message", (data) => socket.send(data));
  });
  return () => eio.close();
}

const { mode, host, port } = parseArgs(process.argv.slice(2));
const httpServer = http.createServer();
const closeHub = mode === "engineio" ? serveEngineIo(httpServer) : serveSocketIo(httpServer);

httpServer.listen(port, host, () => {
  const addr = httpServer.address();
  const shown = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  process.stderr.write(`reference ${mode} server: listening on http://${shown}:${addr.port}\n`);
});

let closing = false;
function shutdown() {
  if (closing) return;
  closing = true;
  closeHub();
  httpServer.close(() => process.exit(0));
  httpServer.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
