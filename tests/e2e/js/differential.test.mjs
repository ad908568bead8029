// Differential tests: the same raw-protocol scenario is played against the reference Node server
// (npm socket.io / engine.io 4.8, tests/e2e/reference/conformance.mjs) and against Courier's
// `conformance` example, both configured alike (pingInterval 300, pingTimeout 200, maxPayload 1e6,
// connectTimeout 1000, upgradeTimeout 1000, CORS origin "*"). Each scenario reduces what a client
// can observe (status codes, bodies, packets, order, rough timings, websocket close codes) to a
// plain value with session ids normalized; the test requires Courier's value to equal the
// reference's, and the reference's to equal what the protocol says (so that a scenario that
// stopped exercising anything fails too).
//
// Not compared, on purpose (implementation details no client relies on):
// - response header order, `Date`, `Connection`/`Keep-Alive`, chunked vs Content-Length framing;
// - the Content-Type of polling responses (the reference says text/plain; charset=UTF-8, and
//   clients read the body as text whatever it says) and of error bodies;
// - the length and alphabet of session ids (the reference uses 20 base64url characters);
// - the CORS preflight's list of allowed methods and headers;
// - the body of the 400 that refuses an overlapping GET or a binary (application/octet-stream)
//   POST body (the reference sends an empty body, Courier its usual JSON error);
// - the HTTP body of a refused WebSocket upgrade (clients only see the failed upgrade);
// - a websocket opened with the sid of a session that began on a websocket: the reference starts
//   an upgrade from that websocket to the new one (it waits for a probe, up to upgradeTimeout),
//   Courier closes the new one at once as it does for any session that has a websocket; no client
//   upgrades a websocket;
// - how a POST body that is not UTF-8 is read: the reference replaces the bad bytes with U+FFFD
//   and goes on, Courier ends the session as for any undecodable packet;
// - `b` packets whose base64 is not canonical: the reference decodes leniently (it skips
//   characters outside the alphabet, takes base64url too, needs no padding, and a `b` with
//   nothing decodable is an empty binary message), Courier takes standard padded base64 only (what
//   every client sends) and ends the session on anything else;
// - data after the type of an upgrade or noop packet (`5x`, `6x`): the reference ignores it,
//   Courier ends the session; `1x` ends the session on both, for the reference as the client's
//   close (a noop to the pending GET), for Courier as a bad packet (a close packet);
// - a non-pong packet that arrives while a pong is awaited: the reference restarts the ping
//   timeout once, Courier waits for the pong only (the difference shows only in timings of
//   ~pingTimeout, too fine to compare here);
// - noop packets (`6`) on a websocket: Courier may send one right after an upgrade, the reference
//   does not; clients ignore noops;
// - how binary placeholders are numbered in a re-encoded packet (the reference renumbers them in
//   argument order, and drops an attachment no placeholder refers to, where Courier passes it
//   on): the arguments rebuilt from them are compared instead;
// - event names that are numbers: the reference's parser accepts `42[1,"a"]` and dispatches it as
//   event "1"; Courier follows the protocol text (the first element is the event name, a string)
//   and closes the connection;
// - an EVENT without a payload (`42`, `421`): the reference dispatches an event with no name,
//   which no handler can receive; Courier follows the protocol text ("The payload is mandatory
//   and MUST be a non-empty array. If that's not the case, then the receiver MUST close the
//   connection");
// - ack ids above 2^53 - 1: the reference reads them as JavaScript numbers and answers with a
//   rounded id; Courier keeps every id up to 2^64 - 1 exact and closes the connection for a larger
//   one (ids up to 2^53 - 1 are compared);
// - packets announcing more than 10 binary attachments: the reference's parser closes the
//   connection, Courier takes up to 1024 (each message is still bounded by maxPayload), so that a
//   client sending many buffers in one emit is served.
// - a second CONNECT to a namespace joined already: the reference closes the connection once the
//   first CONNECT is done, and opens a second socket while its (always deferred) middlewares run;
//   Courier ignores it, because socket.io-client sends two CONNECTs when `connect()` is called on
//   a socket from `io.socket()`, and closing would break that common code.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { sleep, startConformance, startReference, waitFor } from "./harness.mjs";
import { eioUrl, normalizeIds, PollingSession, request, splitPayload, WsConn, wsUrl } from "./raw.mjs";

const SIDES = ["reference", "courier"];

/** Starts both servers in `mode` for the enclosing describe block. */
function servers(mode) {
  const s = {};
  before(async () => {
    const started = await Promise.allSettled([startReference(mode), startConformance(mode)]);
    started.forEach((r, i) => {
      if (r.status === "fulfilled") s[SIDES[i]] = r.value;
    });
    const failed = started.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  });
  after(async () => {
    await Promise.all(SIDES.map((side) => s[side]?.stop()));
  });
  return s;
}

/**
 * Defines one differential test: `play(server)` runs on both servers at once and returns an
 * observation. Courier must observe what the reference observes; the reference must observe
 * `expected` (when given).
 */
function scenario(s, name, play, expected) {
  test(name, async () => {
    const results = await Promise.allSettled(SIDES.map((side) => play(s[side], side)));
    const obs = {};
    results.forEach((r, i) => {
      if (r.status === "rejected") {
        const err = r.reason instanceof Error ? r.reason : new Error(String(r.reason));
        err.message = `[${SIDES[i]}] ${err.message}`;
        throw err;
      }
      obs[SIDES[i]] = r.value;
    });
    assert.deepStrictEqual(obs.courier, obs.reference, `Courier's answer differs from the reference server's in "${name}"`);
    if (expected !== undefined) {
      assert.deepStrictEqual(obs.reference, expected, `the reference server no longer answers as this scenario expects`);
    }
  });
}

function errorShape(res) {
  return { status: res.status, body: res.json ?? res.text };
}

/** Describes an Engine.IO open packet without its sid. */
function openShape(text) {
  const type = text[0];
  let body;
  try {
    body = JSON.parse(text.slice(1));
  } catch {
    return { type, body: text.slice(1) };
  }
  const { sid, ...rest } = body;
  return {
    type,
    sid: typeof sid === "string" && sid.length > 0 ? "<sid>" : sid,
    keys: Object.keys(body).sort(),
    ...rest,
  };
}

