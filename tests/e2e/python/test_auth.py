"""Access control in `courier serve`, seen from python-socketio clients and the HTTP API.

Tokens are minted here with PyJWT, with keys the tests generate (cryptography). Covered:

* the token matrix: HS256, RS256 and ES256 keys and a JWKS file whose `kid`s pick an RSA or an
  EC key; valid, expired, not yet valid, wrong or missing issuer/audience, another key,
  `alg: none`, and HS256 signed with the public key as the HMAC secret; each answered on the
  CONNECT and on the HTTP API with the same error code;
* a permission matrix between two vendors with disjoint grants, over WebSocket and polling:
  every attempt on the other's rooms, streams and consumers is refused and changes nothing,
  and no delivery, relay or emit reaches the wrong vendor, while each gets its own;
* the HTTP API's scopes, route by route;
* a token expiring while its client is connected, and the refresh through the `auth` callback;
* the caps: sockets per subject, Engine.IO sessions and handshakes per address;
* protected mode, with the hub in a network namespace so that its clients are not loopback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import queue
import socket
import subprocess
import threading
import time
from collections import Counter

import jwt
import pytest
import requests
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import COURIER_BIN, ServerProcess, require_binary
from support import Api, eventually

ISSUER = "https://issuer.courier.test"
AUDIENCE = "courier-hub"
SECRET = "hs256-secret-for-the-courier-tests"


# ---------------------------------------------------------------- tokens and keys


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def segment(obj) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def claims(sub="rider-1", exp_in=300, **extra):
    """Claims valid now for `exp_in` seconds; `extra` adds or replaces claims (None removes)."""
    now = int(time.time())
    c = {"sub": sub, "iat": now, "exp": now + exp_in}
    if sub is None:
        del c["sub"]
    for k, v in extra.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def unsigned_token(payload) -> str:
    """`alg: none`: a header and payload and an empty signature."""
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(payload)}."


def hs256_by_hand(payload, secret: bytes, kid=None) -> str:
    """HS256 with any bytes as the secret (PyJWT refuses a PEM key as an HMAC secret)."""
    header = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{segment(header)}.{segment(payload)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys():
    """Key pairs made for this run: the hub's and an impostor's of each kind."""
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa-other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ec-other": ec.generate_private_key(ec.SECP256R1()),
    }


def jwk_of(key, kid, alg):
    algorithm = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
    jwk = algorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


def connect(client, server, auth=None, transports=("websocket",)):
    client.connect(server.url, auth=auth, transports=list(transports), wait_timeout=5)
    return client


def refusal(client, server, auth=None, transports=("websocket",)):
    """Connects and expects a CONNECT_ERROR; returns what the connect_error handler got."""
    errors = queue.Queue()
    client.on("connect_error", lambda *data: errors.put(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        connect(client, server, auth=auth, transports=transports)
    try:
        (err,) = errors.get(timeout=5)
    except queue.Empty:
        raise AssertionError("connect failed without a connect_error event") from None
    return err


def assert_unauthorized(err, code):
    assert isinstance(err, dict) and err.get("message") == "unauthorized", err
    assert err["data"]["code"] == code, err
    assert isinstance(err["data"].get("message"), str) and err["data"]["message"], err


def assert_forbidden(answer):
    assert isinstance(answer, dict) and answer.get("ok") is False, answer
    assert answer["error"]["code"] == "forbidden", answer
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"], answer


def api_error(response, status, code):
    assert response.status_code == status, f"HTTP {response.status_code}: {response.text}"
    body = response.json()
    assert body["error"]["code"] == code, body
    return body


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def fresh(method, url, **kw):
    """One HTTP request on a connection of its own (see
    test_a_refused_api_call_leaves_the_connection_usable for why refused calls use this)."""
    kw.setdefault("timeout", 10)
    with requests.Session() as s:
        return s.request(method, url, **kw)


# ---------------------------------------------------------------- the token matrix

def keyed(key_line):
    return f"""
