"""What a hostile neighbour or a hostile client can do to the web layer, over real HTTP.

A sibling subdomain can set cookies for the parent domain and submit forms to this
site; a client can send any method, content type and body. Each test plays one such
move against a real aiohttp server and a real Redis.
"""

from __future__ import annotations

import functools
import secrets
import string
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from aiohttp_ext import TokenSigner, setup_sessions
from asgi_ext import SessionMiddleware
from cached_sessions import RedisSessions
from cached_sessions.web.csrf import ANONYMOUS_KEY_LIFETIME, csrf_token
from tests.cookies import set_cookies
from tests.web_apps import APP, Client, MakeClient, aiohttp_app

SECRET = "Vb6nQ1wZ-security-test-secret-3yKc8RtJm"
OLD_SECRET = "Lm2xT7pD-an-older-security-secret-9fWq4Hs"
EVIL = "http://evil.example.test"

pytest_plugins = ("tests.web_apps",)  # the shared fixtures: framework, make_client


def setup_error(**options: Any) -> str:
    """The message both adapters refuse these options with (the same one)."""
    store = RedisSessions(url="redis://127.0.0.1:1/0", wipe=0)
    settings = {"app_name": APP, **options}
    with pytest.raises(ValueError) as error:
        setup_sessions(web.Application(), store, **settings)
    with pytest.raises(ValueError) as same:
        SessionMiddleware(Starlette(), store, **settings)
    assert str(same.value) == str(error.value)
    return str(error.value)


async def anonymous_form(client: Client, name: str = "csrf") -> tuple[str, str]:
    """The anonymous CSRF cookie's value and the form's token, as a login page gives them."""
    response = await client.get("/form")
    return set_cookies(response)[name].value, (await response.json())["csrf"]


async def log_in(client: Client, user: str, **params: str) -> str:
    cookie, token = await anonymous_form(client)
    response = await client.post(
        "/login",
        params={"user": user, **params},
        headers={"Cookie": f"csrf={cookie}", "X-CSRF-Token": token},
    )
    assert response.status == 200, await response.text()
    return str((await response.json())["token"])


# Cookie names


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"secure": True}, ("__Host-sid", "__Host-csrf")),
        ({"secure": True, "domain": "example.test"}, ("__Secure-sid", "__Secure-csrf")),
        ({"secure": True, "path": "/app"}, ("__Secure-sid", "__Secure-csrf")),
        ({"secure": False}, ("sid", "csrf")),
        (
            {"secure": True, "cookie_name": "session", "csrf_cookie_name": "xsrf"},
            ("session", "xsrf"),
        ),
    ],
)
async def test_cookie_names_default_to_prefixes_a_sibling_cannot_plant(
    make_client: MakeClient, options: dict[str, Any], names: tuple[str, str]
) -> None:
    client = await make_client(**options)
    assert names[0] in set_cookies(await client.post("/login"))
    assert names[1] in set_cookies(await client.get("/form"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cookie_name": "__Host-sid", "secure": False}, "needs secure=True"),
        ({"csrf_cookie_name": "__Secure-csrf", "secure": False}, "needs secure=True"),
        ({"cookie_name": "__host-sid", "secure": False}, "needs secure=True"),
        ({"cookie_name": "__Host-sid", "domain": "example.test"}, "needs domain=None and path='/'"),
        ({"csrf_cookie_name": "__Host-x", "path": "/app"}, "needs domain=None and path='/'"),
        ({"domain": "example.test", "cookie_name": "__HOST-s"}, "use a __Secure- name"),
        ({"cookie_name": "same", "csrf_cookie_name": "same"}, "give them different names"),
        ({"secure": False, "csrf_cookie_name": "sid"}, "are both 'sid'"),
    ],
)
def test_cookie_names_browsers_would_drop_are_refused_at_setup(
    options: dict[str, Any], message: str
) -> None:
    assert message in setup_error(**options)


# A copy of the session cookie planted next to the real one


