"""The cluster harness: a redis-server of the test's own and Courier nodes joined to it.

`RedisServer` runs `redis-server --port P --save '' --appendonly no` on a port found by binding
port 0 first, answers PING before it is handed out, and can be stopped and started again on the
same port and directory. With `appendfsync` set it runs with `--appendonly yes --appendfsync
<policy>` instead, so a restart (even after SIGKILL) reloads what the AOF holds. `Cluster` (from the `start_cluster` fixture in conftest.py) starts Courier nodes with
`--redis redis://127.0.0.1:P` (or the environment, or the config file) and is ready once every
node's /health says cluster.redis "up" and Redis lists one subscriber per node of the namespace's
request channel, which every server speaking the redis adapter's wire format subscribes to.

Each node has a data directory of its own, so a test can restart or kill one on its port.

`RedisCluster` is three such servers with `--cluster-enabled yes`, made one Redis Cluster by
`redis-cli --cluster create`; nodes join it with `--redis redis-cluster://...`, and their
channels are sharded ones, counted over every server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from support import eventually

REDIS_BIN = os.environ.get("COURIER_REDIS_SERVER", "redis-server")
REDIS_CLI_BIN = os.environ.get("COURIER_REDIS_CLI", "redis-cli")
REQUEST_CHANNEL = "socket.io-request#/#"
READY_TIMEOUT = 10.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_reply(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(f"Redis answered an error: {rest}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError(f"unexpected reply from Redis: {line!r}")


def redis_command(port, *args, timeout=2.0):
    """Sends one command to the Redis on `port` over a fresh connection; returns its reply."""
    parts = [str(a).encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        with conn.makefile("rb") as f:
            return _read_reply(f)


class RedisServer:
    """redis-server on a fixed port; stop() and start() keep the port and the directory.

    Without persistence, unless `appendfsync` ("always", "everysec" or "no") turns the AOF on.
    """

    def __init__(self, directory, port=None, appendfsync=None, args=()):
        self.appendfsync = appendfsync
        self.args = list(args)
        self.port = port if port is not None else free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir=directory))
        self.log_path = self.dir / "redis.log"
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        """Starts redis-server and returns once it answers PING."""
        assert not self.alive(), "redis-server is already running"
        aof = ["--appendonly", "no"]
        if self.appendfsync:
            aof = ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        argv = [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                *aof, "--dir", str(self.dir), "--daemonize", "no", "--protected-mode", "no", *self.args]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with status "
                                   f"{self.proc.returncode} before answering PING\n{self.log()}")
            try:
                if redis_command(self.port, "PING", timeout=0.5) == "PONG":
                    return self
            except OSError:
                pass
            except RuntimeError as e:
                # still loading its AOF: not ready yet
                if "LOADING" not in str(e):
                    raise
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING "
                                   f"within {READY_TIMEOUT} s\n{self.log()}")
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM):
        """Stops redis-server and waits until it has exited."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self):
        self.stop(signal.SIGKILL)

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def subscribers(self, channel=REQUEST_CHANNEL):
        return int(redis_command(self.port, "PUBSUB", "NUMSUB", channel)[1])

    def wait_subscribers(self, count, channel=REQUEST_CHANNEL, timeout=READY_TIMEOUT):
        """Waits until Redis lists at least `count` subscribers of `channel`."""
        def enough():
            try:
                return self.subscribers(channel) >= count
            except OSError:
                return False
        eventually(enough, timeout=timeout,
                   message=f"{count} subscribers of {channel} in Redis (servers on the cluster)")


def start_redis(directory, appendfsync=None):
    """A started RedisServer on a free port (another one if the port was taken meanwhile), its
    files in a new directory under `directory`; `appendfsync` as for RedisServer."""
    for attempt in range(3):
        redis = RedisServer(directory, appendfsync=appendfsync)
        try:
            return redis.start()
        except RuntimeError as e:
            if attempt == 2 or "in use" not in str(e).lower():
                raise


