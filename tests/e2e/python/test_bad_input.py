"""Malformed input: the server closes the offending connection and keeps serving everyone else.

Every case runs against the conformance example (`socketio` mode) and against
`courier serve`. A well-behaved python-socketio client connects first and must still be
served after the bad input; the bad connection must be closed. While waiting for the
close, the bad client answers pings, so only the bad input can be what closes it.
"""

from __future__ import annotations

import queue

import pytest

from wire import SioPolling, SioWebSocket, Polling, WebSocket, compact, parse_sio, placeholder

PH0 = compact(placeholder(0))
PH1 = compact(placeholder(1))

# Each case: what the bad client sends after it connected to "/", as raw Engine.IO
# frames (text frames written out in full, "4" prefix included; bytes are binary frames).
BAD_INPUTS = {
    # Engine.IO level
    "eio-unknown-type-7": ["7hello"],
    "eio-unknown-type-letter": ["xyz"],
    "eio-empty-packet": [""],
    # Socket.IO level
    "sio-unknown-type-9": ['49["message"]'],
    "sio-unknown-type-letter": ["4x"],
    "sio-empty-packet": ["4"],
    "bad-json-truncated": ['42["message",'],
    "bad-json-object": ['42{"abc'],
    "bad-ack-id": ['42abc["message-with-ack",1]'],
    "event-payload-object": ['42{"a":1}'],
    "event-payload-string": ['42"message"'],
    "event-payload-missing": ["42"],
    "event-empty-array": ["42[]"],
    "event-first-number": ['42[1,"x"]'],
    "event-first-null": ["42[null]"],
    "event-first-object": ['42[{"event":"message"}]'],
    "binary-fewer-attachments-than-announced": [f'452-["message",{PH0},{PH1}]', b"\x01", '42["message","x"]'],
    "binary-more-attachments-than-announced": [f'451-["message",{PH0}]', b"\x01", b"\x02"],
    "binary-placeholder-out-of-range": ['451-["message",{"_placeholder":true,"num":3}]', b"\x01"],
    "binary-placeholder-without-attachment": [f'450-["message",{PH0}]'],
    "binary-bad-attachment-count": ['45abc-["message"]'],
    "binary-frame-nobody-announced": [b"\x01\x02\x03"],
}

POLLING_CASES = [
    "eio-unknown-type-7",
    "sio-unknown-type-9",
    "bad-json-truncated",
    "event-payload-object",
    "event-empty-array",
    "binary-fewer-attachments-than-announced",
    "binary-more-attachments-than-announced",
    "binary-frame-nobody-announced",
]


class Target:
    """A server under test and how to check that a client is still served by it."""

    def __init__(self, kind, server, sio_client):
        self.kind = kind
        self.server = server
        self.sio_client = sio_client

    @property
    def url(self):
        return self.server.url

    def good_client(self, transport):
        c = self.sio_client()
        c.inbox = queue.Queue()
        c.on("message-back", lambda *args: c.inbox.put(args))
        c.connect(self.url, transports=[transport], wait_timeout=5)
        self.check_served(c)
        return c

    def check_served(self, c, tag="served"):
        assert c.connected, "the well-behaved client lost its connection"
        if self.kind == "conformance":
            c.emit("message", (tag, {"n": 1}))
            try:
                assert c.inbox.get(timeout=5) == (tag, {"n": 1})
            except queue.Empty:
                raise AssertionError("the well-behaved client got no message-back") from None
            assert c.call("message-with-ack", tag, timeout=5) == tag
        else:
            ack = c.call("courier:join", tag, timeout=5)
            assert ack["ok"] is True and tag in ack["rooms"], ack

    def after_connect_count(self):
        """Packets the server sends after a CONNECT reply (the conformance server emits `auth`)."""
        return 1 if self.kind == "conformance" else 0

    def bad_websocket(self):
        ws = SioWebSocket(self.url)
        reply = ws.connect("/")
        assert reply["type"] == 0, reply
        for _ in range(self.after_connect_count()):
            ws.recv_sio()
        return ws

    def bad_polling(self):
        s = SioPolling(self.url)
        s.send_sio("0")
        got = s.recv_sio(1 + self.after_connect_count())
        assert parse_sio(got[0])["type"] == 0, got
        return s


@pytest.fixture(params=["conformance", "courier"])
def target(request, sio_client):
    if request.param == "conformance":
        server = request.getfixturevalue("start_conformance")("socketio")
    else:
        server = request.getfixturevalue("start_courier")()
    return Target(request.param, server, sio_client)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_over_websocket_closes_only_the_offender(target, case):
    good = target.good_client("websocket")
    bad = target.bad_websocket()
    try:
        for frame in BAD_INPUTS[case]:
            try:
                bad.send(frame)
            except OSError:
                break  # already closed by the server
        assert bad.wait_closed(timeout=3), f"{case}: the server kept the offending connection open"
    finally:
        bad.close()
    target.check_served(good, "after-" + case)


@pytest.mark.parametrize("case", POLLING_CASES)
def test_bad_input_over_polling_closes_only_the_offender(target, case):
    good = target.good_client("polling")
    bad = target.bad_polling()
    try:
        r = bad.post(*BAD_INPUTS[case])
        assert r.status_code in (200, 400), f"{case}: POST answered {r.status_code} {r.text!r}"
        assert bad.is_closed(timeout=3), f"{case}: the server kept the offending session open"
    finally:
        bad.close()
    target.check_served(good, "after-" + case)


@pytest.mark.parametrize("payload", ["[1]", '"token"', "true", "{"])
def test_connect_with_a_payload_that_is_not_an_object(target, payload):
    good = target.good_client("websocket")
    ws = SioWebSocket(target.url)
    try:
        ws.send_sio("0" + payload)
        assert ws.wait_closed(timeout=3), f"CONNECT with payload {payload} was not refused"
    finally:
        ws.close()
    target.check_served(good)


def test_ack_for_an_unknown_id_is_ignored(target):
    """Not everything odd is an attack: a late or unknown ack is dropped, nothing closes."""
    good = target.good_client("websocket")
    ws = target.bad_websocket()
    try:
        ws.send_sio('3999["late answer"]')
        if target.kind == "conformance":
            ws.send_sio('25["message-with-ack","fine"]')
            assert parse_sio(ws.recv_sio()) == {"type": 3, "attachments": None, "nsp": "/", "id": 5, "data": ["fine"]}
        else:
            ws.send_sio('25["courier:join","fine"]')
            ack = parse_sio(ws.recv_sio())
            assert ack["type"] == 3 and ack["id"] == 5 and ack["data"][0]["ok"] is True, ack
    finally:
        ws.close()
    target.check_served(good)


def test_engineio_bad_packet_type_on_the_echo_server(start_conformance):
    server = start_conformance("engineio")
    good = WebSocket(server.url)
    good.handshake()
    try:
        for frame in ("7oops", "x", ""):
            bad = WebSocket(server.url)
            bad.handshake()
            bad.send(frame)
            assert bad.wait_closed(timeout=3), f"frame {frame!r} did not close the connection"
            bad.close()
            good.send("4still echoing")
            assert good.recv_packet() == "4still echoing"

        bad = Polling(server.url)
        bad.handshake()
        r = bad.post_raw("7oops")
        assert r.status_code in (200, 400)
        assert bad.is_closed(timeout=3)
        good.send("4and now")
        assert good.recv_packet() == "4and now"
    finally:
        good.close()
