"""The Secure-cookie trap: a Secure cookie set over plain HTTP for a host other than
localhost is dropped by the browser, so the login does not stick. The first such
response of the process logs one warning saying why and what to set; nothing is said
over HTTPS (here: behind a proxy the app trusts), for localhost, or with secure=False.
On aiohttp and on ASGI (Starlette on uvicorn), real servers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from cached_sessions import RedisSessions
from cached_sessions.web import SessionEvent, secure_trap
from tests.web_apps import MakeClient, build_app

pytest_plugins = ("tests.web_apps",)  # the `framework` fixture: aiohttp, then ASGI

LOGGER = "cached_sessions.web.secure_trap"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a process that has not warned yet."""
    monkeypatch.setattr(secure_trap, "_warned", False)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def test_one_warning_per_process_for_plain_http_to_another_host(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(secure=True)
    for _ in range(3):
        response = await client.post("/login", headers={"Host": "shop.example"})
        assert response.status == 200 and "__Host-sid" in response.cookies
    lines = warnings(caplog)
    assert len(lines) == 1, lines
    assert "'shop.example'" in lines[0] and "will not stick" in lines[0]
    assert "secure=False" in lines[0] and "X-Forwarded-Proto" in lines[0]


@pytest.mark.parametrize("host", ["localhost:8080", "127.0.0.1", "[::1]:80", "app.localhost"])
async def test_nothing_is_said_for_localhost(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    client = await make_client(secure=True)
    assert (await client.post("/login", headers={"Host": host})).status == 200
    assert warnings(caplog) == []


async def test_nothing_is_said_with_secure_false(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(secure=False)
    assert (await client.post("/login", headers={"Host": "shop.example"})).status == 200
    assert warnings(caplog) == []


async def test_nothing_is_said_for_a_read_nor_a_cleared_cookie(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(secure=True)
    host = {"Host": "shop.example"}
    assert (await client.get("/me", headers=host)).status == 200
    stale = {**host, "Cookie": "__Host-sid=" + "a" * 64}  # unknown: the cookie is cleared
    assert (await client.get("/me", headers=stale)).status == 200
    assert warnings(caplog) == []


def trusting_the_proxy(framework: str) -> Callable[..., Any]:
    """The app behind a TLS proxy, set up as the warning says: the original scheme
    comes from X-Forwarded-Proto (uvicorn trusts it from loopback by default)."""

    @web.middleware
    async def forwarded(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
        return await handler(request.clone(scheme=scheme))

    def build(store: RedisSessions, seen: list[SessionEvent], **options: Any) -> Any:
        app = build_app(framework, store, seen, **options)
        if framework == "aiohttp":
            app.middlewares.insert(0, forwarded)
        return app

    return build


async def test_nothing_is_said_over_https_behind_a_trusted_proxy(
    make_client: MakeClient, framework: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(secure=True, app=trusting_the_proxy(framework))
    proxied = {"Host": "shop.example", "X-Forwarded-Proto": "https"}
    assert (await client.post("/login", headers=proxied)).status == 200
    assert warnings(caplog) == []
    assert (await client.post("/login", headers={"Host": "shop.example"})).status == 200
    assert len(warnings(caplog)) == 1  # the same app, reached over plain HTTP
