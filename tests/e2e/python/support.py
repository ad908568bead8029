"""Helpers shared by the test modules: Courier's HTTP API and waiting for a condition."""

from __future__ import annotations

import time

import requests


class Api:
    """The HTTP API of `courier serve`."""

    def __init__(self, base_url, token=None):
        self.base_url = base_url
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

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
