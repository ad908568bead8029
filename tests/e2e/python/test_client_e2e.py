"""`courier serve` used the way a Python application uses it: python-socketio's Client.

Covers what docs/serve.md promises to clients: connecting over each transport, rooms
with courier:join / courier:leave, relaying events (binary included) to the rooms one
shares, acks from clients back to the HTTP API, namespaces, auth tokens, server-side
disconnects and reconnection after the hub goes away.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest
import socketio

from support import Api, eventually
from wire import SioWebSocket

TRANSPORTS = {"polling": ["polling"], "websocket": ["websocket"], "default": None}


class Inbox:
    """Collects the arguments of every `event` a client receives."""

    def __init__(self, client, event, namespace="/"):
        self.q = queue.Queue()
        client.on(event, self._handler, namespace=namespace)

    def _handler(self, *args):
        self.q.put(args)

    def get(self, timeout=5):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing arrived within {timeout} s") from None

    def empty_for(self, seconds):
        try:
            got = self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected delivery: {got!r}")


def connect(client, server, transports=None, namespaces=None, auth=None):
    client.connect(server.url, transports=transports, namespaces=namespaces, auth=auth, wait_timeout=5)
    return client


def join(client, rooms, namespace="/"):
    return client.call("courier:join", rooms, namespace=namespace, timeout=5)


# ---------------------------------------------------------------- transports


# python-engineio can lose a polling client's DISCONNECT and CLOSE packets: when disconnect() is
# called while a POST is still waiting for its answer (here, the one that carried courier:join,
# whose ack came back first through the pending GET), its write loop ends without sending them.
# The server then learns of the departure from the missing pongs, so this test gives it short
# heartbeats: either way the socket is gone within a few seconds.
SHORT_HEARTBEATS = "[engine]\nping_interval_ms = 500\nping_timeout_ms = 1000\n"


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_connect_over_each_transport(start_courier, sio_client, transport):
    courier = start_courier(SHORT_HEARTBEATS)
    api = Api(courier.url)
    c = connect(sio_client(), courier, transports=TRANSPORTS[transport])
    sid = c.get_sid("/")
    assert isinstance(sid, str) and sid

    expected = "polling" if transport == "polling" else "websocket"
    assert c.transport() == expected

    def listed():
        socks = api.sockets("/")
        mine = [s for s in socks if s["sid"] == sid]
        return mine and mine[0]["transport"] == expected and mine[0]

    entry = eventually(listed, message=f"socket {sid} listed with transport {expected}")
    assert sid in entry["rooms"]

    ack = join(c, "lobby")
    assert ack == {"ok": True, "rooms": sorted(["lobby", sid])}

    c.disconnect()
    eventually(lambda: all(s["sid"] != sid for s in api.sockets("/")), message="socket gone after disconnect")


def test_health_counts_connections(courier, sio_client):
    api = Api(courier.url)
    health = api.health()
    assert health["status"] == "ok" and health["connections"] == 0, health
    clients = [connect(sio_client(), courier, transports=["websocket"]) for _ in range(3)]
    eventually(lambda: api.health()["connections"] == 3, message="health shows 3 connections")
    for c in clients:
        c.disconnect()
    eventually(lambda: api.health()["connections"] == 0, message="health back to 0")


# ---------------------------------------------------------------- rooms


def test_join_and_leave_with_emit_callback(courier, sio_client):
    c = connect(sio_client(), courier, transports=["websocket"])
    sid = c.get_sid("/")
    answers = queue.Queue()
    c.emit("courier:join", ["b-room", "a-room"], callback=lambda *args: answers.put(args))
    assert answers.get(timeout=5) == ({"ok": True, "rooms": sorted(["a-room", "b-room", sid])},)

    c.emit("courier:leave", "b-room", callback=lambda *args: answers.put(args))
    assert answers.get(timeout=5) == ({"ok": True, "rooms": sorted(["a-room", sid])},)

    # joining twice changes nothing
    assert join(c, ["a-room"]) == {"ok": True, "rooms": sorted(["a-room", sid])}


def test_courier_events_report_errors_in_the_ack(courier, sio_client):
    c = connect(sio_client(), courier)
    unknown = c.call("courier:nope", {"x": 1}, timeout=5)
    assert unknown["ok"] is False
    assert unknown["error"]["code"] == "unknown_event"
    assert isinstance(unknown["error"]["message"], str) and unknown["error"]["message"]

    bad = c.call("courier:join", 42, timeout=5)
    assert bad["ok"] is False and bad["error"]["code"] == "bad_request"
    bad = c.call("courier:join", [1, 2], timeout=5)
    assert bad["ok"] is False and bad["error"]["code"] == "bad_request"

    # the socket is still fine afterwards
    assert join(c, "ok-room")["ok"] is True


def test_rooms_are_forbidden_when_client_rooms_is_off(start_courier, sio_client):
    server = start_courier("[hub]\nclient_rooms = false\n")
    c = connect(sio_client(), server)
    ack = join(c, "lobby")
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"


# ---------------------------------------------------------------- relay


def test_relay_with_nested_binary_between_two_python_clients(courier, sio_client):
    alice = connect(sio_client(), courier, transports=["polling"])
    bob = sio_client()
    bob_inbox = Inbox(bob, "chat")
    connect(bob, courier, transports=["websocket"])
    carol = sio_client()
    carol_inbox = Inbox(carol, "chat")
    connect(carol, courier)
    alice_inbox = Inbox(alice, "chat")

    assert join(alice, "room-1")["ok"]
    assert join(bob, ["room-1", "room-2"])["ok"]
    assert join(carol, "room-2")["ok"]  # shares a room with bob, not with alice

    payload = {
        "text": "héllo",
        "image": {"name": "a.png", "bytes": bytes(range(256))},
        "chunks": [b"\x00", b"", {"deeper": [b"\xff\xfe", 3.5, None]}],
    }
    ack = alice.call("chat", (payload, b"raw tail", 7), timeout=5)
    assert ack == {"ok": True, "recipients": 1}

    got = bob_inbox.get()
    assert got == (payload, b"raw tail", 7)
    assert isinstance(got[0]["image"]["bytes"], bytes)

    carol_inbox.empty_for(0.3)
    alice_inbox.empty_for(0.1)


def test_relay_reaches_every_member_but_not_the_sender(courier, sio_client):
    members = []
    inboxes = []
    for i in range(4):
        c = sio_client()
        inboxes.append(Inbox(c, "news"))
        connect(c, courier, transports=["websocket" if i % 2 else "polling"])
        assert join(c, "newsroom")["ok"]
        members.append(c)
    ack = members[0].call("news", {"headline": "it works"}, timeout=5)
    assert ack == {"ok": True, "recipients": 3}
    for inbox in inboxes[1:]:
        assert inbox.get() == ({"headline": "it works"},)
    inboxes[0].empty_for(0.2)


def test_no_relay_without_a_shared_room(courier, sio_client):
    a = connect(sio_client(), courier)
    b = sio_client()
    inbox = Inbox(b, "hello")
    connect(b, courier)
    # neither joined anything: their own sid rooms do not count
    assert a.call("hello", "anyone?", timeout=5) == {"ok": True, "recipients": 0}
    inbox.empty_for(0.3)


# ---------------------------------------------------------------- HTTP emit and client acks


def test_http_emit_collects_the_client_ack(courier, sio_client):
    api = Api(courier.url)
    bob = sio_client()
    bob.on("question", lambda q: {"answer": 42, "echo": q})
    connect(bob, courier, transports=["websocket"])
    sid = bob.get_sid("/")

    res = api.emit(rooms=[sid], event="question", data=["what?"], ack_timeout_ms=3000)
    assert res == {"recipients": 1, "acks": [{"sid": sid, "args": [{"answer": 42, "echo": "what?"}]}], "timeouts": 0}


def test_http_emit_ack_with_several_arguments_over_polling(courier, sio_client):
    api = Api(courier.url)
    c = sio_client()
    c.on("sum", lambda a, b: ("sum", a + b, [a, b]))
    connect(c, courier, transports=["polling"])
    sid = c.get_sid("/")
    res = api.emit(rooms=[sid], event="sum", data=[2, 3], ack_timeout_ms=3000)
    assert res["recipients"] == 1 and res["timeouts"] == 0
    assert res["acks"] == [{"sid": sid, "args": ["sum", 5, [2, 3]]}]


def test_http_emit_counts_clients_that_do_not_ack_in_time(courier, sio_client):
    api = Api(courier.url)
    fast = sio_client()
    fast.on("ping-me", lambda: "pong")
    connect(fast, courier)
    slow = sio_client()

    def slow_handler():
        time.sleep(2)
        return "too late"

    slow.on("ping-me", slow_handler)
    connect(slow, courier)
    assert join(fast, "team")["ok"] and join(slow, "team")["ok"]

    started = time.monotonic()
    res = api.emit(rooms=["team"], event="ping-me", data=[], ack_timeout_ms=500)
    took = time.monotonic() - started
    assert res["recipients"] == 2
    assert res["acks"] == [{"sid": fast.get_sid("/"), "args": ["pong"]}]
    assert res["timeouts"] == 1
    assert took < 1.8, f"the answer waited {took:.2f} s for a 500 ms ack timeout"


def test_http_emit_to_rooms_namespace_and_except(courier, sio_client):
    api = Api(courier.url)
    clients, inboxes = [], []
    for i in range(3):
        c = sio_client()
        inboxes.append(Inbox(c, "notice"))
        connect(c, courier)
        clients.append(c)
    assert join(clients[0], "blue")["ok"] and join(clients[1], "blue")["ok"]

    assert api.emit(rooms=["blue"], event="notice", data=["to blue", {"n": 1}]) == {"recipients": 2}
    assert inboxes[0].get() == ("to blue", {"n": 1})
    assert inboxes[1].get() == ("to blue", {"n": 1})
    inboxes[2].empty_for(0.2)

    assert api.emit(rooms=[], event="notice", data=["to all"]) == {"recipients": 3}
    for inbox in inboxes:
        assert inbox.get() == ("to all",)

    sid0 = clients[0].get_sid("/")
    res = api.post("/api/v1/emit", {"namespace": "/", "rooms": [], "except": [sid0], "event": "notice", "data": ["not 0"]})
    assert res.status_code == 200 and res.json() == {"recipients": 2}
    assert inboxes[1].get() == ("not 0",)
    assert inboxes[2].get() == ("not 0",)
    inboxes[0].empty_for(0.2)


# ---------------------------------------------------------------- namespaces

NAMESPACE_CONFIG = """
[hub]
namespaces = ["/", "/chat"]
namespace_patterns = ["^/tenant-[0-9]+$"]
"""


def test_static_namespace(start_courier, sio_client):
    server = start_courier(NAMESPACE_CONFIG)
    c = connect(sio_client(), server, namespaces=["/chat"])
    sid = c.get_sid("/chat")
    assert join(c, "general", namespace="/chat") == {"ok": True, "rooms": sorted(["general", sid])}
    socks = Api(server.url).sockets("/chat")
    assert [s["sid"] for s in socks] == [sid]


def test_pattern_namespace_is_created_on_first_use(start_courier, sio_client):
    server = start_courier(NAMESPACE_CONFIG)
    a = connect(sio_client(), server, namespaces=["/tenant-42"])
    b = sio_client()
    inbox = Inbox(b, "msg", namespace="/tenant-42")
    connect(b, server, namespaces=["/tenant-42"])
    assert join(a, "x", namespace="/tenant-42")["ok"] and join(b, "x", namespace="/tenant-42")["ok"]
    assert a.call("msg", "hi tenant", namespace="/tenant-42", timeout=5) == {"ok": True, "recipients": 1}
    assert inbox.get() == ("hi tenant",)


@pytest.mark.parametrize("nsp", ["/nope", "/tenant-abc", "/chat/sub"])
def test_unknown_namespace_is_refused(start_courier, sio_client, nsp):
    server = start_courier(NAMESPACE_CONFIG)
    c = sio_client()
    errors = queue.Queue()
    c.on("connect_error", lambda *data: errors.put(data), namespace=nsp)
    with pytest.raises(socketio.exceptions.ConnectionError):
        connect(c, server, namespaces=[nsp])
    assert errors.get(timeout=5) == ({"message": "Invalid namespace"},)


def test_one_connection_in_several_namespaces_keeps_them_apart(start_courier, sio_client):
    server = start_courier(NAMESPACE_CONFIG)
    a = connect(sio_client(), server, namespaces=["/", "/chat"])
    b = sio_client()
    main_inbox = Inbox(b, "say", namespace="/")
    chat_inbox = Inbox(b, "say", namespace="/chat")
    connect(b, server, namespaces=["/", "/chat"])
    for c in (a, b):
        assert join(c, "same-name")["ok"]
        assert join(c, "same-name", namespace="/chat")["ok"]
    assert a.call("say", "in chat", namespace="/chat", timeout=5) == {"ok": True, "recipients": 1}
    assert chat_inbox.get() == ("in chat",)
    main_inbox.empty_for(0.2)
    assert a.call("say", "in main", timeout=5) == {"ok": True, "recipients": 1}
    assert main_inbox.get() == ("in main",)
    chat_inbox.empty_for(0.2)


# ---------------------------------------------------------------- auth

AUTH_CONFIG = """
[hub]
auth_tokens = ["s3cret", "other-token"]
"""


def test_auth_token_accepted(start_courier, sio_client):
    server = start_courier(AUTH_CONFIG)
    for token in ("s3cret", "other-token"):
        c = connect(sio_client(), server, auth={"token": token})
        assert c.connected
        assert join(c, "vip")["ok"] is True


@pytest.mark.parametrize("auth", [None, {}, {"token": "wrong"}, {"token": ""}, {"pass": "s3cret"}])
def test_auth_refused_without_a_valid_token(start_courier, sio_client, auth):
    server = start_courier(AUTH_CONFIG)
    c = sio_client()
    errors = queue.Queue()
    c.on("connect_error", lambda *data: errors.put(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        connect(c, server, auth=auth)
    (err,) = errors.get(timeout=5)
    assert err["message"] == "unauthorized"
    assert err["data"]["code"] == ("invalid_token" if auth and auth.get("token") else "missing_token")
    assert Api(server.url).sockets("/") == []


# ---------------------------------------------------------------- server-side disconnect


class Lifecycle:
    """Counts a client's connect and disconnect events and keeps the disconnect reasons."""

    def __init__(self, client):
        self.connects = 0
        self.reasons = []
        self.cond = threading.Condition()
        client.on("connect", self._on_connect)
        client.on("disconnect", self._on_disconnect)

    def _on_connect(self):
        with self.cond:
            self.connects += 1
            self.cond.notify_all()

    def _on_disconnect(self, reason=None):
        with self.cond:
            self.reasons.append(reason)
            self.cond.notify_all()

    def wait(self, predicate, timeout, what):
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"{what} did not happen within {timeout} s "
                                     f"(connects={self.connects}, reasons={self.reasons})")