[auth]
{key_line}
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
leeway_ms = 1000
[auth.default]
rooms = ["user.{{sub}}"]
"""


class Kind:
    """How one kind of server is configured and how its tokens are signed."""

    def __init__(self, config, sign, sign_other, attacks):
        self.config = config
        self.sign = sign  # claims -> token the hub accepts
        self.sign_other = sign_other  # claims -> token signed with a key the hub does not know
        self.attacks = attacks  # [(label, token)] of algorithm confusion, all invalid


def make_kind(name, keys, tmp_path):
    if name == "HS256":
        return Kind(
            keyed(f'jwt_secret = "{SECRET}"'),
            lambda c: jwt.encode(c, SECRET, algorithm="HS256"),
            lambda c: jwt.encode(c, SECRET + "-not", algorithm="HS256"),
            [],
        )
    if name in ("RS256", "ES256"):
        key, other = (keys["rsa"], keys["rsa-other"]) if name == "RS256" else (keys["ec"], keys["ec-other"])
        public = tmp_path / f"{name.lower()}-public.pem"
        public.write_bytes(pem_public(key))
        return Kind(
            keyed(f'jwt_public_key_file = "{public}"'),
            lambda c: jwt.encode(c, pem_private(key), algorithm=name),
            lambda c: jwt.encode(c, pem_private(other), algorithm=name),
            # the public key, which anyone may have, used as an HMAC secret
            [("HS256 with the public key PEM as secret", lambda c: hs256_by_hand(c, public.read_bytes()))],
        )
    assert name == "JWKS"
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk_of(keys["rsa"], "rsa-1", "RS256"),
                                         jwk_of(keys["ec"], "ec-1", "ES256")]}))
    rsa_pem, ec_pem = pem_private(keys["rsa"]), pem_private(keys["ec"])

    def sign(c):
        # both keys of the set, each picked by its kid
        return {"rsa": jwt.encode(c, rsa_pem, algorithm="RS256", headers={"kid": "rsa-1"}),
                "ec": jwt.encode(c, ec_pem, algorithm="ES256", headers={"kid": "ec-1"})}

    def sign_other(c):
        return {"rsa": jwt.encode(c, pem_private(keys["rsa-other"]), algorithm="RS256", headers={"kid": "rsa-1"}),
                "ec": jwt.encode(c, pem_private(keys["ec-other"]), algorithm="ES256", headers={"kid": "ec-1"})}

    rsa_public_pem = pem_public(keys["rsa"])
    attacks = [
        ("HS256 with kid rsa-1 and its public key PEM as secret",
         lambda c: hs256_by_hand(c, rsa_public_pem, kid="rsa-1")),
        ("RS256 signed by the RSA key, naming the EC key's kid",
         lambda c: jwt.encode(c, rsa_pem, algorithm="RS256", headers={"kid": "ec-1"})),
        ("ES256 signed by the EC key, naming the RSA key's kid",
         lambda c: jwt.encode(c, ec_pem, algorithm="ES256", headers={"kid": "rsa-1"})),
        ("a kid the set does not have",
         lambda c: jwt.encode(c, rsa_pem, algorithm="RS256", headers={"kid": "rsa-2"})),
        ("no kid at all", lambda c: jwt.encode(c, rsa_pem, algorithm="RS256")),
    ]
    return Kind(keyed(f'jwks_file = "{jwks}"'), sign, sign_other, attacks)


def variants(token):
    """A JWKS kind signs with each of its keys: a dict of tokens; the others give one."""
    return token.items() if isinstance(token, dict) else [("", token)]


@pytest.mark.parametrize("kind", ["HS256", "RS256", "ES256", "JWKS"])
def test_token_matrix(start_courier, sio_client, keys, tmp_path, kind):
    k = make_kind(kind, keys, tmp_path)
    server = start_courier(k.config)
    api = Api(server.url)
    good = dict(iss=ISSUER, aud=AUDIENCE)
    reader = {"courier": {"api": ["read"]}}

    # valid tokens connect, carry their subject, and get the default grants ({sub} filled in)
    for label, token in variants(k.sign(claims(sub="rider-7", **good))):
        c = connect(sio_client(), server, auth={"token": token})
        sid = c.get_sid("/")
        assert c.call("courier:join", "user.rider-7", timeout=5) == {"ok": True, "rooms": sorted(["user.rider-7", sid])}
        assert_forbidden(c.call("courier:join", "user.rider-8", timeout=5))
        # the same token on the API: valid, but its grants have no API scope
        api_error(api.get("/api/v1/sockets", headers=bearer(token)), 403, "forbidden")
        for _, read_token in variants(k.sign(claims(sub="ops", **good, **reader))):
            r = api.get("/api/v1/sockets", headers=bearer(read_token))
            assert r.status_code == 200, r.text
            listed = {s["sid"]: s["sub"] for s in r.json()["sockets"]}
            assert listed.get(sid) == "rider-7", (label, listed)
        c.disconnect()

    bad = [
        ("expired 60 s ago", k.sign(claims(exp_in=-60, **good)), "expired_token"),
        ("nbf 60 s ahead", k.sign(claims(nbf=int(time.time()) + 60, **good)), "invalid_token"),
        ("wrong issuer", k.sign(claims(iss="https://issuer.elsewhere.test", aud=AUDIENCE)), "invalid_token"),
        ("no issuer", k.sign(claims(aud=AUDIENCE)), "invalid_token"),
        ("wrong audience", k.sign(claims(iss=ISSUER, aud="another-hub")), "invalid_token"),
        ("no audience", k.sign(claims(iss=ISSUER)), "invalid_token"),
        ("empty sub", k.sign(claims(sub="", **good)), "invalid_token"),
        ("no sub", k.sign(claims(sub=None, **good)), "invalid_token"),
        ("another key", k.sign_other(claims(**good)), "invalid_token"),
        ("alg none", unsigned_token(claims(**good)), "invalid_token"),
        ("not a JWT", "not.a.jwt", "invalid_token"),
    ]
    bad += [(label, attack(claims(**good)), "invalid_token") for label, attack in k.attacks]
    api_reader_claims = dict(good, **reader)
    for label, tokens, code in bad:
        for variant, token in variants(tokens):
            err = refusal(sio_client(), server, auth={"token": token})
            assert err["message"] == "unauthorized" and err["data"]["code"] == code, (label, variant, err)
    # the API answers the same codes (tokens that would have the read scope otherwise)
    api_bad = [
        ("expired", k.sign(claims(exp_in=-60, **api_reader_claims)), "expired_token"),
        ("nbf ahead", k.sign(claims(nbf=int(time.time()) + 60, **api_reader_claims)), "invalid_token"),
        ("wrong issuer", k.sign(claims(**dict(api_reader_claims, iss="https://x.test"))), "invalid_token"),
        ("wrong audience", k.sign(claims(**dict(api_reader_claims, aud="x"))), "invalid_token"),
        ("another key", k.sign_other(claims(**api_reader_claims)), "invalid_token"),
        ("alg none", unsigned_token(claims(**api_reader_claims)), "invalid_token"),
    ]
    api_bad += [(label, attack(claims(**api_reader_claims)), "invalid_token") for label, attack in k.attacks]
    for label, tokens, code in api_bad:
        for variant, token in variants(tokens):
            r = api.get("/api/v1/sockets", headers=bearer(token))
            assert (r.status_code, r.json()["error"]["code"]) == (401, code), (label, variant, r.text)

    # no token, an empty one, one that is not a string: missing_token, on the CONNECT and the API
    for auth in (None, {}, {"token": ""}, {"token": 42}, {"password": "x"}):
        assert_unauthorized(refusal(sio_client(), server, auth=auth), "missing_token")
    # JWT auth on means the API needs a token too, though api.token is empty
    api_error(api.get("/api/v1/sockets"), 401, "missing_token")
    api_error(fresh("POST", server.url + "/api/v1/emit", json={"event": "x"}), 401, "missing_token")
    assert api.get("/api/v1/sockets", headers=bearer("")).status_code == 401

    # nothing refused left a socket behind
    for _, read_token in variants(k.sign(claims(sub="ops", **good, **reader))):
        r = api.get("/api/v1/sockets", headers=bearer(read_token))
        assert r.status_code == 200 and r.json()["sockets"] == [], r.text


# ---------------------------------------------------------------- the permission matrix

MATRIX_CONFIG = f"""
[auth]
jwt_secret = "{SECRET}"
[api]
token = "matrix-api-key"
"""

TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"]}


class Recorder:
    """Every event a client receives, as (event, args); a delivery is acked by returning."""

    def __init__(self, client):
        self.items = []
        self._lock = threading.Lock()
        client.on("*", self._handler)

    def _handler(self, event, *args):
        with self._lock:
            self.items.append((event, args))

    def snapshot(self):
        with self._lock:
            return list(self.items)


def vendor_token(letter, exp_in=600):
    return jwt.encode(claims(sub=f"vendor-{letter}", exp_in=exp_in, courier={
        "rooms": [f"parcel.{letter}.*"],
        "publish": [f"orders.{letter}"],
        "subscribe": [f"orders.{letter}"],
    }), SECRET, algorithm="HS256")


def owner_of(event, args):
    """Every payload in this test names the vendor it belongs to."""
    return args[0].get("owner") if args and isinstance(args[0], dict) else None


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_permission_matrix_counts_no_leak(start_courier, sio_client, transport):
    server = start_courier(MATRIX_CONFIG)
    api = Api(server.url, token="matrix-api-key")
    tr = TRANSPORTS[transport]
    users = {}
    for letter in "ab":
        token = vendor_token(letter)
        pair = []
        for _ in range(2):
            c = sio_client()
            rec = Recorder(c)
            connect(c, server, auth={"token": token}, transports=tr)
            pair.append((c, rec))
        users[letter] = pair
    sids = {(letter, i): users[letter][i][0].get_sid("/") for letter in "ab" for i in range(2)}

    listed = {s["sid"]: (s["sub"], s["transport"]) for s in api.sockets("/")}
    assert listed == {sid: (f"vendor-{letter}", tr[0]) for (letter, _), sid in sids.items()}

    def call(letter, i, event, data):
        return users[letter][i][0].call(event, data, timeout=5)

    def attempts(me, other):
        """Everything `me` may not do to `other`'s things (and a few names near its own)."""
        return [
            ("courier:join", f"parcel.{other}.1"),
            ("courier:join", [f"parcel.{me}.1", f"parcel.{other}.1"]),
            ("courier:join", f"parcel.{me}"),
            ("courier:join", f"parcel.{me}.1.x"),
            ("courier:join", "parcel.*"),
            ("courier:publish", {"stream": f"orders.{other}", "event": "order", "data": {"owner": me}}),
            ("courier:publish", {"stream": "orders.nobody", "event": "order", "data": {"owner": me}}),
            ("courier:subscribe", {"stream": f"orders.{other}", "consumer": f"vendor-{me}"}),
            ("courier:subscribe", {"stream": f"orders.{other}", "consumer": f"vendor-{other}"}),
            ("courier:subscribe", {"stream": f"orders.{me}", "consumer": f"vendor-{other}"}),
        ]

    def only_own_rooms(joined):
        for (letter, _), sid in sids.items():
            rooms = {s["sid"]: s["rooms"] for s in api.sockets("/")}[sid]
            expected = [f"parcel.{letter}.1", sid] if joined else [sid]
            assert sorted(rooms) == sorted(expected), (letter, rooms)

    # 1. before anything exists: all refused, nothing created
    for me, other in (("a", "b"), ("b", "a")):
        for event, data in attempts(me, other):
            answer = call(me, 0, event, data)
            assert answer.get("ok") is False and answer["error"]["code"] == "forbidden", (me, event, data, answer)
    only_own_rooms(joined=False)
    r = api.get("/api/v1/streams")
    assert r.status_code == 200 and r.json()["streams"] == [], r.text

    # 2. each does what it may
    for letter in "ab":
        for i in range(2):
            ack = call(letter, i, "courier:join", f"parcel.{letter}.1")
            assert ack == {"ok": True, "rooms": sorted([f"parcel.{letter}.1", sids[(letter, i)]])}, ack
        ack = call(letter, 1, "courier:subscribe", {"stream": f"orders.{letter}", "consumer": f"vendor-{letter}"})
        assert ack.get("ok") is True, ack

    # 3. the same attempts now that the rooms, streams and consumers exist
    for me, other in (("a", "b"), ("b", "a")):
        for event, data in attempts(me, other):
            answer = call(me, 0, event, data)
            assert answer.get("ok") is False and answer["error"]["code"] == "forbidden", (me, event, data, answer)
    only_own_rooms(joined=True)
    for letter in "ab":
        assert api.stream(f"orders.{letter}")["entries"] == 0
        r = api.get(f"/api/v1/streams/orders.{letter}/consumers")
        assert [c["name"] for c in r.json()["consumers"]] == [f"vendor-{letter}"], r.text
    assert api.get("/api/v1/streams/orders.nobody").status_code == 404

    # 4. traffic: entries to its own stream, an event relayed in its room, API emits to its room
    for letter in "ab":
        for n in range(3):
            ack = call(letter, 0, "courier:publish",
                       {"stream": f"orders.{letter}", "event": "order", "data": {"owner": letter, "n": n}})
            assert ack == {"ok": True, "seq": n + 1, "duplicate": False}, ack
        ack = call(letter, 0, "chat", {"owner": letter, "text": "hello"})
        assert ack == {"ok": True, "recipients": 1}, ack
        assert api.emit(rooms=[f"parcel.{letter}.1"], event="notice", data=[{"owner": letter}]) == {"recipients": 2}

    # 5. what each received: its own, all of it, and nothing of the other's
    expected = {0: Counter({"notice": 1}), 1: Counter({"notice": 1, "chat": 1, "order": 3})}

    def own_arrived():
        for letter in "ab":
            for i in range(2):
                got = Counter(e for e, args in users[letter][i][1].snapshot() if owner_of(e, args) == letter)
                if got != expected[i]:
                    return False
        return True

    eventually(own_arrived, timeout=10, message="each vendor's own deliveries, relays and emits")
    time.sleep(0.3)  # anything misrouted would have come with them
    leaks = []
    for letter in "ab":
        for i in range(2):
            items = users[letter][i][1].snapshot()
            leaks += [(letter, i, e, args) for e, args in items if owner_of(e, args) != letter]
            own = Counter(e for e, args in items if owner_of(e, args) == letter)
            assert own == expected[i], (letter, i, items)
    assert leaks == [], f"{len(leaks)} deliveries reached the wrong vendor: {leaks}"
    orders = sorted(args[0]["n"] for e, args in users["a"][1][1].snapshot() if e == "order")
    assert orders == [0, 1, 2]
    for letter in "ab":
        assert api.stream(f"orders.{letter}")["entries"] == 3


