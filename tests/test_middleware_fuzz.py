"""No request makes the session middleware fail: property-based tests over real HTTP.

Hypothesis throws Cookie headers, `sid` values and Authorization headers at a running
app (a real aiohttp server, a real Redis) in two configurations, unsigned and signed
cookies, and checks every answer against a model written here, independently of
the middleware:

* the status is 200, never a 5xx;
* the user is the owner of the credential the request carried when that credential
  is a live token (correctly signed with a configured secret, in the signed app), and
  nobody otherwise;
* a session cookie that was presented and not accepted is cleared (`Max-Age=0`);
  a valid cookie signed with an older secret is signed again; otherwise no cookie
  (a bearer token is never answered with a cookie).

The credential is the `Authorization: Bearer` value when there is a non-empty one,
else the `sid` cookie. A header that carries `sid` more than once (as aiohttp's
parser reads it) names nobody: one copy may have been planted, so the request is
anonymous and nothing is cleared. So is a header of more than MAX_COOKIE_PAIRS pairs;
the model counts the characters that can end a pair, and predicts exactly below that.

Forged and malformed tokens must also cost nothing: `INFO commandstats` on the
server shows that they send no command at all to Redis (invariant 6 of the design).

Last, on aiohttp and on ASGI (Starlette on uvicorn) alike, the shared app of
`tests/web_apps.py` with CSRF checks on takes any Cookie header, CSRF header, body,
content type and method, through the client and as raw bytes, without a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import string
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import pytest
from aiohttp import DummyCookieJar, hdrs, web
from aiohttp._cookie_helpers import parse_cookie_header  # no public API reads every copy
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from redis.asyncio import Redis

from aiohttp_ext import get_session, setup_sessions
from cached_sessions import RedisSessions
from cached_sessions.web.cookie_header import MAX_COOKIE_PAIRS
from tests.servers import ServerProcess
from tests.web_apps import ALL_METHODS, MakeClient
from tests.web_apps import Client as AppClient

pytest_plugins = ("tests.web_apps",)  # the shared fixtures: framework, make_client

APP = "fuzz"
Client = TestClient[web.Request, web.Application]

# Keys of at least 32 bytes; OTHER is configured nowhere (an attacker's key).
SECRET_NEW = b"n3w-secret-for-the-fuzz-tests-0123456789"
SECRET_OLD = "an older secret, still accepted, 0123456789"
SECRET_OTHER = b"a key this app never heard of - 0123456789"

ALNUM = string.ascii_letters + string.digits
# Characters aiohttp's Cookie parser keeps inside an unquoted value (no `;`, `"`, `\`,
# `,` nor whitespace), so a header built from them has exactly one reading.
VALUE_CHARS = ALNUM + "!#%&'~_><@:/$*+-.^|)(?}{=[]"
NAME_CHARS = ALNUM + "!#$%&'*+-.^_`|~"

FUZZ_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,  # nothing written to the working tree
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


# The app


async def whoami(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.json_response(
        {
            "user": session.user_id,
            "unavailable": session.unavailable,
            # What aiohttp handed the app, for the inputs whose reading is ambiguous:
            # the last `sid`, every `sid` (aiohttp's own parser), and the header.
            "seen_sid": request.cookies.get("sid"),
            "seen_sids": [
                morsel.value
                for name, morsel in parse_cookie_header(request.headers.get(hdrs.COOKIE, ""))
                if name == "sid"
            ],
            "cookie_header": request.headers.get(hdrs.COOKIE),
        }
    )


async def login(request: web.Request) -> web.Response:
    session = await get_session(request)
    await session.upgrade(request.query["user"])
    return web.json_response({"token": session.token})


async def logout(request: web.Request) -> web.Response:
    session = await get_session(request)
    await session.destroy()
    return web.json_response({"ok": True})


def build_app(store: RedisSessions, secrets: list[str | bytes] | None) -> web.Application:
    app = web.Application()
    setup_sessions(app, store, app_name=APP, secure=False, secrets=secrets)
    app.router.add_get("/whoami", whoami)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    return app


# The model


def mac(key: str | bytes, token: str) -> str:
    """The signature format of signing.py, computed here on its own."""
    raw = key.encode() if isinstance(key, str) else key
    digest = hmac.new(raw, token.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass
class Env:
    client: Client
    store: RedisSessions
    signed: bool
    users: dict[str, str] = field(default_factory=dict)  # live token -> user
    killed: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return str(self.client.host)

    @property
    def port(self) -> int:
        return int(self.client.port)

    def cookie_for(self, token: str, key: str | bytes = SECRET_NEW) -> str:
        """What the app puts in the cookie (and expects back) for a token."""
        return f"{token}.{mac(key, token)}" if self.signed else token

    def sign(self, payload: str, key: str | bytes = SECRET_NEW) -> str:
        return f"{payload}.{mac(key, payload)}" if self.signed else payload

    def owner(self, value: str | None) -> tuple[str | None, bool]:
        """(user, signed with the current key) for a credential the app receives.

        The payload is the token, optionally followed by `~<issue time in hex>`
        (cookies.py); when signed, the signature covers the whole payload.
        """
        if value is None:
            return None, True
        payload, current = value, True
        if self.signed:
            payload, dot, signature = value.partition(".")
            if not dot or not payload.isascii():
                return None, True
            if hmac.compare_digest(signature.encode(), mac(SECRET_NEW, payload).encode()):
                current = True
            elif hmac.compare_digest(signature.encode(), mac(SECRET_OLD, payload).encode()):
                current = False
            else:
                return None, True
        token, tilde, issued = payload.partition("~")
        if tilde and re.fullmatch(r"[0-9a-f]{1,12}", issued) is None:
            return None, True
        user = self.users.get(token)
        return user, current if user is not None else True


def credential(auth: str | None, sids: list[str]) -> tuple[str, str | None]:
    """Which credential the request carries: ("bearer", value), ("cookie", sid), or
    ("repeated", None) when the Cookie header carries `sid` more than once."""
    if auth is not None:
        value = auth.strip(" \t")  # HTTP drops the whitespace around a field value
        scheme, _, rest = value.partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            return "bearer", rest.strip()
    if len(sids) > 1:
        return "repeated", None
    return "cookie", sids[0] if sids else None


BLANK_ENDS = re.compile(r"(?<=[^; \t\n\r\x0b\x0c])[ \t\n\r\x0b\x0c]+(?=[^; \t\n\r\x0b\x0c])")


def within_pair_bound(header: str | None) -> bool:
    """Whether the header surely holds no more than MAX_COOKIE_PAIRS pairs. Every pair
    but the last ends at a `;`, or at blanks between two other characters."""
    text = header or ""
    return text.count(";") + len(BLANK_ENDS.findall(text)) + 1 <= MAX_COOKIE_PAIRS


def set_cookies(headers: Any) -> list[SimpleCookie]:
    found = []
    for header in headers.getall("Set-Cookie", []):
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        found.append(parsed)
    return found


def check_answer(
    env: Env,
    status: int,
    body: dict[str, Any],
    cookies: list[SimpleCookie],
    *,
    auth: str | None,
    sids: list[str],
) -> None:
    """The answer to GET /whoami against the model, for the credential `sids`/`auth`."""
    assert status == 200, (status, body)
    source, value = credential(auth, sids)
    maybe_past_the_bound = source != "bearer" and not within_pair_bound(body["cookie_header"])
    if maybe_past_the_bound and body["user"] is None and cookies == []:
        return  # given up: anonymous and nothing cleared (else read as below)
    user, current = env.owner(value)
    outcome = "none" if value is None else "refused" if user is None else "accepted"
    if currently_in_test_context():
        event(f"{source}: {outcome}{'' if current else ' (older key)'}")
    assert body["user"] == user, (source, value, body)
    assert body["unavailable"] is False
    if source == "repeated":
        assert cookies == [], (sids, cookies)  # neither copy is cleared
    elif source == "cookie" and user is not None and not current:
        # Accepted under the older secret: signed again with the first.
        assert len(cookies) == 1 and cookies[0]["sid"].value == env.cookie_for(value[:64]), (
            value,
            cookies,
        )
        assert cookies[0]["sid"]["max-age"] == ""
    elif source == "cookie" and value and user is None:
        # Presented and refused: cleared.
        assert len(cookies) == 1, (value, cookies)
        morsel = cookies[0]["sid"]
        assert (morsel.value, morsel["max-age"]) == ("", "0"), (value, morsel)
    elif source == "cookie" and value == "":
        # An empty `sid=` carries nothing: clearing it is allowed, not required.
        assert all((c["sid"].value, c["sid"]["max-age"]) == ("", "0") for c in cookies)
        assert len(cookies) <= 1
    else:
        assert cookies == [], (source, value, cookies)


# Fixtures


@pytest.fixture(params=[("unsigned", 0.0), ("signed", 30.0)], ids=["unsigned", "signed"])
async def env(
    request: pytest.FixtureRequest, server: ServerProcess, namespace: str, aiohttp_client: Any
) -> AsyncIterator[Env]:
    kind, cachetime = request.param
    yield await make_env(server, namespace, aiohttp_client, kind == "signed", cachetime)


@pytest.fixture
async def signed_env(
    server: ServerProcess, namespace: str, aiohttp_client: Any
) -> AsyncIterator[Env]:
    # No cache: nothing runs in the background, so every command counted is a request's.
    yield await make_env(server, namespace, aiohttp_client, True, 0.0)


@pytest.fixture
async def unsigned_env(
    server: ServerProcess, namespace: str, aiohttp_client: Any
) -> AsyncIterator[Env]:
    yield await make_env(server, namespace, aiohttp_client, False, 0.0)


async def make_env(
    server: ServerProcess, namespace: str, aiohttp_client: Any, signed: bool, cachetime: float
) -> Env:
    store = RedisSessions(url=server.url, namespace=namespace, wipe=0, cachetime=cachetime)
    secrets: list[str | bytes] | None = [SECRET_NEW, SECRET_OLD] if signed else None
    client: Client = await aiohttp_client(build_app(store, secrets), cookie_jar=DummyCookieJar())
    env = Env(client=client, store=store, signed=signed)
    for user in ("alice", "bob", "carol:with:colons"):
        response = await client.post("/login", params={"user": user})
        assert response.status == 200
        token = (await response.json())["token"]
        assert set_cookies(response.headers)[0]["sid"].value == env.cookie_for(token)
        env.users[token] = user
    # A token that existed and was logged out.
    response = await client.post("/login", params={"user": "gone"})
    token = (await response.json())["token"]
    gone = await client.post("/logout", headers={"Cookie": f"sid={env.cookie_for(token)}"})
    assert gone.status == 200
    env.killed.append(token)
    return env


# Strategies


def value_text(min_size: int = 0, max_size: int = 80) -> st.SearchStrategy[str]:
    return st.text(alphabet=VALUE_CHARS, min_size=min_size, max_size=max_size)


def long_values() -> st.SearchStrategy[str]:
    """Long values, yet within aiohttp's 8190 bytes per header (cheap to generate)."""
    return st.builds(
        lambda part, times: (part * times)[:6000], value_text(1, 20), st.integers(100, 3000)
    )


