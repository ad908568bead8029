"""Crash test: `courier serve` killed with SIGKILL under load loses nothing it confirmed.

One `courier serve` with the SQLite store (`store.sync = "always"`) runs on a fixed port and a
data directory that outlives it. In background threads:

* several publishers POST `/api/v1/streams/crash/publish`, one message after another, each with
  a unique id; a publish counts as confirmed only when it answered 200 with a `seq`. A publish
  that fails (connection refused or reset, timeout, any other status) is retried with the same
  id until it is confirmed: dedupe makes that safe;
* a few python-socketio consumers (distinct consumer names: fan-out) subscribe with
  `courier:subscribe` on every (re)connection, record each delivery `(meta.seq, data)` and ack it
  once it is recorded.

Meanwhile the server is killed with SIGKILL several times at random intervals and restarted on
the same port and data directory. Then publishing stops, the test waits (bounded) until every
consumer has acked everything, subscribes one more consumer from the start of the stream (it
reads only what the store kept through the kills), and checks:

* every confirmed publish was delivered to, and acked by, every consumer, the late one included
  (and the hub agrees: nothing pending, nothing waiting);
* per consumer, first deliveries arrive in increasing seq order;
* no seq was confirmed for two different messages, no message was stored at two seqs, and each
  publisher's messages got increasing seqs;
* every delivery carries the data and id that were confirmed for its seq.

Duplicates are expected and only counted: deliveries of an already-acked seq (the ack died with
the server), other redeliveries, and publishes answered `duplicate: true` (the first attempt was
stored but its answer was lost). The totals are printed as one line starting with `crash:`
(run with `-s` to see it):

    .venv/bin/python -m pytest tests/e2e/python/test_crash.py -q -s

Cluster mode (test_cluster_sigkill_loses_nothing_confirmed): the same load and the same checks
on three `courier serve --redis` nodes, streams and consumers living in a redis-server of the
test's own (`--appendonly yes --appendfsync always`), every port free, never fixed. Each
publisher and consumer starts on a node; a publish its node did not answer is retried on the
next node, and a consumer whose node went away connects to the next node that accepts it (a new
python-socketio client: the client only reconnects to the URL it started with). Meanwhile a node
is killed with SIGKILL several times (CRASH_KILLS), each time restarted on its port, and once,
at a random place among those kills, redis-server is killed with SIGKILL and restarted on its
port and directory, reloading its AOF. On top of the checks above:

* everything confirmed before Redis's kill is in the stream once it is back (its last_seq);
* publishes while Redis is away are answered at once with an error (503 `unavailable` seen, the
  slowest failed attempt and the slowest one sent while Redis was down answered within
  OUTAGE_ANSWER s), not held until Redis returns;
* order: per consumer, first arrivals increase, as on one node, and so do the hub's first
  deliveries (meta.deliveries == 1). The entries a killed node held (sent but never arrived, or
  not sent yet) come back as redeliveries: they keep the order only if the node the consumer
  moves to takes them over before it reads anything new. Entries that arrive for the first time
  after a higher seq are counted (late_first_receipts) and listed under the summary line.

It prints one line starting with `crash cluster:` (lost = confirmed publishes some consumer
never acked; redeliveries = deliveries with meta.deliveries > 1).

Knobs (environment): CRASH_SEED (random seed, printed in the summary), CRASH_KILLS (4),
CRASH_BACKEND (`sqlite`, the default; `memory` shows the test failing, since that store keeps
nothing across a kill), CRASH_REDIS_AOF (Redis's appendfsync in cluster mode, `always` by
default; `off` runs Redis without an AOF and shows the cluster test failing).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections import Counter, defaultdict

import engineio
import pytest
import requests
import socketio

from cluster import wait_redis_state

STREAM = "crash"
EVENT = "tick"
PUBLISHERS = 4
CONSUMERS = ("alpha", "beta", "gamma")
LATECOMER = "latecomer"  # subscribes from the start of the stream once the kills are over
KILLS = int(os.environ.get("CRASH_KILLS", "4"))
KILL_INTERVAL = (0.5, 1.5)  # seconds between a (re)start and the next kill
WARMUP = 1.0  # steady traffic before the first kill
COOLDOWN = 1.0  # steady traffic after the last restart
PUBLISH_PAUSE = 0.004  # between two publishes of one publisher
RETRY_PAUSE = 0.05  # before retrying a failed publish
SUBSCRIBE_RETRY = 0.2  # before subscribing again after an `unavailable` answer (cluster)
ACK_WAIT_MS = 3000  # consumers' ack_wait_ms: an entry whose ack was lost comes back after it
DRAIN_TIMEOUT = 25.0  # bound on waiting for the consumers to catch up
DRAIN_STALL = 6.0  # ... and on waiting without any progress
BACKEND = os.environ.get("CRASH_BACKEND", "sqlite")
# cluster mode
NODES = 3
REDIS_AOF = os.environ.get("CRASH_REDIS_AOF", "always")  # Redis's appendfsync; "off": no AOF
REDIS_DOWN = (1.0, 1.5)  # seconds redis-server stays down after its SIGKILL
OUTAGE_ANSWER = 2.0  # bound on the answer to a publish while Redis is away (an error)
CLUSTER_DRAIN_TIMEOUT = 40.0  # entries a killed node held come back after ack_wait, doubled per delivery
CLUSTER_DRAIN_STALL = 15.0

CONFIG = f"""
[server]
shutdown_grace_ms = 1000

