"""Requests the Engine.IO endpoint must refuse, payload limits, and a handshake flood.

HTTP errors are checked on the conformance example (`engineio` mode, /engine.io/) and on
`courier serve` (/socket.io/); the payload limits and the flood run against `courier
serve` with small settings so they stay quick.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from support import Api, eventually
from wire import Polling, SioPolling, SioWebSocket, WebSocket, parse_sio, websocket_rejected

# ---------------------------------------------------------------- HTTP 400 answers

TRANSPORT_UNKNOWN, UNKNOWN_SID, BAD_HANDSHAKE_METHOD, BAD_REQUEST, FORBIDDEN, UNSUPPORTED_PROTOCOL = range(6)

BAD_REQUESTS = {
    "unknown-sid-get": ("GET", {"EIO": "4", "transport": "polling", "sid": "no-such-session"}, UNKNOWN_SID),
    "unknown-sid-post": ("POST", {"EIO": "4", "transport": "polling", "sid": "no-such-session"}, UNKNOWN_SID),
    "unknown-transport": ("GET", {"EIO": "4", "transport": "carrier-pigeon"}, TRANSPORT_UNKNOWN),
    "missing-transport": ("GET", {"EIO": "4"}, TRANSPORT_UNKNOWN),
    "handshake-with-put": ("PUT", {"EIO": "4", "transport": "polling"}, BAD_HANDSHAKE_METHOD),
    "handshake-with-post": ("POST", {"EIO": "4", "transport": "polling"}, BAD_HANDSHAKE_METHOD),
    "handshake-with-delete": ("DELETE", {"EIO": "4", "transport": "polling"}, BAD_HANDSHAKE_METHOD),
    "eio-3": ("GET", {"EIO": "3", "transport": "polling"}, UNSUPPORTED_PROTOCOL),
    "eio-5": ("GET", {"EIO": "5", "transport": "polling"}, UNSUPPORTED_PROTOCOL),
    "eio-abc": ("GET", {"EIO": "abc", "transport": "polling"}, UNSUPPORTED_PROTOCOL),
    "eio-missing": ("GET", {"transport": "polling"}, UNSUPPORTED_PROTOCOL),
}


class Endpoint:
    def __init__(self, server, path):
        self.server = server
        self.path = path
        self.url = server.url + path


@pytest.fixture(params=["conformance", "courier"])
def endpoint(request):
    if request.param == "conformance":
        return Endpoint(request.getfixturevalue("start_conformance")("engineio"), "/engine.io/")
    return Endpoint(request.getfixturevalue("start_courier")(), "/socket.io/")


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_http_400_with_a_json_error(endpoint, case):
    method, query, code = BAD_REQUESTS[case]
    r = requests.request(method, endpoint.url, params=query, data="4hello" if method == "POST" else None, timeout=5)
    assert r.status_code == 400, f"{case}: HTTP {r.status_code} {r.text!r}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, f"{case}: {body}"
    assert isinstance(body["message"], str) and body["message"], body
    if code == UNKNOWN_SID:
        assert body["message"] == "Session ID unknown"
    # and the endpoint still opens sessions normally
    assert Polling(endpoint.server.url, path=endpoint.path).handshake()["sid"]


@pytest.mark.parametrize(
    "query",
    [
        {"EIO": "4", "transport": "websocket", "sid": "no-such-session"},
        {"EIO": "3", "transport": "websocket"},
        {"transport": "websocket"},
        {"EIO": "4", "transport": "carrier-pigeon"},
    ],
    ids=["unknown-sid", "eio-3", "eio-missing", "unknown-transport"],
)
def test_bad_websocket_requests_are_refused(endpoint, query):
    # Refused at the HTTP level (400), or opened and closed at once without a session.
    outcome = websocket_rejected(endpoint.server.url, endpoint.path, query)
    assert outcome in ("http 400", "closed"), f"websocket {query}: {outcome}"
    ws = WebSocket(endpoint.server.url, path=endpoint.path)
    try:
        assert ws.handshake()["sid"]
    finally:
        ws.close()


# ---------------------------------------------------------------- max_payload

SMALL_PAYLOAD = "[engine]\nmax_payload = 1000\n"


@pytest.fixture
def small_courier(start_courier):
    return start_courier(SMALL_PAYLOAD)


def chat_event(size, ack=None):
    """A Socket.IO EVENT packet (with the Engine.IO "4") of about `size` bytes."""
    head = "42" + ("" if ack is None else str(ack)) + '["chat","'
    return head + "x" * (size - len(head) - 2) + '"]'


def good_python_client(sio_client, server):
    c = sio_client()
    c.connect(server.url, transports=["websocket"], wait_timeout=5)
    assert c.call("courier:join", "good", timeout=5)["ok"] is True
    return c


def test_max_payload_is_announced(small_courier):
    assert Polling(small_courier.url, path="/socket.io/").handshake()["maxPayload"] == 1000
    ws = WebSocket(small_courier.url, path="/socket.io/")
    try:
        assert ws.handshake()["maxPayload"] == 1000
    finally:
        ws.close()


def test_polling_post_over_max_payload_gets_413(small_courier, sio_client):
    good = good_python_client(sio_client, small_courier)

    bad = SioPolling(small_courier.url)
    bad.send_sio("0")
    assert parse_sio(bad.recv_sio(1)[0])["type"] == 0
    body = chat_event(2000)
    assert len(body.encode()) > 1000
    r = bad.post_raw(body)
    assert r.status_code == 413, f"a {len(body)}-byte POST answered {r.status_code} {r.text!r}"

    # a body under the limit is fine
    ok = SioPolling(small_courier.url)
    ok.send_sio("0")
    assert parse_sio(ok.recv_sio(1)[0])["type"] == 0
    body = chat_event(900, ack=1)
    r = ok.post_raw(body)
    assert r.status_code == 200 and r.text == "ok", (r.status_code, r.text)
    ack = parse_sio(ok.recv_sio(1)[0])
    assert ack["type"] == 3 and ack["id"] == 1 and ack["data"] == [{"ok": True, "recipients": 0}]

    assert good.call("courier:join", "after-413", timeout=5)["ok"] is True


def test_websocket_frame_over_max_payload_closes_the_connection(small_courier, sio_client):
    good = good_python_client(sio_client, small_courier)

    ok = SioWebSocket(small_courier.url)
    try:
        assert ok.connect("/")["type"] == 0
        ok.send(chat_event(900, ack=1))
        ack = parse_sio(ok.recv_sio())
        assert ack["type"] == 3 and ack["id"] == 1 and ack["data"] == [{"ok": True, "recipients": 0}]
    finally:
        ok.close()

    bad = SioWebSocket(small_courier.url)
    try:
        assert bad.connect("/")["type"] == 0
        try:
            bad.send(chat_event(2000, ack=2))
        except OSError:
            pass
        assert bad.wait_closed(timeout=3), "a 2000-byte frame was accepted with max_payload = 1000"
    finally:
        bad.close()

    bad = SioWebSocket(small_courier.url)
    try:
        assert bad.connect("/")["type"] == 0
        try:
            bad.send(b"\x00" * 5000)
        except OSError:
            pass
        assert bad.wait_closed(timeout=3), "a 5000-byte binary frame was accepted with max_payload = 1000"
    finally:
        bad.close()

    assert good.call("courier:join", "after-big-frame", timeout=5)["ok"] is True


# ---------------------------------------------------------------- handshake flood


def test_flood_of_handshakes_that_never_connect(start_courier, sio_client):
    server = start_courier("[engine]\nconnect_timeout_ms = 500\n")
    api = Api(server.url)
    total, workers = 500, 4
    sids = []
    failures = []
    lock = threading.Lock()

    def flood(count):
        http = requests.Session()
        for _ in range(count):
            try:
                s = Polling(server.url, path="/socket.io/")
                s.http = http
                sid = s.handshake()["sid"]
                with lock:
                    sids.append(sid)
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                with lock:
                    failures.append(repr(e))
        http.close()

    threads = [threading.Thread(target=flood, args=(total // workers,), daemon=True) for _ in range(workers)]
    started = time.monotonic()
    for t in threads:
        t.start()

    eventually(lambda: len(sids) >= 50 or failures, timeout=10, message="flood under way")
    # During the flood a real client connects and is answered promptly.
    t0 = time.monotonic()
    real = sio_client()
    real.connect(server.url, transports=["websocket"], wait_timeout=5)
    ack = real.call("courier:join", "during-flood", timeout=5)
    latency = time.monotonic() - t0
    assert ack["ok"] is True
    still_flooding = any(t.is_alive() for t in threads)
    peak = api.health()["connections"]

    for t in threads:
        t.join(60)
    flood_time = time.monotonic() - started
    assert not failures, f"{len(failures)} handshakes failed, first: {failures[:3]}"
    assert len(sids) == total and len(set(sids)) == total
    assert latency < 5, f"the real client took {latency:.2f} s to connect and get an ack"

    # Sessions that never sent CONNECT are closed after connect_timeout_ms.
    health = eventually(
        lambda: (h := api.health())["connections"] <= 2 and h,
        timeout=5,
        interval=0.2,
        message="connections back near 0 after the flood",
    )
    for sid in sids[:5] + sids[-5:]:
        assert Polling(server.url, path="/socket.io/", sid=sid).is_closed(timeout=2), f"flood session {sid} still open"

    # The client that did connect is not touched by the connect timeout.
    assert real.connected
    assert real.call("courier:join", "after-flood", timeout=5)["ok"] is True
    print(
        f"flood: {total} handshakes in {flood_time:.2f} s, real client answered in {latency:.3f} s "
        f"(flood still running: {still_flooding}), peak connections {peak}, after: {health}"
    )