/**
 * Long-polls a session until the server ends it, answering pings, and reports the non-ping packets
 * seen and how the session ended.
 */
async function pollUntilEnd(session, timeoutMs = 4000) {
  const start = Date.now();
  const packets = [];
  while (Date.now() - start < timeoutMs) {
    const res = await session.get(timeoutMs);
    if (res.status !== 200) {
      return { packets, end: errorShape(res), ms: Date.now() - start };
    }
    for (const packet of splitPayload(res.text)) {
      if (packet === "2") {
        await session.post("3");
      } else if (packet !== "6") {
        // a noop carries nothing a client acts on
        packets.push(packet);
      }
    }
    if (packets.includes("1")) {
      const next = await session.get();
      return { packets, end: errorShape(next), ms: Date.now() - start };
    }
  }
  throw new Error(`session still open after ${timeoutMs} ms, packets ${JSON.stringify(packets)}`);
}

/**
 * Long-polls a session for `ms`, answering pings, and returns the non-ping packets it got. No GET
 * is pending when it returns.
 */
async function keepAlive(session, ms) {
  const deadline = Date.now() + ms;
  const packets = [];
  while (Date.now() < deadline) {
    const res = await session.get(2000);
    if (res.status !== 200) return [...packets, errorShape(res)];
    for (const packet of splitPayload(res.text)) {
      if (packet === "2") await session.post("3");
      else if (packet !== "6") packets.push(packet);
    }
  }
  return packets;
}

/**
 * Sends `packets` in a POST while a GET is pending (as a real client always has one) and reports
 * what ends the session: the packets the client gets, then the answer to the next poll.
 */
async function closeAfterPost(session, packets) {
  const pending = session.get(3000);
  await sleep(50);
  const post = await session.post(packets);
  const first = await pending;
  if (first.status !== 200) return { post: post.status, packets: [], end: errorShape(first) };
  const all = splitPayload(first.text);
  // An unanswered ping would end the session by itself (ping timeout) and hide a server that
  // does not close.
  if (all.includes("2")) await session.post("3");
  const seen = all.filter((p) => p !== "6" && p !== "2");
  if (seen.includes("1")) return { post: post.status, packets: seen, end: errorShape(await session.get()) };
  const rest = await pollUntilEnd(session, 3000);
  return { post: post.status, packets: [...seen, ...rest.packets], end: rest.end };
}

/**
 * Opens a websocket with `url` and reports what became of it within a second: refused at the
 * HTTP upgrade (with its status), or opened and then closed by the server (with the close code
 * and what it received first), or still open.
 */
async function websocketFate(url) {
  let ws;
  try {
    ws = await WsConn.open(url);
  } catch (err) {
    return { opened: false, status: err.status ?? err.message };
  }
  const closed = await Promise.race([ws.closed, sleep(1000).then(() => null)]);
  ws.terminate();
  return { opened: true, closeCode: closed ? closed.code : "still open", messages: ws.queue };
}

/**
 * Opens a websocket with `url` and sends `first`; reports "rejected" when the server refuses the
 * upgrade or closes the socket without answering (both leave the client without that transport),
 * otherwise the first answer.
 */
async function tryWebsocket(url, first) {
  let ws;
  try {
    ws = await WsConn.open(url);
  } catch {
    return "rejected";
  }
  ws.send(first);
  try {
    return await ws.next(1000);
  } catch {
    return ws.closedAt !== null ? "rejected" : "silent";
  } finally {
    ws.terminate();
  }
}

const UNKNOWN_SID = { status: 400, body: { code: 1, message: "Session ID unknown" } };
const BAD_REQUEST = { status: 400, body: { code: 3, message: "Bad request" } };
const OPEN_POLLING = {
  type: "0",
  sid: "<sid>",
  keys: ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"],
  upgrades: ["websocket"],
  pingInterval: 300,
  pingTimeout: 200,
  maxPayload: 1000000,
};

