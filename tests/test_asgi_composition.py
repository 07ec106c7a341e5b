"""ASGI apps composed around the session middleware, on uvicorn: a Starlette `Mount`
of a sub-app behind the middleware reads and writes the same session, and an outer
ASGI middleware that wraps the session middleware reads the session once the inner
app has run, while the changes are already in Redis when `http.response.start`
passes through it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import asgi_ext
from cached_sessions import RedisSessions
from cached_sessions.web import SessionEvent
from tests.cookies import set_cookies
from tests.web_apps import APP, ROUTES, MakeClient, _on_starlette, starlette_app

pytest_plugins = ("tests.web_apps",)  # the shared fixtures: framework, make_client
pytestmark = pytest.mark.parametrize("framework", ["asgi"])  # Starlette on uvicorn only
WAIT = 10.0  # the bound on waiting for the outer middleware to finish a request


def sid(token: str) -> dict[str, str]:
    return {"Cookie": f"sid={token}"}


async def log_in(client: Any, user: str) -> str:
    response = await client.post("/login", params={"user": user})
    assert response.status == 200, await response.text()
    return str((await response.json())["token"])


# A Mount behind the middleware


async def sub_me(request: Request) -> JSONResponse:
    session = await asgi_ext.get_session(request)
    return JSONResponse({"user": session.user_id, "data": dict(session), "where": "sub"})


async def sub_put(request: Request) -> JSONResponse:
    session = await asgi_ext.get_session(request)
    session.update(await request.json())
    return JSONResponse(dict(session))


async def raw_me(scope: Scope, receive: Receive, send: Send) -> None:
    """A plain ASGI app, no Starlette inside: it reads the session from the scope."""
    session = await asgi_ext.get_session(HTTPConnection(scope))
    await JSONResponse({"user": session.user_id, "where": "raw"})(scope, receive, send)


def mounted_app(store: RedisSessions, seen: list[SessionEvent], **options: Any) -> Starlette:
    sub = Starlette(routes=[Route("/me", sub_me), Route("/put", sub_put, methods=["POST"])])
    routes: list[Any] = [
        Route("/login", _on_starlette(ROUTES["/login"][1]), methods=["POST"]),
        Route("/me", _on_starlette(ROUTES["/me"][1])),
        Mount("/sub", app=sub),
        Mount("/raw", app=raw_me),
    ]
    settings = {"store": store, "app_name": APP, "secure": False, **options}
    return Starlette(routes=routes, middleware=[Middleware(asgi_ext.SessionMiddleware, **settings)])


async def test_a_mounted_sub_app_reads_and_writes_the_same_session(
    make_client: MakeClient,
) -> None:
    client = await make_client(app=mounted_app)
    token = await log_in(client, "carol")
    for path, where in (("/sub/me", "sub"), ("/raw/", "raw")):
        response = await client.get(path, headers=sid(token))
        assert response.status == 200, (path, await response.text())
        answer = await response.json()
        assert (answer["user"], answer["where"]) == ("carol", where), path

    written = await client.post("/sub/put", json={"color": "blue"}, headers=sid(token))
    assert written.status == 200 and (await written.json())["color"] == "blue"
    # Saved by the one middleware in front of both apps: the parent sees the change,
    # and in Redis, not only in this process.
    top = await (await client.get("/me", headers=sid(token))).json()
    assert top["user"] == "carol" and top["data"]["color"] == "blue"
    stored = await client.store.get(app=APP, token=token)
    assert stored is not None and stored["d"]["color"] == "blue"  # type: ignore[typeddict-item]
    # A Mount without the session: nobody there, and no cookie touched.
    anonymous = await client.get("/sub/me")
    assert (await anonymous.json())["user"] is None and set_cookies(anonymous) == {}


# An outer middleware around the session middleware


@dataclass
class Seen:
    """What the outer middleware saw of one request."""

    at_start: dict[str, Any] | None = None  # the session in Redis at http.response.start
    cookies_at_start: list[str] = field(default_factory=list)
    after: dict[str, Any] | None = None  # the session, read once the inner app returned
    done: asyncio.Event = field(default_factory=asyncio.Event)  # `after` is set

    async def finished(self) -> dict[str, Any]:
        """`after`, once the middleware has set it (the client may have the whole
        answer before the code after the inner app has run)."""
        await asyncio.wait_for(self.done.wait(), WAIT)
        assert self.after is not None
        return self.after


class Outer:
    """An ASGI middleware wrapped around the session middleware, as a logger or an
    audit layer is: it looks at Redis when the response starts, and reads the session
    after the inner app has run."""

    def __init__(self, app: ASGIApp, seen: list[Seen]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = Seen()
        self.seen.append(seen)
        connection = HTTPConnection(scope)

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                session = await asgi_ext.get_session(connection)
                if session.token:
                    store = asgi_ext.get_store(connection)
                    seen.at_start = dict(await store.get(app=APP, token=session.token) or {})
                seen.cookies_at_start = [
                    value.decode("latin-1")
                    for name, value in message.get("headers", [])
                    if name.lower() == b"set-cookie"
                ]
            await send(message)

        await self.app(scope, receive, watch)
        session = await asgi_ext.get_session(connection)
        seen.after = {"user": session.user_id, "data": dict(session)}
        seen.done.set()


async def test_an_outer_middleware_reads_the_session_and_the_commit_precedes_the_start(
    make_client: MakeClient,
) -> None:
    seen: list[Seen] = []

    def wrapped(store: RedisSessions, events: list[SessionEvent], **options: Any) -> Outer:
        return Outer(starlette_app(store, events, **options), seen)

    client = await make_client(cachetime=0, app=wrapped)
    token = await log_in(client, "dave")
    login = seen[-1]
    assert await login.finished() == {"user": "dave", "data": {"n": 0}}
    assert login.at_start is not None and login.at_start["d"] == {"n": 0}
    assert any(cookie.startswith(f"sid={token}") for cookie in login.cookies_at_start)

    for kind, path in (("plain", "/put"), ("streamed", "/stream"), ("file", "/file")):
        if kind == "plain":
            response = await client.post(path, json={"k": "v"}, headers=sid(token))
        else:
            response = await client.get(path, headers=sid(token))
        assert response.status == 200, (kind, await response.text())
        request = seen[-1]
        after = await request.finished()
        assert after["user"] == "dave", kind
        assert request.at_start is not None, kind
        # What the handler wrote is in Redis before the first byte of the answer.
        assert request.at_start["d"] == after["data"], (kind, request)
    assert after["data"] == {"n": 0, "k": "v", "streamed": True, "filed": True}

    # A page the inner app does not know: the outer layer still reads the session.
    missing = await client.get("/no-such-page", headers=sid(token))
    assert missing.status == 404
    assert await seen[-1].finished() == after