async def test_a_repeated_session_cookie_gives_anonymous_and_clears_nothing(
    make_client: MakeClient,
) -> None:
    """A sibling can add a `sid` for the parent domain, not replace this host's own, and
    a browser sends both, in an order the sibling can steer (a longer Path comes first).
    Neither copy is trusted: no attacker's session is ever read, and no Set-Cookie
    deletes the victim's copy, which works again once the planted one is gone."""
    client = await make_client()
    victim, attacker = await log_in(client, "victim"), await log_in(client, "attacker")
    for cookie in (
        f"sid={victim}; sid={attacker}",
        f"sid={attacker}; sid={victim}",
        f"sid={victim}; other=1; sid=garbage",
        f"sid={victim}; sid=",
        f'sid={victim}; sid="{attacker}"',  # the fallback scanner counts copies too
    ):
        response = await client.get("/me", headers={"Cookie": cookie})
        assert (await response.json())["user"] is None, cookie
        assert "Set-Cookie" not in response.headers, cookie
    assert {event.reason for event in client.events if event.kind == "invalid"} == {
        "session cookie sent 2 times (a planted copy?)"
    }
    alone = await client.get("/me", headers={"Cookie": f"sid={victim}"})
    assert (await alone.json())["user"] == "victim"


async def test_a_repeated_csrf_cookie_is_refused(make_client: MakeClient) -> None:
    """Login CSRF by planting: the attacker's own cookie and token next to the victim's."""
    client = await make_client(csrf=True, secrets=[SECRET])
    victims_cookie, _ = await anonymous_form(client)
    attackers_cookie, attackers_token = await anonymous_form(client)
    for cookie in (
        f"csrf={victims_cookie}; csrf={attackers_cookie}",
        f"csrf={attackers_cookie}; csrf={victims_cookie}",
    ):
        response = await client.post(
            "/login", params={"user": "attacker"}, data={"csrf_token": attackers_token},
            headers={"Cookie": cookie},
        )  # fmt: skip
        assert response.status == 403, cookie
    alone = await client.post(
        "/login",
        data={"csrf_token": attackers_token},
        headers={"Cookie": f"csrf={attackers_cookie}"},
    )
    assert alone.status == 200


# Where an unsafe request comes from


async def test_a_cross_origin_request_is_refused_even_with_a_valid_token(
    make_client: MakeClient,
) -> None:
    client = await make_client(csrf=True, secrets=[SECRET])
    cookie, token = await anonymous_form(client)
    here = f"{client.host}:{client.port}"

    async def attempt(**headers: str) -> tuple[int, str]:
        response = await client.post(
            "/login", headers={"Cookie": f"csrf={cookie}", "X-CSRF-Token": token, **headers}
        )
        return response.status, await response.text()

    status, text = await attempt(Origin=EVIL)
    assert status == 403 and "Cross-site request refused" in text and EVIL in text
    assert (await attempt(Origin=f"http://sub.{client.host}:{client.port}"))[0] == 403
    assert (await attempt(Origin=f"http://{client.host}:{client.port + 1}"))[0] == 403
    assert (await attempt(Origin="null"))[0] == 403
    assert (await attempt(**{"Sec-Fetch-Site": "same-site"}))[0] == 403
    assert (await attempt(**{"Sec-Fetch-Site": "cross-site"}))[0] == 403
    # This site itself, however it says so; and over https (a proxy that ends TLS).
    assert (await attempt(Origin=f"http://{here}"))[0] == 200
    assert (await attempt(Origin=f"HTTPS://{here.upper()}"))[0] == 200
    assert (await attempt(**{"Sec-Fetch-Site": "same-origin"}))[0] == 200
    assert (await attempt())[0] == 200  # no Origin: not a browser, the token decides


async def test_trusted_origins_are_let_through_but_still_need_the_token(
    make_client: MakeClient,
) -> None:
    client = await make_client(
        trusted_origins=["https://app.example.test", "http://EVIL.example.test:80"], csrf=True
    )
    cookie, token = await anonymous_form(client)
    headers = {"Cookie": f"csrf={cookie}", "X-CSRF-Token": token}
    for origin, status in [
        ("https://app.example.test", 200),
        ("https://app.example.test:443", 200),
        (EVIL, 200),
        ("https://app.example.test:8443", 403),
        ("http://app.example.test", 403),
    ]:
        response = await client.post("/login", headers={**headers, "Origin": origin})
        assert response.status == status, origin
    without_token = await client.post("/login", headers={"Origin": "https://app.example.test"})
    assert without_token.status == 403


@pytest.mark.parametrize(
    "origins",
    [
        ["https://app.example.test/"],
        ["https://app.example.test/path"],
        ["https://*.example.test"],
        ["app.example.test"],
        ["null"],
        ["https://app.example.test:99999"],
        [None],
        "https://app.example.test",
    ],
)
def test_trusted_origins_are_checked_at_setup(origins: Any) -> None:
    message = setup_error(csrf=True, trusted_origins=origins)
    assert "trusted_origins" in message and ("scheme://host" in message or "list" in message)


