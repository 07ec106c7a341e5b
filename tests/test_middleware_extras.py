"""What koa and connect users expect: CSRF, hooks, events, cookie renewal, references."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import DummyCookieJar, web
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.responses import Response

from aiohttp_ext import get_session, setup_sessions
from asgi_ext import SessionMiddleware
from cached_sessions import RedisSessions
from tests.cookies import set_cookies
from tests.servers import ServerProcess
from tests.web_apps import APP, LOGGER, Client, MakeClient, aiohttp_app

SECRET = "Xq7vR2mK9-extras-test-secret-b4Nw8LpT3"

pytest_plugins = ("tests.web_apps",)  # the shared fixtures: framework, make_client


def sid(token: str, **more: str) -> dict[str, str]:
    cookie = "; ".join([f"sid={token}", *(f"{k}={v}" for k, v in more.items())])
    return {"Cookie": cookie}


# CSRF


async def test_csrf_token_rules(make_client: MakeClient) -> None:
    client = await make_client(csrf=True)
    # An anonymous visitor: a login form protected by a double-submit cookie.
    refused = await client.post("/login")
    assert refused.status == 403 and "CSRF token missing or invalid" in await refused.text()
    form = await client.get("/form")
    anon_cookie = set_cookies(form)["csrf"]
    assert anon_cookie["httponly"] is True
    anon_token = (await form.json())["csrf"]
    login = await client.post(
        "/login", data={"csrf_token": anon_token}, headers={"Cookie": f"csrf={anon_cookie.value}"}
    )
    assert login.status == 200
    mine = await login.json()
    token, csrf_token = mine["token"], mine["csrf"]

    assert (await client.get("/me", headers=sid(token))).status == 200  # safe method
    for method in ("POST", "PUT", "DELETE"):
        response = await client.request(method, "/me", headers=sid(token))
        assert response.status == 403, method
    # A header, a form field, and a JSON body with the header all pass.
    assert (
        await client.post("/me", headers={**sid(token), "X-CSRF-Token": csrf_token})
    ).status == 200
    posted = await client.post("/me", headers=sid(token), data={"csrf_token": csrf_token})
    assert posted.status == 200
    json_body = await client.post(
        "/me", headers={**sid(token), "X-CSRF-Token": csrf_token}, json={"a": 1}
    )
    assert json_body.status == 200
    # A token in a JSON body is not read: JSON requests must use the header.
    in_json = await client.post("/me", headers=sid(token), json={"csrf_token": csrf_token})
    assert in_json.status == 403
    # Another session's token is refused, and so is a tampered one.
    other = await (
        await client.post(
            "/login",
            data={"csrf_token": anon_token},
            headers={"Cookie": f"csrf={anon_cookie.value}"},
        )
    ).json()
    crossed = await client.post("/me", headers={**sid(token), "X-CSRF-Token": other["csrf"]})
    assert crossed.status == 403
    tampered = csrf_token[:-2] + ("AA" if not csrf_token.endswith("AA") else "BB")
    assert (
        await client.post("/me", headers={**sid(token), "X-CSRF-Token": tampered})
    ).status == 403
    # The anonymous token does not work for the logged-in session.
    assert (
        await client.post("/me", headers={**sid(token), "X-CSRF-Token": anon_token})
    ).status == 403


async def login_through_the_form(client: Client, user: str = "alice") -> dict[str, str]:
    """Log in as a browser does under csrf=True: the form's token and its cookie."""
    form = await client.get("/form")
    cookie = set_cookies(form)["csrf"].value
    response = await client.post(
        "/login",
        params={"user": user},
        data={"csrf_token": (await form.json())["csrf"]},
        headers={"Cookie": f"csrf={cookie}"},
    )
    assert response.status == 200, await response.text()
    login: dict[str, str] = await response.json()
    return login


async def test_csrf_tokens_die_with_their_session(make_client: MakeClient) -> None:
    client = await make_client(csrf=True, bearer=True)
    login = await login_through_the_form(client)
    token, csrf_token = login["token"], login["csrf"]
    header = {**sid(token), "X-CSRF-Token": csrf_token}
    assert (await client.post("/logout", headers=header)).status == 200
    # Logged out: the old token and its CSRF token are worthless.
    assert (await client.post("/me", headers=header)).status == 403
    # An upgrade (new login) on a session issues a new token: the old CSRF token dies.
    login = await login_through_the_form(client)
    header = {**sid(login["token"]), "X-CSRF-Token": login["csrf"]}
    upgraded = await client.post("/login", headers=header)
    assert upgraded.status == 200
    new = (await upgraded.json())["token"]
    assert (
        await client.post("/me", headers={**sid(new), "X-CSRF-Token": login["csrf"]})
    ).status == 403