@st.composite
def mangled(draw: st.DrawFn, good: str) -> str:
    """A near miss of a good credential: one character changed, cut, or added."""
    index = draw(st.integers(0, len(good) - 1))
    how = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "swapcase"]))
    if how == "replace":
        other = draw(st.sampled_from(VALUE_CHARS).filter(lambda c: c != good[index]))
        return good[:index] + other + good[index + 1 :]
    if how == "delete":
        return good[:index] + good[index + 1 :]
    if how == "insert":
        return good[:index] + draw(st.sampled_from(VALUE_CHARS)) + good[index:]
    if how == "truncate":
        return good[:index]
    swapped = good[index].swapcase()
    if swapped == good[index]:
        return good[:index]
    return good[:index] + swapped + good[index + 1 :]


def sid_values(env: Env) -> st.SearchStrategy[str]:
    """Credentials a client or an attacker sends: live ones, near misses and garbage.

    Every one is made of cookie-safe characters, so it can travel as a cookie value or
    after `Bearer `.
    """
    live = sorted(env.users)
    real = st.sampled_from(live)
    unknown = st.text(alphabet=ALNUM, min_size=64, max_size=64)
    forged: list[st.SearchStrategy[str]] = [
        st.just(""),
        value_text(),
        long_values(),
        unknown,  # well-formed, never issued (and unsigned)
        real.map(lambda t: t + "." + "x"),
        st.tuples(real, value_text(max_size=60)).map(lambda p: f"{p[0]}.{p[1]}"),
        real.map(lambda t: env.cookie_for(t) + "." + "junk"),
        real.map(lambda t: env.cookie_for(t) + "="),
        real.flatmap(lambda t: mangled(env.cookie_for(t))),
        st.sampled_from(env.killed).map(env.cookie_for),
        unknown.map(env.cookie_for),  # correctly signed (when signed), but no such session
    ]
    if env.signed:
        forged += [
            real,  # the bare token, no signature
            real.map(lambda t: f"{t}.{mac(SECRET_OTHER, t)}"),  # signed by another key
            real.map(lambda t: f"{t}.{mac(SECRET_NEW, t)[:-1]}"),  # signature cut short
            real.map(lambda t: f"{t}.{mac(SECRET_NEW, t).upper()}"),
            st.tuples(real, real).map(lambda p: f"{p[0]}.{mac(SECRET_NEW, p[1])}"),
            real.map(lambda t: f"{t}.{mac(SECRET_NEW, t)}".swapcase()),
        ]
    issued = st.integers(0, 2**40).map(lambda n: f"{n:x}")
    forged += [
        st.builds(lambda t, s: f"{t}~{s}", real, value_text(max_size=12)).map(
            lambda p: f"{p}.{mac(SECRET_OTHER, p)}" if env.signed else p
        ),
        st.builds(lambda t, n: f"{t}~{n}", real, issued).map(
            lambda p: p if env.signed else p + "~1"  # unsigned payload when signed; 2 tildes
        ),
    ]
    # The renew format: the token and the time the cookie was set, in hex.
    good = [real.map(env.cookie_for), st.builds(lambda t, n: env.sign(f"{t}~{n}"), real, issued)]
    if env.signed:
        good.append(real.map(lambda t: env.cookie_for(t, SECRET_OLD)))
        good.append(st.builds(lambda t, n: env.sign(f"{t}~{n}", SECRET_OLD), real, issued))
    # About one in three is a live credential (the oracle decides, not the label).
    tries = st.one_of(*forged)
    return st.one_of(st.one_of(*good), tries, tries)


