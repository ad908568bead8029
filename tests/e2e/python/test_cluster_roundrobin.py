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
