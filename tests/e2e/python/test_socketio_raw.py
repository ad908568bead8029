"""Socket.IO v5, byte by byte, against the conformance example in `socketio` mode.

The server behaves like the Socket.IO reference test server: namespaces "/" and
"/custom"; on connection it emits `auth` with the handshake auth; `message` is answered
with `message-back` and the same arguments; `message-with-ack` is acknowledged with the
same arguments. pingInterval 300 ms, pingTimeout 200 ms, connectTimeout 1000 ms.
"""

from __future__ import annotations

import time

import pytest

from wire import SioPolling, SioWebSocket, compact, parse_sio, placeholder

CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(7)


def open_socket(server, nsp="/", auth=None):
    """A raw WebSocket connected to `nsp`, its `auth` event already read."""
    ws = SioWebSocket(server.url)
    reply = ws.connect(nsp, auth)
    assert reply["type"] == CONNECT and reply["nsp"] == nsp, reply
    auth_event = parse_sio(ws.recv_sio())
    assert auth_event["type"] == EVENT and auth_event["data"][0] == "auth", auth_event
    return ws


@pytest.fixture
def sockets():
    opened = []
    yield opened
    for ws in opened:
        ws.close()


# ---------------------------------------------------------------- connect


def test_connect_to_main_namespace(sio_server, sockets):
    ws = SioWebSocket(sio_server.url)
    sockets.append(ws)
    ws.send("40")
    reply = ws.recv_packet()
    assert reply.startswith("40"), reply
    handshake = parse_sio(reply[1:])
    assert handshake["type"] == CONNECT and handshake["nsp"] == "/"
    assert isinstance(handshake["data"]["sid"], str) and handshake["data"]["sid"]
    assert parse_sio(ws.recv_sio())["data"] == ["auth", {}]


def test_connect_auth_payload_reaches_the_server(sio_server, sockets):
    ws = SioWebSocket(sio_server.url)
    sockets.append(ws)
    auth = {"token": "123", "nested": {"list": [1, 2.5, None, True], "text": "héllo"}}
    reply = ws.connect("/", auth)
    assert reply["type"] == CONNECT, reply
    event = parse_sio(ws.recv_sio())
    assert event["type"] == EVENT and event["nsp"] == "/"
    assert event["data"] == ["auth", auth]


def test_connect_to_custom_namespace_with_auth(sio_server, sockets):
    ws = SioWebSocket(sio_server.url)
    sockets.append(ws)
    reply = ws.connect("/custom", {"token": "abc"})
    assert reply["type"] == CONNECT and reply["nsp"] == "/custom"
    assert isinstance(reply["data"]["sid"], str)
    event = parse_sio(ws.recv_sio())
    assert event["nsp"] == "/custom"
    assert event["data"] == ["auth", {"token": "abc"}]


def test_unknown_namespace_is_refused_and_the_connection_stays_usable(sio_server, sockets):
    ws = SioWebSocket(sio_server.url)
    sockets.append(ws)
    reply = ws.connect("/random")
    assert reply == {
        "type": CONNECT_ERROR,
        "attachments": None,
        "nsp": "/random",
        "id": None,
        "data": {"message": "Invalid namespace"},
    }
    # The Engine.IO connection is still there: the client may connect elsewhere.
    assert ws.connect("/")["type"] == CONNECT


def test_connection_closes_when_no_connect_arrives_in_time(sio_server, sockets):
    ws = SioWebSocket(sio_server.url)
    sockets.append(ws)
    start = time.monotonic()
    assert ws.wait_closed(timeout=4), "no CONNECT was sent, yet the connection stayed open"
    elapsed = time.monotonic() - start
    assert elapsed >= 0.7, f"closed after {elapsed:.2f} s, connectTimeout is 1 s"


# ---------------------------------------------------------------- events and acks


def test_event_is_answered_with_the_same_arguments(sio_server, sockets):
    ws = open_socket(sio_server)
    sockets.append(ws)
    args = [1, "2", {"3": [True]}, None, -0.5, "ünïcødé", {"deep": {"er": [[], {}]}}]
    ws.send_sio("2" + compact(["message", *args]))
    back = parse_sio(ws.recv_sio())
    assert back["type"] == EVENT and back["id"] is None
    assert back["data"] == ["message-back", *args]


def test_ack_carries_the_ack_id_and_arguments(sio_server, sockets):
    ws = open_socket(sio_server)
    sockets.append(ws)
    ws.send_sio('2456["message-with-ack",1,"2",{"3":[false]}]')
    ack = parse_sio(ws.recv_sio())
    assert ack == {"type": ACK, "attachments": None, "nsp": "/", "id": 456, "data": [1, "2", {"3": [False]}]}


def test_acks_match_their_ids_when_several_are_pending(sio_server, sockets):
    ws = open_socket(sio_server)
    sockets.append(ws)
    ids = [0, 1, 7, 42, 1000, 2147483647]
    for i in ids:
        ws.send_sio(f"2{i}" + compact(["message-with-ack", f"for {i}"]))
    acks = {}
    for _ in ids:
        p = parse_sio(ws.recv_sio())
        assert p["type"] == ACK
        acks[p["id"]] = p["data"]
    assert acks == {i: [f"for {i}"] for i in ids}


