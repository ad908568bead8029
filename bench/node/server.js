// The bench protocol on the reference Socket.IO server: "echo" is acknowledged with its own
// arguments, "broadcast" sends "message" with the payload to every connected client. Default
// settings; bufferutil is installed, as the socket.io docs advise for performance.
//
// node server.js [HOST:PORT] (default 127.0.0.1:0) prints "listening on http://HOST:PORT".
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const [host, port] = (process.argv[2] || "127.0.0.1:0").split(":");
const server = http.createServer();
const io = new Server(server, { serveClient: false });

io.on("connection", (socket) => {
  socket.on("echo", (...args) => {
    const ack = args.pop();
    if (typeof ack === "function") ack(...args);
  });
  socket.on("broadcast", (...args) => {
    io.emit("message", ...args);
  });
});

server.listen(Number(port), host, () => {
  const a = server.address();
  console.error(`node socket.io listening on http://${a.address}:${a.port}`);
});