def reconnecting_client(sio_client):
    return sio_client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.5, randomization_factor=0)


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_http_disconnect_without_close_is_final(courier, sio_client, transport):
    api = Api(courier.url)
    victim = reconnecting_client(sio_client)
    life = Lifecycle(victim)
    connect(victim, courier, transports=[transport])
    bystander = connect(sio_client(), courier, transports=[transport])
    sid = victim.get_sid("/")

    assert api.disconnect(rooms=[sid], close=False) == {"disconnected": 1}
    life.wait(lambda l: l.reasons, 5, "disconnect event")
    assert life.reasons == [socketio.Client.reason.SERVER_DISCONNECT]

    time.sleep(1.0)  # several reconnection delays
    assert life.connects == 1, "the client reconnected after an 'io server disconnect'"
    assert not victim.connected
    assert [s["sid"] for s in api.sockets("/")] == [bystander.get_sid("/")]
    assert join(bystander, "still-here")["ok"] is True


@pytest.mark.parametrize("transport", ["websocket", "default"])
def test_http_disconnect_with_close_lets_the_client_reconnect(courier, sio_client, transport):
    api = Api(courier.url)
    c = reconnecting_client(sio_client)
    life = Lifecycle(c)
    connect(c, courier, transports=TRANSPORTS[transport])
    first_sid = c.get_sid("/")
    if transport == "default":
        eventually(lambda: c.transport() == "websocket", message="upgrade to websocket")

    assert api.disconnect(rooms=[first_sid], close=True) == {"disconnected": 1}
    life.wait(lambda l: l.reasons, 5, "disconnect event")
    assert life.reasons[0] != socketio.Client.reason.SERVER_DISCONNECT, (
        "a closed connection must look like a transport close, so the client reconnects"
    )
    life.wait(lambda l: l.connects >= 2, 10, "automatic reconnection")
    eventually(lambda: c.connected, message="client connected again")
    new_sid = c.get_sid("/")
    assert new_sid and new_sid != first_sid
    assert join(c, "back")["ok"] is True
    assert [s["sid"] for s in api.sockets("/")] == [new_sid]


