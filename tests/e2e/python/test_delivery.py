"""Delivery through `courier serve` under conditions clients actually meet: ordering,
an upgrade in the middle of a stream of events, many recipients, and a client that
stops reading.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest

from support import Api, eventually
from wire import NOOP, PING, PONG, SioPolling, SioWebSocket, WebSocket, parse_sio


def event_number(packet):
    """The number carried by an `n` event packet ("42["n",7]" -> 7)."""
    assert isinstance(packet, str) and packet.startswith("4"), packet
    p = parse_sio(packet[1:])
    assert p["type"] == 2 and p["data"][0] == "n", p
    return p["data"][1]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_relay_keeps_order(courier, sio_client, transport):
    sender = sio_client()
    sender.connect(courier.url, transports=["websocket"], wait_timeout=5)
    assert sender.call("courier:join", "ordered", timeout=5)["ok"]
    # The receiver reads the wire itself, so nothing on its side can reorder events.
    receiver = SioWebSocket(courier.url) if transport == "websocket" else SioPolling(courier.url)
    try:
        receiver.send_sio("0")
        first = receiver.recv_sio() if transport == "websocket" else receiver.recv_sio(1)[0]
        assert parse_sio(first)["type"] == 0
        receiver.send_sio('21["courier:join","ordered"]')
        ack = receiver.recv_sio() if transport == "websocket" else receiver.recv_sio(1)[0]
        assert parse_sio(ack)["data"][0]["ok"] is True

        total = 300
        for i in range(total):
            sender.emit("n", i)
        if transport == "websocket":
            packets = ["4" + receiver.recv_sio() for _ in range(total)]
        else:
            packets = ["4" + p for p in receiver.recv_sio(total)]
        assert [event_number(p) for p in packets] == list(range(total))
    finally:
        receiver.close()


def test_python_polling_client_survives_a_burst(courier, sio_client):
    """A burst of events to a python-socketio client on long-polling.

    python-engineio refuses a polling response of more than 16 packets
    (engineio.payload.Payload.max_decode_packets) and drops the connection; a hub
    that stock Python clients can use must not put more than that in one response.
    """
    sender = sio_client()
    sender.connect(courier.url, transports=["websocket"], wait_timeout=5)
    receiver = sio_client()
    got = queue.Queue()
    receiver.on("n", lambda n: got.put(n))
    receiver.connect(courier.url, transports=["polling"], wait_timeout=5)
    sid = receiver.get_sid("/")
    for c in (sender, receiver):
        assert c.call("courier:join", "burst", timeout=5)["ok"]

    total = 400
    for i in range(total):
        sender.emit("n", i)
    received = []
    try:
        while len(received) < total:
            received.append(got.get(timeout=5))
    except queue.Empty:
        pass
    # python-socketio runs each handler in its own thread: compare as sets
    assert sorted(received) == list(range(total)), (
        f"the polling client got {len(received)} of {total} events "
        f"(still connected: {receiver.connected}, same sid: {receiver.get_sid('/') == sid})"
    )
    assert receiver.connected and receiver.get_sid("/") == sid


def test_no_event_lost_or_repeated_across_an_upgrade(courier):
    api = Api(courier.url)
    s = SioPolling(courier.url)
    s.send_sio("0")
    reply = parse_sio(s.recv_sio(1)[0])
    assert reply["type"] == 0
    sid = reply["data"]["sid"]

    total = 300
    errors = []

    def produce():
        try:
            for i in range(total):
                res = api.emit(rooms=[sid], event="n", data=[i])
                assert res == {"recipients": 1}, res
                time.sleep(0.002)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()

    received = []
    # some events arrive over polling first
    while len(received) < 20:
        for p in s.poll(timeout=5):
            received.append(event_number(p))

    ws = WebSocket(courier.url, path="/socket.io/", sid=s.sid)
    try:
        ws.send("2probe")
        assert ws.recv(timeout=5) == "3probe", "nothing but 3probe may come on the probe before the upgrade"
        # polling continues until the server releases it with a noop
        deadline = time.monotonic() + 5
        released = False
        while not released:
            assert time.monotonic() < deadline, "no noop on polling during the upgrade"
            for p in s.poll(timeout=5):
                if p == NOOP:
                    released = True
                elif p == PING:
                    s.send(PONG)
                else:
                    received.append(event_number(p))
        ws.send("5")
        while len(received) < total:
            received.append(event_number(ws.recv_packet(timeout=5)))
        producer.join(30)
        assert not errors, errors
        assert received == list(range(total)), (
            f"events lost, repeated or reordered across the upgrade: "
            f"missing {sorted(set(range(total)) - set(received))[:10]}, count {len(received)}"
        )
        # nothing more arrives
        ws.send("42[\"courier:join\",\"r\"]")
        try:
            extra = ws.recv_packet(timeout=0.5)
        except TimeoutError:
            extra = None
        assert extra is None, f"unexpected packet after the stream: {extra!r}"
    finally:
        ws.close()
        s.close()


def test_broadcast_reaches_many_clients(courier):
    api = Api(courier.url)
    n = 60
    sockets = []
    try:
        for _ in range(n):
            ws = SioWebSocket(courier.url)
            assert ws.connect("/")["type"] == 0
            sockets.append(ws)
        assert api.emit(rooms=[], event="hello", data=["everyone", {"i": 1}]) == {"recipients": n}
        for ws in sockets:
            p = parse_sio(ws.recv_sio())
            assert p["type"] == 2 and p["data"] == ["hello", "everyone", {"i": 1}]
    finally:
        for ws in sockets:
            ws.close()


def test_a_client_that_stops_reading_is_disconnected_and_others_are_served(start_courier, sio_client):
    server = start_courier("[engine]\nmax_buffered_packets = 16\n")
    api = Api(server.url)
    good = sio_client()
    good_got = queue.Queue()
    good.on("x", lambda *args: good_got.put(args))
    good.connect(server.url, transports=["websocket"], wait_timeout=5)
    assert good.call("courier:join", "all", timeout=5)["ok"]

    stalled = SioPolling(server.url)
    stalled.send_sio("0")
    reply = parse_sio(stalled.recv_sio(1)[0])
    stalled_sid = reply["data"]["sid"]
    stalled.send_sio('21["courier:join","all"]')
    assert parse_sio(stalled.recv_sio(1)[0])["data"][0]["ok"] is True
    # from here on the stalled client never polls again

    for i in range(100):
        api.emit(rooms=["all"], event="x", data=[i, "y" * 200])
    for i in range(100):
        assert good_got.get(timeout=5) == (i, "y" * 200)

    eventually(
        lambda: all(s["sid"] != stalled_sid for s in api.sockets("/")),
        timeout=5,
        message="the stalled client was not disconnected after its queue filled",
    )
    assert stalled.is_closed(timeout=3)
    assert good.call("courier:join", "still-fine", timeout=5)["ok"] is True
    assert api.health()["connections"] == 1


def test_an_unfinished_upgrade_times_out_and_polling_goes_on(start_courier):
    server = start_courier("[engine]\nupgrade_timeout_ms = 500\n")
    s = SioPolling(server.url)
    s.send_sio("0")
    assert parse_sio(s.recv_sio(1)[0])["type"] == 0
    ws = WebSocket(server.url, path="/socket.io/", sid=s.sid)
    try:
        ws.send("2probe")
        assert ws.recv(timeout=5) == "3probe"
        # the client never sends "5": the server gives up on this WebSocket
        assert ws.wait_closed(timeout=3, answer_pings=False), "the half-done upgrade was never abandoned"
    finally:
        ws.close()
    # the session carries on over polling
    s.send_sio('21["courier:join","still-polling"]')
    packets = [p for p in s.recv_sio(1, timeout=5)]
    ack = parse_sio(packets[0])
    assert ack["type"] == 3 and ack["id"] == 1 and ack["data"][0]["ok"] is True, ack