def cookie_names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(
            ["sid", "SID", "Sid", "sid_", "xsid", "sid2", "session", "path", "Max-Age"]
        ),
        st.text(alphabet=NAME_CHARS, min_size=1, max_size=12),
    )


@st.composite
def cookie_pairs(draw: st.DrawFn, env: Env) -> list[tuple[str, str | None]]:
    """0 to 40 cookies, `sid` among them mostly once, sometimes more; None: a bare name."""
    value = st.one_of(sid_values(env), value_text(), st.none())
    pairs = draw(st.lists(st.tuples(cookie_names(), value), max_size=40))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        pairs.insert(draw(st.integers(0, len(pairs))), ("sid", draw(value)))
    kept, size = [], 0
    for name, value in pairs:  # the whole header stays within aiohttp's 8190 bytes
        size += len(name) + len(value or "") + 5
        if size > 8000:
            break
        kept.append((name, value))
    return kept


def render(pairs: list[tuple[str, str | None]], separators: list[str]) -> str:
    parts = [name if value is None else f"{name}={value}" for name, value in pairs]
    out = ""
    for index, part in enumerate(parts):
        out += part if index == 0 else separators[index % len(separators)] + part
    return out


def all_sids(pairs: list[tuple[str, str | None]]) -> list[str]:
    return ["" if value is None else value for name, value in pairs if name == "sid"]


