"""`courier serve --redis URL`: three Courier nodes on one Redis, python-socketio clients spread
over them, the HTTP API called on any node.

A room is cluster-wide: the API's emit (and its acks), the socket listing and disconnect, and the
relay of client events reach every node's sockets. With Redis away each node serves its own
clients and /health says so; once Redis is back on its port the nodes rejoin by themselves.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time

from cluster import health, wait_redis_state
from support import Api, eventually


class Inbox:
    """Collects the arguments of every `event` a client receives."""

    def __init__(self, client, event):
        self.q = queue.Queue()
        self.seen = []
        client.on(event, self._handler)

    def _handler(self, *args):
        self.seen.append(args)
        self.q.put(args)

    def get(self, timeout=5):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing arrived within {timeout} s") from None


def connect(sio_client, node, transports=None):
    c = sio_client()
    c.connect(node.url, transports=transports, wait_timeout=5)
    return c


def join(client, rooms):
    return client.call("courier:join", rooms, timeout=5)


_tokens = itertools.count(1)


def settle(node, client):
    """Emits a sentinel from `node` to `client` alone and waits for it: Redis hands one
    publisher's messages over in order, so what `node` sent before it has arrived too."""
    token = next(_tokens)
    got = queue.Queue()
    client.on("sentinel", lambda n: got.put(n))
    Api(node.url).emit(rooms=[client.get_sid("/")], event="sentinel", data=[token])
    deadline = time.monotonic() + 5
    while True:
        try:
            if got.get(timeout=max(0.0, deadline - time.monotonic())) == token:
                return
        except queue.Empty:
            raise AssertionError(f"the sentinel from {node.url} did not arrive") from None


def listing(node, room=None):
    return {s["sid"]: sorted(s["rooms"]) for s in Api(node.url).sockets("/", room=room)}


# ---------------------------------------------------------------- joining the cluster


def test_every_node_reports_redis_up_and_an_id_of_its_own(start_cluster):
    cluster = start_cluster()
    ids = []
    for node in cluster.nodes:
        body = health(node)
        assert body["status"] == "ok"
        assert body.get("cluster", {}).get("redis") == "up", body
        assert isinstance(body["cluster"]["node"], str) and body["cluster"]["node"], body
        ids.append(body["cluster"]["node"])
    assert len(set(ids)) == 3, ids


def test_a_hub_without_redis_has_no_cluster_section(courier):
    body = health(courier)
    assert body["status"] == "ok"
    assert "cluster" not in body, body


def test_environment_variable_joins_a_node_to_the_cluster(start_cluster, sio_client):
    cluster = start_cluster(nodes=1)
    by_env = cluster.add_node(via="env")
    c = connect(sio_client, cluster.nodes[0])
    inbox = Inbox(c, "news")
    assert Api(by_env.url).emit(event="news", data=["from the env node"])["recipients"] == 1
    assert inbox.get() == ("from the env node",)


def test_config_file_joins_a_node_to_the_cluster(start_cluster, sio_client):
    cluster = start_cluster(nodes=1)
    by_config = cluster.add_node(via="config")
    c = connect(sio_client, cluster.nodes[0])
    inbox = Inbox(c, "news")
    assert Api(by_config.url).emit(event="news", data=["from the config node"])["recipients"] == 1
    assert inbox.get() == ("from the config node",)


# ---------------------------------------------------------------- the HTTP API's emit


def test_emit_through_any_node_reaches_the_clients_of_every_node(start_cluster, sio_client):
    cluster = start_cluster()
    clients = [
        connect(sio_client, cluster.nodes[0], transports=["websocket"]),
        connect(sio_client, cluster.nodes[1], transports=["polling"]),
        connect(sio_client, cluster.nodes[2]),
    ]
    inboxes = [Inbox(c, "news") for c in clients]
    for i, node in enumerate(cluster.nodes):
        assert Api(node.url).emit(event="news", data=[f"via {i}"]) == {"recipients": 3}
    for i, inbox in enumerate(inboxes):
        got = sorted(inbox.get() for _ in range(3))
        assert got == [("via 0",), ("via 1",), ("via 2",)], f"client on node {i}"
        settle(cluster.nodes[0], clients[i])
        assert len(inbox.seen) == 3, f"client on node {i} got each event once: {inbox.seen}"