[store]
backend = "{BACKEND}"
sync = "always"

[[stream]]
name = "{STREAM}"
"""

CLUSTER_CONFIG = f"""
[server]
shutdown_grace_ms = 1000

[[stream]]
name = "{STREAM}"
"""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the hub -----------------------------------------------------------------------------------


class Hub:
    """`courier serve` on one port and one data directory, killed and restarted at will."""

    def __init__(self, start_courier, port, data_dir):
        self.start_courier = start_courier
        self.port = port
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.server = None
        self.generations = []  # every process started, in order
        self.kills = 0

    def start(self):
        # The port was just released by a killed process; if binding it fails, try again briefly.
        deadline = time.monotonic() + 10
        while True:
            try:
                self.server = self.start_courier(CONFIG, listen=f"127.0.0.1:{self.port}", data_dir=self.data_dir)
                break
            except pytest.fail.Exception as e:
                if "in use" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.generations.append(self.server)
        return self.server

    def kill(self):
        self.server.kill()  # SIGKILL
        self.kills += 1

    def output(self):
        return "\n".join(f"--- courier serve #{i + 1} ---\n{s.output()}" for i, s in enumerate(self.generations))


class ClusterHub:
    """Courier nodes on a redis-server with an AOF (`cluster.Cluster`), killed and restarted at
    will, each node on its own port, Redis on its port and directory."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.urls = [n.url for n in cluster.nodes]
        self.servers = [(f"node {i} #1", n) for i, n in enumerate(cluster.nodes)]  # every process
        self.started = [1] * len(cluster.nodes)
        self.node_kills = 0
        self.redis_kills = 0
        self.outages = []  # (Redis killed, Redis answering again, every node back on it)
        self.timeline = []  # (wall clock, what happened), to read beside the nodes' logs

    def kill_node(self, i, pause):
        """SIGKILL of node i; `pause` s later it starts again on its port."""
        self.cluster.nodes[i].kill()
        self.node_kills += 1
        self.timeline.append((time.time(), f"node {i} killed"))
        time.sleep(pause)  # publishers and consumers meet a closed port meanwhile
        deadline = time.monotonic() + 10
        while True:
            try:
                node = self.cluster.start_node(i)
                break
            except pytest.fail.Exception as e:
                # the port was just released by the killed process: if binding fails, try again
                if "in use" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.started[i] += 1
        self.servers.append((f"node {i} #{self.started[i]}", node))
        self.timeline.append((time.time(), f"node {i} back ({node.url})"))

    def kill_redis(self, down):
        """SIGKILL of redis-server; `down` s later it starts again on its port and directory
        (reloading its AOF); returns once every node says Redis is up again."""
        killed = time.monotonic()
        self.cluster.redis.kill()
        self.redis_kills += 1
        self.timeline.append((time.time(), "redis-server killed"))
        time.sleep(down)
        self.cluster.redis.start()
        back = time.monotonic()
        self.timeline.append((time.time(), "redis-server back"))
        for node in self.cluster.nodes:
            try:
                wait_redis_state(node, "up")
            except AssertionError as e:
                raise AssertionError(f"{e}\n--- its log ---\n{node.output()}") from None
        self.outages.append((killed, back, time.monotonic()))
        self.timeline.append((time.time(), "every node on Redis again"))

    def output(self):
        return "\n".join(f"--- {label} ---\n{s.output()}" for label, s in self.servers)


# --- publishers --------------------------------------------------------------------------------


