// A round-robin HTTP proxy in front of Courier nodes, as a load balancer without sticky sessions:
// each request, whatever session it belongs to, goes to the next node in turn. A WebSocket upgrade
// is one request too: it is sent on to the next node and the proxy then copies bytes both ways
// until either side closes.
//
// A node that refuses the connection (it was killed) is skipped and the request goes to the next
// one; a request already sent to a node that dies is answered 502, as a real balancer would. The
// proxy keeps a log of where each request went ({method, path, sid, transport, target, status}),
// so a test can show that one session's requests were spread over every node. A test may also
// say which node the next new sessions start on (`handshakesTo`); their later requests still go
// round.

import http from "node:http";
import net from "node:net";

// Headers that belong to one hop (RFC 9110, section 7.6.1) and are not sent on.
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

function endToEnd(headers) {
  const named = new Set(
    String(headers.connection || "")
      .split(",")
      .map((h) => h.trim().toLowerCase())
      .filter(Boolean),
  );
  return Object.fromEntries(Object.entries(headers).filter(([k]) => !HOP_BY_HOP.has(k) && !named.has(k)));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

/**
 * Starts a proxy on 127.0.0.1 port 0 in front of `targets`: an array of URLs or of servers with a
 * `url`, or a function returning one (read at every request, so a test may swap a node). Resolves
 * with {url, port, log, refused, handshakesTo, close()}; with a test context `t` it is closed when the test ends.
 */
export async function startRoundRobinProxy(targets, { t } = {}) {
  const current = () => (typeof targets === "function" ? targets() : targets).map((x) => (typeof x === "string" ? x : x.url));
  let turn = 0;
  const log = [];
  /** How many connections each target refused, by URL. */
  const refused = {};
  const sockets = new Set();

  // The targets in the order a request tries them: the next in turn first, then the others; a
  // request without a sid (a new session) first goes to `handshakesTo` when a test set it.
  const order = (req) => {
    const list = current();
    let start = turn++ % list.length;
    const pinned = list.indexOf(proxy.handshakesTo);
    if (pinned >= 0 && !new URL(req.url, "http://proxy").searchParams.has("sid")) start = pinned;
    return list.map((_, i) => new URL(list[(start + i) % list.length]));
  };
  const noteRefused = (target) => {
    refused[target.origin] = (refused[target.origin] || 0) + 1;
  };
  const entry = (req, target) => {
    const url = new URL(req.url, "http://proxy");
    const record = {
      method: req.method,
      path: url.pathname,
      sid: url.searchParams.get("sid"),
      transport: url.searchParams.get("transport"),
      target: target?.origin ?? null,
      status: null,
    };
    log.push(record);
    return record;
  };

  const server = http.createServer(async (req, res) => {
    let body;
    try {
      body = await readBody(req);
    } catch {
      return res.destroy();
    }
    const headers = endToEnd(req.headers);
    const tryNext = (candidates) => {
      const target = candidates.shift();
      if (!target) {
        entry(req, null).status = 502;
        res.writeHead(502, { "content-type": "text/plain" }).end("no node could be reached");
        return;
      }
      // A connection of its own per request: the proxy never sends a request on a connection the
      // node may be closing, which would look like a failure of the node.
      const upstream = http.request({
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: { ...headers, host: target.host, "content-length": String(body.length) },
        agent: false,
      });
      let answered = false;
      upstream.on("response", (answer) => {
        answered = true;
        entry(req, target).status = answer.statusCode;
        res.writeHead(answer.statusCode, endToEnd(answer.headers));
        answer.pipe(res);
        answer.on("error", () => res.destroy());
      });
      upstream.on("error", (err) => {
        if (answered) return res.destroy();
        if (err.code === "ECONNREFUSED") {
          noteRefused(target);
          return tryNext(candidates);
        }
        // the node went away with the request: the client sees the failure
        entry(req, target).status = 502;
        if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" }).end(`node failed: ${err.message}`);
        else res.destroy();
      });
      // A client that leaves a pending GET closes the node's connection too.
      res.on("close", () => {
        if (!res.writableFinished) upstream.destroy();
      });
      upstream.end(body);
    };
    tryNext(order(req));
  });

  server.on("upgrade", (req, client, head) => {
    client.on("error", () => {});
    const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    const request = Buffer.from(`${lines.join("\r\n")}\r\n\r\n`);
    const tryNext = (candidates) => {
      const target = candidates.shift();
      if (!target) {
        entry(req, null).status = 502;
        client.end("HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        return;
      }
      const upstream = net.connect({ host: target.hostname, port: Number(target.port) });
      sockets.add(upstream);
      upstream.once("close", () => sockets.delete(upstream));
      let connected = false;
      upstream.once("error", (err) => {
        if (!connected && err.code === "ECONNREFUSED") {
          noteRefused(target);
          return tryNext(candidates);
        }
        client.destroy();
      });
      upstream.once("connect", () => {
        connected = true;
        // the status of the node's answer, for the log; the bytes go on unread
        const record = entry(req, target);
        upstream.once("data", (chunk) => {
          const m = /^HTTP\/1\.1 (\d{3})/.exec(chunk.toString("latin1", 0, 16));
          record.status = m ? Number(m[1]) : null;
        });
        upstream.write(request);
        if (head.length) upstream.write(head);
        upstream.pipe(client);
        client.pipe(upstream);
        client.once("close", () => upstream.destroy());
        upstream.once("close", () => client.destroy());
      });
    };
    tryNext(order(req));
  });

  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  const proxy = {
    url: `http://127.0.0.1:${port}`,
    port,
    log,
    refused,
    /** The URL of the node new sessions start on, or null for the next in turn. */
    handshakesTo: null,
    /** Stops listening and closes every connection, client side and node side. */
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  if (t) t.after(() => proxy.close());
  return proxy;
}

/** The targets that served requests of Engine.IO session `sid`, per transport, from a proxy's log. */
export function targetsOf(proxy, sid, transport) {
  const hits = proxy.log.filter((e) => e.sid === sid && e.target && (transport === undefined || e.transport === transport));
  return new Set(hits.map((e) => e.target));
}
