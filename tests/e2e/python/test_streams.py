"""Durable streams and connection state recovery used from python-socketio (docs/streams.md).

A python-socketio handler acknowledges a delivery by returning; `support.Deliveries` keeps a
handler waiting to leave a delivery unacknowledged. Covered: subscribe and deliveries over both
transports, publish with courier:publish and dedupe, a consumer resumed by a new client,
redelivery, dead letters, back-pressure, a work queue of Python clients, restarts, errors in the
ack, permissions, duplicate and unknown acks from a raw client, and python-socketio (which does
not implement recovery) against a hub with recovery on.

Every test runs three times (conftest's `hub_mode`): against one `courier serve` ("single"),
three nodes on one Redis ("cluster") and three nodes on a Redis Cluster of three masters
("redis-cluster"), the same code. The hub hands out its nodes round robin, so
in cluster mode consecutive clients and API calls land on different nodes: publishers, subscribers
and the API answering about them are spread over the cluster.
"""

from __future__ import annotations

import time

import pytest

from cluster import health
from support import Api, Deliveries, eventually
from wire import SioWebSocket, compact, parse_sio

TRANSPORTS = {"polling": ["polling"], "websocket": ["websocket"]}


def connect(client, server, transports=("websocket",)):
    """Connects to `server`: a hub (its next node) or one node."""
    client.connect(server.url, transports=list(transports), wait_timeout=5)
    return client


def answered_ok(answer, what):
    assert isinstance(answer, dict) and answer.get("ok") is True, f"{what} answered {answer!r}"
    return answer


def subscribe(client, stream, consumer, check=True, **options):
    """courier:subscribe; its answer, which must be ok unless `check` is false."""
    answer = client.call("courier:subscribe", {"stream": stream, "consumer": consumer, **options}, timeout=5)
    return answered_ok(answer, f"subscribe to {stream} as {consumer}") if check else answer


def publish(client, stream, event, data=None, id=None, check=True):
    """courier:publish; its answer, which must be ok unless `check` is false."""
    body = {"stream": stream, "event": event, "data": data}
    if id is not None:
        body["id"] = id
    answer = client.call("courier:publish", body, timeout=5)
    return answered_ok(answer, f"publish to {stream}") if check else answer


def consumer_when(api, stream, name, predicate, message):
    def check():
        c = api.consumer(stream, name)
        return c if predicate(c) else None

    return eventually(check, message=message)


def assert_error(answer, code):
    assert isinstance(answer, dict) and answer.get("ok") is False, answer
    assert set(answer) == {"ok", "error"}, answer
    assert set(answer["error"]) == {"code", "message"}, answer
    assert answer["error"]["code"] == code, answer
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"], answer


# ---------------------------------------------------------------- subscribe, deliver, publish


def test_the_hub_spreads_clients_over_its_nodes(hub, sio_client):
    """What the other tests rely on: in cluster mode, consecutive clients are on different nodes
    (an Engine.IO session id starts with its node's id)."""
    clients = [connect(sio_client(), hub) for _ in hub.nodes]
    if hub.mode == "single":
        assert len(hub.nodes) == 1
        return
    ids = [health(n)["cluster"]["node"] for n in hub.nodes]
    homes = [[i for i in ids if c.eio.sid.startswith(i)] for c in clients]
    assert sorted(h[0] for h in homes if len(h) == 1) == sorted(ids), (ids, [c.eio.sid for c in clients])



@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_subscribe_and_receive_deliveries_acked_by_returning(hub, sio_client, transport):
    api = Api(hub)
    c = connect(sio_client(), hub, TRANSPORTS[transport])
    got = Deliveries(c, "order")
    assert subscribe(c, "orders", "vendor-7") == {"ok": True, "stream": "orders", "consumer": "vendor-7", "pending": 0}

    assert api.publish("orders", "order", {"n": 1, "items": ["a"]}, id="order-1") == {"seq": 1, "duplicate": False}
    assert api.publish("orders", "order", [1, 2]) == {"seq": 2, "duplicate": False}
    items = got.wait(2)
    assert items[0] == ({"n": 1, "items": ["a"]}, {"stream": "orders", "seq": 1, "id": "order-1", "deliveries": 1})
    assert items[1] == ([1, 2], {"stream": "orders", "seq": 2, "id": None, "deliveries": 1})
    c_info = consumer_when(api, "orders", "vendor-7", lambda x: x["pending"] == 0 and x["ack_floor"] == 2,
                           "the returned handlers to ack both deliveries")
    assert c_info["redelivered"] == 0
    got.quiet(0.3)