class Ledger:
    """What the publishers were told: message id -> seq, and the reverse."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seq_of = {}  # message id -> confirmed seq
        self.ids_at = defaultdict(set)  # seq -> message ids confirmed at it
        self.by_publisher = defaultdict(list)  # publisher -> [(n, seq)] in publishing order
        self.duplicate_answers = 0  # publishes confirmed with duplicate: true
        self.attempts = 0
        self.failures = Counter()  # why attempts failed
        self.timings = []  # (began, ended, outcome) of every attempt, monotonic clock

    def confirm(self, publisher, n, mid, seq, duplicate):
        with self.lock:
            self.seq_of[mid] = seq
            self.ids_at[seq].add(mid)
            self.by_publisher[publisher].append((n, seq))
            if duplicate:
                self.duplicate_answers += 1

    def failed(self, why, began=None, outcome=None):
        with self.lock:
            self.failures[why] += 1
            if began is not None:
                self.timings.append((began, time.monotonic(), outcome or why))

    def timed(self, began, outcome):
        with self.lock:
            self.timings.append((began, time.monotonic(), outcome))

    def confirmed(self):
        """(seq, message id) of every confirmed publish."""
        with self.lock:
            return {(seq, mid) for mid, seq in self.seq_of.items()}


class Publisher(threading.Thread):
    """Publishes to `urls[start]`; a publish the node did not answer (connection refused or
    reset, timeout) is retried on the next URL of the list (with one URL: the same node)."""

    def __init__(self, index, urls, ledger, stop, run_id, start=0):
        super().__init__(name=f"publisher-{index}", daemon=True)
        self.index = index
        self.urls = list(urls)
        self.at = start
        self.ledger = ledger
        self.stop_event = stop
        self.run_id = run_id
        self.published = 0
        self.error = None

    def run(self):
        try:
            http = requests.Session()
            n = 0
            while not self.stop_event.is_set():
                n += 1
                http = self.publish(http, n)
                self.published = n
                time.sleep(PUBLISH_PAUSE)
        except Exception as e:  # pragma: no cover - reported by the test
            self.error = repr(e)

    def publish(self, http, n):
        """Publishes message n until it is confirmed (the stop signal does not abandon it)."""
        mid = f"{self.run_id}-p{self.index}-{n}"
        body = {"event": EVENT, "data": {"id": mid, "publisher": self.index, "n": n}, "id": mid}
        give_up = None
        while True:
            with self.ledger.lock:
                self.ledger.attempts += 1
            url = self.urls[self.at % len(self.urls)]
            began = time.monotonic()
            try:
                r = http.post(f"{url}/api/v1/streams/{STREAM}/publish", json=body, timeout=(1, 3))
            except requests.RequestException as e:
                self.ledger.failed(type(e).__name__, began, type(e).__name__)
                http.close()
                http = requests.Session()
                self.at += 1
            else:
                if r.status_code == 200:
                    answer = r.json()
                    if isinstance(answer.get("seq"), int):
                        self.ledger.confirm(self.index, n, mid, answer["seq"], answer.get("duplicate") is True)
                        self.ledger.timed(began, "ok")
                        return http
                    self.ledger.failed(f"200 without a seq: {r.text[:80]}", began, "200 without a seq")
                else:
                    self.ledger.failed(f"HTTP {r.status_code}", began, f"HTTP {r.status_code} {error_code(r)}")
            if self.stop_event.is_set():
                # Still bounded once the test wants to finish: a publish nobody answers for
                # 15 s is left unconfirmed (and the test then reports it).
                give_up = give_up or time.monotonic() + 15
                if time.monotonic() > give_up:
                    self.ledger.failed("gave up")
                    return http
            time.sleep(RETRY_PAUSE)


def error_code(response):
    """The `error.code` of an HTTP error answer, or ""."""
    try:
        return str(response.json()["error"]["code"])
    except Exception:
        return ""


# --- consumers ---------------------------------------------------------------------------------


class InOrderEngineIO(engineio.Client):
    """python-engineio hands every message to a new thread, so handlers may run out of order.

    Here each message is handled on the thread that read it, in the order it came off the wire:
    the consumer then records deliveries in the order Courier sent them. The handlers only
    record and queue packets, so the read loop is never held up.
    """

    def _trigger_event(self, event, *args, **kwargs):
        if event == "message":
            kwargs["run_async"] = False
        return super()._trigger_event(event, *args, **kwargs)


class InOrderClient(socketio.Client):
    def _engineio_client_class(self):
        return InOrderEngineIO


class Consumer:
    """A consumer on one node, python-socketio reconnecting to it by itself."""

    def __init__(self, name, url):
        self.init_records(name)
        self.url = url
        self.client = self.make_client(
            reconnection=True,
            reconnection_delay=0.1,
            reconnection_delay_max=0.5,
            randomization_factor=0,
        )

    def init_records(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.deliveries = []  # (seq, data, meta, connection) in arrival order
        self.first_order = []  # seqs of first deliveries, in arrival order
        self.sent_first_order = []  # seqs of deliveries with meta.deliveries == 1, in arrival order
        self.late_firsts = []  # (seq, meta.deliveries, highest seq received before it, wall clock)
        self.acked = {}  # (seq, message id) -> the connection its first ack went out on
        self.message_at = {}  # seq -> message id first delivered with it
        self.seq_reused = []  # (seq, earlier message id, later message id)
        self.redelivered_after_crash = 0  # acked, delivered again on a later connection
        self.redelivered_same_connection = 0  # acked, delivered again on the same connection
        self.connects = 0
        self.subscribed = 0
        self.subscribe_errors = []
        self._highest = None  # the highest seq received so far

    def make_client(self, **options):
        client = InOrderClient(**options)
        client.on("connect", lambda: self.on_connect(client))
        client.on(EVENT, self.on_delivery)
        return client

    def start(self):
        self.client.connect(self.url, transports=["websocket"], wait_timeout=5)

    def on_connect(self, client):
        with self.lock:
            self.connects += 1
        self.subscribe(client)

    def subscribe(self, client):
        request = {
            "stream": STREAM,
            "consumer": self.name,
            "from": "all",
            "ack_wait_ms": ACK_WAIT_MS,
            "max_deliver": 1000,  # redeliveries caused by the kills must never dead-letter an entry
        }
        client.emit("courier:subscribe", request, callback=lambda *answer: self.on_subscribed(client, *answer))

    def on_subscribed(self, client, answer=None, *rest):
        with self.lock:
            if isinstance(answer, dict) and answer.get("ok") is True:
                self.subscribed += 1
            else:
                self.subscribe_errors.append(answer)

    def on_delivery(self, data=None, meta=None, *rest):
        seq = meta.get("seq") if isinstance(meta, dict) else None
        mid = data.get("id") if isinstance(data, dict) else None
        deliveries = meta.get("deliveries") if isinstance(meta, dict) else None
        with self.lock:
            # on_connect runs on the reading thread too, so this is the connection that carried it
            connection = self.connects
            self.deliveries.append((seq, data, meta, connection))
            if deliveries == 1:
                self.sent_first_order.append(seq)
            key = (seq, mid)
            if key in self.acked:
                if self.acked[key] < connection:
                    self.redelivered_after_crash += 1
                else:
                    self.redelivered_same_connection += 1
            else:
                self.acked[key] = connection
                highest = self._highest
                if isinstance(seq, int) and highest is not None and seq < highest:
                    self.late_firsts.append((seq, deliveries, highest, clock(time.time())))
                if isinstance(seq, int):
                    self._highest = seq if highest is None else max(highest, seq)
                self.first_order.append(seq)
                earlier = self.message_at.setdefault(seq, mid)
                if earlier != mid:
                    self.seq_reused.append((seq, earlier, mid))
        return None  # recorded: the ack goes out when this returns

    def acked_messages(self):
        """(seq, message id) of everything acked."""
        with self.lock:
            return set(self.acked)

    def duplicates(self):
        return self.redelivered_after_crash + self.redelivered_same_connection

    def close(self):
        try:
            self.client.disconnect()
        except Exception:
            pass


class RoamingConsumer(Consumer):
    """A consumer on a cluster: connects to `urls[start]` and, when that node goes away, to the
    next node of the list that accepts it. python-socketio reconnects only to the URL it was
    given, so each connection is a client of its own (no automatic reconnection). A subscribe
    answered `unavailable` (Redis away) is sent again on the same connection a moment later."""

    def __init__(self, name, urls, start=0):
        self.init_records(name)
        self.urls = list(urls)
        self.at = start
        self.client = None
        self.closing = threading.Event()
        self.moves = 0  # connections lost (their node killed), each followed by one elsewhere
        self.refused = 0  # connection attempts that failed (the node was down)
        self.subscribe_retries = 0  # subscribes answered `unavailable`, sent again
        self.timeline = []  # (wall clock, what happened)
        self.error = None
        self.thread = threading.Thread(target=self.run, name=f"consumer-{name}", daemon=True)

    def start(self):
        self.thread.start()

    def run(self):
        try:
            while not self.closing.is_set():
                client = self.make_client(reconnection=False)
                gone = threading.Event()
                client.on("disconnect", lambda *reason, gone=gone: gone.set())
                url = self.urls[self.at % len(self.urls)]
                try:
                    client.connect(url, transports=["websocket"], wait_timeout=2)
                except Exception:
                    with self.lock:
                        self.refused += 1
                    close_quietly(client)
                    self.at += 1
                    self.closing.wait(RETRY_PAUSE)
                    continue
                self.client = client
                self.timeline.append((time.time(), f"{self.name} connected to {url}"))
                while not gone.wait(0.05):
                    if self.closing.is_set():
                        return
                if self.closing.is_set():
                    return
                self.timeline.append((time.time(), f"{self.name} lost {url}"))
                with self.lock:
                    self.moves += 1
                self.at += 1
        except Exception as e:  # pragma: no cover - reported by the test
            self.error = repr(e)

    def on_subscribed(self, client, answer=None, *rest):
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and error.get("code") == "unavailable":
            with self.lock:
                self.subscribe_retries += 1
            retry = threading.Timer(SUBSCRIBE_RETRY, self.resubscribe, args=(client,))
            retry.daemon = True
            retry.start()
            return
        super().on_subscribed(client, answer, *rest)

    def resubscribe(self, client):
        if client.connected and not self.closing.is_set():
            try:
                self.subscribe(client)
            except Exception:
                pass  # the connection went away meanwhile: the next one subscribes

    def close(self):
        self.closing.set()
        if self.client is not None:
            close_quietly(self.client)
        self.thread.join(5)


def close_quietly(client):
    try:
        client.disconnect()
    except Exception:
        pass
    try:
        client.eio.disconnect(abort=True)
    except Exception:
        pass


# --- waiting and checking (both tests) ----------------------------------------------------------


def consumer_state(url, name):
    try:
        r = requests.get(f"{url}/api/v1/streams/{STREAM}/consumers/{name}", timeout=3)
        return r.json() if r.status_code == 200 else {"http": r.status_code, "body": r.text[:200]}
    except requests.RequestException as e:
        return {"error": type(e).__name__}


def caught_up(url, consumers, ledger):
    confirmed = ledger.confirmed()
    if not all(confirmed <= c.acked_messages() for c in consumers):
        return False
    for c in consumers:
        s = consumer_state(url, c.name)
        if s.get("pending") != 0 or s.get("waiting") != 0:
            return False
    return True


def drain(url, consumers, ledger, timeout, stall=DRAIN_STALL):
    """Waits until `consumers` caught up (the hub asked at `url`), at most `timeout` s or `stall` s
    without progress."""
    start = time.monotonic()
    last_progress, last_total = start, -1
    while not caught_up(url, consumers, ledger):
        total = sum(len(c.acked) for c in consumers)
        now = time.monotonic()
        if total != last_total:
            last_total, last_progress = total, now
        if now - start > timeout or now - last_progress > stall:
            break
        time.sleep(0.1)
    return time.monotonic() - start


def wait_subscribed(consumers, timeout=10):
    deadline = time.monotonic() + timeout
    while not all(c.subscribed for c in consumers):
        assert time.monotonic() < deadline, (
            f"consumers not subscribed: {[(c.name, c.subscribe_errors) for c in consumers]}"
        )
        time.sleep(0.02)


def sample(values, k=8):
    values = sorted(values)
    return values[:k] + (["..."] if len(values) > k else [])


def check(ledger, publishers, stuck, consumers, hub_view, orders=("received",)):
    """The checks both tests make of what publishers were told and consumers received; returns
    the problems found. `orders` are what must come in increasing seq order per consumer:
    "received", each entry's first arrival at the consumer; "first_sent", each entry's first
    delivery by the hub (meta.deliveries == 1)."""
    problems = []
    confirmed = ledger.confirmed()
    seq_of = dict(ledger.seq_of)
    ids_at = {seq: set(ids) for seq, ids in ledger.ids_at.items()}

    if stuck:
        problems.append(f"publishers still running after the stop: {stuck}")
    for p in publishers:
        if p.error:
            problems.append(f"{p.name} crashed: {p.error}")
    if ledger.failures.get("gave up"):
        problems.append(f"{ledger.failures['gave up']} publishes were never confirmed after the stop")

    shared = {seq: ids for seq, ids in ids_at.items() if len(ids) > 1}
    if shared:
        problems.append(
            f"{len(shared)} seqs were each confirmed for several different messages, e.g. "
            + "; ".join(f"seq {seq}: {sorted(ids)}" for seq, ids in sorted(shared.items())[:3])
        )
    for publisher, confirmations in sorted(ledger.by_publisher.items()):
        bad = [(a, b) for a, b in zip(confirmations, confirmations[1:]) if b[1] <= a[1]]
        if bad:
            problems.append(
                f"publisher {publisher}: a later message got a lower or equal seq {len(bad)} times, "
                f"e.g. (n, seq) -> (n, seq): {bad[:3]}"
            )

    for c in consumers:
        acked = c.acked_messages()
        missing = confirmed - acked
        if missing:
            problems.append(
                f"consumer {c.name}: {len(missing)} of {len(confirmed)} confirmed publishes never delivered "
                f"and acked, e.g. (seq, id) {sample(missing, 5)}"
            )
        for order in orders:
            if order == "received":
                # the first time the consumer received each entry
                order_of, what = c.first_order, "first deliveries"
            else:
                # the first time the hub sent each entry (meta.deliveries == 1)
                order_of, what = c.sent_first_order, "first deliveries by the hub (meta.deliveries == 1)"
            backwards = [
                (a, b) for a, b in zip(order_of, order_of[1:])
                if not (isinstance(a, int) and isinstance(b, int) and b > a)
            ]
            if backwards:
                problems.append(
                    f"consumer {c.name}: {what} out of seq order {len(backwards)} times, "
                    f"e.g. (seq, next seq) {backwards[:5]}; received after a higher seq, as "
                    f"(seq, meta.deliveries, highest seq before it, time): {c.late_firsts[:5]}"
                )
        if c.seq_reused:
            problems.append(
                f"consumer {c.name}: {len(c.seq_reused)} seqs delivered for two different messages, "
                f"e.g. (seq, first id, second id) {c.seq_reused[:3]}"
            )
        malformed, stored_twice, unknown = [], set(), set()
        for seq, data, meta, _ in c.deliveries:
            mid = data.get("id") if isinstance(data, dict) else None
            if not isinstance(meta, dict) or meta.get("stream") != STREAM or meta.get("id") != mid:
                malformed.append((data, meta))
            elif mid not in seq_of:
                unknown.add((seq, mid))
            elif seq_of[mid] != seq and not ids_at.get(seq):
                # the message sits at a seq no publish was confirmed for: its first attempt was
                # stored, and a retry was stored again instead of being recognised as a duplicate
                stored_twice.add((mid, seq_of[mid], seq))
        if malformed:
            problems.append(f"consumer {c.name}: {len(malformed)} deliveries with a wrong meta, e.g. {malformed[:3]}")
        if stored_twice:
            problems.append(
                f"consumer {c.name}: {len(stored_twice)} messages were stored twice despite their id, "
                f"e.g. (id, confirmed seq, other seq) {sample(stored_twice, 3)}"
            )
        if unknown:
            problems.append(
                f"consumer {c.name}: {len(unknown)} deliveries of messages never confirmed, e.g. {sample(unknown, 3)}"
            )
        if c.subscribe_errors:
            problems.append(
                f"consumer {c.name}: subscribe failed {len(c.subscribe_errors)} times: {c.subscribe_errors[:3]}"
            )
        state = hub_view[c.name]
        if state.get("pending") != 0 or state.get("waiting") != 0:
            problems.append(f"consumer {c.name}: the hub still holds entries for it at the end: {state}")
    return problems


def check_logs(servers, problems):
    """A panic prints "thread '...' panicked at <file>" (a problem); ERROR lines are only counted
    and shown. `servers` are (label, ServerProcess); returns the ERROR lines."""
    errors_logged = []
    for label, server in servers:
        for line in server.output().splitlines():
            if "panicked at" in line:
                problems.append(f"{label} panicked: {line}")
            elif " ERROR " in line:
                errors_logged.append(f"{label}: {line}")
    return errors_logged


def counts(ledger, consumers):
    deliveries = {c.name: len(c.deliveries) for c in consumers}
    return (
        f"confirmed={len(ledger.confirmed())} last_seq={max(ledger.ids_at, default=0)} attempts={ledger.attempts} "
        f"failed_attempts={sum(v for k, v in ledger.failures.items() if k != 'gave up')} "
        f"duplicate_publishes={ledger.duplicate_answers} "
        f"delivered={sum(deliveries.values())} ({', '.join(f'{k}={v}' for k, v in deliveries.items())}) "
        f"duplicates={sum(c.duplicates() for c in consumers)} "
        f"(after_crash={sum(c.redelivered_after_crash for c in consumers)} "
        f"same_connection={sum(c.redelivered_same_connection for c in consumers)}) "
        f"reconnects={sum(c.connects - 1 for c in consumers if c.name != LATECOMER)} "
    )


# --- one node ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sigkill_loses_nothing_confirmed(start_courier, tmp_path):
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    started = time.monotonic()
    hub = Hub(start_courier, free_port(), tmp_path / "data")
    hub.start()

    consumers = [Consumer(name, hub.url) for name in CONSUMERS]
    publishers = []
    stop = threading.Event()
    ledger = Ledger()
    try:
        for c in consumers:
            c.start()
        wait_subscribed(consumers)

        run_id = f"r{seed}"
        publishers = [Publisher(i, [hub.url], ledger, stop, run_id) for i in range(PUBLISHERS)]
        for p in publishers:
            p.start()

        time.sleep(WARMUP)
        for _ in range(KILLS):
            time.sleep(rng.uniform(*KILL_INTERVAL))
            hub.kill()
            time.sleep(rng.uniform(0, 0.2))  # publishers and consumers meet a closed port meanwhile
            hub.start()
        time.sleep(COOLDOWN)

        stop.set()
        for p in publishers:
            p.join(20)
        stuck = [p.name for p in publishers if p.is_alive()]

        # Wait, bounded, until every consumer has acked every confirmed publish and the hub agrees.
        drained_in = drain(hub.url, consumers, ledger, DRAIN_TIMEOUT)

        # A consumer created now, from the start of the stream, reads only what the store kept
        # through the kills: everything confirmed must be there, once, at its confirmed seq.
        late = Consumer(LATECOMER, hub.url)
        consumers.append(late)
        late.start()
        drain(hub.url, [late], ledger, 15.0)
        hub_view = {c.name: consumer_state(hub.url, c.name) for c in consumers}
    finally:
        stop.set()
        for c in consumers:
            c.close()

    final_status = hub.server.terminate()

    # --- the verdict ---------------------------------------------------------------------------
    problems = check(ledger, publishers, stuck, consumers, hub_view)
    errors_logged = check_logs([(f"courier serve #{i + 1}", s) for i, s in enumerate(hub.generations)], problems)
    if final_status != 0:
        problems.append(f"the last courier serve exited with {final_status} on SIGTERM")

    summary = (
        f"crash: backend={BACKEND} kills={hub.kills} publishers={PUBLISHERS} consumers={len(CONSUMERS)}+{LATECOMER} "
        + counts(ledger, consumers)
        + f"errors_logged={len(errors_logged)} "
        f"drained_in={drained_in:.1f}s "
        f"elapsed={time.monotonic() - started:.1f}s seed={seed} problems={len(problems)}"
    )
    print(summary)
    for line in errors_logged:
        print(f"  logged: {line}")
    if problems:
        pytest.fail(
            summary
            + "\n"
            + "\n".join(f"- {p}" for p in problems)
            + f"\nfailed attempts by cause: {dict(ledger.failures)}"
            + f"\nthe hub's view of the consumers at the end: {hub_view}"
            + "\n"
            + hub.output()[-4000:],
            pytrace=False,
        )


# --- a cluster -----------------------------------------------------------------------------------


def clock(t):
    """A wall-clock time as the nodes' logs print it (UTC), to the millisecond."""
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f"{t % 1:.3f}"[1:]