# ---------------------------------------------------------------- HTTP API scopes

SCOPES_CONFIG = f"""
[auth]
jwt_secret = "{SECRET}"
[api]
token = "static-api-key"
"""


def test_api_scopes_route_by_route(start_courier):
    server = start_courier(SCOPES_CONFIG)
    api = Api(server.url)
    assert Api(server.url, token="static-api-key").publish("s1", "e", 1) == {"seq": 1, "duplicate": False}
    made = iter(range(1000))
    # (scope, method, path, body, status when allowed)
    routes = [
        ("emit", "POST", "/api/v1/emit", {"event": "ping", "rooms": ["nobody"]}, 200),
        ("emit", "POST", "/api/v1/disconnect", {"rooms": ["nobody"]}, 200),
        ("publish", "POST", "/api/v1/streams/s1/publish", {"event": "e", "data": 2}, 200),
        ("read", "GET", "/api/v1/sockets?namespace=/", None, 200),
        ("read", "GET", "/api/v1/streams", None, 200),
        ("read", "GET", "/api/v1/streams/s1", None, 200),
        ("read", "GET", "/api/v1/streams/s1/consumers", None, 200),
        ("read", "GET", "/api/v1/streams/s1/consumers/ghost", None, 404),
        ("manage", "PUT", "/api/v1/streams/made-{n}", {}, 200),
        ("manage", "POST", "/api/v1/streams/s1/purge", None, 200),
        ("manage", "DELETE", "/api/v1/streams/s1/consumers/ghost", None, 404),
    ]

    def send(method, path, body, headers):
        path = path.replace("{n}", str(next(made)))
        kw = {"headers": headers}
        if body is not None:
            kw["json"] = body
        # a connection of its own: see test_a_refused_api_call_leaves_the_connection_usable
        return fresh(method, server.url + path, **kw)

    def scoped(scopes, exp_in=300):
        return jwt.encode(claims(sub="backend", exp_in=exp_in, courier={"api": scopes}), SECRET, algorithm="HS256")

    holders = [(frozenset([s]), scoped([s])) for s in ("emit", "publish", "read", "manage")]
    holders += [
        (frozenset(["read", "manage"]), scoped(["read", "manage"])),
        (frozenset(), scoped([])),
        (frozenset(), jwt.encode(claims(sub="backend"), SECRET, algorithm="HS256")),  # default grants: none
        (frozenset(["emit", "publish", "read", "manage"]), "static-api-key"),
    ]
    wrong = []
    for scopes, token in holders:
        for scope, method, path, body, ok_status in routes:
            r = send(method, path, body, bearer(token))
            if scope in scopes:
                if r.status_code != ok_status:
                    wrong.append((sorted(scopes), method, path, r.status_code, r.text))
            elif r.status_code != 403 or r.json()["error"]["code"] != "forbidden":
                wrong.append((sorted(scopes), method, path, r.status_code, r.text))
    unauthenticated = [
        ({}, "missing_token"),
        ({"Authorization": "Basic c3RhdGljLWFwaS1rZXk="}, "missing_token"),
        (bearer("static-api-key-not"), "invalid_token"),
        (bearer(scoped(["emit", "publish", "read", "manage"], exp_in=-60)), "expired_token"),
        (bearer(jwt.encode(claims(sub="backend", courier={"api": ["read"]}), SECRET + "-but-another-one", algorithm="HS256")),
         "invalid_token"),
    ]
    for headers, code in unauthenticated:
        for scope, method, path, body, _ in routes:
            r = send(method, path, body, headers)
            if r.status_code != 401 or r.json()["error"]["code"] != code:
                wrong.append((headers, method, path, r.status_code, r.text))
    assert wrong == [], "\n".join(map(repr, wrong))
    # the health check stays open
    assert api.get("/health").status_code == 200


