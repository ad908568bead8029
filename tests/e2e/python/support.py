"""Helpers shared by the test modules: Courier's HTTP API, stream deliveries to a
python-socketio client, and waiting for a condition."""

from __future__ import annotations

import threading
import time
from urllib.parse import quote

import requests


class Api:
    """The HTTP API of `courier serve`.

    `base_url` is an address, or an object whose `.url` is read again for every request: with a
    `cluster.Hub` of several nodes, consecutive calls go to different nodes.
    """

    def __init__(self, base_url, token=None):
        self._base = base_url
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    @property
    def base_url(self):
        return self._base if isinstance(self._base, str) else self._base.url

    def get(self, path, **kw):
        kw.setdefault("timeout", 10)
        return self.http.get(self.base_url + path, **kw)

    def post(self, path, body, **kw):
        kw.setdefault("timeout", 10)
        return self.http.post(self.base_url + path, json=body, **kw)

    def health(self):
        r = self.get("/health")
        assert r.status_code == 200, r.text
        return r.json()

    def emit(self, **body):
        body.setdefault("namespace", "/")
        r = self.post("/api/v1/emit", body)
        assert r.status_code == 200, f"emit answered HTTP {r.status_code}: {r.text}"
        return r.json()

    def disconnect(self, **body):
        body.setdefault("namespace", "/")
        r = self.post("/api/v1/disconnect", body)
        assert r.status_code == 200, f"disconnect answered HTTP {r.status_code}: {r.text}"
        return r.json()

    def put(self, path, body, **kw):
        kw.setdefault("timeout", 10)
        return self.http.put(self.base_url + path, json=body, **kw)

    def delete(self, path, **kw):
        kw.setdefault("timeout", 10)
        return self.http.delete(self.base_url + path, **kw)

    def publish(self, stream, event, data=None, id=None):
        """POST /api/v1/streams/{stream}/publish; returns {"seq", "duplicate"}."""
        body = {"event": event, "data": data}
        if id is not None:
            body["id"] = id
        r = self.post(f"/api/v1/streams/{quote(stream, safe='')}/publish", body)
        assert r.status_code == 200, f"publish to {stream} answered HTTP {r.status_code}: {r.text}"
        return r.json()

    def stream(self, name):
        r = self.get(f"/api/v1/streams/{quote(name, safe='')}")
        assert r.status_code == 200, f"stream {name} answered HTTP {r.status_code}: {r.text}"
        return r.json()

    def consumer(self, stream, name):
        r = self.get(f"/api/v1/streams/{quote(stream, safe='')}/consumers/{quote(name, safe='')}")
        assert r.status_code == 200, f"consumer {stream}/{name} answered HTTP {r.status_code}: {r.text}"
        return r.json()

    def sockets(self, namespace="/", room=None):
        params = {"namespace": namespace}
        if room is not None:
            params["room"] = room
        r = self.get("/api/v1/sockets", params=params)
        assert r.status_code == 200, f"sockets answered HTTP {r.status_code}: {r.text}"
        return r.json()["sockets"]


def eventually(check, timeout=5.0, interval=0.05, message="condition not met"):
    """Call check() until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = check()
            if last:
                return last
        except AssertionError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} within {timeout} s (last: {last!r})")
        time.sleep(interval)


class Deliveries:
    """Records the stream deliveries of `event` that a python-socketio client receives.

    Each delivery is (data, meta) plus whatever else arrives, kept as the tuple of arguments.
    python-socketio acknowledges an event when its handler returns (the return value is the
    ack), and runs each handler in a thread of its own: a handler that has not returned has not
    acked. `hold(data, meta)` returning true keeps that delivery's handler waiting, so the
    delivery stays unacknowledged until release() (then every held handler returns and acks late).
    """

    def __init__(self, client, event, namespace="/", hold=None):
        self.items = []
        self._lock = threading.Lock()
        self._hold = hold
        self._released = threading.Event()
        client.on(event, self._handler, namespace=namespace)

    def _handler(self, *args):
        with self._lock:
            self.items.append(args)
        if self._hold is not None and self._hold(*args[:2]):
            # bounded, so that no thread outlives the test for long
            self._released.wait(20)

    def release(self):
        self._released.set()

    def snapshot(self):
        with self._lock:
            return list(self.items)

    def metas(self):
        return [args[1] for args in self.snapshot()]

    def seqs(self):
        return [m["seq"] for m in self.metas()]

    def wait(self, count, timeout=5.0):
        """Wait until at least `count` deliveries arrived; returns them all."""
        eventually(lambda: len(self.items) >= count, timeout=timeout,
                   message=f"{count} deliveries (have {len(self.items)})")
        return self.snapshot()

    def quiet(self, seconds=0.4):
        """Assert that nothing more arrives for `seconds`; returns what arrived."""
        n = len(self.items)
        time.sleep(seconds)
        extra = self.snapshot()[n:]
        assert not extra, f"unexpected deliveries: {extra!r}"
        return self.snapshot()