def test_courier_publish_answers_once_stored_and_dedupes_by_id(hub, sio_client):
    api = Api(hub)
    pub = connect(sio_client(), hub)
    reader = connect(sio_client(), hub, ["polling"])
    got = Deliveries(reader, "paid")
    assert subscribe(reader, "payments", "audit")["ok"] is True

    assert publish(pub, "payments", "paid", {"amount": 5}, id="pay-1") == {"ok": True, "seq": 1, "duplicate": False}
    assert publish(pub, "payments", "paid", {"amount": 5}, id="pay-1") == {"ok": True, "seq": 1, "duplicate": True}
    assert api.publish("payments", "paid", {"amount": 5}, id="pay-1") == {"seq": 1, "duplicate": True}
    assert publish(pub, "payments", "paid", {"amount": 7}) == {"ok": True, "seq": 2, "duplicate": False}
    info = api.stream("payments")
    assert (info["entries"], info["last_seq"]) == (2, 2), info
    got.wait(2)
    items = got.quiet(0.3)
    assert [(d, m["seq"], m["id"]) for d, m in items] == [({"amount": 5}, 1, "pay-1"), ({"amount": 7}, 2, None)]


def test_binary_publish_is_kept_or_refused(hub, sio_client):
    """python-socketio sends bytes as a binary attachment, a {_placeholder, num} marker in the
    JSON; a confirmed publish whose stored data is the marker has lost the bytes."""
    c = connect(sio_client(), hub)
    got = Deliveries(c, "file")
    subscribe(c, "files", "reader")
    answer = publish(c, "files", "file", {"name": "a", "bytes": b"\x01\x02\x03"}, check=False)
    if answer.get("ok") is False:
        assert_error(answer, "bad_request")
        return
    data, _meta = got.wait(1)[0]
    assert data == {"name": "a", "bytes": b"\x01\x02\x03"}, f"publish answered {answer}; the subscriber got {data!r}"


def test_a_consumer_resumes_on_a_new_client_with_exactly_what_it_missed(hub, sio_client):
    api = Api(hub)
    first = connect(sio_client(), hub)
    got = Deliveries(first, "tick")
    subscribe(first, "ticks", "dash")
    for i in range(1, 4):
        api.publish("ticks", "tick", {"i": i})
    got.wait(3)
    consumer_when(api, "ticks", "dash", lambda x: x["ack_floor"] == 3, "the three acks")
    first.disconnect()
    eventually(lambda: api.sockets("/") == [], message="the first client gone")

    for i in range(4, 8):
        api.publish("ticks", "tick", {"i": i})
    second = connect(sio_client(), hub, ["polling"])
    again = Deliveries(second, "tick")
    assert subscribe(second, "ticks", "dash", **{"from": "all"})["pending"] == 4
    again.wait(4)
    items = again.quiet(0.4)
    assert [(m["seq"], d["i"], m["deliveries"]) for d, m in items] == [(i, i, 1) for i in range(4, 8)]


def test_start_positions(hub, sio_client):
    api = Api(hub)
    for i in range(1, 6):
        api.publish("feed", "item", i)
    clients = [connect(sio_client(), hub) for _ in range(3)]
    got = [Deliveries(c, "item") for c in clients]
    assert subscribe(clients[0], "feed", "a", **{"from": "all"})["pending"] == 5
    assert subscribe(clients[1], "feed", "n", **{"from": "new"})["pending"] == 0
    assert subscribe(clients[2], "feed", "s", **{"from": 4})["pending"] == 2
    got[0].wait(5)
    got[2].wait(2)
    api.publish("feed", "item", 6)
    got[0].wait(6)
    got[1].wait(1)
    got[2].wait(3)
    time.sleep(0.3)
    assert [g.seqs() for g in got] == [[1, 2, 3, 4, 5, 6], [6], [4, 5, 6]]