def read_response(sock, first=b""):
    """One HTTP/1.1 response from `sock` as (status, headers, body); None if the server closed
    the connection (or reset it) before sending one."""
    data = first
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            rest += chunk
    except (ConnectionResetError, BrokenPipeError):
        return None
    return status, headers, rest[:length]


def test_a_refused_api_call_leaves_the_connection_usable(start_courier):
    """A backend keeps its HTTP connections open (requests.Session, a connection pool), and
    clients such as urllib3 write a request's headers before its body. When the API refuses a
    call before reading the body, the connection must either be announced as closing
    (`Connection: close`) or stay usable for the next request, which is otherwise lost: with a
    requests.Session, a refused POST followed at once by another call fails now and then with
    `RemoteDisconnected`. Here the body follows the refusal by 0.3 s, so the outcome does not
    depend on that race."""
    server = start_courier(SCOPES_CONFIG)
    reader = jwt.encode(claims(sub="backend", courier={"api": ["read"]}), SECRET, algorithm="HS256")
    body = json.dumps({"event": "ping", "rooms": ["nobody"]}).encode()
    follow_up = (f"GET /api/v1/sockets HTTP/1.1\r\nHost: {server.host}\r\n"
                 "Authorization: Bearer static-api-key\r\n\r\n").encode()
    lost = []
    for label, auth, status in [("no token", "", 401),
                                ("a token without the emit scope", f"Authorization: Bearer {reader}\r\n", 403)]:
        head = (f"POST /api/v1/emit HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n"
                f"{auth}Content-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            s.sendall(head)
            # a server that reads the body before answering gets it after half a second
            s.settimeout(0.5)
            try:
                early = s.recv(65536)
            except socket.timeout:
                early = b""
            s.settimeout(5)
            sent_body = not early
            if sent_body:
                s.sendall(body)
            answer = read_response(s, early)
            assert answer is not None, f"{label}: no answer to the refused call"
            assert answer[0] == status, (label, answer)
            if answer[1].get("connection", "").lower() == "close":
                continue
            # the rest of the request comes a moment later, as it may over a real network
            time.sleep(0.3)
            try:
                s.sendall((b"" if sent_body else body) + follow_up)
            except (ConnectionResetError, BrokenPipeError):
                pass
            second = read_response(s)
            if second is None:
                lost.append(f"{label}: HTTP {status} answered before the body was read, without "
                            f"`Connection: close`, then the connection was closed: the next request "
                            f"on it got no answer (headers {answer[1]})")
            else:
                assert second[0] == 200, (label, second)
    assert lost == [], "\n".join(lost)


# ---------------------------------------------------------------- expiry while connected


def test_token_expiry_closes_the_connection_and_the_auth_callback_refreshes_it(start_courier, sio_client):
    server = start_courier(f'[auth]\njwt_secret = "{SECRET}"\nleeway_ms = 0\n'
                           '[auth.default]\nrooms = ["user.{sub}"]\n')
    api = Api(server.url, token=jwt.encode(claims(sub="ops", courier={"api": ["read"]}), SECRET, algorithm="HS256"))
    minted = []

    def auth():
        # the first token lives for 2 s at most, the next one for a long time
        exp = int(time.time()) + (2 if not minted else 600)
        minted.append(exp)
        return {"token": jwt.encode(claims(sub="rider-9", exp=exp), SECRET, algorithm="HS256")}

    c = sio_client(reconnection=True, reconnection_delay=0.2, reconnection_delay_max=0.5, randomization_factor=0)
    events = queue.Queue()
    c.on("connect", lambda: events.put(("connect", time.time(), c.get_sid("/"))))
    c.on("disconnect", lambda reason=None: events.put(("disconnect", time.time(), reason)))
    c.connect(server.url, auth=auth, transports=["websocket"], wait_timeout=5)
    kind, _, first_sid = events.get(timeout=5)
    assert kind == "connect"
    assert c.call("courier:join", "user.rider-9", timeout=5)["ok"] is True

    kind, at, reason = events.get(timeout=6)
    assert kind == "disconnect", (kind, reason)
    assert at >= minted[0] - 0.3, f"closed {minted[0] - at:.2f} s before the token's exp"
    assert at <= minted[0] + 2.5, f"closed {at - minted[0]:.2f} s after the token's exp"
    kind, _, second_sid = events.get(timeout=5)
    assert kind == "connect", "python-socketio reconnects by itself after the hub closed the connection"
    assert len(minted) == 2, "the auth callback gave a fresh token for the reconnection"
    assert second_sid != first_sid
    eventually(lambda: [(s["sid"], s["sub"]) for s in api.sockets("/")] == [(second_sid, "rider-9")],
               message="only the new socket left, with its subject")
    assert c.call("courier:join", "user.rider-9", timeout=5)["ok"] is True
    c.reconnection = False


# ---------------------------------------------------------------- caps


def test_sockets_per_subject_are_capped(start_courier, sio_client):
    server = start_courier(f'[auth]\njwt_secret = "{SECRET}"\n[limits]\nconnections_per_sub = 2\n')
    token = jwt.encode(claims(sub="driver-1"), SECRET, algorithm="HS256")
    first = connect(sio_client(), server, auth={"token": token})
    connect(sio_client(), server, auth={"token": token}, transports=["polling"])
    err = refusal(sio_client(), server, auth={"token": token})
    assert err["message"] == "too many connections" and err["data"]["code"] == "too_many_connections", err
    # another subject is not affected
    other = connect(sio_client(), server, auth={"token": jwt.encode(claims(sub="driver-2"), SECRET, algorithm="HS256")})
    assert other.connected
    first.disconnect()

    def a_third_connects():
        c = sio_client()
        try:
            connect(c, server, auth={"token": token})
        except socketio.exceptions.ConnectionError:
            return False
        return c

    eventually(a_third_connects, timeout=5, interval=0.1, message="a new socket for driver-1 after one left")
    err = refusal(sio_client(), server, auth={"token": token})
    assert err["data"]["code"] == "too_many_connections", "the cap holds again with two open"


def handshake(session, server):
    return session.get(server.url + "/socket.io/?EIO=4&transport=polling", timeout=10)


def test_engineio_sessions_per_address_are_capped_from_loopback(start_courier, sio_client):
    server = start_courier("[limits]\nexempt_loopback = false\nconnections_per_ip = 3\n")
    http = requests.Session()
    opened = []
    for _ in range(3):
        r = handshake(http, server)
        assert r.status_code == 200, r.text
        opened.append(json.loads(r.text[r.text.index("{"):])["sid"])
    r = handshake(http, server)
    assert r.status_code == 429, f"a 4th session from one address: HTTP {r.status_code} {r.text}"
    with pytest.raises(socketio.exceptions.ConnectionError):
        connect(sio_client(), server, transports=["polling"])
    # one session closes (an Engine.IO CLOSE packet): a new one may open
    r = http.post(f"{server.url}/socket.io/?EIO=4&transport=polling&sid={opened[0]}", data="1", timeout=10)
    assert r.status_code == 200, r.text
    eventually(lambda: handshake(http, server).status_code == 200, timeout=5, interval=0.1,
               message="a handshake accepted once a session closed")
    assert handshake(http, server).status_code == 429


def test_handshakes_per_address_per_second_are_limited_from_loopback(start_courier):
    server = start_courier("[limits]\nexempt_loopback = false\nconnections_per_ip = 1000\n"
                           "handshakes_per_ip_per_second = 5\n")
    http = requests.Session()
    started = time.monotonic()
    statuses = [handshake(http, server).status_code for _ in range(20)]
    took = time.monotonic() - started
    counts = Counter(statuses)
    assert set(counts) <= {200, 429}, counts
    assert counts[429] >= 1, f"20 handshakes in {took:.2f} s, none refused: {statuses}"
    assert counts[200] >= 5, f"the first five fit the burst: {statuses}"
    assert counts[200] <= 5 + 5 * took + 1, f"{counts[200]} accepted in {took:.2f} s: {statuses}"
    time.sleep(1.05)
    assert [handshake(http, server).status_code for _ in range(3)] == [200, 200, 200]
    # the loopback exemption, when on, spares the same burst
    spared = start_courier("[limits]\nhandshakes_per_ip_per_second = 5\n")
    assert {handshake(http, spared).status_code for _ in range(20)} == {200}


# ---------------------------------------------------------------- protected mode


def run(*argv, check=True):
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=20)