async def test_bearer_requests_are_exempt_from_csrf(make_client: MakeClient) -> None:
    client = await make_client(csrf=True)
    token = (await login_through_the_form(client))["token"]
    response = await client.post("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200 and (await response.json())["user"] == "alice"


async def test_signed_double_submit_cookie_refuses_a_planted_key(make_client: MakeClient) -> None:
    client = await make_client(csrf=True, secrets=[SECRET])
    form = await client.get("/form")
    cookie = set_cookies(form)["csrf"].value
    assert "." in cookie  # signed
    ok = await client.post(
        "/login",
        data={"csrf_token": (await form.json())["csrf"]},
        headers={"Cookie": f"csrf={cookie}"},
    )
    assert ok.status == 200
    # A key planted by someone who cannot sign it (a subdomain setting a cookie).
    from cached_sessions.web.csrf import csrf_token

    planted = "attacker-chosen-key"
    forged = await client.post(
        "/login", data={"csrf_token": csrf_token(f"anonymous:{planted}")},
        headers={"Cookie": f"csrf={planted}"},
    )  # fmt: skip
    assert forged.status == 403


# Hooks and events


async def test_valid_hook_refuses_a_session_and_clears_the_cookie(make_client: MakeClient) -> None:
    def same_agent(request: Any, session: Any) -> bool:
        return request.headers.get("User-Agent") != "changed"

    client = await make_client(valid=same_agent)
    token = (await (await client.post("/login")).json())["token"]
    assert (await (await client.get("/me", headers=sid(token))).json())["user"] == "alice"
    refused = await client.get("/me", headers={**sid(token), "User-Agent": "changed"})
    assert (await refused.json())["user"] is None
    assert set_cookies(refused)["sid"]["max-age"] == "0"
    assert [(e.kind, e.reason) for e in client.events if e.kind == "invalid"] == [
        ("invalid", "refused by the valid() hook")
    ]


async def test_before_save_runs_before_the_write(make_client: MakeClient) -> None:
    async def stamp(request: Any, session: Any) -> None:
        session["saved_by"] = "hook"

    client = await make_client(before_save=stamp)
    token = (await (await client.post("/login")).json())["token"]
    await client.post("/change", params={"key": "a"}, headers=sid(token))
    data = (await (await client.get("/me", headers=sid(token))).json())["data"]
    assert data == {"n": 0, "a": "x", "saved_by": "hook"}


async def test_events_for_each_kind_and_logs_without_full_tokens(
    make_client: MakeClient,
    server: ServerProcess,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    framework: str,
) -> None:
    client = await make_client()
    caplog.set_level("INFO", logger=LOGGER[framework])
    token = (await (await client.post("/login", params={"user": "ann"})).json())["token"]
    await client.post("/logout", headers=sid(token), allow_redirects=False)
    await client.get("/me", headers=sid(token))  # killed: missed
    await client.get("/me", headers=sid("short"))  # malformed: invalid
    async with RedisSessions(
        url=server.url, namespace=namespace, wipe=0, clock=lambda: time.time() - 3600
    ) as old:
        stale = (await old.create(app=APP, id="old", ip="1.2.3.4", ttl=60))["token"]
    await client.get("/me", headers=sid(stale))  # expired
    assert [(event.kind, event.user_id) for event in client.events] == [
        ("created", "ann"), ("destroyed", "ann"), ("missed", None), ("invalid", None),
        ("expired", None),
    ]  # fmt: skip
    assert token not in caplog.text and stale not in caplog.text
    assert token[:6] in caplog.text


# Cookies and expiry


async def test_rolling_resends_the_cookie_on_every_response(make_client: MakeClient) -> None:
    client = await make_client(rolling=True, max_age=600)
    token = (await (await client.post("/login")).json())["token"]
    response = await client.get("/me", headers=sid(token))
    assert set_cookies(response)["sid"].value == token
    assert set_cookies(response)["sid"]["max-age"] == "600"
    quiet = await make_client(max_age=600)
    token = (await (await quiet.post("/login")).json())["token"]
    assert "sid" not in set_cookies(await quiet.get("/me", headers=sid(token)))


async def test_renew_resends_only_past_half_its_age(make_client: MakeClient) -> None:
    client = await make_client(renew=True, max_age=600)
    login = await client.post("/login")
    fresh = set_cookies(login)["sid"].value
    token, _, issued = fresh.partition("~")
    assert len(token) == 64 and issued
    assert "sid" not in set_cookies(await client.get("/me", headers=sid(fresh)))
    old = f"{token}~{int(time.time()) - 400:x}"  # 400 of 600 s used: renew
    renewed = set_cookies(await client.get("/me", headers=sid(old)))["sid"].value
    assert renewed.startswith(token + "~") and renewed != old
    plain = set_cookies(await client.get("/me", headers=sid(token)))["sid"].value
    assert plain.startswith(token + "~")


async def test_ttl_from_a_callable_and_per_upgrade(
    make_client: MakeClient, redis: Redis, namespace: str
) -> None:
    client = await make_client(
        ttl=lambda request: 86400 if request.headers.get("X-Remember") else 600
    )
    short = (await (await client.post("/login")).json())["token"]
    long = (await (await client.post("/login", headers={"X-Remember": "1"})).json())["token"]
    chosen = (await (await client.post("/login", params={"ttl": "42"})).json())["token"]
    ttls = [await redis.hget(f"{namespace}:{APP}:{t}", "ttl") for t in (short, long, chosen)]
    assert ttls == ["600", "86400", "42"]


async def test_save_policy_never_and_always(
    make_client: MakeClient, redis: Redis, namespace: str
) -> None:
    client = await make_client()
    token = (await (await client.post("/login")).json())["token"]
    key = f"{namespace}:{APP}:{token}"
    await client.post("/change", params={"key": "a", "policy": "never"}, headers=sid(token))
    assert (await (await client.get("/me", headers=sid(token))).json())["data"] == {"n": 0}
    w = int(await redis.hget(key, "w") or 0)
    await client.post("/change", params={"policy": "always"}, headers=sid(token))
    assert int(await redis.hget(key, "w") or 0) == w + 1
    bad = await client.post("/change", params={"policy": "sometimes"}, headers=sid(token))
    assert bad.status == 500  # a programming error in the handler, reported as one


# References and outages


async def test_references_kill_by_from_a_session(make_client: MakeClient) -> None:
    client = await make_client(references=("org",))
    a = (await (await client.post("/login", params={"user": "a", "org": "7"})).json())["token"]
    b = (await (await client.post("/login", params={"user": "b", "org": "7"})).json())["token"]
    c = (await (await client.post("/login", params={"user": "c", "org": "8"})).json())["token"]
    result = await (await client.post("/kill-by", params={"value": "7"}, headers=sid(c))).json()
    assert result == {"killed": 2, "me": "c"}
    users = [(await (await client.get("/me", headers=sid(t))).json())["user"] for t in (a, b, c)]
    assert users == [None, None, "c"]
    mine = await client.post("/kill-by", params={"value": "8"}, headers=sid(c))
    assert (await mine.json()) == {"killed": 1, "me": None}
    assert set_cookies(mine)["sid"]["max-age"] == "0"


@pytest.fixture
def own_server() -> Any:
    import os

    process = ServerProcess(os.environ.get("CACHED_SESSIONS_TEST_SERVER", "valkey"))
    process.start()
    yield process
    process.cleanup()


async def test_unavailable_wait_rides_out_a_short_outage(
    make_client: MakeClient, own_server: ServerProcess
) -> None:
    patient = await make_client(url=own_server.url, unavailable_wait=5)
    hasty = await make_client(url=own_server.url)
    token = (await (await patient.post("/login")).json())["token"]
    own_server.stop()
    assert (await hasty.get("/me", headers=sid(token))).status == 503
    restart = asyncio.get_running_loop().run_in_executor(None, _restart_later, own_server)
    started = time.monotonic()
    response = await patient.get("/me", headers=sid(token))
    await restart
    assert response.status == 200  # it waited; the restarted server lost the session
    assert 0.3 < time.monotonic() - started < 5


async def test_an_outage_answers_503_with_retry_after_and_recovers(
    make_client: MakeClient, own_server: ServerProcess
) -> None:
    client = await make_client(url=own_server.url, cachetime=0)
    token = (await (await client.post("/login")).json())["token"]
    own_server.stop()
    for method, path in (("GET", "/me"), ("POST", "/login"), ("GET", "/stream")):
        response = await client.request(method, path, headers=sid(token))
        assert response.status == 503, path
        assert response.headers["Retry-After"] == "1"
        assert "session store is unavailable" in await response.text()
        assert "Set-Cookie" not in response.headers
    own_server.start()
    deadline = time.monotonic() + 30  # the store reconnects at once; a loaded host is slow
    while (answer := await client.get("/me", headers=sid(token))).status == 503:
        assert time.monotonic() < deadline, "no recovery after the restart"
        await asyncio.sleep(0.05)
    assert answer.status == 200  # the restarted server lost the session: anonymous


def _restart_later(server: ServerProcess) -> None:
    time.sleep(0.5)
    server.start()


async def test_on_unavailable_callable_makes_the_response(
    make_client: MakeClient, own_server: ServerProcess, framework: str
) -> None:
    def maintenance(request: Any, error: Exception) -> Any:
        if framework == "aiohttp":
            return web.Response(status=307, headers={"Location": "/maintenance"})
        return Response(status_code=307, headers={"Location": "/maintenance"})

    client = await make_client(url=own_server.url, on_unavailable=maintenance)
    token = (await (await client.post("/login")).json())["token"]
    own_server.stop()
    response = await client.get("/me", headers=sid(token), allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (307, "/maintenance")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cookie_name": "my sid"}, "cookie_name must be a cookie name"),
        ({"csrf_cookie_name": "a;b"}, "csrf_cookie_name must be a cookie name"),
        ({"path": "/; Secure"}, "path must not hold ';'"),
        ({"domain": "example.test\r\nX: y"}, "domain must not hold ';' or control"),
        ({"renew": True}, "renew=True needs max_age"),
        ({"ttl": 5}, "ttl must be a positive integer >= 10"),
    ],
)
def test_bad_settings_are_refused_at_setup(
    framework: str, options: dict[str, Any], message: str
) -> None:
    store = RedisSessions(url="redis://127.0.0.1:1/0", wipe=0)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        if framework == "aiohttp":
            setup_sessions(web.Application(), store, app_name=APP, **options)
        else:
            SessionMiddleware(Starlette(), store, app_name=APP, **options)


