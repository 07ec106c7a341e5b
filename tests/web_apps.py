"""One app, written once for both adapters, a real server for each, and the fixtures
of the behaviour tests that run on aiohttp and on ASGI (Starlette on uvicorn) alike.

The routes are framework-neutral handlers, `async def (session, call) -> answer`,
wrapped for each framework; only what is a framework's own (a streamed or file
response, a WebSocket, a crashing handler) is written twice. `serve(framework, store,
**options)` starts the app on a free loopback port with the adapters' shared keyword
options; the `make_client` fixture gives a client of it, once per framework.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import aiohttp_ext
import asgi_ext
from cached_sessions import InvalidInputError, RedisSessions
from cached_sessions.web import AnonymousSessionError, Session, SessionEvent
from tests.conftest import Deployment
from tests.servers import free_port

APP = "shop"
FRAMEWORKS = ("aiohttp", "asgi")
LOGGER = {"aiohttp": "aiohttp_ext.sessions", "asgi": "asgi_ext.sessions"}
FILE = Path(__file__)
ALL_METHODS = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND",
    "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "PURGE", "REPORT", "SEARCH",
    "MERGE",
]  # fmt: skip


# The app, framework-neutral


@dataclass(frozen=True)
class Call:
    """What a neutral handler reads of its request."""

    query: Mapping[str, str]
    body: bytes
    store: RedisSessions


@dataclass(frozen=True)
class Reply:
    body: Any
    status: int = 200


@dataclass(frozen=True)
class Redirect:
    location: str


Answer = Reply | Redirect
Handler = Callable[[Session, Call], Awaitable[Answer]]


async def me(session: Session, call: Call) -> Answer:
    return Reply(
        {
            "user": session.user_id,
            "data": dict(session),
            "is_new": session.is_new,
            "unavailable": session.unavailable,
            "meta": session.meta,
        }
    )


async def login(session: Session, call: Call) -> Answer:
    """Log in as `user` (alice), with `ttl` if given, keeping the data unless `keep=0`;
    `org` (JSON) is stored too."""
    ttl = call.query.get("ttl")
    keep = call.query.get("keep") != "0"
    await session.upgrade(call.query.get("user", "alice"), ttl=int(ttl) if ttl else None, keep=keep)
    session["n"] = 0
    if "org" in call.query:
        session["org"] = json.loads(call.query["org"])
    return Reply({"token": session.token, "csrf": await session.csrf_token()})


async def login_redirect(session: Session, call: Call) -> Answer:
    await session.upgrade(call.query.get("user", "alice"))
    session["greeting"] = "welcome"
    return Redirect("/me")


async def form(session: Session, call: Call) -> Answer:
    return Reply({"csrf": await session.csrf_token(), "user": session.user_id})


async def put(session: Session, call: Call) -> Answer:
    for key, value in json.loads(call.body).items():
        if value is None:
            del session[key]
        else:
            session[key] = value
    return Reply(dict(session))


async def change(session: Session, call: Call) -> Answer:
    """Set the save policy (`policy`) and a key (`key` = `value`)."""
    policy = call.query.get("policy")
    if policy:
        session.save_policy = policy  # type: ignore[assignment]
    if call.query.get("key"):
        session[call.query["key"]] = call.query.get("value", "x")
    return Reply({"ok": True})


async def bad_value(session: Session, call: Call) -> Answer:
    try:
        session["bad"] = [1, 2**53]
    except InvalidInputError as error:
        return Reply({"error": str(error)}, 400)
    return Reply({"error": None})


async def anonymous_write(session: Session, call: Call) -> Answer:
    try:
        session["x"] = 1
    except AnonymousSessionError as error:
        return Reply({"error": str(error)}, 400)
    return Reply({"error": None})


async def logout(session: Session, call: Call) -> Answer:
    await session.destroy()
    return Redirect("/me")


async def logout_everywhere(session: Session, call: Call) -> Answer:
    await session.destroy_all()
    return Reply({"ok": True})


async def kill_by(session: Session, call: Call) -> Answer:
    killed = await session.kill_by("org", json.loads(call.query["value"]))
    return Reply({"killed": killed, "me": session.user_id})


async def others(session: Session, call: Call) -> Answer:
    """The store's helpers, through the session and through `get_store`."""
    return Reply(
        {
            "mine": len(await session.soid()),
            "active": await session.activity(),
            "recent": len(await session.soapp()),
            "killed": (await call.store.killsoid(app=APP, id="bob"))["kill"],
            "store": id(call.store),
        }
    )


