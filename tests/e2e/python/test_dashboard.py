"""The dashboard at /dashboard/ in a real browser: headless Chromium (Debian's `chromium`
package, driven by Playwright's Python client with the system browser, never a browser of
Playwright's own) loads the page, gives it the API token, sees a stream and a lagging consumer
appear, replays a dead letter, and saves a screenshot (docs/observe.md).

The screenshot goes to $COURIER_ARTIFACTS (default target/e2e-artifacts/dashboard.png).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
import requests

from support import Api, Deliveries, eventually

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("COURIER_ARTIFACTS", REPO / "target" / "e2e-artifacts"))
TOKEN = "dash-token"

CONFIG = f"""
[api]
token = "{TOKEN}"
[dashboard]
enabled = true
"""


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium on this machine: scripts/test installs Debian's chromium package")


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


class Publisher(threading.Thread):
    """Publishes to a stream a few times a second until stopped, so that the chart has rates."""

    def __init__(self, api, stream):
        super().__init__(daemon=True)
        self.api, self.stream = api, stream
        self.stop = threading.Event()

    def run(self):
        n = 0
        while not self.stop.wait(0.1):
            n += 1
            self.api.publish(self.stream, "tick", {"n": n})


def connect(sio_client, server):
    c = sio_client()
    c.connect(server.url, transports=["websocket"], wait_timeout=5)
    return c


def test_dashboard_shows_streams_and_consumers_and_replays_a_dead_letter(start_courier, sio_client, browser):
    server = start_courier(CONFIG)
    api = Api(server.url, token=TOKEN)
    assert requests.get(server.url + "/dashboard/api/summary", timeout=5).status_code == 401

    # A live consumer of a busy stream, so that deliveries flow.
    live = connect(sio_client, server)
    Deliveries(live, "tick")
    assert live.call("courier:subscribe", {"stream": "ticks", "consumer": "screen"}, timeout=5)["ok"]
    publisher = Publisher(api, "ticks")
    publisher.start()

    # "shop" read two orders and went away: the next five wait for it.
    shop = connect(sio_client, server)
    Deliveries(shop, "created")
    assert shop.call("courier:subscribe", {"stream": "orders", "consumer": "shop"}, timeout=5)["ok"]
    for i in (1, 2):
        api.publish("orders", "created", {"order": i})
    eventually(lambda: api.consumer("orders", "shop")["ack_floor"] == 2, message="shop acked two")
    shop.disconnect()
    for i in range(3, 8):
        api.publish("orders", "created", {"order": i})

    # "billing" never acks: its order is dead-lettered after two deliveries.
    billing = connect(sio_client, server)
    held = Deliveries(billing, "created", hold=lambda data, meta: True)
    assert billing.call("courier:subscribe", {"stream": "orders", "consumer": "billing", "from": "new",
                                              "ack_wait_ms": 100, "max_deliver": 2}, timeout=5)["ok"]
    api.publish("orders", "created", {"order": 8, "total": 42})
    eventually(lambda: api.stream("orders.dlq")["entries"] == 1, timeout=10, message="a dead letter")
    held.release()

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/dashboard/")

    # The hub has an API token: the page asks for it.
    page.wait_for_selector("#login:not([hidden])", timeout=10_000)
    page.fill("#token", TOKEN)
    page.click("#login button")

    page.wait_for_selector('#streams tr[data-stream="orders"]', timeout=10_000)
    page.wait_for_selector('#streams tr[data-stream="orders.dlq"]', timeout=10_000)
    lagging = page.wait_for_selector('#consumers tr.lagging[data-consumer="orders/shop"]', timeout=10_000)
    assert lagging.query_selector("td.waiting").inner_text() == "6"  # orders 3..8
    page.wait_for_selector('#consumers tr[data-consumer="ticks/screen"]', timeout=10_000)
    assert page.inner_text('#streams tr[data-stream="orders"] td.entries') == "8"
    page.wait_for_selector('#namespaces tr[data-namespace="/"]', timeout=10_000)
    assert page.inner_text("#status") == "live"

    # The chart fills in as rates are measured (one point per poll).
    page.wait_for_function(
        "document.querySelector('#chart polyline.deliveries').getAttribute('points').split(' ').length >= 3",
        timeout=15_000,
    )

    page.wait_for_selector('table[data-dlq="orders.dlq"] button.replay', timeout=10_000)
    last = api.stream("orders")["last_seq"]
    # By selector, not by a handle: each poll redraws the table, and a handle taken before a
    # redraw points at a button no longer in the page (it failed so once in a full run).
    page.click('table[data-dlq="orders.dlq"] button.replay', timeout=10_000)
    page.wait_for_selector('table[data-dlq="orders.dlq"] button.replay.done', timeout=10_000)
    assert page.inner_text('table[data-dlq="orders.dlq"] button.replay') == f"replayed as #{last + 1}"
    replayed = api.get(f"/dashboard/api/streams/orders/entries?from={last + 1}&limit=1").json()["entries"]
    assert replayed[0]["event"] == "created"
    assert replayed[0]["data"] == {"order": 8, "total": 42}
    assert replayed[0]["id"] == "replay:orders.dlq:1"

    # A second replay of the same letter publishes nothing new.
    again = api.post("/dashboard/api/streams/orders.dlq/replay/1", None).json()
    assert again == {"stream": "orders", "seq": last + 1, "duplicate": True}

    # Let the chart show a few more points for the picture.
    page.wait_for_function(
        "document.querySelector('#chart polyline.publishes').getAttribute('points').split(' ').length >= 5",
        timeout=15_000,
    )
    publisher.stop.set()
    publisher.join(5)
    live.disconnect()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert errors == [], f"script errors on the page: {errors}"


def test_dashboard_is_off_unless_enabled(courier):
    assert requests.get(courier.url + "/dashboard/", timeout=5).status_code == 404
    assert requests.get(courier.url + "/dashboard/api/summary", timeout=5).status_code == 404