def free_subnet():
    """A 10.213.X.0/30 that no interface or route of this machine uses."""
    used = run("ip", "-4", "-o", "addr").stdout + run("ip", "-4", "route").stdout
    start = os.getpid() % 250
    for i in range(250):
        x = (start + i) % 250 + 1
        if f"10.213.{x}." not in used:
            return x
    pytest.skip("no free 10.213.X.0/30 subnet")


class NetNs:
    def __init__(self, name, host_addr, addr):
        self.name = name
        self.host_addr = host_addr  # the root namespace's end: what the hub sees as the client
        self.addr = addr  # the hub's address inside the namespace


@pytest.fixture(scope="module")
def netns():
    pid = os.getpid()
    name = f"courier-pm-{pid}"
    host_if, ns_if = f"cpm{pid}h", f"cpm{pid}n"
    r = run("ip", "netns", "add", name, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace (needs root): {r.stderr.strip()}")
    try:
        x = free_subnet()
        host_addr, addr = f"10.213.{x}.1", f"10.213.{x}.2"
        run("ip", "link", "del", host_if, check=False)  # left by an earlier run with this pid
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        run("ip", "link", "set", ns_if, "netns", name)
        run("ip", "addr", "add", f"{host_addr}/30", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "netns", "exec", name, "ip", "addr", "add", f"{addr}/30", "dev", ns_if)
        run("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield NetNs(name, host_addr, addr)
    finally:
        run("ip", "link", "del", host_if, check=False)
        run("ip", "netns", "del", name, check=False)


@pytest.fixture
def start_in_netns(registry, netns, tmp_path):
    """start(config) -> `courier serve` running inside the namespace, on its address."""
    require_binary(COURIER_BIN, "courier binary")
    counter = iter(range(1, 100))

    def start(config):
        n = next(counter)
        cfg = tmp_path / f"netns-{n}.toml"
        cfg.write_text("[recovery]\nenabled = false\n" + config)
        data = tmp_path / f"netns-data-{n}"
        data.mkdir()
        argv = ["ip", "netns", "exec", netns.name, COURIER_BIN, "serve", "--config", cfg,
                "--data-dir", data, "--listen", f"{netns.addr}:0"]
        server = ServerProcess("courier serve (netns)", argv)
        registry.processes.append(server)
        server.wait_listening()
        assert server.host == netns.addr, server.output()
        return server

    return start


def started(server):
    """The output once the hub says it is ready (the protected-mode notice comes before)."""
    eventually(lambda: "hub ready" in server.output(), timeout=10, message="the 'hub ready' log line")
    return server.output()


PROTECTED_CASES = {
    "nothing configured": ("", "clients and API calls"),
    "allow_anonymous": ("[auth]\nallow_anonymous = true\n", None),
    "static tokens": ('[hub]\nauth_tokens = ["t"]\n[api]\ntoken = "k"\n', None),
    "client tokens only": ('[hub]\nauth_tokens = ["t"]\n', "API calls"),
    "jwt": (f'[auth]\njwt_secret = "{SECRET}"\n', None),
}


@pytest.mark.parametrize("case", list(PROTECTED_CASES))
def test_protected_mode_from_another_address(start_in_netns, netns, sio_client, case):
    config, protected = PROTECTED_CASES[case]
    server = start_in_netns(config)
    assert server.url.startswith(f"http://{netns.addr}:")
    output = started(server)
    if protected:
        assert "PROTECTED MODE" in output and f"only {protected} from this machine" in output, output
    else:
        assert "PROTECTED MODE" not in output, output

    client_token = {"static tokens": "t", "client tokens only": "t",
                    "jwt": jwt.encode(claims(sub="far-1", courier={"rooms": ["far"]}), SECRET,
                                      algorithm="HS256")}.get(case)
    api_token = {"static tokens": "k",
                 "jwt": jwt.encode(claims(sub="far-ops", courier={"api": ["emit", "read"]}), SECRET,
                                   algorithm="HS256")}.get(case)
    api = Api(server.url, token=api_token)
    emit = {"namespace": "/", "rooms": ["far"], "event": "notice", "data": [{"n": 1}]}

    if case == "nothing configured":
        assert_unauthorized(refusal(sio_client(), server), "protected_mode")
        assert_unauthorized(refusal(sio_client(), server, transports=["polling"]), "protected_mode")
        api_error(fresh("POST", server.url + "/api/v1/emit", json=emit), 403, "protected_mode")
        api_error(fresh("GET", server.url + "/api/v1/sockets"), 403, "protected_mode")
        return

    # a client from 10.213.x.1 connects with what the config asks for, and the API reaches it
    auth = {"token": client_token} if client_token else None
    c = sio_client()
    got = queue.Queue()
    c.on("notice", lambda *args: got.put(args))
    connect(c, server, auth=auth)
    assert c.call("courier:join", "far", timeout=5)["ok"] is True
    if client_token:
        assert_unauthorized(refusal(sio_client(), server), "missing_token")
        assert_unauthorized(refusal(sio_client(), server, auth={"token": "wrong"}), "invalid_token")

    if case == "client tokens only":
        api_error(fresh("POST", server.url + "/api/v1/emit", json=emit), 403, "protected_mode")
        return
    r = api.post("/api/v1/emit", emit)
    assert r.status_code == 200 and r.json() == {"recipients": 1}, r.text
    assert got.get(timeout=5) == ({"n": 1},)
    socks = api.sockets("/")
    assert [s["sid"] for s in socks] == [c.get_sid("/")]
    if api_token:
        api_error(fresh("POST", server.url + "/api/v1/emit", json=emit), 401, "missing_token")
        api_error(fresh("POST", server.url + "/api/v1/emit", json=emit, headers=bearer("wrong")), 401,
                  "invalid_token")