async def devices(session: Session, call: Call) -> Answer:
    return Reply({"devices": await session.devices()})


async def revoke(session: Session, call: Call) -> Answer:
    return Reply({"revoked": await session.revoke(call.query["handle"]), "me": session.user_id})


async def destroy_others(session: Session, call: Call) -> Answer:
    return Reply({"killed": await session.destroy_others()})


async def flash(session: Session, call: Call) -> Answer:
    """Flash `message` (in `category` if given), then redirect to the page that shows it."""
    session.flash(call.query["message"], call.query.get("category", "info"))
    return Redirect("/flashes")


async def flashes(session: Session, call: Call) -> Answer:
    return Reply({"flashes": session.pop_flashes()})


async def save_twice(session: Session, call: Call) -> Answer:
    """Writes, saves, writes again: one request, at most one session."""
    session["first"] = 1
    await session.save()
    session["second"] = 2
    return Reply({"token": session.token})


ROUTES: dict[str, tuple[list[str], Handler]] = {
    "/me": (ALL_METHODS, me),
    "/login": (["POST"], login),
    "/login-redirect": (["POST"], login_redirect),
    "/form": (["GET"], form),
    "/put": (["POST"], put),
    "/change": (["POST"], change),
    "/bad-value": (["POST"], bad_value),
    "/anonymous-write": (["POST"], anonymous_write),
    "/logout": (["POST"], logout),
    "/logout-everywhere": (["POST"], logout_everywhere),
    "/kill-by": (["POST"], kill_by),
    "/others": (["GET"], others),
    "/devices": (["GET"], devices),
    "/revoke": (["POST"], revoke),
    "/destroy-others": (["POST"], destroy_others),
    "/flash": (["POST"], flash),
    "/flashes": (["GET"], flashes),
    "/save-twice": (["POST"], save_twice),
}


# The app on aiohttp


def _on_aiohttp(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def route(request: web.Request) -> web.Response:
        session = await aiohttp_ext.get_session(request)
        call = Call(request.query, await request.read(), aiohttp_ext.get_store(request))
        answer = await handler(session, call)
        if isinstance(answer, Redirect):
            raise web.HTTPFound(answer.location)
        return web.json_response(answer.body, status=answer.status)

    return route


async def _a_stream(request: web.Request) -> web.StreamResponse:
    session = await aiohttp_ext.get_session(request)
    session["streamed"] = True
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"streamed")
    return response


async def _a_file(request: web.Request) -> web.FileResponse:
    session = await aiohttp_ext.get_session(request)
    session["filed"] = True
    return web.FileResponse(FILE)


async def _a_fail(request: web.Request) -> web.Response:
    session = await aiohttp_ext.get_session(request)
    await session.upgrade("mallory")
    session["n"] = 1
    raise RuntimeError("the handler failed after the login")


async def _a_socket(request: web.Request) -> web.WebSocketResponse:
    session = await aiohttp_ext.get_session(request)
    session["socket"] = True
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(session.user_id or "anonymous")
    await ws.close()
    return ws


def aiohttp_app(
    store: RedisSessions,
    seen: list[SessionEvent],
    client_max_size: int = 1024**2,
    **options: Any,
) -> web.Application:
    app = web.Application(client_max_size=client_max_size)
    settings = {"app_name": APP, "secure": False, **options}
    events = aiohttp_ext.setup_sessions(app, store, **settings)

    async def record(request: web.Request, event: SessionEvent) -> None:
        seen.append(event)

    for kind in ("missed", "invalid", "expired", "created", "destroyed"):
        getattr(events, f"on_session_{kind}").append(record)
    for path, (methods, handler) in ROUTES.items():
        for method in methods if methods != ALL_METHODS else ["*"]:
            app.router.add_route(method, path, _on_aiohttp(handler))
    app.router.add_get("/stream", _a_stream)
    app.router.add_get("/file", _a_file)
    app.router.add_post("/fail", _a_fail)
    app.router.add_get("/socket", _a_socket)
    return app


# The same app on Starlette