def test_trusted_origins_without_csrf_are_refused() -> None:
    assert "only with csrf=True" in setup_error(trusted_origins=["https://a.test"])


# The anonymous key's age


@pytest.mark.parametrize("signed", [True, False])
async def test_the_anonymous_csrf_key_expires(make_client: MakeClient, signed: bool) -> None:
    client = await make_client(csrf=True, secrets=[SECRET] if signed else None)
    fresh = await client.get("/form")
    assert set_cookies(fresh)["csrf"]["max-age"] == str(ANONYMOUS_KEY_LIFETIME)
    key, now = secrets.token_urlsafe(32), int(time.time())
    token = csrf_token(f"anonymous:{key}")

    def cookie(payload: str) -> str:
        return TokenSigner([SECRET]).sign(payload) if signed else payload

    for issued, status in [
        (now - ANONYMOUS_KEY_LIFETIME + 60, 200),
        (now - ANONYMOUS_KEY_LIFETIME - 60, 403),  # expired
        (now + 3600, 403),  # from the future
        (None, 403),  # no time: set before keys expired, or forged
    ]:
        payload = key if issued is None else f"{key}~{issued:x}"
        headers = {"Cookie": f"csrf={cookie(payload)}", "X-CSRF-Token": token}
        assert (await client.post("/login", headers=headers)).status == status, issued
    # A form rendered with an expired key gets a new one.
    stale = cookie(f"{key}~{now - ANONYMOUS_KEY_LIFETIME - 60:x}")
    renewed = await client.get("/form", headers={"Cookie": f"csrf={stale}"})
    assert set_cookies(renewed)["csrf"].value not in ("", stale)


# Methods and bodies


@pytest.mark.parametrize(
    "method", ["POST", "PUT", "PATCH", "DELETE", "PROPFIND", "PURGE", "MKCOL", "LOCK", "REPORT"]
)
async def test_every_method_but_the_safe_ones_needs_a_token(
    make_client: MakeClient, method: str
) -> None:
    client = await make_client(csrf=True)
    refused = await client.request(method, "/me")
    assert refused.status == 403 and "CSRF token missing" in await refused.text()
    cookie, token = await anonymous_form(client)
    allowed = await client.request(
        method, "/me", headers={"Cookie": f"csrf={cookie}", "X-CSRF-Token": token}
    )
    assert allowed.status == 200


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE"])
async def test_safe_methods_need_no_token(make_client: MakeClient, method: str) -> None:
    client = await make_client(csrf=True)
    assert (await client.request(method, "/me")).status == 200


BAD_BODIES = [
    ("multipart/form-data", b"--x\r\nabc"),  # no boundary
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nab"),
    ("multipart/form-data; boundary=x", b"no boundary in here"),
    ("multipart/form-data; boundary=x", b"--x\r\n\r\n\r\n--x--\r\n"),  # a part with no name
    (
        "multipart/form-data; boundary=x",
        b"--x\r\nContent-Disposition: form-data; name=csrf_token\r\n"
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nabc\r\n--x--\r\n",
    ),
    (
        "multipart/form-data; boundary=x",
        b"--x\r\nContent-Disposition: form-data; name=a\r\n"
        b"Content-Transfer-Encoding: rot13\r\n\r\nabc\r\n--x--\r\n",
    ),
    ("multipart/form-data; boundary=" + "b" * 100, b"--" + b"b" * 100),
    ("application/x-www-form-urlencoded; charset=no-such-charset", b"csrf_token=x"),
    ("application/x-www-form-urlencoded", b"csrf_token=\xff\xfe"),
    ("application/x-www-form-urlencoded; charset=utf-16", b"csrf_token=x!"),  # odd length
]


@pytest.mark.parametrize(("content_type", "body"), BAD_BODIES)
async def test_an_unreadable_form_body_gets_a_400_not_a_500(
    make_client: MakeClient, framework: str, content_type: str, body: bytes
) -> None:
    """aiohttp refuses every one of these bodies; Starlette's parsers read some of them
    leniently (a missing last boundary, an unknown charset), find no token and refuse
    the request for that."""
    client = await make_client(csrf=True)
    response = await client.post("/me", data=body, headers={"Content-Type": content_type})
    text = await response.text()
    if framework == "asgi" and response.status == 403:
        assert "CSRF token missing" in text
        return
    assert response.status == 400, text
    assert "The form body could not be read" in text


