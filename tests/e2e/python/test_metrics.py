"""GET /metrics after a scripted workload, read with the Prometheus text parser of the
`prometheus_client` package (docs/observe.md).

Every metric docs/observe.md lists must be in the scrape, and the counts must be the
workload's: the clients that connected and left, the handshakes refused, the publishes (new,
duplicate, refused), and the deliveries, redeliveries and dead letters of a consumer that never
acks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
import socketio
from prometheus_client.parser import text_string_to_metric_families

from support import Api, Deliveries, eventually

DOCS = Path(__file__).resolve().parents[3] / "docs" / "observe.md"

CONFIG = """
[hub]
auth_tokens = ["letmein"]
[store]
max_entry_bytes = 1000
[[stream]]
name = "work"
"""


def documented_metrics():
    """The metric names of docs/observe.md's tables: `| `courier_...` | type | ...`."""
    names = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\|\s*`(courier_[a-z0-9_]+)`(?:\{[^}]*\})?\s*\|\s*(counter|gauge|histogram)\s*\|", line)
        if m:
            names[m.group(1)] = m.group(2)
    return names


def scrape(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(url + "/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    types = {}
    for family in text_string_to_metric_families(r.text):
        # The parser names a counter's family without `_total`; the docs use the sample name.
        name = family.name + "_total" if family.type == "counter" else family.name
        types[name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples, name):
    return sum(v for (n, _), v in samples.items() if n == name)


def client(sio_client, server, transports=("websocket",), namespace="/", token="letmein"):
    c = sio_client()
    c.connect(server.url, transports=list(transports), namespaces=[namespace],
              auth={"token": token}, wait_timeout=5)
    return c


def test_metrics_match_a_scripted_workload(start_courier, sio_client):
    server = start_courier(CONFIG)
    api = Api(server.url)

    # 5 WebSocket clients, 1 polling-only, 1 that upgrades from polling.
    clients = [client(sio_client, server) for _ in range(5)]
    clients.append(client(sio_client, server, transports=("polling",)))
    upgrader = client(sio_client, server, transports=("polling", "websocket"))
    clients.append(upgrader)
    eventually(lambda: upgrader.transport() == "websocket", message="upgrade to websocket")

    # Refused: a wrong token (the hub's auth middleware), and a namespace that does not exist.
    for token, nsp in (("wrong", "/"), ("letmein", "/nope")):
        with pytest.raises(socketio.exceptions.ConnectionError):
            client(sio_client, server, namespace=nsp, token=token)

    # Publishes: 7 new, then one id twice (1 new, 1 duplicate), then one too large (refused).
    for i in range(7):
        api.publish("orders", "created", {"n": i})
    assert api.publish("orders", "created", {"n": 7}, id="m-1")["duplicate"] is False
    assert api.publish("orders", "created", {"n": 7}, id="m-1")["duplicate"] is True
    r = api.post("/api/v1/streams/orders/publish", {"event": "big", "data": "x" * 2000})
    assert r.status_code == 413, r.text

    # A consumer that never acks: 2 entries, each delivered 3 times, then dead-lettered.
    worker = clients[0]
    held = Deliveries(worker, "job", hold=lambda data, meta: True)
    answer = worker.call("courier:subscribe", {"stream": "work", "consumer": "w",
                                               "ack_wait_ms": 100, "max_deliver": 3}, timeout=5)
    assert answer["ok"], answer
    api.publish("work", "job", {"j": 1})
    api.publish("work", "job", {"j": 2})
    eventually(lambda: api.consumer("work", "w")["dead_lettered"] == 2, timeout=15,
               message="both jobs dead-lettered")
    assert len(held.snapshot()) == 6
    held.release()

    # A broadcast to everyone: 7 recipients.
    assert api.emit(event="hello", data=["all"])["recipients"] == 7

    types, samples = scrape(server.url)
    assert value(samples, "courier_connections", transport="websocket") == 6
    assert value(samples, "courier_connections", transport="polling") == 1
    assert value(samples, "courier_sockets", namespace="/") == 7
    assert value(samples, "courier_upgrades_total") == 1
    assert value(samples, "courier_handshakes_refused_total", cause="middleware") == 1
    assert value(samples, "courier_handshakes_refused_total", cause="invalid_namespace") == 1
    assert value(samples, "courier_socket_connects_total") == 7
    # Dead letters are not publishes (they have their own counter).
    assert value(samples, "courier_stream_publishes_total", result="ok") == 7 + 1 + 2
    assert value(samples, "courier_stream_publishes_total", result="duplicate") == 1
    assert value(samples, "courier_stream_publishes_total", result="too_large") == 1
    assert value(samples, "courier_stream_deliveries_total") == 2
    assert value(samples, "courier_stream_redeliveries_total") == 4
    assert value(samples, "courier_stream_dead_lettered_total") == 2
    assert value(samples, "courier_consumer_redelivered_total", stream="work", consumer="w") == 4
    assert value(samples, "courier_consumer_dead_lettered_total", stream="work", consumer="w") == 2
    assert value(samples, "courier_consumer_pending", stream="work", consumer="w") == 0
    assert value(samples, "courier_stream_entries", stream="orders") == 8
    assert value(samples, "courier_stream_entries", stream="work.dlq") == 2
    assert value(samples, "courier_broadcasts_total") >= 1
    assert value(samples, "courier_broadcast_recipients_total") >= 7
    assert value(samples, "courier_events_received_total") >= 1  # the subscribe
    assert value(samples, "courier_events_emitted_total") >= 6  # six deliveries
    assert value(samples, "courier_packets_received_total") > 0
    assert value(samples, "courier_sent_bytes_total") > 0
    commits = value(samples, "courier_store_commit_seconds_count")
    assert commits and commits >= 1
    assert value(samples, "courier_store_commit_seconds_bucket", le="+Inf") == commits

    documented = documented_metrics()
    assert len(documented) >= 40, f"docs/observe.md lists only {len(documented)} metrics"
    # Cluster metrics appear on cluster nodes only (test_metrics_of_a_cluster_node).
    missing = {n: t for n, t in documented.items()
               if not n.startswith("courier_cluster_") and types.get(n) != t}
    assert not missing, f"documented but not scraped (or of another type): {missing}"
    undocumented = set(types) - set(documented)
    assert not undocumented, f"scraped but not in docs/observe.md: {undocumented}"

    # Everyone leaves: 7 socket disconnects (python-socketio closes its transport right after
    # its DISCONNECT packet, so the reason is either), no sockets left.
    for c in clients:
        c.disconnect()

    def all_gone():
        _, s = scrape(server.url)
        return (value(s, "courier_sockets", namespace="/") == 0
                and total(s, "courier_socket_disconnects_total") == 7
                and s)

    s = eventually(all_gone, timeout=10, message="every socket disconnected")
    assert total(s, "courier_connections_closed_total") >= 7


def test_metrics_need_the_api_token_and_can_be_off(start_courier):
    server = start_courier('[api]\ntoken = "s3cret"\n')
    assert requests.get(server.url + "/metrics", timeout=5).status_code == 401
    types, _ = scrape(server.url, token="s3cret")
    assert "courier_connections" in types
    off = start_courier("[metrics]\nenabled = false\n")
    assert requests.get(off.url + "/metrics", timeout=5).status_code == 404


def test_consumer_series_are_bounded(start_courier, sio_client):
    """Past metrics.max_consumer_series the consumers of a stream are summed in `_other`."""
    server = start_courier("[metrics]\nmax_consumer_series = 2\n")
    api = Api(server.url)
    api.publish("feed", "e", {})
    for name in ["a", "b", "c", "d"]:
        c = client(sio_client, server, token=None)
        assert c.call("courier:subscribe", {"stream": "feed", "consumer": name, "from": "new"}, timeout=5)["ok"]
        c.disconnect()
    api.publish("feed", "e", {})
    _, s = scrape(server.url)
    consumers = sorted(dict(k[1])["consumer"] for k in s if k[0] == "courier_consumer_waiting")
    assert len(consumers) == 3 and "_other" in consumers, consumers
    assert total(s, "courier_consumer_waiting") == 4


def test_metrics_of_a_cluster_node(start_cluster):
    cluster = start_cluster(nodes=2)
    node = cluster.nodes[0]

    def pinged():
        types, s = scrape(node.url)
        return (types, s) if total(s, "courier_cluster_redis_ping_seconds_count") > 0 else None

    types, s = eventually(pinged, timeout=10, message="a heartbeat's round trip to Redis")
    for n, t in documented_metrics().items():
        if n.startswith("courier_cluster_"):
            assert types.get(n) == t, f"{n} missing from a cluster node's scrape"
    ups = [(dict(labels), v) for (n, labels), v in s.items() if n == "courier_cluster_redis_up"]
    assert len(ups) == 1 and ups[0][1] == 1.0, ups
    assert ups[0][0]["node"], "the node's id is a label"
    assert value(s, "courier_cluster_nodes", node=ups[0][0]["node"]) == 2


def test_grafana_dashboard_uses_documented_metrics():
    """docs/grafana-courier.json queries only metrics that /metrics has (as documented)."""
    import json

    dashboard = json.loads((DOCS.parent / "grafana-courier.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"courier_[a-z0-9_]+", e)}
    documented = documented_metrics()
    assert used, "the dashboard queries something"
    assert used <= set(documented), f"not documented: {used - set(documented)}"


def test_connections_past_max_connections_are_counted(start_courier, sio_client):
    import socket as net

    server = start_courier("[server]\nmax_connections = 2\n")
    held = client(sio_client, server, token=None)  # one slot
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    idle = net.create_connection((host, int(port)))  # the other
    try:
        assert requests.get(server.url + "/health", timeout=5).status_code == 503
    finally:
        idle.close()

    def refused():
        try:
            _, s = scrape(server.url)
        except requests.RequestException:
            return None
        return value(s, "courier_handshakes_refused_total", cause="max_connections")

    assert eventually(refused, timeout=10, message="a scrape once a slot is free") >= 1
    held.disconnect()