# ---------------------------------------------------------------- redelivery, dead letters, back-pressure


def test_unacked_delivery_comes_again_after_ack_wait(hub, sio_client):
    api = Api(hub)
    c = connect(sio_client(), hub)
    # the first attempt's handler does not return (no ack); the second one acks
    got = Deliveries(c, "job", hold=lambda data, meta: meta["deliveries"] == 1)
    subscribe(c, "jobs", "worker", ack_wait_ms=300)
    api.publish("jobs", "job", {"n": 1}, id="job-1")
    got.wait(1)
    started = time.monotonic()
    items = got.wait(2, timeout=3)
    assert time.monotonic() - started >= 0.2
    assert items[1] == ({"n": 1}, {"stream": "jobs", "seq": 1, "id": "job-1", "deliveries": 2})
    info = consumer_when(api, "jobs", "worker", lambda x: x["pending"] == 0, "the ack of the second attempt")
    assert info["redelivered"] == 1
    # the first attempt's ack now arrives, late: harmless
    got.release()
    got.quiet(0.8)
    info = api.consumer("jobs", "worker")
    assert (info["pending"], info["ack_floor"], info["dead_lettered"]) == (0, 1, 0), info
    api.publish("jobs", "job", {"n": 2})
    assert got.wait(3)[2][1] == {"stream": "jobs", "seq": 2, "id": None, "deliveries": 1}


def test_dead_letter_after_max_deliver(hub, sio_client):
    api = Api(hub)
    c = connect(sio_client(), hub)
    got = Deliveries(c, "mail", hold=lambda data, meta: True)
    subscribe(c, "outbox", "sender", ack_wait_ms=150, max_deliver=2)
    api.publish("outbox", "mail", {"to": "x"})
    items = got.wait(2, timeout=5)
    assert [m["deliveries"] for _, m in items] == [1, 2]

    def dead():
        r = api.get("/api/v1/streams/outbox.dlq")
        return r.status_code == 200 and r.json()["entries"] == 1

    eventually(dead, message="the entry in outbox.dlq")
    info = consumer_when(api, "outbox", "sender", lambda x: x["dead_lettered"] == 1, "dead_lettered 1")
    assert info["pending"] == 0
    got.quiet(0.5)
    got.release()


def test_max_ack_pending_limits_what_is_in_flight(hub, sio_client):
    api = Api(hub)
    for i in range(1, 51):
        api.publish("backlog", "row", i)
    c = connect(sio_client(), hub)
    got = Deliveries(c, "row", hold=lambda data, meta: True)
    assert subscribe(c, "backlog", "slow", max_ack_pending=5, **{"from": "all"})["pending"] == 50
    got.wait(5)
    assert got.quiet(0.6) and got.seqs() == [1, 2, 3, 4, 5]
    info = api.consumer("backlog", "slow")
    assert (info["pending"], info["waiting"]) == (5, 45), info
    # every handler returns from now on: the rest flows, in order
    got.release()
    got.wait(50, timeout=10)
    assert got.seqs() == list(range(1, 51))
    consumer_when(api, "backlog", "slow", lambda x: x["ack_floor"] == 50 and x["pending"] == 0, "all acked")


def test_work_queue_of_python_clients(hub, sio_client):
    api = Api(hub)
    workers = [connect(sio_client(), hub, t) for t in (["websocket"], ["polling"], ["websocket"])]
    got = [Deliveries(w, "task") for w in workers]
    for w in workers:
        assert subscribe(w, "tasks", "pool")["ok"] is True
    for i in range(1, 61):
        api.publish("tasks", "task", i)
    eventually(lambda: sum(len(g.items) for g in got) >= 60, message="60 deliveries in total")
    time.sleep(0.3)
    seqs = [s for g in got for s in g.seqs()]
    assert sorted(seqs) == list(range(1, 61)), "each entry exactly once in total"
    for g in got:
        assert g.seqs() == sorted(g.seqs()), "each worker's share in order"
    consumer_when(api, "tasks", "pool", lambda x: x["ack_floor"] == 60, "all acked")