async def test_a_huge_form_body_gets_a_413(make_client: MakeClient) -> None:
    client = await make_client(csrf=True)
    body = b"csrf_token=" + b"x" * (3 * 1024 * 1024)
    response = await client.post(
        "/me", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status == 413


# Bearer clients


async def test_a_bearer_request_is_never_answered_with_a_session_cookie(
    make_client: MakeClient,
) -> None:
    """The cookie is the ambient credential; a bearer token is sent on purpose only."""
    old = await make_client(secrets=[OLD_SECRET])
    signed_old = TokenSigner([OLD_SECRET]).sign(await log_in(old, "api"))
    client = await make_client(secrets=[SECRET, OLD_SECRET], rolling=True, renew=True, max_age=600)
    for value in (signed_old, TokenSigner([SECRET]).sign(f"{signed_old[:64]}~{0:x}")):
        bearer = await client.get("/me", headers={"Authorization": f"Bearer {value}"})
        assert (await bearer.json())["user"] == "api"
        assert "Set-Cookie" not in bearer.headers
        cookie = await client.get("/me", headers={"Cookie": f"sid={value}"})
        assert set_cookies(cookie)["sid"].value  # the same token as a cookie: re-sent
    # A login on a request that a bearer token authenticated: the new token, no cookie.
    relog = await client.post("/login", headers={"Authorization": f"Bearer {signed_old}"})
    assert relog.status == 200 and "Set-Cookie" not in relog.headers


async def test_only_a_bearer_token_that_authenticates_skips_the_csrf_check(
    make_client: MakeClient,
) -> None:
    client = await make_client(csrf=True)
    token = await log_in(client, "api")
    for bogus in ("x", "A" * 64, f"{token[:-1]}!"):
        headers = {"Authorization": f"Bearer {bogus}", "Origin": EVIL}
        response = await client.post("/login", headers=headers)
        assert response.status == 403 and "Set-Cookie" not in response.headers, bogus
        assert (
            await client.post("/me", headers={"Authorization": f"Bearer {bogus}"})
        ).status == 403
    valid = await client.post("/me", headers={"Authorization": f"Bearer {token}", "Origin": EVIL})
    assert valid.status == 200 and (await valid.json())["user"] == "api"


# kill_by


async def test_kill_by_decides_on_the_stored_json_text_as_the_store_does(
    make_client: MakeClient,
) -> None:
    client = await make_client(references=("org",), csrf=False)
    response = await client.post("/login", params={"user": "carol", "org": "1"})
    token = (await response.json())["token"]
    headers = {"Cookie": f"sid={token}"}
    for other in ("true", "1.0", '"1"'):  # equal to 1 in Python, or close; not in the store
        result = await client.post("/kill-by", params={"value": other}, headers=headers)
        assert await result.json() == {"killed": 0, "me": "carol"}, other
        assert "Set-Cookie" not in result.headers
    result = await client.post("/kill-by", params={"value": "1"}, headers=headers)
    assert await result.json() == {"killed": 1, "me": None}
    assert set_cookies(result)["sid"]["max-age"] == "0"


# Secrets


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("s" * 32, "too few different bytes"),
        (b"\0" * 32, "too few different bytes"),
        ("ab" * 16, "too few different bytes"),
        ("0123456789" * 4, "repeats a shorter pattern"),
        ("secret-secret-secret-secret-secret-", "repeats a shorter pattern"),
        ("abcdefghijklmnopqrstuvwxyzABCDEF", "run of consecutive bytes"),
        ("a" * 31 + "b", "too few different bytes"),
    ],
)
def test_guessable_secrets_are_refused_at_setup(secret: str | bytes, why: str) -> None:
    message = setup_error(secrets=[secrets.token_urlsafe(32), secret])
    assert "secret #2 is guessable" in message and why in message
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in message


def test_random_secrets_are_accepted() -> None:
    for _ in range(200):
        TokenSigner([secrets.token_urlsafe(32), secrets.token_hex(16), secrets.token_bytes(32)])


# Any body, content type and method: answered, never with a 5xx


METHODS = [
    "POST", "PUT", "PATCH", "DELETE", "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE",
    "LOCK", "UNLOCK", "PURGE", "REPORT", "SEARCH", "MERGE", "GET", "HEAD", "OPTIONS", "TRACE",
]  # fmt: skip
URLENCODED = "application/x-www-form-urlencoded"
SMALL_LIMIT = 4096  # the app's client_max_size, so that "too large" is cheap to reach
FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def header_words() -> st.SearchStrategy[str]:
    token = st.text(alphabet=string.ascii_letters + string.digits + "-_.+/", max_size=12)
    quoted = token.map(lambda t: f'"{t}"')
    odd = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
    return st.one_of(token, quoted, odd, st.sampled_from(["utf-8", "utf-16", "latin-1", "x"]))