def authorizations(env: Env) -> st.SearchStrategy[str | None]:
    scheme = st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"])
    space = st.sampled_from(["", " ", "  ", "\t"])
    printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E))
    return st.one_of(
        st.none(),
        st.just(""),
        st.sampled_from(["Bearer", "Bearer ", "Bearer    ", "Bearer\t", "Bearer\tx", "Bearerx"]),
        st.builds(lambda a, s, v, b: f"{a}{s} {v}{b}", space, scheme, sid_values(env), space),
        st.builds(
            lambda s, v: f"{s} {v}",
            st.sampled_from(["Basic", "Token", "Digest", "Negotiate", "Bearer:", "Bearers"]),
            sid_values(env),
        ),
        printable,
    )


separators = st.lists(st.sampled_from([";", "; ", " ;", ";  ", " ; ", ";\t"]), min_size=1)


def header_text() -> st.SearchStrategy[str]:
    """Any text aiohttp's client will send as a header value: no C0 controls but tab."""
    chars = st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters=[chr(c) for c in range(0x20) if c != 0x09] + ["\x7f"],
    )
    specials = st.sampled_from([*';=",\\ \t', "sid=", "; sid=", '"', "\\012", '\\"'])
    return st.lists(st.one_of(chars, specials), max_size=200).map("".join)


async def get_whoami(env: Env, headers: dict[str, str]) -> tuple[int, Any, list[SimpleCookie]]:
    response = await env.client.get("/whoami", headers=headers)
    text = await response.text()
    assert response.status < 500, (headers, response.status, text)
    body = json.loads(text) if response.status == 200 else text
    return response.status, body, set_cookies(response.headers)


# 1. Structured requests: every part of the answer is predicted