def _on_starlette(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def route(request: Request) -> Response:
        session = await asgi_ext.get_session(request)
        call = Call(request.query_params, await request.body(), asgi_ext.get_store(request))
        answer = await handler(session, call)
        if isinstance(answer, Redirect):
            return RedirectResponse(answer.location, status_code=302)
        return JSONResponse(answer.body, status_code=answer.status)

    return route


async def _s_stream(request: Request) -> StreamingResponse:
    session = await asgi_ext.get_session(request)
    session["streamed"] = True

    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"

    return StreamingResponse(body())


async def _s_file(request: Request) -> FileResponse:
    session = await asgi_ext.get_session(request)
    session["filed"] = True
    return FileResponse(FILE)


async def _s_fail(request: Request) -> Response:
    session = await asgi_ext.get_session(request)
    await session.upgrade("mallory")
    session["n"] = 1
    raise RuntimeError("the handler failed after the login")


async def _s_socket(websocket: WebSocket) -> None:
    session = await asgi_ext.get_session(websocket)
    session["socket"] = True
    await websocket.accept()
    await websocket.send_text(session.user_id or "anonymous")
    await websocket.close()


def starlette_app(store: RedisSessions, seen: list[SessionEvent], **options: Any) -> Starlette:
    events = asgi_ext.SessionEvents()

    async def record(request: Any, event: SessionEvent) -> None:
        seen.append(event)

    for kind in ("missed", "invalid", "expired", "created", "destroyed"):
        getattr(events, f"on_session_{kind}").append(record)
    routes: list[Any] = [
        Route(path, _on_starlette(handler), methods=methods)
        for path, (methods, handler) in ROUTES.items()
    ]
    routes += [
        Route("/stream", _s_stream),
        Route("/file", _s_file),
        Route("/fail", _s_fail, methods=["POST"]),
        WebSocketRoute("/socket", _s_socket),
    ]
    settings = {"store": store, "app_name": APP, "secure": False, "events": events, **options}
    return Starlette(routes=routes, middleware=[Middleware(asgi_ext.SessionMiddleware, **settings)])


# Real servers


@asynccontextmanager
async def serve_app(app: Any, port: int) -> AsyncIterator[str]:
    """An aiohttp Application on aiohttp's server, anything else on uvicorn."""
    if isinstance(app, web.Application):
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()
        return
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def build_app(
    framework: str, store: RedisSessions, seen: list[SessionEvent], **options: Any
) -> Any:
    if framework == "aiohttp":
        return aiohttp_app(store, seen, **options)
    return starlette_app(store, seen, **options)


@asynccontextmanager
async def serve(framework: str, store: RedisSessions, **options: Any) -> AsyncIterator[str]:
    """The app on `framework`'s real server; yields its base URL."""
    async with serve_app(build_app(framework, store, [], **options), free_port()) as url:
        yield url


# Clients


@dataclass
class Client:
    """A client of one served app. It keeps no cookies: every request says which it
    carries. Each response's body is read before it is returned."""

    http: aiohttp.ClientSession
    store: RedisSessions
    port: int
    framework: str
    events: list[SessionEvent] = field(default_factory=list)
    host: str = "127.0.0.1"

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await self.http.request(method, path, **kwargs)
        await response.read()
        return response

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kwargs)

    def ws_connect(self, path: str, **kwargs: Any) -> Any:
        return self.http.ws_connect(path, **kwargs)


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_client(
    framework: str, deployment: Deployment, namespace: str
) -> AsyncIterator[MakeClient]:
    """`await make_client(cachetime=30, url=None, app=None, **options)`: a client of the
    shared app (or of `app(store, events, **options)`) on `framework`'s real server."""
    async with AsyncExitStack() as stack:

        async def make(
            cachetime: float = 30,
            url: str | None = None,
            app: Callable[..., Any] | None = None,
            **options: Any,
        ) -> Client:
            store = RedisSessions(
                url=url or deployment.url, namespace=namespace, wipe=0, cachetime=cachetime
            )
            seen: list[SessionEvent] = []
            built = (app or (lambda *a, **o: build_app(framework, *a, **o)))(store, seen, **options)
            port = free_port()
            base = await stack.enter_async_context(serve_app(built, port))
            http = aiohttp.ClientSession(base, cookie_jar=aiohttp.DummyCookieJar())
            stack.push_async_callback(http.close)
            return Client(http, store, port, framework, seen)

        yield make
