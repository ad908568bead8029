"""Raw Engine.IO v4 / Socket.IO v5 helpers for talking to a server byte by byte.

Nothing here hides the protocol: packets are plain strings ("4hello", "42[...]") or
bytes (binary messages), exactly as the specification writes them. HTTP long-polling
goes through `requests`, WebSocket through `websocket-client`.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from urllib.parse import urlencode

import requests
import websocket

RECORD_SEPARATOR = "\x1e"

# Engine.IO packet types (the first character of a text packet).
OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0123456"


# ---------------------------------------------------------------- payloads


def encode_payload(packets):
    """Join Engine.IO packets for an HTTP long-polling body.

    A str is a complete text packet ("4hello"); bytes are a binary message, sent
    as "b" + base64.
    """
    parts = []
    for p in packets:
        if isinstance(p, (bytes, bytearray)):
            parts.append("b" + base64.b64encode(bytes(p)).decode("ascii"))
        else:
            parts.append(p)
    return RECORD_SEPARATOR.join(parts)


def decode_payload(text):
    """Split a long-polling body into packets: str for text, bytes for binary."""
    out = []
    for part in text.split(RECORD_SEPARATOR):
        if part.startswith("b"):
            out.append(base64.b64decode(part[1:]))
        else:
            out.append(part)
    return out


def parse_open(packet):
    assert isinstance(packet, str) and packet.startswith(OPEN), f"expected an open packet, got {packet!r}"
    return json.loads(packet[1:])


# ---------------------------------------------------------------- polling


class Polling:
    """One Engine.IO session over HTTP long-polling."""

    def __init__(self, base_url, path="/engine.io/", sid=None):
        self.base_url = base_url.rstrip("/")
        self.path = path
        self.sid = sid
        self.http = requests.Session()
        self.open = None

    def url(self, **query):
        q = {"EIO": "4", "transport": "polling"}
        if self.sid is not None:
            q["sid"] = self.sid
        q.update({k: v for k, v in query.items() if v is not None})
        return f"{self.base_url}{self.path}?{urlencode(q)}"

    def handshake(self, timeout=5):
        r = self.http.get(self.url(), timeout=timeout)
        assert r.status_code == 200, f"handshake answered HTTP {r.status_code}: {r.text!r}"
        packets = decode_payload(r.text)
        self.open = parse_open(packets[0])
        self.sid = self.open["sid"]
        # Anything after the open packet (a Socket.IO server may already send some)
        self.pending = packets[1:]
        return self.open

    def get(self, timeout=5):
        return self.http.get(self.url(), timeout=timeout)

    def poll(self, timeout=5):
        r = self.get(timeout=timeout)
        assert r.status_code == 200, f"poll answered HTTP {r.status_code}: {r.text!r}"
        return decode_payload(r.text)

    def post_raw(self, body, timeout=5, headers=None):
        h = {"Content-Type": "text/plain;charset=UTF-8"}
        if headers:
            h.update(headers)
        if isinstance(body, str):
            body = body.encode("utf-8")
        return self.http.post(self.url(), data=body, headers=h, timeout=timeout)

    def post(self, *packets, timeout=5):
        return self.post_raw(encode_payload(packets), timeout=timeout)

    def send(self, *packets, timeout=5):
        r = self.post(*packets, timeout=timeout)
        assert r.status_code == 200, f"POST answered HTTP {r.status_code}: {r.text!r}"
        assert r.text == "ok", f"POST answered {r.text!r}, expected 'ok'"

    def receive(self, count, timeout=5.0, answer_pings=True):
        """Poll until `count` packets other than pings and noops arrived; pings get a pong."""
        got = list(getattr(self, "pending", []))
        self.pending = []
        deadline = time.monotonic() + timeout
        while len([p for p in got if p != PING]) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {count} packets, got {got!r}"
            for p in self.poll(timeout=max(left, 0.5)):
                if p == PING and answer_pings:
                    self.send(PONG)
                elif p != NOOP:
                    got.append(p)
        out = [p for p in got if p != PING]
        self.pending = out[count:]
        return out[:count]

    def is_closed(self, timeout=3.0):
        """True once the session is gone: GET answers 400, or delivers a close packet.

        Pings met on the way are answered, so a ping timeout cannot be what closes it.
        False if the session still works when `timeout` runs out.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                r = self.get(timeout=left)
            except requests.exceptions.Timeout:
                return False
            except requests.exceptions.ConnectionError:
                return True
            if r.status_code == 400:
                return True
            if r.status_code != 200:
                return True
            packets = decode_payload(r.text)
            if CLOSE in packets:
                return True
            if PING in packets:
                try:
                    pr = self.post(PONG, timeout=2)
                except requests.exceptions.RequestException:
                    return True
                if pr.status_code != 200:
                    return True

    def close(self):
        self.http.close()


