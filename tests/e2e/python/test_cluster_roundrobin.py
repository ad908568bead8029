"""Three Courier nodes behind a round-robin proxy without sticky sessions (proxy.py): a
python-socketio client over polling has its requests spread over every node, and the nodes
forward each to the node that owns the session."""

from __future__ import annotations

import queue

import pytest

from cluster import health, wait_forwarding
from proxy import RoundRobinProxy
from support import Api, eventually

# Short heartbeats, so that a few seconds hold many ping rounds (a GET and a POST each).
CONFIG = "[engine]\nping_interval_ms = 300\nping_timeout_ms = 3000\n"


@pytest.fixture
def balanced(start_cluster):
    cluster = start_cluster(config=CONFIG)
    wait_forwarding(cluster.nodes)
    proxy = RoundRobinProxy(lambda: [n.url for n in cluster.nodes])
    yield cluster, proxy
    proxy.close()


def test_polling_client_through_a_round_robin_proxy(balanced, sio_client):
    cluster, proxy = balanced
    ids = {health(n)["cluster"]["node"]: n for n in cluster.nodes}
    client = sio_client()
    drops = []
    client.on("disconnect", lambda *reason: drops.append(reason))
    news = queue.Queue()
    client.on("news", lambda *args: news.put(args))
    client.connect(proxy.url, transports=["polling"], wait_timeout=5)
    sid = client.eio.sid
    assert any(sid.startswith(i) for i in ids), f"sid {sid} starts with the id of a node: {list(ids)}"

    # an ack from the hub
    ack = client.call("chat", "anyone?", timeout=5)
    assert ack["ok"] is True, ack

    # an emit from each node's API
    for i, node in enumerate(cluster.nodes):
        assert Api(node.url).emit(event="news", data=[f"via node {i}"])["recipients"] == 1
        assert news.get(timeout=5) == (f"via node {i}",)

    # heartbeats go on, the session's requests landing on every node, and it is never dropped
    def rounds():
        return sum(1 for e in list(proxy.log) if e.sid == sid) >= 20

    eventually(rounds, timeout=20, message="20 requests of the session through the proxy")
    assert drops == [], "the client stayed connected"
    assert client.connected and client.eio.sid == sid, "the same Engine.IO session throughout"
    assert proxy.targets_of(sid, "polling") == {n.url for n in cluster.nodes}
    failed = [e for e in list(proxy.log) if e.sid == sid and e.done and e.status != 200]
    assert failed == [], "every request of the session was answered 200"

    # and it still works after all that
    assert client.call("chat", "still here?", timeout=5)["ok"] is True
    Api(cluster.nodes[2].url).emit(event="news", data=["still here"])
    assert news.get(timeout=5) == ("still here",)


def test_clients_of_a_node_killed_with_sigkill_reconnect_to_the_others(balanced, sio_client):
    cluster, proxy = balanced
    # A client on each node: the proxy sends each handshake to the next node in turn.
    clients, news = [], queue.Queue()
    for _ in cluster.nodes:
        c = sio_client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.3)
        c.on("news", lambda *args, c=c: news.put((c, args)))
        c.connect(proxy.url, transports=["websocket"], wait_timeout=5)
        clients.append(c)
    owner = {c: next(n for n in cluster.nodes if c.eio.sid.startswith(health(n)["cluster"]["node"]))
             for c in clients}
    victim = cluster.nodes[0]
    gone = [c for c in clients if owner[c] is victim]
    assert gone, "one client is on the node that will be killed"
    old_sids = {c.get_sid("/") for c in gone}
    victim.kill()
    survivors = cluster.nodes[1:]

    def back():
        return all(c.connected and c.get_sid("/") not in old_sids for c in gone)

    eventually(back, timeout=20, message="the killed node's clients reconnected elsewhere")
    assert Api(survivors[0].url).emit(event="news", data=["after the kill"])["recipients"] == len(clients)
    got = {news.get(timeout=5)[0] for _ in clients}
    assert got == set(clients), "every client got the emit"

    def listed():
        sids = {s["sid"] for s in Api(survivors[1].url).get("/api/v1/sockets").json()["sockets"]}
        assert sids == {c.get_sid("/") for c in clients}, sids
        return True

    eventually(listed, timeout=10, message="the survivors list exactly the connected sockets")