@FUZZ_SETTINGS
@given(data=st.data())
async def test_cookie_and_bearer_combinations_match_the_model(
    env: Env, data: st.DataObject
) -> None:
    pairs = data.draw(cookie_pairs(env), label="cookies")
    auth = data.draw(authorizations(env), label="authorization")
    headers: dict[str, str] = {}
    if pairs:
        headers["Cookie"] = render(pairs, data.draw(separators, label="separators"))
    if auth is not None:
        headers["Authorization"] = auth
    status, body, cookies = await get_whoami(env, headers)
    sids = all_sids(pairs)
    assert body["seen_sid"] == (sids[-1] if sids else None), (headers, body)
    assert body["seen_sids"] == sids, (headers, body)  # the model reads it as aiohttp
    check_answer(env, status, body, cookies, auth=auth, sids=sids)


@FUZZ_SETTINGS
@given(data=st.data())
async def test_every_valid_credential_finds_its_user(env: Env, data: st.DataObject) -> None:
    """The other side of the coin: live tokens in any company still log the user in."""
    token = data.draw(st.sampled_from(sorted(env.users)), label="token")
    key = data.draw(st.sampled_from([SECRET_NEW, SECRET_OLD]), label="key")
    good = env.cookie_for(token, key)
    noise = data.draw(st.lists(st.tuples(cookie_names(), value_text()), max_size=10))
    noise = [(name, value) for name, value in noise if name != "sid"]
    where = data.draw(st.integers(0, len(noise)))
    pairs: list[tuple[str, str | None]] = [*noise[:where], ("sid", good), *noise[where:]]
    as_bearer = data.draw(st.booleans(), label="as bearer")
    headers = {"Cookie": render(pairs, ["; "])}
    if as_bearer:
        headers = {"Authorization": f"Bearer {good}", "Cookie": f"sid={data.draw(value_text())}"}
    status, body, cookies = await get_whoami(env, headers)
    assert body["user"] == env.users[token]
    check_answer(
        env, status, body, cookies, auth=headers.get("Authorization"), sids=body["seen_sids"]
    )


# 2. Arbitrary header text: the app's reading of it is taken as given


@FUZZ_SETTINGS
@given(data=st.data())
async def test_arbitrary_cookie_and_authorization_text(env: Env, data: st.DataObject) -> None:
    cookie = data.draw(header_text(), label="cookie")
    if data.draw(st.booleans(), label="embed a live cookie"):
        good = env.cookie_for(data.draw(st.sampled_from(sorted(env.users))))
        cut = data.draw(st.integers(0, len(cookie)))
        cookie = f"{cookie[:cut]}; sid={good}; {cookie[cut:]}"
    headers = {"Cookie": cookie}
    auth = data.draw(st.one_of(st.none(), header_text(), authorizations(env)), label="auth")
    if auth is not None:
        headers["Authorization"] = auth
    status, body, cookies = await get_whoami(env, headers)
    check_answer(env, status, body, cookies, auth=auth, sids=body["seen_sids"])


@pytest.mark.parametrize("count", [1, MAX_COOKIE_PAIRS - 1])
async def test_many_cookies_and_many_sids(env: Env, count: int) -> None:
    live = env.cookie_for(next(iter(env.users)))
    pairs = [(f"c{i}", "v" * 10) for i in range(count)]
    for last in (live, "A" * 64, ""):
        for sids in (
            [("sid", last)],
            [("sid", "x"), ("sid", env.cookie_for("B" * 64)), ("sid", last)],
        ):
            header = render([*pairs[: count - len(sids) + 1], *sids], ["; "])
            assert len(header) < 8190
            status, body, cookies = await get_whoami(env, {"Cookie": header})
            assert body["seen_sid"] == last
            check_answer(env, status, body, cookies, auth=None, sids=[v or "" for _, v in sids])


@pytest.mark.parametrize("shape", ["plain", "quoted"])
async def test_past_the_pair_bound_a_live_cookie_is_ignored_and_kept(env: Env, shape: str) -> None:
    """More pairs than any browser sends: anonymous, and the cookie is not cleared."""
    live = env.cookie_for(next(iter(env.users)))
    first = 'q="quoted"' if shape == "quoted" else "q=plain"
    pairs = [first, *(f"c{i}=v" for i in range(MAX_COOKIE_PAIRS - 1)), f"sid={live}"]
    status, body, cookies = await get_whoami(env, {"Cookie": "; ".join(pairs)})
    assert (status, body["user"], cookies) == (200, None, [])
    fewer = "; ".join([*pairs[:-2], pairs[-1]])  # exactly MAX_COOKIE_PAIRS
    status, body, cookies = await get_whoami(env, {"Cookie": fewer})
    assert (status, body["user"]) == (200, env.users[live[:64]])


