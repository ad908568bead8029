"""Settings of `courier serve` as docs/serve.md describes them: config file, environment
variables and their precedence, the endpoint path, transports, CORS and the API token.
"""

from __future__ import annotations

import pytest
import requests
import socketio

from support import Api
from wire import Polling, WebSocket, websocket_rejected


def test_engine_settings_from_the_config_file(start_courier):
    server = start_courier("[engine]\nping_interval_ms = 4321\nping_timeout_ms = 1234\nmax_payload = 55555\n")
    opened = Polling(server.url, path="/socket.io/").handshake()
    assert (opened["pingInterval"], opened["pingTimeout"], opened["maxPayload"]) == (4321, 1234, 55555)


def test_environment_overrides_the_config_file(start_courier):
    server = start_courier(
        "[engine]\nping_interval_ms = 4321\n",
        env={"COURIER_ENGINE_PING_INTERVAL_MS": "7777"},
    )
    assert Polling(server.url, path="/socket.io/").handshake()["pingInterval"] == 7777


def test_list_settings_from_the_environment(start_courier, sio_client):
    server = start_courier(env={"COURIER_HUB_AUTH_TOKENS": "alpha,beta"})
    c = sio_client()
    c.connect(server.url, auth={"token": "beta"}, wait_timeout=5)
    assert c.connected
    refused = sio_client()
    with pytest.raises(socketio.exceptions.ConnectionError):
        refused.connect(server.url, auth={"token": "alpha,beta"}, wait_timeout=5)


def test_listen_flag_overrides_the_environment(start_courier):
    # COURIER_SERVER_LISTEN names a port; --listen 127.0.0.1:0 wins and binds a free one.
    server = start_courier(env={"COURIER_SERVER_LISTEN": "127.0.0.1:1"})
    assert server.port != 1
    assert Api(server.url).health()["status"] == "ok"


def test_custom_engine_path(start_courier, sio_client):
    server = start_courier('[server]\npath = "/realtime/"\n')
    c = sio_client()
    c.connect(server.url, socketio_path="realtime", transports=["polling"], wait_timeout=5)
    assert c.call("courier:join", "r", timeout=5)["ok"] is True
    r = requests.get(f"{server.url}/socket.io/?EIO=4&transport=polling", timeout=5)
    assert 400 <= r.status_code < 500, f"the default path still answers: {r.status_code} {r.text!r}"


def test_websocket_only(start_courier, sio_client):
    server = start_courier('[engine]\ntransports = ["websocket"]\n')
    r = requests.get(f"{server.url}/socket.io/?EIO=4&transport=polling", timeout=5)
    assert r.status_code == 400 and r.json()["code"] == 0, (r.status_code, r.text)
    ws = WebSocket(server.url, path="/socket.io/")
    try:
        assert ws.handshake()["upgrades"] == []
    finally:
        ws.close()
    c = sio_client()
    c.connect(server.url, transports=["websocket"], wait_timeout=5)
    assert c.call("courier:join", "r", timeout=5)["ok"] is True


def test_polling_only(start_courier, sio_client):
    server = start_courier('[engine]\ntransports = ["polling"]\n')
    opened = Polling(server.url, path="/socket.io/").handshake()
    assert opened["upgrades"] == [], "a polling-only hub must not offer an upgrade"
    outcome = websocket_rejected(server.url, "/socket.io/", {"EIO": "4", "transport": "websocket"})
    assert outcome in ("http 400", "closed"), outcome
    c = sio_client()
    c.connect(server.url, wait_timeout=5)  # default transports: polling, then no upgrade offered
    assert c.transport() == "polling"
    assert c.call("courier:join", "r", timeout=5)["ok"] is True


def test_no_cors_headers_by_default(courier):
    r = requests.get(
        f"{courier.url}/socket.io/?EIO=4&transport=polling", headers={"Origin": "http://app.test"}, timeout=5
    )
    assert r.status_code == 200
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_for_listed_origins(start_courier):
    server = start_courier('[cors]\norigins = ["http://app.test"]\ncredentials = true\n')
    url = f"{server.url}/socket.io/?EIO=4&transport=polling"
    r = requests.get(url, headers={"Origin": "http://app.test"}, timeout=5)
    assert r.status_code == 200
    assert r.headers.get("Access-Control-Allow-Origin") == "http://app.test"
    assert r.headers.get("Access-Control-Allow-Credentials") == "true"
    pre = requests.options(
        url,
        headers={"Origin": "http://app.test", "Access-Control-Request-Method": "POST"},
        timeout=5,
    )
    assert pre.status_code in (200, 204)
    assert pre.headers.get("Access-Control-Allow-Origin") == "http://app.test"
    other = requests.get(url, headers={"Origin": "http://evil.test"}, timeout=5)
    assert other.headers.get("Access-Control-Allow-Origin") != "http://evil.test"


def test_cors_any_origin(start_courier):
    server = start_courier('[cors]\norigins = ["*"]\n')
    r = requests.get(
        f"{server.url}/socket.io/?EIO=4&transport=polling", headers={"Origin": "http://anything.test"}, timeout=5
    )
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", "http://anything.test")


def test_api_token(start_courier, sio_client):
    server = start_courier('[api]\ntoken = "backend-secret"\n')
    c = sio_client()
    c.connect(server.url, wait_timeout=5)  # clients are not affected by the API token
    body = {"namespace": "/", "rooms": [], "event": "e", "data": []}

    r = requests.post(f"{server.url}/api/v1/emit", json=body, timeout=5)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_token"
    r = requests.post(
        f"{server.url}/api/v1/emit", json=body, headers={"Authorization": "Bearer wrong"}, timeout=5
    )
    assert r.status_code == 401
    assert Api(server.url, token="backend-secret").emit(rooms=[], event="e", data=[]) == {"recipients": 1}


def test_api_rejects_malformed_requests(courier):
    url = f"{courier.url}/api/v1/emit"
    for body in ('{"namespace": "/", "event": ', '{"namespace": "/"}', '{"namespace":"/","event":"e","data":"no"}'):
        r = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=5)
        assert r.status_code == 400, (body, r.status_code, r.text)
        err = r.json()["error"]
        assert err["code"] == "bad_request" and isinstance(err["message"], str), err
    r = requests.post(url, json={"namespace": "/nowhere", "rooms": [], "event": "e", "data": []}, timeout=5)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (r.status_code, r.text)
    r = requests.get(f"{courier.url}/api/v1/nothing-here", timeout=5)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # and the hub still serves
    assert Api(courier.url).health()["status"] == "ok"
