// A deliberately small raw Engine.IO v4 client (HTTP long-polling with fetch, WebSocket with `ws`)
// for tests that look at the wire itself, without socket.io-client in between.

import WebSocket from "ws";

export const SEP = "\x1e";

/** One HTTP request; never throws for an HTTP error status. */
export async function request(url, { method = "GET", body, headers = {}, timeoutMs = 5000 } = {}) {
  const res = await fetch(url, {
    method,
    body,
    headers,
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  const hdrs = {};
  for (const [k, v] of res.headers) hdrs[k.toLowerCase()] = v;
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: hdrs, text, json };
}

export function eioUrl(base, enginePath, query = {}) {
  const url = new URL(enginePath, base);
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined) url.searchParams.set(k, v);
  }
  return url.toString();
}

/** Splits a polling payload into its packets. */
export function splitPayload(text) {
  return text === "" ? [] : text.split(SEP);
}

/** A long-polling session on one Engine.IO endpoint (`enginePath` like "/socket.io/"). */
export class PollingSession {
  constructor(base, enginePath) {
    this.base = base;
    this.enginePath = enginePath;
    this.sid = undefined;
    this.open = undefined;
    // packets already received but not yet handed to the test
    this.inbox = [];
    this.pings = 0;
  }

  url(extra = {}) {
    return eioUrl(this.base, this.enginePath, { EIO: "4", transport: "polling", sid: this.sid, ...extra });
  }

  /** GET handshake; returns the raw response and remembers the sid. */
  async handshake(query = {}) {
    const res = await request(eioUrl(this.base, this.enginePath, { EIO: "4", transport: "polling", ...query }));
    if (res.status === 200 && res.text.startsWith("0")) {
      this.open = JSON.parse(res.text.slice(1));
      this.sid = this.open.sid;
      // anything the server packed after the open packet
      this.inbox.push(...splitPayload(res.text).slice(1));
    }
    return res;
  }

  get(timeoutMs = 5000) {
    return request(this.url(), { timeoutMs });
  }

  post(packets, { timeoutMs = 5000, headers = { "content-type": "text/plain;charset=UTF-8" } } = {}) {
    const body = Array.isArray(packets) ? packets.join(SEP) : packets;
    return request(this.url(), { method: "POST", body, headers, timeoutMs });
  }

  /**
   * Long-polls until `count` packets other than pings arrived (answering each ping with a pong so
   * the session stays alive) and returns them in order. Fails after `timeoutMs`.
   */
  async receive(count = 1, { timeoutMs = 3000 } = {}) {
    const deadline = Date.now() + timeoutMs;
    while (this.inbox.length < count) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`received ${JSON.stringify(this.inbox)}, expected ${count} packets within ${timeoutMs} ms`);
      }
      const res = await this.get(left + 200);
      if (res.status !== 200) {
        throw new Error(`poll answered ${res.status} ${res.text} after ${JSON.stringify(this.inbox)}`);
      }
      for (const packet of splitPayload(res.text)) {
        if (packet === "2") {
          this.pings++;
          const pong = await this.post("3");
          if (pong.status !== 200) throw new Error(`pong answered ${pong.status} ${pong.text}`);
        } else if (packet !== "6") {
          this.inbox.push(packet);
        }
      }
    }
    return this.inbox.splice(0, count);
  }
}

/**
 * A WebSocket connection with a queue of received messages (text as strings, binary as Buffers).
 * With `autoPong`, Engine.IO pings ("2") are answered with "3" and not queued.
 */
export class WsConn {
  static open(url, { autoPong = true, timeoutMs = 5000 } = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const conn = new WsConn(ws, autoPong);
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new Error(`websocket ${url} did not open within ${timeoutMs} ms`));
      }, timeoutMs);
      ws.once("open", () => {
        clearTimeout(timer);
        resolve(conn);
      });
      ws.once("unexpected-response", (_req, res) => {
        clearTimeout(timer);
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (body += c));
        res.on("end", () => {
          const err = new Error(`websocket refused with HTTP ${res.statusCode}`);
          err.status = res.statusCode;
          err.body = body;
          reject(err);
        });
        res.on("error", () => {});
      });
      ws.once("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  constructor(ws, autoPong) {
    this.ws = ws;
    this.autoPong = autoPong;
    this.queue = [];
    this.waiters = [];
    this.pings = 0;
    this.closedAt = null;
    this.closed = new Promise((resolve) => {
      ws.on("close", (code, reason) => {
        this.closedAt = Date.now();
        resolve({ code, reason: reason.toString() });
        for (const w of this.waiters.splice(0)) w.reject(new Error(`websocket closed (${code}) while waiting for a message`));
      });
    });
    ws.on("error", () => {});
    ws.on("message", (data, isBinary) => {
      const msg = isBinary ? Buffer.from(data) : data.toString();
      if (this.autoPong && msg === "2") {
        this.pings++;
        ws.send("3");
        return;
      }
      // A noop means nothing to a client. Courier may send one on the new websocket right after an
      // upgrade (the reference sends it to the old polling request only); it is not compared.
      if (msg === "6") {
        this.noops = (this.noops || 0) + 1;
        return;
      }
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(msg);
      else this.queue.push(msg);
    });
  }

  send(data) {
    this.ws.send(data);
  }

  /** The next message (string or Buffer), or a rejection after `timeoutMs`. */
  next(timeoutMs = 3000) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.closedAt !== null) return Promise.reject(new Error("websocket is closed"));
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no websocket message within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  async nextN(n, timeoutMs = 3000) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(await this.next(timeoutMs));
    return out;
  }

  close() {
    if (this.closedAt === null) this.ws.close();
  }

  terminate() {
    if (this.closedAt === null) this.ws.terminate();
  }
}

export function wsUrl(base, enginePath, query = {}) {
  const url = new URL(eioUrl(base, enginePath, { EIO: "4", transport: "websocket", ...query }));
  url.protocol = "ws:";
  return url.toString();
}

/** Replaces session ids in packet text so answers from two servers can be compared. */
export function normalizeIds(text) {
  if (typeof text !== "string") return text;
  return text.replace(/"(sid|pid)":"[^"]*"/g, '"$1":"<$1>"');
}