describe("Engine.IO (conformance engineio, echo server at /engine.io/)", () => {
  const s = servers("engineio");
  const EP = "/engine.io/";

  scenario(
    s,
    "polling handshake: open packet fields, fresh sid each time, CORS for any origin",
    async (srv) => {
      const a = new PollingSession(srv.url, EP);
      const res = await a.handshake();
      const b = new PollingSession(srv.url, EP);
      await b.handshake();
      const withOrigin = await request(eioUrl(srv.url, EP, { EIO: "4", transport: "polling" }), {
        headers: { origin: "http://app.example" },
      });
      return {
        status: res.status,
        packets: splitPayload(res.text).length,
        open: openShape(res.text),
        distinctSids: a.sid !== b.sid,
        allowOrigin: withOrigin.headers["access-control-allow-origin"],
      };
    },
    { status: 200, packets: 1, open: OPEN_POLLING, distinctSids: true, allowOrigin: "*" },
  );

  scenario(
    s,
    "CORS preflight is answered for any origin",
    async (srv) => {
      const res = await request(eioUrl(srv.url, EP, { EIO: "4", transport: "polling" }), {
        method: "OPTIONS",
        headers: {
          origin: "http://app.example",
          "access-control-request-method": "POST",
        },
      });
      return { ok: res.status >= 200 && res.status < 300, allowOrigin: res.headers["access-control-allow-origin"] };
    },
    { ok: true, allowOrigin: "*" },
  );

  scenario(
    s,
    "websocket handshake: open packet with no upgrades",
    async (srv) => {
      const ws = await WsConn.open(wsUrl(srv.url, EP));
      const first = await ws.next();
      ws.close();
      return openShape(first);
    },
    { ...OPEN_POLLING, upgrades: [] },
  );

  scenario(
    s,
    "unknown sid: GET, POST and websocket are refused with 400",
    async (srv) => {
      const url = eioUrl(srv.url, EP, { EIO: "4", transport: "polling", sid: "no-such-session" });
      const get = await request(url);
      const post = await request(url, { method: "POST", body: "4hello", headers: { "content-type": "text/plain;charset=UTF-8" } });
      let ws;
      try {
        const conn = await WsConn.open(wsUrl(srv.url, EP, { sid: "no-such-session" }));
        conn.close();
        ws = "opened";
      } catch (err) {
        ws = err.status ?? "error";
      }
      return { get: errorShape(get), post: errorShape(post), ws };
    },
    { get: UNKNOWN_SID, post: UNKNOWN_SID, ws: 400 },
  );

  scenario(
    s,
    "unknown or missing transport is refused",
    async (srv) => {
      const unknown = await request(eioUrl(srv.url, EP, { EIO: "4", transport: "carrier-pigeon" }));
      const missing = await request(eioUrl(srv.url, EP, { EIO: "4" }));
      return { unknown: errorShape(unknown), missing: errorShape(missing) };
    },
    {
      unknown: { status: 400, body: { code: 0, message: "Transport unknown" } },
      missing: { status: 400, body: { code: 0, message: "Transport unknown" } },
    },
  );

  scenario(
    s,
    "protocol versions other than EIO=4 are refused",
    async (srv) => {
      const out = {};
      for (const eio of ["3", "5", undefined]) {
        const res = await request(eioUrl(srv.url, EP, { EIO: eio, transport: "polling" }));
        out[`EIO=${eio ?? "(none)"}`] = errorShape(res);
      }
      return out;
    },
    {
      "EIO=3": { status: 400, body: { code: 5, message: "Unsupported protocol version" } },
      "EIO=5": { status: 400, body: { code: 5, message: "Unsupported protocol version" } },
      "EIO=(none)": { status: 400, body: { code: 5, message: "Unsupported protocol version" } },
    },
  );

  scenario(
    s,
    "a handshake must be a GET",
    async (srv) => {
      const res = await request(eioUrl(srv.url, EP, { EIO: "4", transport: "polling" }), {
        method: "POST",
        body: "4hello",
        headers: { "content-type": "text/plain;charset=UTF-8" },
      });
      return errorShape(res);
    },
    { status: 400, body: { code: 2, message: "Bad handshake method" } },
  );

  scenario(
    s,
    "polling: POST answers ok, GET returns the echoed text and binary packets in order",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const post = await session.post(["4hello", "4wörld ✓", "bAQID/w=="]);
      const packets = await session.receive(3);
      return { post: { status: post.status, body: post.text }, packets };
    },
    { post: { status: 200, body: "ok" }, packets: ["4hello", "4wörld ✓", "bAQID/w=="] },
  );

  scenario(
    s,
    "websocket: text and binary frames are echoed as such",
    async (srv) => {
      const ws = await WsConn.open(wsUrl(srv.url, EP));
      await ws.next(); // open packet
      ws.send("4hello");
      const text = await ws.next();
      ws.send(Buffer.from([1, 2, 3, 255]));
      const binary = await ws.next();
      ws.close();
      return { text, binary: Buffer.isBuffer(binary) ? [...binary] : binary };
    },
    { text: "4hello", binary: [1, 2, 3, 255] },
  );

  scenario(
    s,
    "upgrade: 2probe/3probe, noop to the pending GET, 5, then polling is refused",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const pending = session.get(3000);
      await sleep(50);
      const ws = await WsConn.open(wsUrl(srv.url, EP, { sid: session.sid }));
      ws.send("2probe");
      const probe = await ws.next();
      const pendingRes = await pending;
      ws.send("5");
      ws.send("4after upgrade");
      const echo = await ws.next();
      const getAfter = await session.get();
      const postAfter = await session.post("4late");
      ws.close();
      return {
        probe,
        pending: { status: pendingRes.status, body: pendingRes.text },
        echo,
        getAfter: errorShape(getAfter),
        postAfter: errorShape(postAfter),
      };
    },
    {
      probe: "3probe",
      pending: { status: 200, body: "6" },
      echo: "4after upgrade",
      getAfter: BAD_REQUEST,
      postAfter: BAD_REQUEST,
    },
  );

  // A websocket for a session that has one, or is being upgraded by one, completes its handshake
  // and is closed at once (a close frame without a status: 1005), and the first one goes on.
  for (const stage of ["upgraded", "upgrading"]) {
    scenario(
      s,
      `a second websocket for a session that is ${stage} is opened and closed at once`,
      async (srv) => {
        const session = new PollingSession(srv.url, EP);
        await session.handshake();
        const ws = await WsConn.open(wsUrl(srv.url, EP, { sid: session.sid }));
        ws.send("2probe");
        const probe = await ws.next();
        if (stage === "upgraded") {
          ws.send("5");
          ws.send("4upgraded");
          await ws.next(); // the echo: the upgrade is done
        }
        const second = await websocketFate(wsUrl(srv.url, EP, { sid: session.sid }));
        if (stage === "upgrading") ws.send("5");
        ws.send("4first still works");
        const echo = await ws.next();
        ws.close();
        return { probe, second, echo };
      },
      { probe: "3probe", second: { opened: true, closeCode: 1005, messages: [] }, echo: "4first still works" },
    );
  }

  // upgradeTimeout is 1000 ms on both servers.
  scenario(
    s,
    "upgrade timeout: a websocket that probes but never sends 5 is closed, and polling goes on",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const ws = await WsConn.open(wsUrl(srv.url, EP, { sid: session.sid }));
      const opened = Date.now();
      ws.send("2probe");
      const probe = await ws.next();
      // keep the session alive meanwhile, as a client does
      const polled = session.receive(1, { timeoutMs: 4000 });
      const closed = await Promise.race([ws.closed, sleep(4000).then(() => ({ code: "still open" }))]);
      const ms = Date.now() - opened;
      await session.post("4via polling");
      return { probe, code: closed.code, onTime: ms >= 700 && ms <= 2500 ? true : ms, packets: await polled };
    },
    { probe: "3probe", code: 1005, onTime: true, packets: ["4via polling"] },
  );

  scenario(
    s,
    "after an upgrade the heartbeat goes on over the websocket",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const ws = await WsConn.open(wsUrl(srv.url, EP, { sid: session.sid }), { autoPong: true });
      ws.send("2probe");
      await ws.next();
      ws.send("5");
      await sleep(1300); // pings at ~300 ms intervals, each answered
      const open = ws.closedAt === null;
      ws.send("4still here");
      const echo = await ws.next();
      ws.autoPong = false;
      const closed = await Promise.race([ws.closed, sleep(3000).then(() => ({ code: "still open" }))]);
      return { open, enoughPings: ws.pings >= 3 ? true : ws.pings, echo, unansweredCloses: closed.code };
    },
    { open: true, enoughPings: true, echo: "4still here", unansweredCloses: 1005 },
  );

  scenario(
    s,
    "closing the websocket after an upgrade ends the session",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const ws = await WsConn.open(wsUrl(srv.url, EP, { sid: session.sid }));
      ws.send("2probe");
      await ws.next();
      ws.send("5");
      ws.send("4upgraded");
      await ws.next();
      ws.close();
      await ws.closed;
      // Polling on an upgraded session is refused with "Bad request" until the session is gone.
      const gone = await waitFor(
        async () => {
          const res = await session.get(1000);
          return res.json?.code === 1 ? errorShape(res) : null;
        },
        { ms: 1000, every: 20, what: "the session to end" },
      ).catch(() => "still there");
      return gone;
    },
    UNKNOWN_SID,
  );

  for (const [label, frame] of [
    ["an undecodable text frame", "9nonsense"],
    ["a ping from the client", "2"],
  ]) {
    scenario(
      s,
      `websocket: ${label} ends the session`,
      async (srv) => {
        const ws = await WsConn.open(wsUrl(srv.url, EP));
        const sid = JSON.parse((await ws.next()).slice(1)).sid;
        ws.send(frame);
        const closed = await Promise.race([ws.closed, sleep(3000).then(() => ({ code: "still open" }))]);
        const poll = await request(eioUrl(srv.url, EP, { EIO: "4", transport: "polling", sid }));
        return { code: closed.code, leftover: ws.queue, poll: errorShape(poll) };
      },
      { code: 1005, leftover: [], poll: UNKNOWN_SID },
    );
  }

  scenario(
    s,
    "an upgrade that does not start with 2probe is dropped and polling goes on",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const ws = await tryWebsocket(wsUrl(srv.url, EP, { sid: session.sid }), "4not a probe");
      await session.post("4via polling");
      const packets = await session.receive(1);
      return { ws, packets };
    },
    { ws: "rejected", packets: ["4via polling"] },
  );

  scenario(
    s,
    "a websocket with a protocol version other than 4 is refused",
    async (srv) => tryWebsocket(wsUrl(srv.url, EP, { EIO: "3" }), "2probe"),
    "rejected",
  );

  scenario(
    s,
    "text with characters outside the BMP survives polling and websocket",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      await session.post(["4😀 emoji", "4𝄞 clef\u0000"]);
      const polled = await session.receive(2);
      const ws = await WsConn.open(wsUrl(srv.url, EP));
      await ws.next();
      ws.send("4😀 over ws");
      const echoed = await ws.next();
      ws.close();
      return { polled, echoed };
    },
    { polled: ["4😀 emoji", "4𝄞 clef\u0000"], echoed: "4😀 over ws" },
  );

  scenario(
    s,
    "heartbeat over websocket: ping after ~300 ms, close ~200 ms later without a pong",
    async (srv) => {
      const ws = await WsConn.open(wsUrl(srv.url, EP), { autoPong: false });
      const opened = Date.now();
      await ws.next(); // open packet
      const ping = await ws.next(2000);
      const pingAt = Date.now() - opened;
      const { code } = await ws.closed;
      const closeAt = ws.closedAt - opened;
      return {
        ping,
        code,
        pingOnTime: pingAt >= 200 && pingAt <= 800 ? true : pingAt,
        closedOnTime: closeAt >= 400 && closeAt <= 1300 ? true : closeAt,
        leftover: ws.queue,
      };
    },
    { ping: "2", code: 1005, pingOnTime: true, closedOnTime: true, leftover: [] },
  );

  scenario(
    s,
    "heartbeat over polling: ping, then the next poll gets a close, then the sid is unknown",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      const t0 = Date.now();
      await session.handshake();
      const first = await session.get(2000);
      const pingAt = Date.now() - t0;
      const second = await session.get(2000);
      const closeAt = Date.now() - t0;
      const third = await session.get();
      return {
        first: first.text,
        pingOnTime: pingAt >= 200 && pingAt <= 800 ? true : pingAt,
        second: { status: second.status, body: second.text },
        closedOnTime: closeAt >= 400 && closeAt <= 1300 ? true : closeAt,
        third: errorShape(third),
      };
    },
    { first: "2", pingOnTime: true, second: { status: 200, body: "1" }, closedOnTime: true, third: UNKNOWN_SID },
  );

  // A ping timeout is abrupt: the session is gone at once, and a client that was not polling at the
  // time learns it from a 400 on its next GET (unlike a graceful close, whose close packet waits
  // for the next GET; see the Socket.IO scenarios).
  scenario(
    s,
    "ping timeout while no GET is pending: the next GET and POST find the session gone",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      await sleep(900); // ping at ~300 ms, unanswered, timeout at ~500 ms
      const post = await session.post("4too late");
      const get = await session.get();
      return { post: errorShape(post), get: errorShape(get) };
    },
    { post: UNKNOWN_SID, get: UNKNOWN_SID },
  );

  scenario(
    s,
    "heartbeat answered: the session stays open across several pings",
    async (srv) => {
      const ws = await WsConn.open(wsUrl(srv.url, EP), { autoPong: true });
      await ws.next();
      await sleep(1300);
      const open = ws.closedAt === null;
      ws.send("4still here");
      const echo = await ws.next();
      ws.close();
      return { open, enoughPings: ws.pings >= 3 ? true : ws.pings, echo };
    },
    { open: true, enoughPings: true, echo: "4still here" },
  );

  scenario(
    s,
    "two concurrent GETs: the second is refused and the session is closed",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const first = session.get(3000);
      await sleep(100);
      const second = await session.get();
      const firstRes = await first;
      const after = await session.get();
      return {
        second: second.status,
        first: { status: firstRes.status, body: firstRes.text },
        after: errorShape(after),
      };
    },
    { second: 400, first: { status: 200, body: "1" }, after: UNKNOWN_SID },
  );

  // The reference answers the poll a client releases by closing with a noop, not a close packet.
  scenario(
    s,
    "client close packet: the pending GET gets a noop and the session is gone",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const pending = session.get(3000);
      await sleep(50);
      const post = await session.post("1");
      const pendingRes = await pending;
      const get = await session.get();
      const postAfter = await session.post("4too late");
      return {
        post: post.status,
        pending: { status: pendingRes.status, body: pendingRes.text },
        get: errorShape(get),
        post2: errorShape(postAfter),
      };
    },
    { post: 200, pending: { status: 200, body: "6" }, get: UNKNOWN_SID, post2: UNKNOWN_SID },
  );

  scenario(
    s,
    "client close packet followed by more packets in the same POST: nothing after it is handled",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      return await closeAfterPost(session, ["1", "4after the close"]);
    },
    // the noop is filtered out by closeAfterPost: no message is echoed
    { post: 200, packets: [], end: UNKNOWN_SID },
  );

  // A POST body read in full is answered `ok` by the reference whatever it carries; a packet that
  // does not decode ends the session at once (the close packet reaches the pending GET, the sid is
  // unknown afterwards). A ping from the client breaks the v4 heartbeat direction and ends it too.
  for (const [label, body] of [
    ["an unknown packet type", "9nonsense"],
    ["an empty body", ""],
    ["a ping from the client", "2"],
    ["a probe outside an upgrade", "2probe"],
  ]) {
    scenario(
      s,
      `a POST with ${label} ends the session`,
      async (srv) => {
        const session = new PollingSession(srv.url, EP);
        await session.handshake();
        return await closeAfterPost(session, body);
      },
      { post: 200, packets: ["1"], end: UNKNOWN_SID },
    );
  }

  // The packets before the bad one are handled: the echo reaches the pending GET, which then
  // carries no close packet (the session ended while nothing was polling), and the sid is unknown.
  for (const [label, body] of [
    ["a bad packet after a good one", ["4before", "9nonsense"]],
    ["a trailing separator (an empty packet)", ["4before", ""]],
  ]) {
    scenario(
      s,
      `a POST with ${label}: the good packet is handled, then the session ends`,
      async (srv) => {
        const session = new PollingSession(srv.url, EP);
        await session.handshake();
        return await closeAfterPost(session, body);
      },
      { post: 200, packets: ["4before"], end: UNKNOWN_SID },
    );
  }

  scenario(
    s,
    "a POST with a binary body (application/octet-stream) is refused and ends the session",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const post = await session.post("4hello", { headers: { "content-type": "application/octet-stream" } });
      const after = await session.get();
      // the reference's 400 has an empty body, Courier's the usual JSON error: not compared
      return { post: post.status, after: errorShape(after) };
    },
    { post: 400, after: UNKNOWN_SID },
  );

  scenario(
    s,
    "open, upgrade and noop packets from the client are ignored",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const post = await session.post(["0", "5", "6", "4still open"]);
      const packets = await session.receive(1);
      return { post: post.status, packets };
    },
    { post: 200, packets: ["4still open"] },
  );

  scenario(
    s,
    "a pong with a payload answers the ping",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const pings = [];
      for (let i = 0; i < 3; i++) {
        const res = await session.get(2000);
        pings.push(res.text);
        await session.post("3with a payload");
      }
      await session.post("4still open");
      const packets = await session.receive(1);
      return { pings, packets };
    },
    { pings: ["2", "2", "2"], packets: ["4still open"] },
  );

  scenario(
    s,
    "a pending GET aborted by the client ends the session",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const opened = Date.now();
      const abort = new AbortController();
      const pending = fetch(session.url(), { signal: abort.signal }).then(
        (res) => `answered ${res.status}`,
        () => "aborted",
      );
      await sleep(50);
      abort.abort();
      const aborted = await pending;
      // The server learns of the abort from the closed connection, shortly after. A POST (noop)
      // is answered at once either way; it must find the session gone well before the ping
      // timeout (~500 ms after the handshake) could end it instead.
      const gone = await waitFor(
        async () => {
          const res = await session.post("6");
          return res.status === 400 ? errorShape(res) : null;
        },
        { ms: 1000, every: 20, what: "the session to end" },
      ).catch(() => "still open");
      const ms = Date.now() - opened;
      return { aborted, gone, beforePingTimeout: ms < 450 ? true : ms };
    },
    { aborted: "aborted", gone: UNKNOWN_SID, beforePingTimeout: true },
  );

  scenario(
    s,
    "a POST body larger than maxPayload is refused with 413",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const big = "4" + "x".repeat(1_000_100);
      const res = await session.post(big, { timeoutMs: 10000 }).catch((err) => ({ status: `error: ${err.message}` }));
      return { status: res.status };
    },
    { status: 413 },
  );

  scenario(
    s,
    "a websocket frame larger than maxPayload closes the connection with 1009",
    async (srv) => {
      const ws = await WsConn.open(wsUrl(srv.url, EP));
      await ws.next();
      ws.send("4" + "x".repeat(1_000_100));
      const closed = await Promise.race([ws.closed, sleep(3000).then(() => ({ code: "still open" }))]);
      ws.terminate();
      return { code: closed.code };
    },
    { code: 1009 },
  );
});

