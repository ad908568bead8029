"""The Socket.IO admin UI itself (the built files of npm's @socket.io/admin-ui 0.5, served by
`courier serve --admin-ui`) in headless Chromium: it logs in with the bcrypt password, lists
this node under its server id and a python-socketio client among the sockets, and a wrong
password shows its "invalid credentials" error (docs/observe.md).

The screenshot goes to $COURIER_ARTIFACTS (default target/e2e-artifacts/admin-ui.png).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from test_dashboard import ARTIFACTS, browser  # noqa: F401 (the fixture)

REPO = Path(__file__).resolve().parents[3]
UI_DIST = REPO / "tests" / "e2e" / "node_modules" / "@socket.io" / "admin-ui" / "ui" / "dist"
PASSWORD = "correct horse battery staple"
# bcrypt of PASSWORD, cost 8 (made with bcryptjs; any $2a$/$2b$/$2y$ hash works).
HASH = "$2a$08$pdZEFe8J4WhyYddCaOGXe.A5mrFdwg8eccaiTelivwwu.ewmMv/xe"


def config():
    return f"""
[admin]
enabled = true
username = "ops"
password_hash = "{HASH}"
server_id = "hub-under-test"
"""


def log_in(page, url, password):
    page.goto(url + "/admin/")
    page.get_by_label("Server URL").fill(url)
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Connect").click()


def test_the_admin_ui_logs_in_and_lists_the_hub(start_courier, sio_client, browser):  # noqa: F811
    if not (UI_DIST / "index.html").is_file():
        pytest.fail(f"{UI_DIST} is missing: scripts/test installs tests/e2e's npm packages")
    server = start_courier(config(), args=("--admin-ui", str(UI_DIST)))
    client = sio_client()
    client.connect(server.url, transports=["websocket"], wait_timeout=5)
    assert client.call("courier:join", "lobby", timeout=5)["ok"]

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log_in(page, server.url, PASSWORD)
    # The connection dialog closes once the UI is in.
    page.get_by_text("Connection", exact=True).wait_for(state="hidden", timeout=15_000)

    page.goto(server.url + "/admin/#/servers/")
    page.wait_for_selector("text=hub-under-test", timeout=15_000)

    page.goto(server.url + "/admin/#/sockets/")
    page.wait_for_selector(f"text={client.get_sid()}", timeout=15_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-ui.png"), full_page=True)


def test_the_admin_ui_shows_invalid_credentials(start_courier, browser):  # noqa: F811
    server = start_courier(config(), args=("--admin-ui", str(UI_DIST)))
    page = browser.new_page()
    log_in(page, server.url, "not the password")
    page.wait_for_selector("text=Invalid credentials", timeout=15_000)
