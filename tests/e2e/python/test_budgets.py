"""Floods against `courier serve`'s memory budgets and disk quotas (docs/limits.md).

Each flood runs against the binary with small budgets, and checks what a user would: the
server's peak resident memory (VmHWM) stays under the bound docs/limits.md derives from the
settings, a well-behaved client keeps being served meanwhile, refusals carry their error code,
and every publish that was confirmed is delivered afterwards.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict

import pytest
import requests

from support import Api, Deliveries, eventually
from wire import Polling

MIB = 1 << 20


def memory_kib(server, field):
    """VmRSS or VmHWM (peak) of the server process, in KiB."""
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc status")


def settle_baseline(server, api):
    """Resident memory once the server has started and answered a few requests, in bytes."""
    for _ in range(5):
        api.health()
    return memory_kib(server, "VmRSS") * 1024


def well_behaved(sio_client, server, namespace="/"):
    """A client that joins rooms throughout a flood; returns (client, latencies list, stop event, thread)."""
    client = sio_client()
    client.connect(server.url, transports=["websocket"], namespaces=[namespace], wait_timeout=5)
    latencies = []
    stop = threading.Event()

    def loop():
        n = 0
        while not stop.is_set():
            t0 = time.monotonic()
            ack = client.call("courier:join", f"r{n % 5}", namespace=namespace, timeout=10)
            latencies.append(time.monotonic() - t0)
            assert ack["ok"] is True, ack
            n += 1
            time.sleep(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return client, latencies, stop, thread


def finish(stop, thread, latencies):
    stop.set()
    thread.join(15)
    assert not thread.is_alive(), "the well-behaved client hung"
    assert len(latencies) >= 3, f"the well-behaved client was barely served: {latencies}"
    worst = max(latencies)
    assert worst < 5, f"the well-behaved client waited {worst:.2f} s for an ack"
    return worst


@pytest.mark.timeout(180)
def test_recovery_log_flood_stays_within_its_memory_budget(start_courier, sio_client):
    """Regression: the recovery log kept up to 100,000 broadcasts in memory with no byte bound, so
    2,000 HTTP emits of 500 KB to a namespace with no sockets took the hub from 9 MB to 990 MB."""
    budget = 16 * MIB
    server = start_courier(
        "[hub]\nnamespaces = [\"/\", \"/quiet\"]\n"
        f"[recovery]\nenabled = true\nmemory_bytes = {budget}\nmax_bytes = {64 * MIB}\n"
    )
    api = Api(server.url)
    base = settle_baseline(server, api)
    client, latencies, stop, thread = well_behaved(sio_client, server, "/quiet")

    payload = "x" * 500_000
    total, workers = 400, 4
    errors = []

    def flood(count):
        http = requests.Session()
        for _ in range(count):
            r = http.post(f"{server.url}/api/v1/emit", json={"event": "big", "data": [payload]}, timeout=30)
            if r.status_code != 200 or r.json() != {"recipients": 0}:
                errors.append((r.status_code, r.text[:200]))
        http.close()

    threads = [threading.Thread(target=flood, args=(total // workers,), daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    worst = finish(stop, thread, latencies)
    assert not errors, errors[:3]
    peak = memory_kib(server, "VmHWM") * 1024
    # docs/limits.md: base + twice recovery.memory_bytes (the log, and the batch the store is
    # committing) + what requests in flight hold (4 requests of 500 KB, each held as its body, its
    # JSON tree, its encoded packet and its recovery copy) + 16 MiB for the allocator and SQLite.
    bound = base + 2 * budget + 4 * 4 * 500_000 + 16 * MIB
    print(f"recovery flood: base {base / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB, bound {bound / MIB:.1f} MiB, "
          f"worst ack {worst:.3f} s, {total} emits of 500 KB")
    assert peak < bound, f"peak RSS {peak / MIB:.1f} MiB over the bound {bound / MIB:.1f} MiB"
    assert api.health()["status"] == "ok"


@pytest.mark.timeout(180)
def test_publish_flood_over_many_streams_stays_within_memory_and_disk_quotas(start_courier, sio_client):
    """Regression: each stream kept a 16 MB tail with no bound across streams (20,000 publishes of
    50 KB over 1,000 auto-created streams: +1,040 MB), and any client could fill the disk."""
    tail_budget = 16 * MIB
    max_disk = 40 * MIB
    max_streams = 150
    server = start_courier(
        f"[store]\ntail_memory_bytes = {tail_budget}\nmax_disk_bytes = {max_disk}\n"
        f"max_streams = {max_streams}\nmax_queued_bytes = {8 * MIB}\n"
        # One reader checks every stream from one socket afterwards.
        f"[limits]\nsubscriptions_per_socket = {max_streams}\n"
    )
    api = Api(server.url)
    base = settle_baseline(server, api)
    client, latencies, stop, thread = well_behaved(sio_client, server)

    data = {"blob": "y" * 50_000}
    total, n_streams, workers = 2000, 200, 4
    confirmed = defaultdict(list)  # stream -> [seq]
    refused = defaultdict(int)  # code -> count
    lock = threading.Lock()
    answered = threading.Semaphore(0)

    def publisher(index):
        pub = sio_client()
        pub.connect(server.url, transports=["websocket"], wait_timeout=5)
        mine = range(index, total, workers)
        for i in mine:
            stream = f"flood-{i % n_streams}"

            def done(ack, stream=stream, i=i):
                with lock:
                    if ack.get("ok"):
                        confirmed[stream].append((ack["seq"], i))
                    else:
                        refused[ack["error"]["code"]] += 1
                answered.release()

            pub.emit("courier:publish", {"stream": stream, "event": "e", "data": {**data, "i": i}}, callback=done)
        for _ in mine:
            assert answered.acquire(timeout=60), "a publish was never answered"

    threads = [threading.Thread(target=publisher, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
        assert not t.is_alive(), "a publisher hung"
    worst = finish(stop, thread, latencies)
    peak = memory_kib(server, "VmHWM") * 1024
    n_confirmed = sum(len(v) for v in confirmed.values())
    assert n_confirmed + sum(refused.values()) == total
    assert set(refused) <= {"storage_full", "too_many_streams"}, dict(refused)
    assert refused["storage_full"] > 0 and refused["too_many_streams"] > 0, dict(refused)
    streams = requests.get(f"{server.url}/api/v1/streams", timeout=10).json()["streams"]
    assert len(streams) == max_streams
    held = sum(s["bytes"] for s in streams)
    assert held <= max_disk, f"streams hold {held} bytes over max_disk_bytes {max_disk}"
    # docs/limits.md: base + store.tail_memory_bytes + store.max_queued_bytes + what the four
    # publishing connections hold in flight (256 handlers of 50 KB each at most) + slack.
    bound = base + tail_budget + 8 * MIB + 4 * 256 * 50_000 + 32 * MIB
    print(f"publish flood: base {base / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB, bound {bound / MIB:.1f} MiB, "
          f"confirmed {n_confirmed}, refused {dict(refused)}, worst ack {worst:.3f} s")
    assert peak < bound, f"peak RSS {peak / MIB:.1f} MiB over the bound {bound / MIB:.1f} MiB"

    # The quota refused new publishes and removed nothing: every confirmed one is delivered, in order.
    reader = sio_client()
    got = defaultdict(list)
    got_lock = threading.Lock()

    def on_entry(payload, meta):
        with got_lock:
            got[meta["stream"]].append((meta["seq"], payload["i"]))
        return "ok"

    reader.on("e", on_entry)
    reader.connect(server.url, transports=["websocket"], wait_timeout=5)
    for stream in confirmed:
        ack = reader.call("courier:subscribe", {"stream": stream, "consumer": "audit", "from": "all"}, timeout=10)
        assert ack["ok"] is True, ack
    eventually(lambda: sum(len(v) for v in got.values()) >= n_confirmed, timeout=60,
               message=f"{n_confirmed} confirmed publishes delivered")
    for stream, entries in confirmed.items():
        assert got[stream] == sorted(entries), f"{stream}: delivered {got[stream][:5]}..., confirmed {sorted(entries)[:5]}..."


def test_http_publish_past_a_quota_answers_507_and_429(start_courier):
    server = start_courier("[store]\nmax_disk_bytes = 2000\nmax_streams = 2\n")
    api = Api(server.url)
    assert api.publish("a", "e", "x" * 900)["seq"] == 1
    r = api.post("/api/v1/streams/a/publish", {"event": "e", "data": "x" * 1200})
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == "storage_full"
    assert api.publish("b", "e", 1)["seq"] == 1
    r = api.post("/api/v1/streams/c/publish", {"event": "e", "data": 1})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "too_many_streams"
    r = api.put("/api/v1/streams/d", {})
    assert r.status_code == 429, r.text
    assert api.stream("a")["entries"] == 1, "nothing confirmed was touched"


def test_discard_new_stream_refuses_past_max_entries_over_socketio(start_courier, sio_client):
    server = start_courier('[[stream]]\nname = "capped"\nmax_entries = 3\ndiscard = "new"\n')
    client = sio_client()
    client.connect(server.url, transports=["websocket"], wait_timeout=5)
    acks = [client.call("courier:publish", {"stream": "capped", "event": "e", "data": n}, timeout=5) for n in range(5)]
    assert [a.get("seq") for a in acks[:3]] == [1, 2, 3]
    for a in acks[3:]:
        assert a["ok"] is False and a["error"]["code"] == "storage_full", a
    assert Api(server.url).stream("capped")["entries"] == 3


def http_get_keepalive(host, port, timeout=5):
    """Opens a TCP connection, sends GET /health with keep-alive, returns (socket, first response bytes)."""
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return s, data


def test_max_connections_answers_503_before_anything_else_and_frees_slots(start_courier):
    server = start_courier("[server]\nmax_connections = 20\n")
    held = []
    for _ in range(20):
        s, head = http_get_keepalive(server.host, server.port)
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        held.append(s)
    s, head = http_get_keepalive(server.host, server.port)
    s.settimeout(2)
    rest = b""
    try:
        while chunk := s.recv(4096):
            rest += chunk
    except OSError:
        pass
    s.close()
    assert head.startswith(b"HTTP/1.1 503"), head[:80]
    assert b'"code":"unavailable"' in head + rest
    for s in held[:5]:
        s.close()
    # Slots come back once connections close.
    def fresh_ok():
        s, head = http_get_keepalive(server.host, server.port)
        s.close()
        return head.startswith(b"HTTP/1.1 200")

    eventually(fresh_ok, timeout=5, message="a freed slot serves a new connection")
    for s in held[5:]:
        s.close()


def test_max_connections_also_caps_engineio_sessions(start_courier):
    """Polling sessions outlive their HTTP requests: they are counted apart, by the handshake."""
    server = start_courier("[server]\nmax_connections = 10\n")
    sessions = [Polling(server.url, path="/socket.io/") for _ in range(10)]
    for p in sessions:
        p.handshake()
        p.http.close()  # the session stays, its TCP connection does not
    eventually(lambda: Api(server.url).health()["connections"] == 10, timeout=5, message="10 sessions")
    r = requests.get(f"{server.url}/socket.io/", params={"EIO": "4", "transport": "polling"}, timeout=5)
    assert r.status_code == 503, r.text
    assert r.json() == {"code": 4, "message": "Too many connections"}
    for p in sessions[:3]:
        p.send("1")  # the client closes its session
    eventually(lambda: Api(server.url).health()["connections"] <= 7, timeout=5, message="closed sessions gone")
    Polling(server.url, path="/socket.io/").handshake()


def test_rooms_per_socket_and_namespaces_per_connection_are_capped(start_courier, sio_client):
    server = start_courier(
        "[hub]\nmax_rooms_per_socket = 5\nnamespace_patterns = [\"^/n[0-9]+$\"]\n"
        "[engine]\nmax_namespaces_per_connection = 2\n"
    )
    client = sio_client()
    client.connect(server.url, transports=["websocket"], wait_timeout=5)
    ack = client.call("courier:join", [f"room{i}" for i in range(5)], timeout=5)
    assert ack["ok"] is True and len(ack["rooms"]) == 6  # its own id included
    ack = client.call("courier:join", "room5", timeout=5)
    assert ack["ok"] is False and ack["error"]["code"] == "too_many_rooms", ack
    assert client.call("courier:join", "room4", timeout=5)["ok"] is True, "a room it is in already"
    client.call("courier:leave", "room0", timeout=5)
    assert client.call("courier:join", "room5", timeout=5)["ok"] is True
    ack = client.call("courier:join", "x" * 257, timeout=5)
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"

    multi = sio_client()
    errors = []
    multi.on("connect_error", lambda data: errors.append(data), namespace="/n3")
    with pytest.raises(Exception):
        multi.connect(server.url, transports=["websocket"], namespaces=["/n1", "/n2", "/n3"], wait_timeout=3)
    assert errors and errors[0].get("message") == "Too many namespaces", errors


@pytest.mark.timeout(60)
def test_a_consumer_has_at_most_8_mib_of_deliveries_in_flight(start_courier, sio_client):
    """Regression: with max_ack_pending 1000, a socket that acknowledged nothing was sent a
    thousand entries at once, so one that did not read either held up to 1000 x 1 MB."""
    server = start_courier()
    api = Api(server.url)
    blob = "z" * 500_000
    for n in range(40):
        api.publish("big", "e", {"n": n, "blob": blob})
    client = sio_client()
    got = Deliveries(client, "e", hold=lambda data, meta: True)
    client.connect(server.url, transports=["websocket"], wait_timeout=5)
    ack = client.call("courier:subscribe", {"stream": "big", "consumer": "slow", "from": "all",
                                            "max_ack_pending": 1000}, timeout=10)
    assert ack["ok"] is True and ack["pending"] == 40, ack
    # 8 MiB of 500 KB entries: 16, and the one that crosses the line is held back.
    got.wait(16, timeout=20)
    got.quiet(1.0)
    assert len(got.snapshot()) == 16, len(got.snapshot())
    assert api.consumer("big", "slow")["pending"] == 16
    got.release()
    eventually(lambda: len(got.snapshot()) >= 40, timeout=30, message="every entry once acked")
    assert [d[0]["n"] for d in got.snapshot()] == list(range(40))
    eventually(lambda: api.consumer("big", "slow")["ack_floor"] == 40, timeout=10, message="all acked")