@st.composite
def content_types(draw: st.DrawFn) -> str:
    base = draw(
        st.sampled_from(
            ["multipart/form-data", "application/x-www-form-urlencoded", "MULTIPART/Form-Data",
             "multipart/mixed", "text/plain", "application/json", "", "a/b/c", ";"]
        )
    )  # fmt: skip
    params = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["boundary", "charset", "Boundary", "x", ""]), header_words()
            ),
            max_size=3,
        )
    )
    return base + "".join(f"; {name}={value}" for name, value in params)


@st.composite
def multipart_bodies(draw: st.DrawFn, boundary: str, token: str) -> bytes:
    """Parts with any headers and payloads, the token among them now and then, and the
    body cut anywhere."""
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["csrf_token", "a", "", "x y"]))
        lines = [f'Content-Disposition: form-data; name="{name}"']
        if draw(st.booleans()):
            lines[0] += f'; filename="{draw(header_words())}"'
        for header in draw(
            st.lists(
                st.sampled_from(
                    [
                        "Content-Type",
                        "Content-Transfer-Encoding",
                        "Content-Encoding",
                        "Content-Length",
                    ]
                ),
                max_size=2,
            )
        ):
            lines.append(f"{header}: {draw(header_words())}")
        payload = token.encode() if draw(st.booleans()) else draw(st.binary(max_size=40))
        parts.append("\r\n".join(lines).encode() + b"\r\n\r\n" + payload)
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    return body[: draw(st.integers(0, len(body)))] if draw(st.booleans()) else body


@st.composite
def requests(draw: st.DrawFn, token: str) -> tuple[str, str, bytes, dict[str, str]]:
    method = draw(st.sampled_from(METHODS))
    content_type = draw(content_types())
    boundary = draw(st.sampled_from(["b", "boundary-1", "x" * 80]))
    body = draw(
        st.one_of(
            st.binary(max_size=300),
            multipart_bodies(boundary, token),
            st.builds(lambda raw: b"csrf_token=" + raw, st.binary(max_size=60)),
            st.just(f"csrf_token={token}".encode()),
            st.integers(SMALL_LIMIT - 10, SMALL_LIMIT * 2).map(lambda n: b"a=" + b"x" * n),
        )
    )
    if draw(st.booleans()):  # a well-formed form type, half of the time
        form_types = [f"multipart/form-data; boundary={boundary}", URLENCODED]
        content_type = draw(st.sampled_from(form_types))
    headers = {"Content-Type": content_type}
    if draw(st.booleans()):
        headers["X-CSRF-Token"] = draw(st.sampled_from([token, "", "x.y", token[:-1]]))
    return method, content_type, body, headers


@pytest.fixture
async def strict_app(
    make_client: MakeClient, framework: str
) -> AsyncIterator[tuple[Client, str, str, set[int]]]:
    """A csrf=True app (on aiohttp, with a small body limit); its client, the anonymous
    cookie and token, and the statuses seen, checked once every example has run."""
    small = functools.partial(aiohttp_app, client_max_size=SMALL_LIMIT)
    app = small if framework == "aiohttp" else None
    client = await make_client(app=app, csrf=True, secrets=[SECRET])
    cookie, token = await anonymous_form(client)
    seen: set[int] = set()
    yield client, cookie, token, seen
    outcomes = {200, 400, 403} | ({413} if framework == "aiohttp" else set())
    assert seen >= outcomes, seen  # every outcome was met


@FUZZ_SETTINGS
@given(data=st.data())
async def test_no_method_content_type_or_body_gets_a_5xx(
    strict_app: tuple[Client, str, str, set[int]], data: st.DataObject
) -> None:
    client, cookie, token, seen = strict_app
    method, _, body, headers = data.draw(requests(token))
    response = await client.request(
        method, "/me", data=body, headers={**headers, "Cookie": f"csrf={cookie}"}
    )
    text = await response.text()
    assert response.status < 500, (response.status, text)
    if response.status == 200 and method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
        carried = headers.get("X-CSRF-Token") == token or token.encode() in body
        assert carried, "passed the CSRF check without the token"
    seen.add(response.status)
