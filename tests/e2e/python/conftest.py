"""Fixtures for Courier's Python end-to-end suite.

Two kinds of server process are started here, never on a fixed port:

* `courier serve` (env COURIER_BIN, default <repo>/target/debug/courier), with a TOML
  config written for the test, a temporary data dir and `--listen 127.0.0.1:0`;
* the conformance example (env COURIER_CONFORMANCE_BIN, default
  <repo>/target/debug/examples/conformance) in `socketio` or `engineio` mode.

Each prints `listening on http://ADDR` on stderr once bound; the fixtures wait for that
line (20 s), and always kill the process at the end of the test.

`start_hub` (and `hub`) runs a test twice: against one `courier serve`, and against three
nodes on a redis-server of the test's own (`start_cluster`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import socketio

REPO = Path(__file__).resolve().parents[3]
COURIER_BIN = Path(os.environ.get("COURIER_BIN", REPO / "target" / "debug" / "courier"))
CONFORMANCE_BIN = Path(
    os.environ.get("COURIER_CONFORMANCE_BIN", REPO / "target" / "debug" / "examples" / "conformance")
)

STARTUP_TIMEOUT = 20.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LISTENING = re.compile(r"listening on http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d+)")


def child_env(extra=None):
    """The environment for a server: nothing from the caller's COURIER_* or RUST_LOG settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURIER_") and k != "RUST_LOG"}
    env["NO_COLOR"] = "1"
    if extra:
        env.update(extra)
    return env


