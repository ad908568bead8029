"""Engine.IO v4, byte by byte, against the conformance example in `engineio` mode.

The server is a bare Engine.IO endpoint at /engine.io/ that echoes every message, with
pingInterval 300 ms, pingTimeout 200 ms and maxPayload 1000000.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time

import requests

from wire import NOOP, PING, PONG, Polling, WebSocket, decode_payload, websocket_refused

PING_INTERVAL = 0.300
PING_TIMEOUT = 0.200
OPEN_KEYS = {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}


def background_get(session, timeout=5):
    """Start a long-polling GET in a thread; returns (thread, result dict)."""
    result = {}

    def run():
        try:
            result["response"] = session.get(timeout=timeout)
        except requests.RequestException as e:
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.05)  # let the GET reach the server and wait there
    return t, result


# ---------------------------------------------------------------- handshake


def test_polling_handshake_announces_session_parameters(eio_server):
    s = Polling(eio_server.url)
    r = s.http.get(s.url(), timeout=5)
    assert r.status_code == 200
    packets = decode_payload(r.text)
    assert packets[0].startswith("0"), r.text
    opened = json.loads(packets[0][1:])
    assert set(opened) == OPEN_KEYS
    assert isinstance(opened["sid"], str) and opened["sid"]
    assert opened["upgrades"] == ["websocket"]
    assert opened["pingInterval"] == 300
    assert opened["pingTimeout"] == 200
    assert opened["maxPayload"] == 1000000


def test_each_handshake_gets_its_own_sid(eio_server):
    sids = {Polling(eio_server.url).handshake()["sid"] for _ in range(5)}
    assert len(sids) == 5


def test_websocket_handshake_announces_no_upgrades(eio_server):
    ws = WebSocket(eio_server.url)
    try:
        opened = ws.handshake()
        assert set(opened) == OPEN_KEYS
        assert isinstance(opened["sid"], str) and opened["sid"]
        assert opened["upgrades"] == []
        assert opened["pingInterval"] == 300
        assert opened["pingTimeout"] == 200
        assert opened["maxPayload"] == 1000000
    finally:
        ws.close()


def test_cors_headers_for_any_origin(eio_server):
    r = requests.get(
        f"{eio_server.url}/engine.io/?EIO=4&transport=polling",
        headers={"Origin": "http://example.test"},
        timeout=5,
    )
    assert r.status_code == 200
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", "http://example.test")


# ---------------------------------------------------------------- messages


def test_polling_echoes_a_text_message(eio_server):
    s = Polling(eio_server.url)
    s.handshake()
    r = s.post("4hello")
    assert r.status_code == 200 and r.text == "ok"
    assert s.receive(1) == ["4hello"]


def test_polling_payload_joins_packets_with_record_separator(eio_server):
    s = Polling(eio_server.url)
    s.handshake()
    body = "4test1\x1e4test2\x1e" + "b" + base64.b64encode(bytes([1, 2, 3, 4])).decode()
    r = s.post_raw(body)
    assert r.status_code == 200 and r.text == "ok"
    time.sleep(0.1)  # the three echoes are queued well before the next GET
    r = s.get()
    assert r.status_code == 200
    assert r.text == "4test1\x1e4test2\x1ebAQIDBA=="


def test_polling_binary_goes_both_ways_as_base64(eio_server):
    s = Polling(eio_server.url)
    s.handshake()
    blob = bytes(range(256))
    s.send(blob)
    assert s.receive(1) == [blob]


def test_polling_utf8_text_round_trips(eio_server):
    s = Polling(eio_server.url)
    s.handshake()
    s.send("4héllo wörld ✓ 🚀")
    assert s.receive(1) == ["4héllo wörld ✓ 🚀"]


def test_websocket_echoes_text_and_binary(eio_server):
    ws = WebSocket(eio_server.url)
    try:
        ws.handshake()
        ws.send("4hello")
        assert ws.recv_packet() == "4hello"
        ws.send(bytes([1, 2, 3, 4]))
        got = ws.recv_packet()
        assert isinstance(got, bytes), "binary must come back in a binary frame"
        assert got == bytes([1, 2, 3, 4])
        ws.send("4héllo ✓")
        assert ws.recv_packet() == "4héllo ✓"
    finally:
        ws.close()


def test_websocket_keeps_message_order(eio_server):
    ws = WebSocket(eio_server.url)
    try:
        ws.handshake()
        for i in range(50):
            ws.send(f"4m{i}")
        assert ws.recv_packets(50) == [f"4m{i}" for i in range(50)]
    finally:
        ws.close()


# ---------------------------------------------------------------- heartbeat


def test_polling_server_pings_and_pongs_keep_the_session(eio_server):
    s = Polling(eio_server.url)
    s.handshake()
    start = time.monotonic()
    pings = 0
    while pings < 4:
        packets = s.poll(timeout=3)
        if PING in packets:
            pings += 1
            elapsed = time.monotonic() - start
            s.send(PONG)
            start = time.monotonic()
            # the ping comes after about pingInterval, not much earlier nor much later
            assert 0.15 <= elapsed <= 1.0, f"ping after {elapsed:.3f} s, pingInterval is 0.3 s"
    # more than pingInterval + pingTimeout has passed: answering pings kept it open
    s.send("4still here")
    assert s.receive(1) == ["4still here"]


def test_polling_session_closes_on_ping_timeout(eio_server):
    s = Polling(eio_server.url)
    s.handshake()
    time.sleep(PING_INTERVAL + PING_TIMEOUT + 0.3)
    r = s.get()
    assert r.status_code == 400, f"session should be gone after a ping timeout, got {r.status_code} {r.text!r}"
    assert r.json()["code"] == 1


def test_websocket_server_pings_and_pongs_keep_the_session(eio_server):
    ws = WebSocket(eio_server.url)
    try:
        ws.handshake()
        start = time.monotonic()
        for _ in range(4):
            p = ws.recv(timeout=2)
            assert p == PING, f"expected a ping, got {p!r}"
            elapsed = time.monotonic() - start
            assert 0.15 <= elapsed <= 1.0, f"ping after {elapsed:.3f} s, pingInterval is 0.3 s"
            ws.send(PONG)
            start = time.monotonic()
        ws.send("4alive")
        assert ws.recv_packet() == "4alive"
    finally:
        ws.close()


def test_websocket_closes_on_ping_timeout(eio_server):
    ws = WebSocket(eio_server.url)
    try:
        ws.handshake()
        start = time.monotonic()
        assert ws.wait_closed(timeout=3, answer_pings=False), "no close after pings went unanswered"
        elapsed = time.monotonic() - start
        assert elapsed >= PING_INTERVAL + PING_TIMEOUT - 0.1, f"closed too early ({elapsed:.3f} s)"
    finally:
        ws.close()


# ---------------------------------------------------------------- upgrade


def test_upgrade_from_polling_to_websocket(eio_server):
    s = Polling(eio_server.url)
    opened = s.handshake()
    assert opened["upgrades"] == ["websocket"]
    waiting_get, result = background_get(s)

    ws = WebSocket(eio_server.url, sid=s.sid)
    try:
        ws.send("2probe")
        assert ws.recv_packet() == "3probe"

        # The GET that was waiting is ended with a noop so the client can pause polling.
        waiting_get.join(3)
        assert not waiting_get.is_alive(), "the pending GET was not released during the upgrade"
        assert "response" in result, result
        assert result["response"].status_code == 200
        seen = decode_payload(result["response"].text)
        if PING in seen:
            s.send(PONG)
        deadline = time.monotonic() + 2
        while NOOP not in seen:
            assert time.monotonic() < deadline, f"no noop packet on polling during the upgrade: {seen!r}"
            more = s.poll(timeout=2)
            if PING in more:
                s.send(PONG)
            seen += more

        ws.send("5")
        ws.send("4over websocket")
        assert ws.recv_packet() == "4over websocket"

        # The session now lives on the WebSocket: polling with its sid is refused.
        r = s.get()
        assert r.status_code == 400, f"GET after upgrade answered {r.status_code} {r.text!r}"
        r = s.post("4sneaky")
        assert r.status_code == 400, f"POST after upgrade answered {r.status_code} {r.text!r}"

        # and the WebSocket carries the heartbeat from now on
        ws.idle(PING_INTERVAL + PING_TIMEOUT + 0.2)
        ws.send("4still")
        assert ws.recv_packet() == "4still"
    finally:
        ws.close()


def test_second_websocket_for_an_upgraded_session_is_refused(eio_server):
    s = Polling(eio_server.url)
    s.handshake()
    ws = WebSocket(eio_server.url, sid=s.sid)
    try:
        ws.send("2probe")
        assert ws.recv_packet() == "3probe"
        ws.send("5")
        ws.send("4first")
        assert ws.recv_packet() == "4first"

        status = websocket_refused(eio_server.url, "/engine.io/", {"EIO": "4", "transport": "websocket", "sid": s.sid})
        if status is None:
            # Opened at the HTTP level: it must then be closed without carrying the session.
            second = WebSocket(eio_server.url, sid=s.sid)
            try:
                second.send("4intruder")
                assert second.wait_closed(timeout=2, answer_pings=False), "second websocket was kept open"
            finally:
                second.close()
        else:
            assert status == 400 or status == 0, status

        ws.send("4first again")
        assert ws.recv_packet() == "4first again"
    finally:
        ws.close()


# ---------------------------------------------------------------- close


def test_polling_close_packet_ends_the_session(eio_server):
    s = Polling(eio_server.url)
    s.handshake()
    waiting_get, result = background_get(s)
    r = s.post("1")
    assert r.status_code == 200 and r.text == "ok"
    waiting_get.join(3)
    assert not waiting_get.is_alive(), "the pending GET was left hanging after close"
    r = s.get()
    assert r.status_code == 400
    assert r.json()["code"] == 1


def test_duplicate_get_is_an_error_and_closes_the_session(eio_server):
    s = Polling(eio_server.url)
    s.handshake()
    first, result = background_get(s)
    second = s.get(timeout=3)
    assert second.status_code == 400, f"a second concurrent GET answered {second.status_code} {second.text!r}"
    first.join(3)
    assert not first.is_alive()
    assert s.is_closed(timeout=2)


# ---------------------------------------------------------------- unknown sessions


def test_unknown_sid_is_refused_on_polling(eio_server):
    s = Polling(eio_server.url, sid="not-a-session")
    for r in (s.get(), s.post("4hi")):
        assert r.status_code == 400
        assert r.json() == {"code": 1, "message": "Session ID unknown"}


def test_unknown_sid_is_refused_on_websocket(eio_server):
    status = websocket_refused(eio_server.url, "/engine.io/", {"EIO": "4", "transport": "websocket", "sid": "nope"})
    assert status == 400, f"websocket with unknown sid: expected HTTP 400, got {status}"


def test_closed_websocket_does_not_affect_other_sessions(eio_server):
    keep = WebSocket(eio_server.url)
    try:
        keep.handshake()
        for _ in range(5):
            w = WebSocket(eio_server.url)
            w.handshake()
            w.ws.sock.close()  # drop the TCP connection without a close frame
        keep.send("4ok")
        assert keep.recv_packet() == "4ok"
    finally:
        keep.close()


def test_many_sessions_at_once(eio_server):
    n = 20
    sockets = [WebSocket(eio_server.url) for _ in range(n)]
    try:
        for i, w in enumerate(sockets):
            w.handshake()
            w.send(f"4from {i}")
        for i, w in enumerate(sockets):
            assert w.recv_packet() == f"4from {i}"
    finally:
        for w in sockets:
            w.close()


def test_overlapping_post_is_an_error(eio_server):
    s = Polling(eio_server.url)
    s.handshake()
    # A first POST whose body is still on its way...
    raw = socket.create_connection((eio_server.host, eio_server.port), timeout=5)
    try:
        body = b"4first"
        raw.sendall(
            f"POST /engine.io/?EIO=4&transport=polling&sid={s.sid} HTTP/1.1\r\n"
            f"Host: {eio_server.host}:{eio_server.port}\r\nContent-Type: text/plain;charset=UTF-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:2]
        )
        time.sleep(0.1)
        # ...and a second one at the same time: one POST at a time per session.
        second = s.post("4second")
        assert second.status_code == 400, f"overlapping POST answered {second.status_code} {second.text!r}"
        try:
            raw.sendall(body[2:])
        except OSError:
            pass
    finally:
        raw.close()
    assert s.is_closed(timeout=2), "the session survived overlapping POSTs"