# ---------------------------------------------------------------- websocket


class Closed(Exception):
    """The WebSocket connection was closed by the peer."""

    def __init__(self, code=None, reason=""):
        super().__init__(f"connection closed (code={code}, reason={reason!r})")
        self.code = code
        self.reason = reason


def ws_url(base_url, path, query):
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    else:
        base = "ws://" + base[len("http://"):]
    return f"{base}{path}?{urlencode(query)}"


class WebSocket:
    """One raw WebSocket to an Engine.IO endpoint."""

    def __init__(self, base_url, path="/engine.io/", sid=None, query=None, timeout=5):
        q = {"EIO": "4", "transport": "websocket"}
        if sid is not None:
            q["sid"] = sid
        if query:
            q.update(query)
        self.url = ws_url(base_url, path, q)
        self.ws = websocket.create_connection(self.url, timeout=timeout, enable_multithread=True)
        self.open = None
        self.backlog = []

    def handshake(self, timeout=5):
        """Read the open packet a fresh (sid-less) WebSocket session starts with."""
        self.open = parse_open(self.recv(timeout=timeout))
        return self.open

    @property
    def sid(self):
        return self.open["sid"] if self.open else None

    def send(self, packet):
        if isinstance(packet, (bytes, bytearray)):
            self.ws.send_binary(bytes(packet))
        else:
            self.ws.send(packet)

    def recv(self, timeout=5):
        """Next data frame: str for text, bytes for binary. Raises Closed."""
        self.ws.settimeout(timeout)
        try:
            opcode, data = self.ws.recv_data(control_frame=False)
        except websocket.WebSocketConnectionClosedException as e:
            raise Closed(reason=str(e)) from e
        except (ConnectionResetError, BrokenPipeError) as e:
            raise Closed(reason=str(e)) from e
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = None
            if isinstance(data, (bytes, bytearray)) and len(data) >= 2:
                code = int.from_bytes(data[:2], "big")
            elif hasattr(data, "data") and len(data.data) >= 2:
                code = int.from_bytes(data.data[:2], "big")
            raise Closed(code=code)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        return bytes(data)

    def idle(self, seconds):
        """Stay connected for `seconds`, answering pings; other packets are kept for later."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                p = self.recv(timeout=left)
            except (websocket.WebSocketTimeoutException, socket.timeout):
                return
            if p == PING:
                self.send(PONG)
            else:
                self.backlog.append(p)

    def recv_packet(self, timeout=5, answer_pings=True):
        """Next packet that is not an Engine.IO ping (answered) or noop (skipped)."""
        while self.backlog:
            p = self.backlog.pop(0)
            if p != NOOP:
                return p
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet in time")
            try:
                p = self.recv(timeout=left)
            except websocket.WebSocketTimeoutException as e:
                raise TimeoutError("no packet in time") from e
            except socket.timeout as e:
                raise TimeoutError("no packet in time") from e
            if p == PING:
                if answer_pings:
                    self.send(PONG)
                continue
            if p == NOOP:
                continue
            return p

    def recv_packets(self, count, timeout=5):
        return [self.recv_packet(timeout=timeout) for _ in range(count)]

    def wait_closed(self, timeout=3.0, answer_pings=True):
        """True if the peer closes the connection within `timeout`.

        Pings met on the way are answered (unless told not to), so a ping timeout
        cannot be what closes it. Any other packet is ignored.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                p = self.recv(timeout=left)
            except Closed:
                return True
            except (websocket.WebSocketTimeoutException, socket.timeout):
                return False
            except OSError:
                return True
            if p == PING and answer_pings:
                try:
                    self.send(PONG)
                except (websocket.WebSocketConnectionClosedException, OSError):
                    return True

    def close(self):
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass


def websocket_refused(base_url, path, query, timeout=5):
    """Try to open a WebSocket; return the HTTP status it was refused with.

    Returns None if the WebSocket opened (the caller then decides whether that is a
    failure); a connection dropped without an HTTP answer counts as status 0.
    """
    try:
        ws = websocket.create_connection(ws_url(base_url, path, query), timeout=timeout)
    except websocket.WebSocketBadStatusException as e:
        return e.status_code
    except (websocket.WebSocketConnectionClosedException, ConnectionResetError, BrokenPipeError):
        return 0
    ws.close()
    return None