describe("Socket.IO (conformance socketio at /socket.io/, namespaces / and /custom)", () => {
  const s = servers("socketio");
  const EP = "/socket.io/";

  async function connected(srv, connectPacket = "40") {
    const session = new PollingSession(srv.url, EP);
    const hs = await session.handshake();
    if (hs.status !== 200) throw new Error(`handshake answered ${hs.status} ${hs.text}`);
    const post = await session.post(connectPacket);
    if (post.status !== 200) throw new Error(`CONNECT answered ${post.status} ${post.text}`);
    const packets = await session.receive(2);
    return { session, packets };
  }

  scenario(
    s,
    "polling handshake: open packet fields",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      const res = await session.handshake();
      return { status: res.status, open: openShape(res.text) };
    },
    { status: 200, open: OPEN_POLLING },
  );

  scenario(
    s,
    "CONNECT to / answers 40 with a socket id (not the engine sid) and the auth event",
    async (srv) => {
      const { session, packets } = await connected(srv);
      const sid = JSON.parse(packets[0].slice(2)).sid;
      return { packets: packets.map(normalizeIds), sidIsNotEngineSid: typeof sid === "string" && sid !== session.sid };
    },
    { packets: ['40{"sid":"<sid>"}', '42["auth",{}]'], sidIsNotEngineSid: true },
  );

  scenario(
    s,
    "CONNECT with an auth payload: the server sees it",
    async (srv) => {
      const { packets } = await connected(srv, '40{"token":"abc","n":[1,2]}');
      // key order is the next scenario's business
      return { connect: normalizeIds(packets[0]), type: packets[1].slice(0, 2), auth: JSON.parse(packets[1].slice(2)) };
    },
    { connect: '40{"sid":"<sid>"}', type: "42", auth: ["auth", { token: "abc", n: [1, 2] }] },
  );

  // Applications compare, hash or sign payloads as text; a relay must not reorder object keys.
  scenario(
    s,
    "object keys keep their order in event arguments",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post('42["message",{"zebra":1,"apple":2,"mango":{"y":1,"b":2}}]');
      return await session.receive(1);
    },
    ['42["message-back",{"zebra":1,"apple":2,"mango":{"y":1,"b":2}}]'],
  );

  scenario(
    s,
    "EVENT round trip: 42[\"message\",...] comes back as message-back",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post('42["message",1,"two",{"three":[true,null]},"é✓"]');
      return await session.receive(1);
    },
    ['42["message-back",1,"two",{"three":[true,null]},"é✓"]'],
  );

  scenario(
    s,
    "several packets in one POST are handled in order",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post(['42["message",1]', '42["message",2]', '42["message",3]']);
      return await session.receive(3);
    },
    ['42["message-back",1]', '42["message-back",2]', '42["message-back",3]'],
  );

  scenario(
    s,
    "namespace /custom: CONNECT, auth event, EVENT round trip",
    async (srv) => {
      const { session, packets } = await connected(srv, "40/custom,");
      await session.post('42/custom,["message","x"]');
      const back = await session.receive(1);
      return [...packets, ...back].map(normalizeIds);
    },
    ['40/custom,{"sid":"<sid>"}', '42/custom,["auth",{}]', '42/custom,["message-back","x"]'],
  );

  scenario(
    s,
    "invalid namespace: CONNECT_ERROR, and the connection stays usable",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      await session.post("40/random,");
      const refused = await session.receive(1);
      await session.post("40");
      const ok = await session.receive(2);
      return [...refused, ...ok].map(normalizeIds);
    },
    ['44/random,{"message":"Invalid namespace"}', '40{"sid":"<sid>"}', '42["auth",{}]'],
  );

  scenario(
    s,
    "message-with-ack is answered with an ACK carrying the same arguments",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post('421["message-with-ack",1,"2",{"3":4}]');
      const main = await session.receive(1);
      await session.post("40/custom,");
      await session.receive(2);
      await session.post('42/custom,456["message-with-ack",[]]');
      const custom = await session.receive(1);
      return [...main, ...custom];
    },
    ['431[1,"2",{"3":4}]', "43/custom,456[[]]"],
  );

  scenario(
    s,
    "binary event and binary ack over polling (b + base64 attachments)",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post(['451-["message",{"_placeholder":true,"num":0}]', "bAQID"]);
      const event = await session.receive(2);
      await session.post(['452-7["message-with-ack",{"a":{"_placeholder":true,"num":0}},"x",{"_placeholder":true,"num":1}]', "bAA==", "b//79"]);
      const ack = await session.receive(3);
      return { event, ack };
    },
    {
      event: ['451-["message-back",{"_placeholder":true,"num":0}]', "bAQID"],
      ack: ['462-7[{"a":{"_placeholder":true,"num":0}},"x",{"_placeholder":true,"num":1}]', "bAA==", "b//79"],
    },
  );

  scenario(
    s,
    "binary event over websocket (binary frames)",
    async (srv) => {
      const ws = await WsConn.open(wsUrl(srv.url, EP));
      await ws.next(); // open
      ws.send("40");
      const connect = await ws.nextN(2);
      ws.send('451-["message",{"_placeholder":true,"num":0},"t"]');
      ws.send(Buffer.from([0, 1, 2, 253]));
      const [header, attachment] = await ws.nextN(2);
      ws.close();
      return {
        connect: connect.map(normalizeIds),
        header,
        attachment: Buffer.isBuffer(attachment) ? [...attachment] : attachment,
      };
    },
    {
      connect: ['40{"sid":"<sid>"}', '42["auth",{}]'],
      header: '451-["message-back",{"_placeholder":true,"num":0},"t"]',
      attachment: [0, 1, 2, 253],
    },
  );

  scenario(
    s,
    "upgrade to websocket keeps the Socket.IO session",
    async (srv) => {
      const { session } = await connected(srv);
      const pending = session.get(3000);
      await sleep(50);
      const ws = await WsConn.open(wsUrl(srv.url, EP, { sid: session.sid }));
      ws.send("2probe");
      const probe = await ws.next();
      await pending;
      ws.send("5");
      ws.send('42["message","over ws"]');
      const back = await ws.next();
      ws.close();
      return { probe, back };
    },
    { probe: "3probe", back: '42["message-back","over ws"]' },
  );

  scenario(
    s,
    "acks with no arguments and with a large ack id",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post(['427["message-with-ack"]', '4212345678901["message-with-ack",null]']);
      return await session.receive(2);
    },
    ["437[]", "4312345678901[null]"],
  );

  scenario(
    s,
    "an ACK for an id the server never asked for is ignored",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post(['43999["unexpected"]', '42["message","after"]']);
      return await session.receive(1);
    },
    ['42["message-back","after"]'],
  );

  for (const [label, bad] of [
    ["a string", '40"just a string"'],
    ["an array", "40[1]"],
    ["null", "40null"],
    // (digits right after the type are an ack id, so the number is negative)
    ["a number", "40-1"],
    ["true, for /custom", "40/custom,true"],
  ]) {
    scenario(
      s,
      `a CONNECT whose auth is not an object (${label}) closes the connection`,
      async (srv) => {
        const session = new PollingSession(srv.url, EP);
        await session.handshake();
        return await closeAfterPost(session, bad);
      },
      { post: 200, packets: ["1"], end: UNKNOWN_SID },
    );
  }

  scenario(
    s,
    "binary ack over websocket",
    async (srv) => {
      const ws = await WsConn.open(wsUrl(srv.url, EP));
      await ws.next();
      ws.send("40/custom,");
      await ws.nextN(2);
      ws.send('452-/custom,3["message-with-ack",{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]');
      ws.send(Buffer.from("zero"));
      ws.send(Buffer.from("one"));
      const [header, a, b] = await ws.nextN(3);
      ws.close();
      // The reference renumbers the placeholders in argument order when it re-encodes; what a client
      // gets is the arguments with the attachments put back, so that is what is compared.
      const match = /^462-\/custom,3(.*)$/.exec(header);
      if (!match) return { header };
      const attachments = [a, b].map((x) => (Buffer.isBuffer(x) ? x.toString() : `text frame ${x}`));
      const args = JSON.parse(match[1], (_k, v) => (v && v._placeholder === true ? `bin:${attachments[v.num]}` : v));
      return { args };
    },
    { args: ["bin:one", "bin:zero"] },
  );

  scenario(
    s,
    "leaving a namespace keeps the connection and the other namespace",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post("40/custom,");
      await session.receive(2);
      const leave = await session.post("41/custom,");
      await session.post('42["message","still here"]');
      const back = await session.receive(1);
      await session.post("40/custom,");
      const again = await session.receive(2);
      return { leave: leave.status, back, again: again.map(normalizeIds) };
    },
    {
      leave: 200,
      back: ['42["message-back","still here"]'],
      again: ['40/custom,{"sid":"<sid>"}', '42/custom,["auth",{}]'],
    },
  );

  scenario(
    s,
    "connect timeout: without a CONNECT the server closes the session after ~1 s",
    async (srv) => {
      const session = new PollingSession(srv.url, EP);
      await session.handshake();
      const { packets, end, ms } = await pollUntilEnd(session, 4000);
      return { packets, end, onTime: ms >= 700 && ms <= 2500 ? true : ms };
    },
    { packets: ["1"], end: UNKNOWN_SID, onTime: true },
  );

  // These close the connection. The scenarios keep a GET pending while posting the bad packet, as a
  // stock client usually does, and the close packet `1` reaches that GET.
  for (const [label, bad] of [
    ["broken JSON", '42["message"'],
    ["payload not an array", '42{"a":1}'],
    ["empty event array", "42[]"],
    ["unknown packet type", "49"],
    ["unknown packet type 7", "47"],
    ["unknown packet type 8", '48["message"]'],
    ["packet type not a digit", '4x["message"]'],
    ["namespace without a leading slash", "40custom,"],
    ["EVENT in a namespace without a leading slash", '42custom,["message"]'],
    ["ack id that is not a number", '42x1["message-with-ack"]'],
    ["ACK whose payload is an object", '431{"a":1}'],
    ["ACK whose payload is a string", '431"a"'],
    ["DISCONNECT with a payload", '41{"a":1}'],
    ["BINARY_EVENT announcing no attachment", '450-["message"]'],
    ["BINARY_EVENT with a malformed attachment count", '45x-["message",{"_placeholder":true,"num":0}]'],
    ["binary message while no attachment is expected", ["bAQID"]],
    ["text packet while attachments are expected", ['452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', "bAQ==", '42["message","x"]']],
    ["placeholder beyond the attachments", ['451-["message",{"_placeholder":true,"num":1}]', "bAQ=="]],
    ["placeholder whose num is not a number", ['451-["message",{"_placeholder":true,"num":"0"}]', "bAQ=="]],
    ["placeholder without num", ['451-["message",{"_placeholder":true}]', "bAQ=="]],
    ...["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"].map((name) => [
      `reserved event name ${name}`,
      `42["${name}"]`,
    ]),
  ]) {
    scenario(
      s,
      `a malformed Socket.IO packet (${label}) closes the connection`,
      async (srv) => {
        const { session } = await connected(srv);
        return await closeAfterPost(session, bad);
      },
      { post: 200, packets: ["1"], end: UNKNOWN_SID },
    );
  }

  // A graceful close while no GET is pending (a stock client is often between two polls) keeps the
  // close packet for the next GET. A server that dropped the session at once would answer that GET
  // with 400, and socket.io-client would report "transport error" instead of "transport close".
  scenario(
    s,
    "a close while no GET is pending is delivered to the next GET",
    async (srv) => {
      const { session } = await connected(srv);
      const post = await session.post('42["message"');
      await sleep(50);
      const next = await session.get();
      const after = await session.get();
      // the reference puts a noop before the close; clients ignore noops
      const packets = next.status === 200 ? splitPayload(next.text).filter((p) => p !== "6") : next.text;
      return { post: post.status, next: { status: next.status, packets }, after: errorShape(after) };
    },
    { post: 200, next: { status: 200, packets: ["1"] }, after: UNKNOWN_SID },
  );

  scenario(
    s,
    "CONNECT to /custom without the trailing comma, and with an auth payload",
    async (srv) => {
      const bare = await connected(srv, "40/custom");
      await bare.session.post('42/custom,["message","x"]');
      const back = await bare.session.receive(1);
      const withAuth = await connected(srv, '40/custom,{"token":"t"}');
      return [...bare.packets, ...back, ...withAuth.packets].map(normalizeIds);
    },
    [
      '40/custom,{"sid":"<sid>"}',
      '42/custom,["auth",{}]',
      '42/custom,["message-back","x"]',
      '40/custom,{"sid":"<sid>"}',
      '42/custom,["auth",{"token":"t"}]',
    ],
  );

  scenario(
    s,
    "over websocket, an EVENT for a namespace not joined closes the websocket",
    async (srv) => {
      const ws = await WsConn.open(wsUrl(srv.url, EP));
      await ws.next(); // open
      ws.send("40");
      await ws.nextN(2);
      ws.send('42/custom,["message","x"]');
      const closed = await Promise.race([ws.closed, sleep(1500).then(() => null)]);
      ws.terminate();
      return { closeCode: closed ? closed.code : "still open", messages: ws.queue };
    },
    { closeCode: 1005, messages: [] },
  );

  // Only EVENTs ask for acks; an id on a CONNECT is read and then means nothing.
  scenario(
    s,
    "a CONNECT carrying an ack id is accepted",
    async (srv) => {
      const { packets } = await connected(srv, "407");
      return packets.map(normalizeIds);
    },
    ['40{"sid":"<sid>"}', '42["auth",{}]'],
  );

  // "If the server does not receive a CONNECT packet first, then it MUST close the connection
  // immediately": well before the connect timeout (1 s) could be what closes it.
  for (const [label, first] of [
    ["an EVENT", '42["message","too early"]'],
    ["an ACK", "431[]"],
    ["a DISCONNECT", "41"],
    ["a CONNECT_ERROR", '44{"message":"no"}'],
  ]) {
    scenario(
      s,
      `${label} before any CONNECT closes the connection at once`,
      async (srv) => {
        const session = new PollingSession(srv.url, EP);
        await session.handshake();
        const start = Date.now();
        const seen = await closeAfterPost(session, first);
        const ms = Date.now() - start;
        return { ...seen, beforeConnectTimeout: ms < 600 ? true : ms };
      },
      { post: 200, packets: ["1"], end: UNKNOWN_SID, beforeConnectTimeout: true },
    );
  }

  // Once one namespace is joined, a packet for another one that is not joined breaks the protocol
  // just the same.
  for (const [label, bad] of [
    ["an EVENT for /custom, not joined", '42/custom,["message","x"]'],
    ["an ACK for /custom, not joined", "43/custom,1[]"],
    ["a DISCONNECT for /custom, not joined", "41/custom,"],
    ["a CONNECT_ERROR from the client", '44{"message":"no"}'],
  ]) {
    scenario(
      s,
      `joined to /: ${label} closes the connection`,
      async (srv) => {
        const { session } = await connected(srv);
        return await closeAfterPost(session, bad);
      },
      { post: 200, packets: ["1"], end: UNKNOWN_SID },
    );
  }

  scenario(
    s,
    "an EVENT for a namespace the client left closes the connection",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post("40/custom,");
      await session.receive(2);
      await session.post("41/custom,");
      return await closeAfterPost(session, '42/custom,["message","gone"]');
    },
    { post: 200, packets: ["1"], end: UNKNOWN_SID },
  );

  // The connect timeout is for the first CONNECT: a client that joined and then left every
  // namespace keeps its connection, and may join again later.
  scenario(
    s,
    "leaving the only namespace keeps the connection past the connect timeout; CONNECT again works",
    async (srv) => {
      const { session } = await connected(srv);
      const leave = await session.post("41");
      const idle = await keepAlive(session, 1300);
      await session.post("40");
      const again = await session.receive(2);
      await session.post('42["message","back"]');
      const back = await session.receive(1);
      return { leave: leave.status, idle, again: [...again, ...back].map(normalizeIds) };
    },
    {
      leave: 200,
      idle: [],
      again: ['40{"sid":"<sid>"}', '42["auth",{}]', '42["message-back","back"]'],
    },
  );

  scenario(
    s,
    "a server-side disconnect of one namespace leaves the others joined",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post("40/custom,");
      await session.receive(2);
      await session.post('42/custom,["server-disconnect"]');
      const disconnect = await session.receive(1);
      await session.post('42["message","still here"]');
      const back = await session.receive(1);
      await session.post("40/custom,");
      const again = await session.receive(2);
      return { disconnect, back, again: again.map(normalizeIds) };
    },
    {
      disconnect: ["41/custom,"],
      back: ['42["message-back","still here"]'],
      again: ['40/custom,{"sid":"<sid>"}', '42/custom,["auth",{}]'],
    },
  );

  scenario(
    s,
    "an ACK without an id or without a payload is ignored",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post(["43[]", "431", '42["message","after"]']);
      return await session.receive(1);
    },
    ['42["message-back","after"]'],
  );

  scenario(
    s,
    "the largest exact ack id (2^53 - 1) comes back unchanged",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post('429007199254740991["message-with-ack",1]');
      return await session.receive(1);
    },
    ["439007199254740991[1]"],
  );

  // Only binary packets have attachments; in an EVENT such an object is ordinary data.
  scenario(
    s,
    "a placeholder-shaped object in a plain EVENT is data",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post('42["message",{"_placeholder":true,"num":0}]');
      return await session.receive(1);
    },
    ['42["message-back",{"_placeholder":true,"num":0}]'],
  );

  // An attachment no placeholder refers to is not an argument. Courier passes it on (what a client
  // rebuilds is the same), so the rebuilt arguments are compared, as elsewhere.
  scenario(
    s,
    "a BINARY_EVENT with an attachment no placeholder refers to",
    async (srv) => {
      const { session } = await connected(srv);
      await session.post(['452-["message",{"_placeholder":true,"num":1}]', "bAQ==", "bAg=="]);
      const [header] = await session.receive(1);
      const match = /^45(\d+)-(.*)$/.exec(header);
      if (!match) return { header };
      const attachments = await session.receive(Number(match[1]));
      const args = JSON.parse(match[2], (_k, v) => (v && v._placeholder === true ? `bin:${attachments[v.num]}` : v));
      return { args };
    },
    { args: ["message-back", "bin:bAg=="] },
  );
});