# 3. Raw bytes over a socket: what a real attacker can send


async def raw_request(
    env: Env, path: str, header_lines: list[bytes]
) -> tuple[list[int], bytes, bytes]:
    """Every status the server answered on the connection, then the first head and body."""
    reader, writer = await asyncio.open_connection(env.host, env.port)
    try:
        request = b"".join(
            [
                f"GET {path} HTTP/1.1\r\nHost: {env.host}\r\n".encode(),
                *(line + b"\r\n" for line in header_lines),
                b"Connection: close\r\n\r\n",
            ]
        )
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]
    assert statuses, data[:200]
    head, _, body = data.partition(b"\r\n\r\n")
    return statuses, head, body


def field_bytes() -> st.SearchStrategy[bytes]:
    """Header value bytes: mostly legal (VCHAR, SP, HTAB, obs-text), sometimes not at all."""
    legal = st.one_of(
        st.lists(st.sampled_from([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)]), max_size=60).map(
            bytes
        ),
        st.sampled_from([b";", b"=", b'"', b"sid=", b"; sid=", b"\\", b"\xc3\xa9", b"\xff", b" "]),
    )
    illegal = st.one_of(
        st.lists(
            st.sampled_from([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]),
            min_size=1,
            max_size=2,
        ).map(bytes),
        st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\nX-Injected: 1", b"\r\n\r\n"]),
    )
    return st.one_of(
        st.lists(legal, max_size=8).map(b"".join),
        st.lists(legal, max_size=8).map(b"".join),
        st.lists(legal, max_size=8).map(b"".join),
        st.lists(st.one_of(legal, illegal), max_size=8).map(b"".join),
    )


LEGAL_FIELD = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


@FUZZ_SETTINGS
@given(data=st.data())
async def test_raw_socket_header_bytes(env: Env, data: st.DataObject) -> None:
    cookie = data.draw(field_bytes(), label="cookie")
    if data.draw(st.booleans(), label="embed a live cookie"):
        good = env.cookie_for(data.draw(st.sampled_from(sorted(env.users)))).encode()
        cookie += b"; sid=" + good
    lines = [b"Cookie: " + cookie]
    auth: bytes | None = None
    if data.draw(st.booleans(), label="with authorization"):
        auth = data.draw(
            st.one_of(
                field_bytes(),
                st.builds(lambda v: b"Bearer " + v.encode(), sid_values(env)),
                st.builds(lambda v: b"Bearer " + v, field_bytes()),
            ),
            label="authorization",
        )
        lines.append(b"Authorization: " + auth)
    if data.draw(st.booleans(), label="a second Cookie line"):
        lines.append(b"Cookie: sid=" + data.draw(field_bytes()))
    statuses, head, body = await raw_request(env, "/whoami", lines)
    assert max(statuses) < 500, (lines, statuses, head, body)
    if any(b"\r" in line or b"\n" in line for line in lines):
        event("raw: line break inside a header")
        return  # a line break splits the request in ways not worth predicting; no 5xx is
    status = statuses[0]
    if not all(LEGAL_FIELD.fullmatch(line) for line in lines):
        event("raw: refused by the HTTP parser")
        assert status == 400, (lines, head)  # refused by the HTTP parser, before the app
        return
    assert status == 200, (lines, head, body)
    answer = json.loads(body)
    # The header value as the app received it: trimmed, decoded as aiohttp decodes.
    text_auth = auth.strip(b" \t").decode("utf-8", "surrogateescape") if auth else None
    morsels: list[SimpleCookie] = []
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"set-cookie:"):
            parsed: SimpleCookie = SimpleCookie()
            parsed.load(line.split(b":", 1)[1].decode("latin-1").strip())
            morsels.append(parsed)
    check_answer(env, status, answer, morsels, auth=text_auth, sids=answer["seen_sids"])


@pytest.mark.parametrize("size", [8000, 9000, 70000])
async def test_raw_oversized_headers_are_refused_without_a_5xx(env: Env, size: int) -> None:
    good = env.cookie_for(next(iter(env.users)))
    statuses, head, body = await raw_request(
        env, "/whoami", [b"Cookie: sid=" + good.encode() + b"; pad=" + b"p" * size]
    )
    assert statuses == [200 if size < 8190 else 400], head
    if size < 8190:
        assert json.loads(body)["user"] == env.users[good[:64]]


# 4. Forged and malformed credentials cost no Redis call


async def command_calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name: int(entry["calls"]) for name, entry in stats.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    changed = {
        name: after[name] - before.get(name, 0)
        for name in after
        if after[name] != before.get(name, 0) and name != "cmdstat_info"
    }
    return changed