def test_ack_in_a_custom_namespace(sio_server, sockets):
    ws = open_socket(sio_server, "/custom")
    sockets.append(ws)
    ws.send_sio('2/custom,12["message-with-ack","x",{"y":1}]')
    ack = parse_sio(ws.recv_sio())
    assert ack["type"] == ACK and ack["nsp"] == "/custom" and ack["id"] == 12
    assert ack["data"] == ["x", {"y": 1}]


def test_binary_event_with_placeholders(sio_server, sockets):
    ws = open_socket(sio_server)
    sockets.append(ws)
    ws.send_sio("52-" + compact(["message", placeholder(0), placeholder(1)]))
    ws.send_sio(bytes([1, 2, 3]))
    ws.send_sio(bytes([4, 5, 6]))
    header = parse_sio(ws.recv_sio())
    assert header["type"] == BINARY_EVENT and header["attachments"] == 2
    assert header["data"] == ["message-back", placeholder(0), placeholder(1)]
    assert ws.recv_sio() == bytes([1, 2, 3])
    assert ws.recv_sio() == bytes([4, 5, 6])


def test_binary_event_with_nested_placeholders_and_ack(sio_server, sockets):
    ws = open_socket(sio_server)
    sockets.append(ws)
    payload = {"file": {"name": "a.bin", "data": placeholder(0)}, "parts": [placeholder(1), "text"]}
    ws.send_sio("52-789" + compact(["message-with-ack", payload]))
    ws.send_sio(b"\x00\xff\x00")
    ws.send_sio(b"")
    ack = parse_sio(ws.recv_sio())
    assert ack["type"] == BINARY_ACK and ack["attachments"] == 2 and ack["id"] == 789
    assert ack["data"] == [payload]
    assert ws.recv_sio() == b"\x00\xff\x00"
    assert ws.recv_sio() == b""


def test_binary_event_over_polling(sio_server):
    s = SioPolling(sio_server.url)
    try:
        s.send_sio("0")
        reply, auth = s.recv_sio(2)
        assert parse_sio(reply)["type"] == CONNECT
        assert parse_sio(auth)["data"] == ["auth", {}]
        s.send_sio("51-" + compact(["message", {"blob": placeholder(0)}]), bytes(range(10)))
        header, blob = s.recv_sio(2)
        parsed = parse_sio(header)
        assert parsed["type"] == BINARY_EVENT and parsed["attachments"] == 1
        assert parsed["data"] == ["message-back", {"blob": placeholder(0)}]
        assert blob == bytes(range(10))
    finally:
        s.close()


def test_plain_event_over_polling(sio_server):
    s = SioPolling(sio_server.url)
    try:
        s.send_sio('0{"who":"poller"}')
        reply, auth = s.recv_sio(2)
        assert parse_sio(reply)["type"] == CONNECT
        assert parse_sio(auth)["data"] == ["auth", {"who": "poller"}]
        s.send_sio('2["message","a"]', '21["message-with-ack","b"]')
        got = sorted(s.recv_sio(2))
        assert got == sorted(['2["message-back","a"]', '31["b"]'])
    finally:
        s.close()


# ---------------------------------------------------------------- namespaces


def test_several_namespaces_on_one_connection(sio_server, sockets):
    ws = open_socket(sio_server, "/")
    sockets.append(ws)
    reply = ws.connect("/custom", {"k": "v"})
    assert reply["type"] == CONNECT and reply["nsp"] == "/custom"
    assert parse_sio(ws.recv_sio())["data"] == ["auth", {"k": "v"}]

    ws.send_sio('2["message","to main"]')
    ws.send_sio('2/custom,["message","to custom"]')
    got = {}
    for _ in range(2):
        p = parse_sio(ws.recv_sio())
        got[p["nsp"]] = p["data"]
    assert got == {"/": ["message-back", "to main"], "/custom": ["message-back", "to custom"]}


def test_leaving_a_namespace_keeps_the_connection(sio_server, sockets):
    ws = open_socket(sio_server, "/")
    sockets.append(ws)
    assert ws.connect("/custom")["type"] == CONNECT
    ws.recv_sio()  # auth event of /custom
    ws.send_sio("1/custom,")
    ws.send_sio('2["message","after leaving /custom"]')
    assert parse_sio(ws.recv_sio())["data"] == ["message-back", "after leaving /custom"]
    # longer than pingInterval + pingTimeout: the connection is still alive and answering
    ws.idle(0.7)
    ws.send_sio('2["message","still here"]')
    assert parse_sio(ws.recv_sio())["data"] == ["message-back", "still here"]


def test_leaving_the_last_namespace_keeps_the_connection(sio_server, sockets):
    ws = open_socket(sio_server, "/")
    sockets.append(ws)
    ws.send_sio("1")
    ws.idle(0.2)
    reply = ws.connect("/", {"again": True})
    assert reply["type"] == CONNECT, reply
    assert parse_sio(ws.recv_sio())["data"] == ["auth", {"again": True}]
    ws.send_sio('2["message","back again"]')
    assert parse_sio(ws.recv_sio())["data"] == ["message-back", "back again"]