def test_emit_to_a_room_reaches_its_members_on_every_node_and_no_one_else(start_cluster, sio_client):
    cluster = start_cluster()
    member_a = connect(sio_client, cluster.nodes[0])
    outsider_b = connect(sio_client, cluster.nodes[1])
    member_c = connect(sio_client, cluster.nodes[2])
    join(member_a, "parcel-7")
    join(member_c, "parcel-7")
    inboxes = [Inbox(c, "status") for c in (member_a, member_c)]
    outside = Inbox(outsider_b, "status")
    answer = Api(cluster.nodes[1].url).emit(rooms=["parcel-7"], event="status", data=["in-transit"])
    assert answer["recipients"] == 2
    for inbox in inboxes:
        assert inbox.get() == ("in-transit",)
    settle(cluster.nodes[1], outsider_b)
    assert outside.seen == []


def test_emit_with_acks_from_sockets_on_every_node(start_cluster, sio_client):
    cluster = start_cluster()
    clients = [connect(sio_client, node) for node in cluster.nodes]
    for i, c in enumerate(clients):
        c.on("quote", lambda item, i=i: {"node": i, "item": item})
    started = time.monotonic()
    answer = Api(cluster.nodes[2].url).emit(event="quote", data=["tea"], ack_timeout_ms=4000)
    assert time.monotonic() - started < 3.5, "the answer does not wait for the timeout"
    assert answer["recipients"] == 3 and answer["timeouts"] == 0, answer
    acks = {a["sid"]: a["args"] for a in answer["acks"]}
    assert acks == {c.get_sid("/"): [{"node": i, "item": "tea"}] for i, c in enumerate(clients)}


def test_a_silent_socket_on_another_node_counts_as_a_timeout(start_cluster, sio_client):
    cluster = start_cluster()
    answers = connect(sio_client, cluster.nodes[0])
    silent = connect(sio_client, cluster.nodes[1])
    answers.on("poll", lambda: "yes")
    # python-socketio acks when a handler returns: this one holds on until the answer is in
    saw, answered = threading.Event(), threading.Event()

    def hold():
        saw.set()
        answered.wait(10)

    silent.on("poll", hold)
    try:
        answer = Api(cluster.nodes[2].url).emit(event="poll", data=[], ack_timeout_ms=800)
    finally:
        answered.set()
    assert answer["recipients"] == 2 and answer["timeouts"] == 1, answer
    assert answer["acks"] == [{"sid": answers.get_sid("/"), "args": ["yes"]}]
    assert saw.is_set(), "the silent socket did get the event"


# ---------------------------------------------------------------- rooms and relay


def test_join_on_one_node_and_relay_from_another(start_cluster, sio_client):
    cluster = start_cluster()
    sender = connect(sio_client, cluster.nodes[0], transports=["websocket"])
    member = connect(sio_client, cluster.nodes[1], transports=["polling"])
    outsider = connect(sio_client, cluster.nodes[2])
    for c in (sender, member):
        assert join(c, "lobby") == {"ok": True, "rooms": sorted(["lobby", c.get_sid("/")])}
    at_member = Inbox(member, "chat")
    at_sender = Inbox(sender, "chat")
    outside = Inbox(outsider, "chat")
    ack = sender.call("chat", {"text": "hello", "blob": b"\x00\x01\xff"}, timeout=5)
    assert ack["ok"] is True, ack
    assert at_member.get() == ({"text": "hello", "blob": b"\x00\x01\xff"},)

    member.call("chat", "hi back", timeout=5)
    assert at_sender.get() == ("hi back",)
    settle(cluster.nodes[0], outsider)
    settle(cluster.nodes[0], member)
    assert outside.seen == []
    assert at_member.seen == [({"text": "hello", "blob": b"\x00\x01\xff"},)], "no echo to the sender"


def test_leave_on_one_node_takes_the_socket_out_of_the_room(start_cluster, sio_client):
    cluster = start_cluster()
    sender = connect(sio_client, cluster.nodes[0])
    leaver = connect(sio_client, cluster.nodes[1])
    join(sender, "team")
    join(leaver, "team")
    inbox = Inbox(leaver, "update")
    sender.call("update", 1, timeout=5)
    assert inbox.get() == (1,)
    assert leaver.call("courier:leave", "team", timeout=5) == {"ok": True, "rooms": [leaver.get_sid("/")]}
    sender.call("update", 2, timeout=5)
    answer = Api(cluster.nodes[2].url).emit(rooms=["team"], event="update", data=[3])
    assert answer["recipients"] == 1, "only the sender is left in the room"
    settle(cluster.nodes[0], leaver)
    settle(cluster.nodes[2], leaver)
    assert inbox.seen == [(1,)]