def websocket_rejected(base_url, path, query, timeout=3):
    """How a server turns a WebSocket request down.

    Returns "http <status>" when the upgrade is answered with an HTTP error, "closed"
    when the WebSocket opens but is closed before any open packet, and "accepted" when
    the server sends an open packet (a session was created).
    """
    status = None
    try:
        ws = websocket.create_connection(ws_url(base_url, path, query), timeout=timeout)
    except websocket.WebSocketBadStatusException as e:
        return f"http {e.status_code}"
    except (websocket.WebSocketConnectionClosedException, ConnectionResetError, BrokenPipeError):
        return "closed"
    try:
        ws.settimeout(timeout)
        opcode, data = ws.recv_data(control_frame=False)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return "closed"
        text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
        status = "accepted" if text.startswith(OPEN) else "closed"
    except (websocket.WebSocketConnectionClosedException, OSError):
        return "closed"
    except websocket.WebSocketTimeoutException:
        return "accepted"  # left open without a word: not a refusal
    finally:
        ws.close()
    return status


# ---------------------------------------------------------------- Socket.IO over a raw WebSocket


def compact(value):
    """JSON without spaces, as Socket.IO clients write it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def placeholder(n):
    return {"_placeholder": True, "num": n}


class SioWebSocket(WebSocket):
    """A raw WebSocket that speaks Socket.IO packets ("0", "2[...]", ...) over Engine.IO messages."""

    def __init__(self, base_url, path="/socket.io/", **kw):
        super().__init__(base_url, path=path, **kw)
        self.handshake()

    def send_sio(self, packet):
        """Send one Socket.IO packet in an Engine.IO message ("4" + packet), or a binary attachment."""
        if isinstance(packet, (bytes, bytearray)):
            self.send(bytes(packet))
        else:
            self.send(MESSAGE + packet)

    def recv_sio(self, timeout=5):
        """Next Socket.IO packet (without the Engine.IO "4"), or bytes for an attachment."""
        p = self.recv_packet(timeout=timeout)
        if isinstance(p, bytes):
            return p
        assert p.startswith(MESSAGE), f"expected an Engine.IO message, got {p!r}"
        return p[1:]

    def connect(self, nsp="/", auth=None, timeout=5):
        """Send CONNECT for a namespace; returns the parsed answer (CONNECT or CONNECT_ERROR)."""
        prefix = "" if nsp == "/" else nsp + ","
        self.send_sio("0" + prefix + (compact(auth) if auth is not None else ""))
        return parse_sio(self.recv_sio(timeout=timeout))

    def emit(self, nsp, *args, ack=None):
        prefix = "" if nsp == "/" else nsp + ","
        ack_s = "" if ack is None else str(ack)
        self.send_sio("2" + prefix + ack_s + compact(list(args)))


def parse_sio(packet):
    """Split a Socket.IO packet string into its parts.

    Returns a dict: type (int), attachments (int or None), nsp ("/" by default),
    id (int or None) and data (decoded JSON or None).
    """
    assert isinstance(packet, str) and packet, f"not a Socket.IO packet: {packet!r}"
    kind = int(packet[0])
    i = 1
    attachments = None
    if kind in (5, 6):
        dash = packet.index("-", i)
        attachments = int(packet[i:dash])
        i = dash + 1
    nsp = "/"
    if i < len(packet) and packet[i] == "/":
        comma = packet.find(",", i)
        if comma == -1:
            nsp, i = packet[i:], len(packet)
        else:
            nsp, i = packet[i:comma], comma + 1
    start = i
    while i < len(packet) and packet[i].isdigit():
        i += 1
    ack_id = int(packet[start:i]) if i > start else None
    rest = packet[i:]
    data = json.loads(rest) if rest else None
    return {"type": kind, "attachments": attachments, "nsp": nsp, "id": ack_id, "data": data}


class SioPolling(Polling):
    """Socket.IO packets over a raw HTTP long-polling session."""

    def __init__(self, base_url, path="/socket.io/"):
        super().__init__(base_url, path=path)
        self.handshake()

    def send_sio(self, *packets):
        self.send(*[p if isinstance(p, (bytes, bytearray)) else MESSAGE + p for p in packets])

    def recv_sio(self, count=1, timeout=5):
        out = []
        for p in self.receive(count, timeout=timeout):
            if isinstance(p, bytes):
                out.append(p)
            else:
                assert p.startswith(MESSAGE), f"expected an Engine.IO message, got {p!r}"
                out.append(p[1:])
        return out