def test_http_disconnect_by_room_counts_sockets(courier, sio_client):
    api = Api(courier.url)
    clients = [connect(sio_client(), courier) for _ in range(3)]
    assert join(clients[0], "kick")["ok"] and join(clients[1], "kick")["ok"]
    assert api.disconnect(rooms=["kick"], close=False) == {"disconnected": 2}
    eventually(lambda: not clients[0].connected and not clients[1].connected, message="room disconnected")
    assert clients[2].connected
    assert [s["sid"] for s in api.sockets("/")] == [clients[2].get_sid("/")]


# ---------------------------------------------------------------- the hub goes away and comes back


@pytest.mark.parametrize("how", ["kill", "sigterm"])
def test_client_reconnects_after_the_hub_restarts(start_courier, sio_client, how):
    first = start_courier()
    port = first.port
    c = reconnecting_client(sio_client)
    life = Lifecycle(c)
    connect(c, first, transports=["websocket"])
    assert join(c, "before")["ok"]

    if how == "kill":
        first.kill()
    else:
        assert first.terminate() == 0, f"courier serve exited with {first.proc.returncode} on SIGTERM\n{first.output()}"
    life.wait(lambda l: l.reasons, 5, "disconnect event")
    assert life.reasons[0] != socketio.Client.reason.SERVER_DISCONNECT, (
        "the hub going away must not look like 'io server disconnect', or clients never come back"
    )

    time.sleep(0.5)  # the client is retrying against a closed port meanwhile
    second = start_courier(listen=f"127.0.0.1:{port}", data_dir=first.data_dir)
    assert second.port == port

    life.wait(lambda l: l.connects >= 2, 15, "reconnection to the restarted hub")
    eventually(lambda: c.connected, message="client connected again")
    ack = join(c, "after")
    assert ack["ok"] is True and ack["rooms"] == sorted(["after", c.get_sid("/")])