class RedisCluster:
    """A Redis Cluster of `masters` redis-servers (no replicas) on free ports, each as a
    RedisServer with `appendfsync`; stop() and start() take all of them away and back (the
    cluster's layout stays in each one's nodes.conf)."""

    def __init__(self, directory, masters=3, appendfsync=None):
        self.servers = []
        for _ in range(masters):
            port = free_port()
            while port > 55000:  # the cluster bus listens on port + 10000
                port = free_port()
            self.servers.append(RedisServer(directory, port=port, appendfsync=appendfsync, args=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000")))
        self.url = "redis-cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def create(self):
        for s in self.servers:
            s.start()
        out = subprocess.run([REDIS_CLI_BIN, "--cluster", "create",
                              *(f"127.0.0.1:{s.port}" for s in self.servers), "--cluster-yes"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"redis-cli --cluster create: {out.stdout}{out.stderr}"
        self.wait_ready()
        return self

    def wait_ready(self):
        def ok():
            try:
                return all("cluster_state:ok" in redis_command(s.port, "CLUSTER", "INFO")
                           for s in self.servers)
            except (OSError, RuntimeError):
                return False
        eventually(ok, timeout=20, message="the Redis Cluster ready (cluster_state:ok everywhere)")

    def start(self):
        for s in self.servers:
            s.start()
        self.wait_ready()
        return self

    def stop(self, sig=signal.SIGTERM):
        for s in self.servers:
            s.stop(sig)

    def kill(self):
        self.stop(signal.SIGKILL)

    def log(self):
        return "\n".join(f"--- redis-server :{s.port} ---\n{s.log()}" for s in self.servers)

    def subscribers(self, channel=REQUEST_CHANNEL):
        return sum(int(redis_command(s.port, "PUBSUB", "SHARDNUMSUB", channel)[1]) for s in self.servers)

    wait_subscribers = RedisServer.wait_subscribers


def health(server):
    r = requests.get(server.url + "/health", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def wait_redis_state(server, state, timeout=READY_TIMEOUT):
    """Waits until a node's /health says cluster.redis is `state` ("up" or "down")."""
    def check():
        try:
            body = health(server)
        except requests.RequestException as e:
            raise AssertionError(f"GET /health failed: {e}") from None
        assert (body.get("cluster") or {}).get("redis") == state, f"/health answered {body}"
        return body

    return eventually(check, timeout=timeout, message=f'cluster.redis "{state}" in /health of {server.url}')


class Cluster:
    """Courier nodes on one RedisServer. `start_courier` is the conftest fixture's function."""

    def __init__(self, start_courier, redis, tmp_path, config=""):
        self.start_courier = start_courier
        self.redis = redis
        self.tmp_path = tmp_path
        self.config = config
        self.nodes = []
        self._count = 0

    def _launch(self, via, data_dir, listen="127.0.0.1:0"):
        config, env, args = self.config, None, ()
        if via == "flag":
            args = ("--redis", self.redis.url)
        elif via == "env":
            env = {"COURIER_CLUSTER_REDIS_URL": self.redis.url}
        elif via == "config":
            config = f'{config}\n[cluster]\nredis_url = "{self.redis.url}"\n'
        else:
            raise ValueError(f"unknown way to join the cluster: {via}")
        node = self.start_courier(config, listen=listen, data_dir=data_dir, env=env, args=args)
        node.via = via
        wait_redis_state(node, "up")
        return node

    def add_node(self, via="flag"):
        """Starts one more node (told of Redis by `via`: flag, env or config) and waits for it."""
        self._count += 1
        node = self._launch(via, self.tmp_path / f"cluster-node-{self._count}")
        self.nodes.append(node)
        self.redis.wait_subscribers(len(self.nodes))
        return node

    def restart_node(self, i, kill=False):
        """Stops node `i` (SIGTERM, or SIGKILL) and starts it again on its port and data."""
        old = self.nodes[i]
        if kill:
            old.kill()
        else:
            old.terminate()
        return self.start_node(i)

    def start_node(self, i):
        """Starts node `i` again (it was stopped or killed) on its port and data directory, and
        waits until it is on the cluster."""
        old = self.nodes[i]
        assert not old.alive(), f"node {i} is still running"
        self.nodes[i] = self._launch(old.via, old.data_dir, listen=f"127.0.0.1:{old.port}")
        self.redis.wait_subscribers(len(self.nodes))
        return self.nodes[i]


def probe_forwarding(owner, via):
    """Opens a bare Engine.IO session on `owner`, POSTs a noop (packet 6) for it to `via` and
    closes the session; returns `via`'s answer (200 when it forwarded the request)."""
    base = "/socket.io/?EIO=4&transport=polling"
    r = requests.get(owner.url + base, timeout=5)
    assert r.status_code == 200 and r.text.startswith("0"), f"handshake on {owner.url}: {r.text}"
    sid = json.loads(r.text[1:])["sid"]
    try:
        return requests.post(f"{via.url}{base}&sid={sid}", data=b"6", timeout=5,
                             headers={"content-type": "text/plain;charset=UTF-8"})
    finally:
        try:
            requests.post(f"{owner.url}{base}&sid={sid}", data=b"1", timeout=5)
        except requests.RequestException:
            pass


def wait_forwarding(nodes, timeout=READY_TIMEOUT):
    """Waits until every node forwards to every other one: each learns the others' addresses
    from Redis on its own schedule, so one just started may not know the latest."""
    for owner in nodes:
        for via in nodes:
            if via is not owner:
                eventually(lambda owner=owner, via=via: probe_forwarding(owner, via).status_code == 200,
                           timeout=timeout, message=f"{via.url} to forward requests of sessions on {owner.url}")


class Hub:
    """What a test parameterised over `hub_mode` calls "the server": one `courier serve`
    ("single") or three nodes on a Redis of the test's own ("cluster") or on a Redis Cluster of
    three ("redis-cluster"), every node started with the test's config.

    Each read of `.url` (and each `node()`) gives the next node, round robin over one counter, so
    consecutive clients and API calls land on different nodes: a subscriber on one node, a
    publisher on the next, `Api(hub)` answering from a third. With one node they all land on it.
    A test that needs to come back to a node keeps the node itself (it has a `.url` of its own).
    """

    def __init__(self, mode, nodes, relaunch):
        self.mode = mode
        self.nodes = list(nodes)
        self._relaunch = relaunch
        self._turn = 0

    def node(self):
        """The next node, round robin."""
        node = self.nodes[self._turn % len(self.nodes)]
        self._turn += 1
        return node

    @property
    def url(self):
        return self.node().url

    def restart(self, node, kill=False):
        """Stops `node` (SIGTERM, which must exit 0, or SIGKILL) and starts it again on its port
        and data directory; returns the new process, which takes the old one's place."""
        i = self.nodes.index(node)
        if kill:
            node.kill()
        else:
            status = node.terminate()
            assert status == 0, f"{node.url} exited with status {status} on SIGTERM\n{node.output()}"
        self.nodes[i] = self._relaunch(i, kill)
        return self.nodes[i]

    def output(self, tail=None):
        """Every node's log (its last `tail` lines)."""
        def lines(n):
            text = n.output().splitlines()
            return "\n".join(text[-tail:] if tail else text)

        return "\n".join(f"--- {self.mode} node {i} ({n.url}) ---\n{lines(n)}" for i, n in enumerate(self.nodes))
