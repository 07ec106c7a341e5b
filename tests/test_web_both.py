"""The HTTP behaviours of the session middleware, on aiohttp and on ASGI alike: the
same app (tests/web_apps.py) on each framework's real server, the same assertions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from cached_sessions import RedisSessions
from tests.cookies import set_cookies
from tests.servers import ServerProcess
from tests.web_apps import FRAMEWORKS, serve

Start = Callable[..., Awaitable[aiohttp.ClientSession]]


@pytest.fixture(params=FRAMEWORKS)
async def start(
    request: pytest.FixtureRequest, server: ServerProcess, namespace: str
) -> AsyncIterator[Start]:
    """`await start(**options)`: a client of the app, served with those options."""
    framework: str = request.param
    stack: list[Any] = []

    async def started(**options: Any) -> aiohttp.ClientSession:
        store = RedisSessions(url=server.url, namespace=namespace, wipe=0, cachetime=30)
        served = serve(framework, store, **options)
        base = await served.__aenter__()
        client = aiohttp.ClientSession(base, cookie_jar=aiohttp.DummyCookieJar())
        stack.append((served, client))
        return client

    yield started
    for served, client in reversed(stack):
        await client.close()
        await served.__aexit__(None, None, None)


def sid(token: str) -> dict[str, str]:
    return {"Cookie": f"sid={token}"}


async def login(client: aiohttp.ClientSession, user: str = "alice") -> dict[str, Any]:
    response = await client.post("/login", params={"user": user})
    assert response.status == 200
    answer: dict[str, Any] = await response.json()
    assert set_cookies(response)["sid"].value == answer["token"]
    return answer


async def test_login_sets_the_cookie_and_the_session_reads_back(start: Start) -> None:
    client = await start()
    token = (await login(client))["token"]
    me = await (await client.get("/whoami", headers=sid(token))).json()
    assert me == {"user": "alice", "data": {"n": 0}}
    anonymous = await client.get("/whoami")
    assert await anonymous.json() == {"user": None, "data": {}}
    assert "sid" not in set_cookies(anonymous)


async def test_logout_by_redirect_clears_the_cookie(start: Start) -> None:
    client = await start()
    token = (await login(client))["token"]
    response = await client.post("/logout", headers=sid(token), allow_redirects=False)
    assert response.status == 302
    assert set_cookies(response)["sid"]["max-age"] == "0"
    assert (await (await client.get("/whoami", headers=sid(token))).json())["user"] is None


async def test_a_streamed_response_saves_before_its_headers(start: Start) -> None:
    client = await start()
    token = (await login(client))["token"]
    assert await (await client.get("/stream", headers=sid(token))).read() == b"streamed"
    me = await (await client.get("/whoami", headers=sid(token))).json()
    assert me["data"] == {"n": 0, "streamed": True}


async def test_a_handler_that_fails_after_a_login_still_sends_the_new_cookie(
    start: Start,
) -> None:
    client = await start()
    response = await client.post("/fail")
    assert response.status == 500
    token = set_cookies(response)["sid"].value
    assert (await (await client.get("/whoami", headers=sid(token))).json())["user"] == "mallory"


async def test_bearer_tokens_work_and_get_no_cookie(start: Start) -> None:
    client = await start(rolling=True, max_age=600)
    token = (await login(client))["token"]
    response = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert (await response.json())["user"] == "alice"
    assert "sid" not in set_cookies(response)


async def test_csrf_refuses_cross_origin_and_tokenless_requests(start: Start) -> None:
    client = await start(csrf=True)
    tokenless = await client.post("/login")
    assert tokenless.status == 403
    assert "CSRF token missing" in await tokenless.text()
    crossed = await client.post("/whoami", headers={"Origin": "https://evil.example"})
    assert crossed.status == 403
    assert "Cross-site request refused" in await crossed.text()


async def test_an_anonymous_visitors_form_token_lets_the_login_through(start: Start) -> None:
    client = await start(csrf=True)
    form = await client.get("/token")
    key = set_cookies(form)["csrf"].value
    token = (await form.json())["csrf"]
    cookie = {"Cookie": f"csrf={key}"}
    login = await client.post("/login", data={"csrf_token": token}, headers=cookie)
    assert login.status == 200
    assert (await login.json())["token"]
    forged = await client.post("/login", data={"csrf_token": token + "x"}, headers=cookie)
    assert forged.status == 403


async def test_a_websocket_reads_its_session(start: Start) -> None:
    client = await start()
    token = (await login(client, "wendy"))["token"]
    async with client.ws_connect("/socket", headers=sid(token)) as ws:
        assert (await ws.receive_str()) == "wendy"