@pytest.mark.parametrize("how", ["sigterm", "kill"])
def test_consumer_survives_a_restart(start_hub, sio_client, how):
    """The subscriber's node (in cluster mode one of three, the others staying up) stops and
    starts again on its port and data; a new client on it resumes the consumer where it was."""
    hub = start_hub()
    api = Api(hub)
    node = hub.node()
    c = connect(sio_client(), node)
    got = Deliveries(c, "line", hold=lambda data, meta: data["i"] > 3)
    subscribe(c, "ledger", "books", **{"from": "all"})
    for i in range(1, 9):
        api.publish("ledger", "line", {"i": i})
    got.wait(8)
    consumer_when(api, "ledger", "books", lambda x: x["ack_floor"] == 3 and x["pending"] == 5, "acks of 1..3")
    # the consumer's position is written with the store's next batch, which this publish waits for
    api.publish("barrier", "b", {})
    node = hub.restart(node, kill=how == "kill")

    api.publish("ledger", "line", {"i": 9})
    c2 = connect(sio_client(), node)
    again = Deliveries(c2, "line")
    assert subscribe(c2, "ledger", "books")["pending"] == 6
    again.wait(6)
    items = again.quiet(0.4)
    assert [(m["seq"], d["i"], m["deliveries"]) for d, m in items] == [
        (4, 4, 2), (5, 5, 2), (6, 6, 2), (7, 7, 2), (8, 8, 2), (9, 9, 1)]
    got.release()


# ---------------------------------------------------------------- errors in the ack, permissions


def test_bad_requests_are_answered_in_the_ack(start_hub, sio_client):
    hub = start_hub("[store]\nmax_entry_bytes = 1000\n")
    c = connect(sio_client(), hub)
    cases = [
        ("courier:subscribe", None, "bad_request"),
        ("courier:subscribe", "orders", "bad_request"),
        ("courier:subscribe", {"stream": "orders"}, "bad_request"),
        ("courier:subscribe", {"stream": "orders", "consumer": 7}, "bad_request"),
        ("courier:subscribe", {"stream": "orders", "consumer": "c", "extra": True}, "bad_request"),
        ("courier:subscribe", {"stream": "x" * 129, "consumer": "c"}, "invalid_name"),
        ("courier:publish", ["orders", "e"], "bad_request"),
        ("courier:publish", {"stream": "orders", "event": "disconnect"}, "bad_request"),
        ("courier:publish", {"stream": "orders", "event": "e", "data": "x" * 2000}, "too_large"),
        ("courier:unsubscribe", 5, "bad_request"),
    ]
    for event, data, code in cases:
        assert_error(c.call(event, data, timeout=5), code)
    assert c.connected
    assert publish(c, "orders", "e", "fine") == {"ok": True, "seq": 1, "duplicate": False}