def forged_signatures(env: Env) -> st.SearchStrategy[str]:
    """Values whose signature is wrong: signing.py must refuse them before any I/O."""
    real = st.sampled_from(sorted(env.users))
    unknown = st.text(alphabet=ALNUM, min_size=64, max_size=64)
    token = st.one_of(real, unknown)
    return st.one_of(
        token,
        st.builds(lambda t, s: f"{t}.{s}", token, value_text(max_size=60)),
        st.builds(lambda t: f"{t}.{mac(SECRET_OTHER, t)}", token),
        st.builds(lambda t, u: f"{t}.{mac(SECRET_NEW, u)}", token, unknown),
        real.flatmap(lambda t: mangled(env.cookie_for(t))),
        value_text(max_size=200),
    ).filter(lambda v: env.owner(v)[0] is None and not env_signature_ok(v))


def env_signature_ok(value: str) -> bool:
    token, dot, signature = value.partition(".")
    return bool(dot) and signature in (mac(SECRET_NEW, token), mac(SECRET_OLD, token))


def malformed_tokens() -> st.SearchStrategy[str]:
    """Never `[A-Za-z0-9]{64}`: validation must refuse them before any I/O."""
    return st.one_of(
        value_text(max_size=200),
        st.text(alphabet=ALNUM, min_size=1, max_size=63),
        st.text(alphabet=ALNUM, min_size=65, max_size=300),
        st.builds(
            lambda t, c: t[:63] + c,
            st.text(alphabet=ALNUM, min_size=64, max_size=64),
            st.sampled_from("-_.~!$é"),
        ),
    ).filter(lambda v: re.fullmatch(r"[A-Za-z0-9]{64}", v) is None)


async def assert_no_redis_call(
    env: Env, redis: Redis, values: list[str], as_bearer: list[bool], control: str
) -> None:
    before = await command_calls(redis)
    for value, bearer in zip(values, as_bearer, strict=True):
        headers = {"Authorization": f"Bearer {value}"} if bearer else {"Cookie": f"sid={value}"}
        response = await env.client.get("/whoami", headers=headers)
        assert response.status == 200
        assert (await response.json())["user"] is None
        if value and not bearer:
            assert set_cookies(response.headers)[0]["sid"]["max-age"] == "0"
    after = await command_calls(redis)
    assert delta(before, after) == {}, f"refused credentials reached Redis: {values!r}"
    # The control: a well-formed credential for an unknown session costs one lookup,
    # which proves the counter would have seen one.
    response = await env.client.get("/whoami", headers={"Cookie": f"sid={control}"})
    assert (await response.json())["user"] is None
    assert delta(after, await command_calls(redis)).get("cmdstat_fcall") == 1


@settings(FUZZ_SETTINGS, max_examples=40)
@given(data=st.data())
async def test_forged_signatures_cost_no_redis_call(
    signed_env: Env, redis: Redis, data: st.DataObject
) -> None:
    values = data.draw(st.lists(forged_signatures(signed_env), min_size=1, max_size=15))
    as_bearer = data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    control = signed_env.cookie_for(uuid.uuid4().hex * 2)
    await assert_no_redis_call(signed_env, redis, values, as_bearer, control)


@settings(FUZZ_SETTINGS, max_examples=40)
@given(data=st.data())
async def test_malformed_tokens_cost_no_redis_call(
    unsigned_env: Env, redis: Redis, data: st.DataObject
) -> None:
    values = data.draw(st.lists(malformed_tokens(), min_size=1, max_size=15))
    as_bearer = data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    await assert_no_redis_call(unsigned_env, redis, values, as_bearer, uuid.uuid4().hex * 2)


# 5. Both frameworks: any Cookie header, body, content type and method, no 5xx


@dataclass
class Guarded:
    """A client of the shared app with csrf=True and signed cookies, and a live login."""

    client: AppClient
    sid: str  # alice's session cookie, as set
    csrf_cookie: str  # the CSRF cookie that goes with it
    csrf: str  # alice's CSRF token
    statuses: set[int] = field(default_factory=set)