# Other middlewares, sub-apps and crashing handlers


@web.middleware
async def user_header(request: web.Request, handler: Any) -> web.StreamResponse:
    """An outer middleware that reads the session after the handler, as loggers do."""
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        response = web.Response(status=404, text="no such page")
    response.headers["X-User"] = str((await get_session(request)).user_id)
    return response


async def test_an_outer_middleware_reads_the_session_after_the_handler(
    server: ServerProcess, namespace: str, aiohttp_client: Any
) -> None:
    """aiohttp only (its middlewares): one outside the session's, on the same request."""
    store = RedisSessions(url=server.url, namespace=namespace, wipe=0, cachetime=30)
    app = aiohttp_app(store, [])
    app.middlewares.insert(0, user_header)
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    token = (await (await client.post("/login", params={"user": "bob"})).json())["token"]
    found = await client.get("/me", headers=sid(token))
    assert found.status == 200 and found.headers["X-User"] == "bob"
    missing = await client.get("/no-such-page", headers=sid(token))
    assert missing.status == 404 and missing.headers["X-User"] == "bob"


async def test_sessions_on_an_app_and_its_sub_app(
    server: ServerProcess, namespace: str, aiohttp_client: Any
) -> None:
    store = RedisSessions(url=server.url, namespace=namespace, wipe=0, cachetime=30)
    parent, child = aiohttp_app(store, []), aiohttp_app(store, [])
    parent.add_subapp("/child", child)
    client = await aiohttp_client(parent, cookie_jar=DummyCookieJar())
    token = (await (await client.post("/login", params={"user": "carol"})).json())["token"]
    for path in ("/me", "/child/me"):
        response = await client.get(path, headers=sid(token))
        assert response.status == 200 and (await response.json())["user"] == "carol", path