def test_unknown_stream_without_auto_create(start_hub, sio_client):
    hub = start_hub("[streams]\nauto_create = false\n")
    api = Api(hub)
    c = connect(sio_client(), hub)
    assert_error(subscribe(c, "ghost", "c", check=False), "stream_not_found")
    assert_error(publish(c, "ghost", "e", 1, check=False), "stream_not_found")
    r = api.post("/api/v1/streams/ghost/publish", {"event": "e"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found", r.text
    assert api.put("/api/v1/streams/ghost", {}).status_code == 200
    assert subscribe(c, "ghost", "c")["ok"] is True


@pytest.mark.parametrize("setting, event", [("client_publish", "courier:publish"),
                                            ("client_subscribe", "courier:subscribe")])
def test_client_permissions_answer_forbidden(start_hub, sio_client, setting, event):
    hub = start_hub(f"[hub]\n{setting} = false\n")
    c = connect(sio_client(), hub)
    body = {"stream": "s", "consumer": "c"} if event == "courier:subscribe" else {"stream": "s", "event": "e"}
    assert_error(c.call(event, body, timeout=5), "forbidden")
    r = Api(hub).get("/api/v1/streams/s")
    assert r.status_code == 404, f"nothing was created: {r.text}"


def test_acks_twice_or_for_unknown_ids_are_harmless(hub):
    """A raw client acks a delivery twice and acks ids it was never sent."""
    api = Api(hub)
    ws = SioWebSocket(hub.url)
    try:
        assert ws.connect()["type"] == 0
        ws.emit("/", "courier:subscribe", {"stream": "raw", "consumer": "c"}, ack=1)
        answer = parse_sio(ws.recv_sio())
        assert (answer["type"], answer["id"]) == (3, 1)
        assert answer["data"] == [{"ok": True, "stream": "raw", "consumer": "c", "pending": 0}]
        api.publish("raw", "e", {"n": 1})
        delivery = parse_sio(ws.recv_sio())
        assert delivery["type"] == 2 and delivery["id"] is not None, delivery
        assert delivery["data"] == ["e", {"n": 1}, {"stream": "raw", "seq": 1, "id": None, "deliveries": 1}]
        for _ in range(2):
            ws.send_sio(f"3{delivery['id']}[]")
        ws.send_sio("3987654[]")
        ws.send_sio("3987655" + compact(["stray", {"ok": True}]))
        consumer_when(api, "raw", "c", lambda x: x["pending"] == 0 and x["ack_floor"] == 1, "the ack")
        api.publish("raw", "e", {"n": 2})
        nxt = parse_sio(ws.recv_sio())
        assert nxt["data"][2] == {"stream": "raw", "seq": 2, "id": None, "deliveries": 1}, nxt
        ws.send_sio(f"3{nxt['id']}[]")
        consumer_when(api, "raw", "c", lambda x: x["ack_floor"] == 2 and x["pending"] == 0, "the second ack")
        info = api.consumer("raw", "c")
        assert info["redelivered"] == 0, info
    finally:
        ws.close()


# ---------------------------------------------------------------- python-socketio and recovery


RECOVERY_ON = "[recovery]\nenabled = true\n"


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_python_client_works_against_a_recovery_hub(start_hub, sio_client, transport):
    """python-socketio ignores the pid and does not recover; broadcasts reach its handlers with
    the offset as an extra last string argument, and durable deliveries carry none."""
    hub = start_hub(RECOVERY_ON)
    api = Api(hub)
    c = connect(sio_client(), hub, TRANSPORTS[transport])
    news = []
    c.on("news", lambda *args: news.append(args))
    got = Deliveries(c, "job")
    assert c.call("courier:join", "room", timeout=5)["ok"] is True
    assert api.emit(rooms=["room"], event="news", data=[{"n": 1}, "two"])["recipients"] == 1
    assert subscribe(c, "jobs", "py")["ok"] is True
    api.publish("jobs", "job", {"n": 1})

    eventually(lambda: news, message="the broadcast")
    (args,) = news
    assert len(args) == 3 and args[:2] == ({"n": 1}, "two"), args
    assert isinstance(args[2], str) and args[2], f"the offset: {args!r}"
    assert got.wait(1)[0] == ({"n": 1}, {"stream": "jobs", "seq": 1, "id": None, "deliveries": 1})
    # events sent with an ack request carry no offset either
    c.on("asked", lambda *args: args)  # a tuple: acked as the arguments themselves
    res = api.emit(event="asked", data=["q"], ack_timeout_ms=2000)
    assert res["acks"] == [{"sid": c.get_sid("/"), "args": ["q"]}], res


def test_python_client_reconnects_as_a_new_session_after_a_drop(start_hub, sio_client):
    hub = start_hub(RECOVERY_ON)
    api = Api(hub)
    c = sio_client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.3,
                   randomization_factor=0)
    connects = []
    c.on("connect", lambda: connects.append(time.monotonic()))
    connect(c, hub)
    sid = c.get_sid("/")
    assert c.call("courier:join", "room", timeout=5)["ok"] is True
    assert api.disconnect(rooms=[sid], close=True) == {"disconnected": 1}
    eventually(lambda: len(connects) >= 2 and c.connected, timeout=8, message="the client back")
    new_sid = c.get_sid("/")
    assert new_sid != sid, "python-socketio sends no pid: a new session"
    assert api.sockets("/", room="room") == [], "the new session is not in the old rooms"
    assert c.call("courier:join", "room", timeout=5) == {"ok": True, "rooms": sorted(["room", new_sid])}