@pytest.fixture
async def guarded(make_client: MakeClient) -> AsyncIterator[Guarded]:
    client = await make_client(csrf=True, secrets=[SECRET_NEW, SECRET_OLD])
    form = await client.get("/form")
    (csrf_cookie,) = [c["csrf"].value for c in set_cookies(form.headers) if "csrf" in c]
    token = (await form.json())["csrf"]
    login = await client.post(
        "/login", headers={"Cookie": f"csrf={csrf_cookie}", "X-CSRF-Token": token}
    )
    assert login.status == 200, await login.text()
    (sid,) = [c["sid"].value for c in set_cookies(login.headers) if "sid" in c]
    me = await client.get("/me", headers={"Cookie": f"sid={sid}"})
    assert (await me.json())["user"] == "alice"
    form = await client.get("/form", headers={"Cookie": f"sid={sid}"})
    guarded = Guarded(client, sid, csrf_cookie, (await form.json())["csrf"])
    yield guarded
    assert guarded.statuses >= {200, 403}, guarded.statuses  # both outcomes were met


def guarded_cookies(app: Guarded) -> st.SearchStrategy[str]:
    """Cookie headers: arbitrary text, or pairs built of the live values, near misses
    of them and garbage."""
    live = [f"sid={app.sid}", f"csrf={app.csrf_cookie}"]
    value = st.one_of(
        st.sampled_from([app.sid, app.csrf_cookie]),
        st.sampled_from([app.sid, app.csrf_cookie]).flatmap(mangled),
        value_text(),
        long_values().map(lambda v: v[:3000]),
    )
    name = st.one_of(st.sampled_from(["sid", "csrf", "__Host-sid", "SID"]), cookie_names())
    pair = st.one_of(st.sampled_from(live), st.builds(lambda n, v: f"{n}={v}", name, value))
    pairs = st.lists(pair, max_size=12)
    return st.one_of(
        header_text(),
        st.builds(lambda ps, sep: sep.join(ps), pairs, st.sampled_from([";", "; ", " ; "])),
        st.builds(lambda text, ps: f"{text}; {'; '.join(ps)}", header_text(), pairs),
    )


def guarded_bodies(app: Guarded) -> st.SearchStrategy[bytes]:
    boundary = b'--b\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
    return st.one_of(
        st.binary(max_size=300),
        st.just(f"csrf_token={app.csrf}".encode()),
        st.builds(lambda raw: b"csrf_token=" + raw, st.binary(max_size=60)),
        st.builds(lambda raw: boundary + raw + b"\r\n--b--\r\n", st.binary(max_size=60)),
        st.just(boundary + app.csrf.encode() + b"\r\n--b--\r\n"),
    )


GUARDED_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=b",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "application/json",
            "text/plain",
            "",
        ]
    ),
    header_text().map(lambda text: text[:100]),
)


@FUZZ_SETTINGS
@given(data=st.data())
async def test_no_cookie_header_body_content_type_or_method_gets_a_5xx(
    guarded: Guarded, data: st.DataObject
) -> None:
    method = data.draw(st.sampled_from(ALL_METHODS), label="method")
    headers = {"Cookie": data.draw(guarded_cookies(guarded), label="cookie")}
    headers["Content-Type"] = data.draw(GUARDED_TYPES, label="content type")
    token = data.draw(
        st.one_of(st.none(), st.sampled_from([guarded.csrf, "", "x.y"]), header_text()),
        label="csrf header",
    )
    if token is not None:
        headers["X-CSRF-Token"] = token
    body = data.draw(guarded_bodies(guarded), label="body")
    response = await guarded.client.request(method, "/me", data=body, headers=headers)
    text = await response.text()
    assert response.status < 500, (method, headers, body, response.status, text)
    if response.status == 200 and method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
        carried = token == guarded.csrf or guarded.csrf.encode() in body
        assert carried, "passed the CSRF check without the token"
    guarded.statuses.add(response.status)


@FUZZ_SETTINGS
@given(data=st.data())
async def test_no_raw_cookie_bytes_get_a_5xx(guarded: Guarded, data: st.DataObject) -> None:
    cookie = data.draw(field_bytes(), label="cookie")
    if data.draw(st.booleans(), label="embed the live cookies"):
        cookie += f"; sid={guarded.sid}; csrf={guarded.csrf_cookie}".encode()
    method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]), label="method")
    body = data.draw(guarded_bodies(guarded), label="body")
    lines = [
        b"Cookie: " + cookie,
        b"Content-Type: " + data.draw(field_bytes(), label="content type"),
        b"Content-Length: " + str(len(body)).encode(),
    ]
    host, port = guarded.client.host, guarded.client.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = f"{method} /me HTTP/1.1\r\nHost: {host}\r\n".encode()
        writer.write(head + b"".join(line + b"\r\n" for line in lines))
        writer.write(b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]
    assert statuses and max(statuses) < 500, (lines, body, answer[:300])
    guarded.statuses.add(statuses[0])