def stream_last_seq(urls):
    """The stream's last_seq as the first node that answers tells it."""
    for url in urls:
        try:
            r = requests.get(f"{url}/api/v1/streams/{STREAM}", timeout=3)
            if r.status_code == 200:
                return r.json().get("last_seq")
        except requests.RequestException:
            pass
    return None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("redis", ["redis-server", "redis-cluster"])
def test_cluster_sigkill_loses_nothing_confirmed(start_cluster, tmp_path, redis):
    """The same load and checks on three nodes sharing one redis-server (AOF, fsync always), or
    a Redis Cluster of three masters (each with its AOF): publishers and consumers spread over
    the nodes, nodes killed with SIGKILL several times, and Redis (every server of the Redis
    Cluster) killed with SIGKILL once and restarted on its AOF."""
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    started = time.monotonic()
    hub = ClusterHub(start_cluster(nodes=NODES, config=CLUSTER_CONFIG,
                                   appendfsync=None if REDIS_AOF == "off" else REDIS_AOF,
                                   redis_cluster=redis == "redis-cluster"))
    urls = hub.urls

    consumers = [RoamingConsumer(name, urls, start=i % NODES) for i, name in enumerate(CONSUMERS)]
    publishers = []
    stop = threading.Event()
    ledger = Ledger()
    problems = []
    events = ["node"] * KILLS + ["redis"]
    rng.shuffle(events)
    try:
        for c in consumers:
            c.start()
        wait_subscribed(consumers)

        run_id = f"c{seed}"
        publishers = [Publisher(i, urls, ledger, stop, run_id, start=i % NODES) for i in range(PUBLISHERS)]
        for p in publishers:
            p.start()

        time.sleep(WARMUP)
        for event in events:
            time.sleep(rng.uniform(*KILL_INTERVAL))
            if event == "node":
                hub.kill_node(rng.randrange(NODES), rng.uniform(0, 0.2))
            else:
                before = max(ledger.ids_at, default=0)  # confirmed before the kill: in the AOF
                hub.kill_redis(rng.uniform(*REDIS_DOWN))
                after = stream_last_seq(urls)
                if not isinstance(after, int) or after < before:
                    problems.append(
                        f"after Redis restarted on its AOF the stream's last_seq is {after}, "
                        f"but seq {before} was confirmed before the kill"
                    )
        time.sleep(COOLDOWN)

        stop.set()
        for p in publishers:
            p.join(20)
        stuck = [p.name for p in publishers if p.is_alive()]

        drained_in = drain(urls[0], consumers, ledger, CLUSTER_DRAIN_TIMEOUT, CLUSTER_DRAIN_STALL)

        late = RoamingConsumer(LATECOMER, urls, start=rng.randrange(NODES))
        consumers.append(late)
        late.start()
        drain(urls[0], [late], ledger, 15.0)
        hub_view = {c.name: consumer_state(urls[0], c.name) for c in consumers}
    finally:
        stop.set()
        for c in consumers:
            c.close()

    final_status = [n.terminate() for n in hub.cluster.nodes]

    # --- the verdict ---------------------------------------------------------------------------
    # The same order as on one node (first arrivals), and the hub's first deliveries.
    problems += check(ledger, publishers, stuck, consumers, hub_view, orders=("received", "first_sent"))
    errors_logged = check_logs(hub.servers, problems)
    if any(status != 0 for status in final_status):
        problems.append(f"the last nodes exited with {final_status} on SIGTERM")
    for c in consumers:
        if c.error:
            problems.append(f"consumer {c.name} crashed: {c.error}")

    # Publishes while Redis was away: answered at once with an error, not held until it is back.
    during = []  # (duration, outcome) of attempts that overlapped an outage
    began_down = []  # ... of those that began while Redis was down
    for began, ended, outcome in list(ledger.timings):
        for killed, back, up in hub.outages:
            if began <= up and ended >= killed:
                during.append((ended - began, outcome))
                if killed <= began <= back:
                    began_down.append((ended - began, outcome))
    failed = [d for d in during if d[1] != "ok"]
    unavailable = [d for d in failed if d[1] == "HTTP 503 unavailable"]
    slowest_failed = max(failed, default=(0.0, None))
    slowest_down = max(began_down, default=(0.0, None))
    if hub.outages and not unavailable:
        problems.append(
            f"no publish was answered 503 unavailable while Redis was away; outcomes: {Counter(o for _, o in during)}"
        )
    if slowest_failed[0] >= OUTAGE_ANSWER:
        problems.append(
            f"a publish that failed while Redis was away took {slowest_failed[0]:.2f} s ({slowest_failed[1]}); "
            f"outcomes then: {Counter(o for _, o in during)}"
        )
    if slowest_down[0] >= OUTAGE_ANSWER:
        problems.append(
            f"a publish sent while Redis was down took {slowest_down[0]:.2f} s to answer ({slowest_down[1]})"
        )

    confirmed = ledger.confirmed()
    lost = set()
    for c in consumers:
        lost |= confirmed - c.acked_messages()
    redeliveries = sum(
        1 for c in consumers for _, _, meta, _ in c.deliveries
        if isinstance(meta, dict) and isinstance(meta.get("deliveries"), int) and meta["deliveries"] > 1
    )
    late_firsts = sum(len(c.late_firsts) for c in consumers)
    summary = (
        f"crash cluster: aof={REDIS_AOF} nodes={NODES} node_kills={hub.node_kills} redis_kills={hub.redis_kills} "
        f"publishers={PUBLISHERS} consumers={len(CONSUMERS)}+{LATECOMER} "
        + counts(ledger, consumers)
        + f"redeliveries={redeliveries} lost={len(lost)} late_first_receipts={late_firsts} "
        f"moves={sum(c.moves for c in consumers)} subscribe_retries={sum(c.subscribe_retries for c in consumers)} "
        f"outage_unavailable={len(unavailable)} outage_slowest_failed={slowest_failed[0]:.2f}s "
        f"outage_slowest_sent_while_down={slowest_down[0]:.2f}s "
        f"errors_logged={len(errors_logged)} drained_in={drained_in:.1f}s "
        f"elapsed={time.monotonic() - started:.1f}s seed={seed} problems={len(problems)}"
    )
    print(summary)
    for line in errors_logged:
        print(f"  logged: {line}")
    for c in consumers:
        if c.late_firsts:
            print(f"  late first receipts of {c.name}, as (seq, meta.deliveries, highest seq before it, time): {c.late_firsts[:8]}")
    if problems:
        log = tmp_path / "crash-cluster.log"
        timeline = sorted(hub.timeline + [e for c in consumers for e in getattr(c, "timeline", [])])
        log.write_text(
            "--- timeline ---\n"
            + "\n".join(f"{clock(t)} {what}" for t, what in timeline)
            + "\n" + hub.output() + "\n--- redis-server ---\n" + hub.cluster.redis.log()
        )
        pytest.fail(
            summary
            + "\n"
            + "\n".join(f"- {p}" for p in problems)
            + f"\nevents: {events}; the timeline and every log: {log}"
            + f"\nfailed attempts by cause: {dict(ledger.failures)}"
            + f"\nthe hub's view of the consumers at the end: {hub_view}"
            + "\n"
            + hub.output()[-6000:]
            + "\n--- redis-server ---\n"
            + hub.cluster.redis.log()[-2000:],
            pytrace=False,
        )