# ---------------------------------------------------------------- listing and disconnecting


def test_sockets_listing_on_any_node_shows_every_node(start_cluster, sio_client):
    cluster = start_cluster()
    clients = [connect(sio_client, node) for node in cluster.nodes]
    sids = [c.get_sid("/") for c in clients]
    join(clients[1], ["red", "blue"])
    join(clients[2], "red")
    expected = {
        sids[0]: [sids[0]],
        sids[1]: sorted(["red", "blue", sids[1]]),
        sids[2]: sorted(["red", sids[2]]),
    }
    for i, node in enumerate(cluster.nodes):
        assert listing(node) == expected, f"node {i}"
        assert sorted(listing(node, room="red")) == sorted(sids[1:]), f"room red on node {i}"


def test_a_disconnected_socket_leaves_the_listing_of_every_node(start_cluster, sio_client):
    cluster = start_cluster()
    stays = connect(sio_client, cluster.nodes[0])
    goes = connect(sio_client, cluster.nodes[1])
    eventually(lambda: len(listing(cluster.nodes[2])) == 2, message="both sockets listed on node 2")
    goes.disconnect()
    for i, node in enumerate(cluster.nodes):
        eventually(lambda node=node: list(listing(node)) == [stays.get_sid("/")],
                   message=f"node {i} lists only the socket still connected")


def test_disconnect_through_one_node_reaches_sockets_on_every_node(start_cluster, sio_client):
    cluster = start_cluster()
    kept = connect(sio_client, cluster.nodes[0])
    kicked = [connect(sio_client, cluster.nodes[1]), connect(sio_client, cluster.nodes[2])]
    for c in kicked:
        join(c, "kick-me")
    r = Api(cluster.nodes[0].url).post("/api/v1/disconnect", {"namespace": "/", "rooms": ["kick-me"]})
    assert r.status_code == 200, r.text
    for c in kicked:
        eventually(lambda c=c: not c.connected, message="a socket in the room to be disconnected")
    settle(cluster.nodes[0], kept)
    assert kept.connected
    eventually(lambda: list(listing(cluster.nodes[2])) == [kept.get_sid("/")],
               message="the listing to hold only the socket left")


# ---------------------------------------------------------------- Redis away and back


def test_with_redis_stopped_each_node_serves_its_own_clients(start_cluster, sio_client):
    cluster = start_cluster()
    a1 = connect(sio_client, cluster.nodes[0])
    a2 = connect(sio_client, cluster.nodes[0])
    cluster.redis.stop()
    for node in cluster.nodes:
        wait_redis_state(node, "down")
    inbox = Inbox(a1, "local")
    started = time.monotonic()
    answer = Api(cluster.nodes[0].url).emit(event="local", data=["still here"])
    assert time.monotonic() - started < 3, "the API answers without waiting for Redis"
    assert answer["recipients"] >= 2, answer
    assert inbox.get() == ("still here",)

    join(a1, "local-room")
    join(a2, "local-room")
    relayed = Inbox(a2, "chat")
    a1.call("chat", "no redis needed", timeout=5)
    assert relayed.get() == ("no redis needed",)


def test_when_redis_is_back_the_nodes_rejoin_by_themselves(start_cluster, sio_client):
    cluster = start_cluster()
    clients = [connect(sio_client, node) for node in cluster.nodes]
    inboxes = [Inbox(c, "after") for c in clients]
    join(clients[0], "kept")
    join(clients[2], "kept")
    cluster.redis.stop()
    for node in cluster.nodes:
        wait_redis_state(node, "down")
    cluster.redis.start()
    for node in cluster.nodes:
        wait_redis_state(node, "up", timeout=10)
    cluster.redis.wait_subscribers(3, timeout=10)

    api = Api(cluster.nodes[1].url)

    # an event published while a node was still resubscribing is lost for it: send until all have one
    def everyone_got_one():
        api.emit(event="after", data=["back"])
        return all(inbox.seen for inbox in inboxes)

    eventually(everyone_got_one, timeout=10, interval=0.25,
               message="an emit from node 1 to reach the clients of every node")
    assert all(inbox.seen[0] == ("back",) for inbox in inboxes)
    # rooms joined before the outage span the nodes again
    assert api.emit(rooms=["kept"], event="after", data=["room"])["recipients"] == 2