class ServerProcess:
    """A server binary running in the background, its output captured."""

    def __init__(self, name, argv, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.lines = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self.host = None
        self.port = None
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(env),
            start_new_session=True,
        )
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stderr, "stderr"), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stdout, "stdout"), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _drain(self, stream, label):
        for raw in iter(stream.readline, b""):
            line = ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
            with self._lock:
                self.lines.append(f"[{label}] {line}")
            if label == "stderr" and not self._listening.is_set():
                m = LISTENING.search(line)
                if m:
                    self.host, self.port = m.group(1), int(m.group(2))
                    self._listening.set()
        stream.close()

    def output(self):
        with self._lock:
            return "\n".join(self.lines)

    def wait_listening(self, timeout=STARTUP_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None:
                for t in self._readers:
                    t.join(1)
                pytest.fail(
                    f"{self.name} exited with status {self.proc.returncode} before listening\n"
                    f"command: {' '.join(self.argv)}\n--- output ---\n{self.output()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(
                    f"{self.name} printed no 'listening on http://ADDR' line within {timeout} s\n"
                    f"command: {' '.join(self.argv)}\n--- output ---\n{self.output()}"
                )
        return self

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def alive(self):
        return self.proc.poll() is None

    def terminate(self, timeout=10):
        """SIGTERM, then wait; returns the exit status (SIGKILL if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        return self.proc.returncode


def require_binary(path, what):
    if not path.exists():
        pytest.fail(f"{what} not found at {path}: build it first (cargo build --workspace --examples)")


class Registry:
    """Everything a test started; stopped at teardown whatever happened."""

    def __init__(self):
        self.processes = []
        self.clients = []

    def cleanup(self):
        for c in self.clients:
            close_client(c)
        for p in self.processes:
            p.kill()
        for p in self.processes:
            if p.proc is None:
                continue
            for stream in (p.proc.stdout, p.proc.stderr):
                try:
                    stream.close()
                except Exception:
                    pass


def close_client(c):
    try:
        c.shutdown()
    except Exception:
        pass
    try:
        c.eio.disconnect(abort=True)
    except Exception:
        pass


@pytest.fixture
def registry():
    reg = Registry()
    yield reg
    reg.cleanup()


@pytest.fixture
def start_courier(registry, tmp_path):
    """start_courier(config_toml="", listen="127.0.0.1:0", data_dir=None, env=None, args=())
    -> running ServerProcess. `args` go after the others on the command line.

    The same data_dir can be passed again to restart on the same data.
    """
    require_binary(COURIER_BIN, "courier binary")
    counter = iter(range(1, 1000))

    def start(config="", listen="127.0.0.1:0", data_dir=None, env=None, args=()):
        n = next(counter)
        cfg = tmp_path / f"courier-{n}.toml"
        # Recovery is off unless the test's config turns it on: with recovery, every broadcast
        # carries its offset as an extra last argument, and most tests compare arguments exactly.
        if "[recovery]" not in config:
            config = "[recovery]\nenabled = false\n" + config
        cfg.write_text(config)
        if data_dir is None:
            data_dir = tmp_path / f"data-{n}"
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        argv = [COURIER_BIN, "serve", "--listen", listen, "--config", cfg, "--data-dir", data_dir, *args]
        server = ServerProcess("courier serve", argv, env=env)
        registry.processes.append(server)
        server.wait_listening()
        server.config_path = cfg
        server.data_dir = Path(data_dir)
        return server

    return start


@pytest.fixture
def start_cluster(registry, start_courier, tmp_path):
    """start_cluster(nodes=3, config="", appendfsync=None, redis_cluster=False) -> cluster.Cluster:
    a redis-server of the test's own (with an AOF if `appendfsync` is given, see
    cluster.RedisServer), or with `redis_cluster` a Redis Cluster of three (cluster.RedisCluster),
    and `nodes` Courier nodes started with --redis, all ready. Everything is stopped at teardown."""
    from cluster import Cluster, RedisCluster, start_redis

    def start(nodes=3, config="", appendfsync=None, redis_cluster=False):
        if redis_cluster:
            redis = RedisCluster(tmp_path, appendfsync=appendfsync)
            registry.processes.extend(redis.servers)
            redis.create()
        else:
            redis = start_redis(tmp_path, appendfsync=appendfsync)
            registry.processes.append(redis)
        cluster = Cluster(start_courier, redis, tmp_path, config=config)
        for _ in range(nodes):
            cluster.add_node()
        return cluster

    yield start


HUB_MODES = ["single", "cluster", "redis-cluster"]
CLUSTER_NODES = 3


@pytest.fixture(params=HUB_MODES)
def hub_mode(request):
    """"single", "cluster" (three nodes on one redis-server) or "redis-cluster" (three nodes on
    a Redis Cluster of three masters): a test that uses `start_hub` or `hub` runs once in each
    mode, and its id says which."""
    return request.param


@pytest.fixture
def start_hub(hub_mode, start_courier, start_cluster):
    """start_hub(config="") -> cluster.Hub: one `courier serve`, or (cluster mode) three nodes
    started with --redis on a redis-server of the test's own; every node gets `config`.

    The end of each node's log is printed at teardown: pytest shows it when the test failed."""
    from cluster import Hub

    hubs = []

    def start(config=""):
        if hub_mode == "single":
            server = start_courier(config)

            def relaunch(i, kill):
                old = hub.nodes[i]
                return start_courier(config, listen=f"127.0.0.1:{old.port}", data_dir=old.data_dir)

            hub = Hub(hub_mode, [server], relaunch)
        else:
            cluster = start_cluster(nodes=CLUSTER_NODES, config=config,
                                    redis_cluster=hub_mode == "redis-cluster")
            hub = Hub(hub_mode, cluster.nodes,
                      lambda i, kill: cluster.restart_node(i, kill=kill))
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        print(hub.output(tail=40))


@pytest.fixture
def hub(start_hub):
    """`start_hub()` with the default configuration, in each mode."""
    return start_hub()


@pytest.fixture
def courier(start_courier):
    """`courier serve` with the default configuration."""
    return start_courier()


@pytest.fixture
def start_conformance(registry):
    require_binary(CONFORMANCE_BIN, "conformance example")

    def start(mode):
        server = ServerProcess(f"conformance {mode}", [CONFORMANCE_BIN, mode, "--listen", "127.0.0.1:0"])
        registry.processes.append(server)
        return server.wait_listening()

    return start


@pytest.fixture
def eio_server(start_conformance):
    """The conformance example as a bare Engine.IO echo server at /engine.io/."""
    return start_conformance("engineio")


@pytest.fixture
def sio_server(start_conformance):
    """The conformance example as the Socket.IO reference test server at /socket.io/."""
    return start_conformance("socketio")


@pytest.fixture
def sio_client(registry):
    """sio_client(**Client options) -> socketio.Client, disconnected at teardown.

    Automatic reconnection is off unless the test asks for it.
    """

    def make(**kw):
        kw.setdefault("reconnection", False)
        c = socketio.Client(**kw)
        registry.clients.append(c)
        return c

    return make