def test_http_disconnect_of_one_namespace_keeps_the_others(start_courier, sio_client):
    server = start_courier(NAMESPACE_CONFIG)
    api = Api(server.url)
    c = sio_client()
    reasons = queue.Queue()
    c.on("disconnect", lambda reason=None: reasons.put(("/chat", reason)), namespace="/chat")
    c.on("disconnect", lambda reason=None: reasons.put(("/", reason)), namespace="/")
    connect(c, server, namespaces=["/", "/chat"], transports=["websocket"])
    chat_sid = c.get_sid("/chat")

    assert api.disconnect(namespace="/chat", rooms=[chat_sid], close=False) == {"disconnected": 1}
    assert reasons.get(timeout=5) == ("/chat", socketio.Client.reason.SERVER_DISCONNECT)
    assert c.connected
    assert join(c, "main-still-works")["ok"] is True
    assert api.sockets("/chat") == []
    assert [s["sid"] for s in api.sockets("/")] == [c.get_sid("/")]
    try:
        got = reasons.get(timeout=0.3)
    except queue.Empty:
        got = None
    assert got is None, f"unexpected disconnect: {got}"


def test_heartbeat_keeps_live_clients_and_drops_silent_ones(start_courier, sio_client):
    server = start_courier("[engine]\nping_interval_ms = 200\nping_timeout_ms = 300\n")
    api = Api(server.url)
    live = [connect(sio_client(), server, transports=[t]) for t in ("polling", "websocket")]
    sids = [c.get_sid("/") for c in live]

    silent = SioWebSocket(server.url)  # connects, then never answers a ping
    try:
        reply = silent.connect("/")
        assert reply["type"] == 0
        silent_sid = reply["data"]["sid"]
        assert silent_sid in [s["sid"] for s in api.sockets("/")]
        assert silent.wait_closed(timeout=3, answer_pings=False), "a client that never answers pings was kept"
    finally:
        silent.close()

    time.sleep(0.6)  # several more ping intervals
    assert sorted(s["sid"] for s in api.sockets("/")) == sorted(sids)
    for c, sid in zip(live, sids):
        assert c.connected and c.get_sid("/") == sid, "a client answering pings lost its connection"
        assert join(c, "alive")["ok"] is True
