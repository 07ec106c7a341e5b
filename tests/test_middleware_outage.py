"""The middleware while Redis is unreachable: the failure policy of the design brief.

Every test runs on aiohttp and on ASGI (Starlette on uvicorn), each on its real server,
with its own Redis server process (stopped and started again on the same port), never
the shared one, and leaves no process behind. The policy under test:

* by default (`on_unavailable="error"`) a request that needs the session gets a 503
  with `Retry-After` and a plain message, never a 500 or a traceback, and a login is
  not reported as done;
* with `on_unavailable="anonymous"` the request goes on anonymous and the handler can
  tell (`session.unavailable`); a write still fails with 503, never a fake success;
* a write the middleware makes at the end of the request fails with 503 as well,
  whatever the kind of response (returned, redirect, streamed, file);
* a WebSocket whose session cannot be read or saved is refused: aiohttp answers the
  handshake 503; an ASGI server refuses it, the middleware having closed it with 1013;
* once the server answers PING again, requests succeed within a second, with no
  restart of the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSServerHandshakeError, web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

import aiohttp_ext
import asgi_ext
from cached_sessions import RedisSessions
from tests.cookies import set_cookies
from tests.servers import ServerProcess, free_port
from tests.web_apps import Client, serve_app

pytest_plugins = ("tests.web_apps",)  # the `framework` fixture: aiohttp, then ASGI

APP = "outage"
Hook = Callable[[], Awaitable[None]]
HOOK = web.AppKey("outage_hook", Hook)  # what the handler calls between change and save

WAIT = 5.0  # the bound on every wait for something to happen
RECOVERY = 1.0  # requests succeed again within this long after the server answers PING


# A server of our own, and a check that it is gone afterwards


class OwnServer(ServerProcess):
    """A ServerProcess that remembers every process it started."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 10.0) -> None:
        try:
            super().start(timeout)
        finally:
            if self.process is not None:
                self.started.append(self.process)


@pytest.fixture
def own_server() -> Iterator[OwnServer]:
    server = OwnServer(os.environ.get("CACHED_SESSIONS_TEST_SERVER", "valkey"))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
    assert all(process.poll() is not None for process in server.started), "a server survived"
    assert not server.answers_ping()


# The app on aiohttp


async def whoami(request: web.Request) -> web.Response:
    session = await aiohttp_ext.get_session(request)
    return web.json_response(
        {"user": session.user_id, "data": dict(session), "unavailable": session.unavailable}
    )


async def login(request: web.Request) -> web.Response:
    session = await aiohttp_ext.get_session(request)
    await session.upgrade(request.query.get("user", "alice"))
    session["n"] = 0
    return web.json_response({"token": session.token})


async def logout(request: web.Request) -> web.Response:
    session = await aiohttp_ext.get_session(request)
    await session.destroy()
    return web.json_response({"logged_out": True})


async def logout_everywhere(request: web.Request) -> web.Response:
    session = await aiohttp_ext.get_session(request)
    await session.destroy_all()
    return web.json_response({"logged_out": True})


async def write_then_outage(request: web.Request) -> web.StreamResponse:
    """Changes the session, lets the test cut Redis off, then answers as `how` says."""
    session = await aiohttp_ext.get_session(request)
    if request.query.get("login"):
        await session.upgrade("mallory")
    session["changed"] = request.query.get("value", "yes")
    await request.app[HOOK]()
    how = request.query.get("how", "return")
    if how == "redirect":
        raise web.HTTPFound("/whoami")
    if how == "stream":
        response = web.StreamResponse()
        await response.prepare(request)  # the middleware saves here, before the headers
        await response.write(b"streamed")
        return response
    if how == "file":
        return web.FileResponse(Path(__file__))
    if how == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("connected")
        await ws.close()
        return ws
    return web.json_response({"changed": True})


async def socket(request: web.Request) -> web.WebSocketResponse:
    session = await aiohttp_ext.get_session(request)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(session.user_id or "anonymous")
    await ws.close()
    return ws


def aiohttp_app(store: RedisSessions, hook: Hook, **options: Any) -> web.Application:
    app = web.Application()
    aiohttp_ext.setup_sessions(app, store, app_name=APP, secure=False, **options)
    app[HOOK] = hook
    app.router.add_get("/whoami", whoami)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/logout-everywhere", logout_everywhere)
    app.router.add_route("*", "/write-then-outage", write_then_outage)
    app.router.add_get("/socket", socket)
    return app


# The same app on Starlette


async def s_whoami(request: Request) -> JSONResponse:
    session = await asgi_ext.get_session(request)
    return JSONResponse(
        {"user": session.user_id, "data": dict(session), "unavailable": session.unavailable}
    )


async def s_login(request: Request) -> JSONResponse:
    session = await asgi_ext.get_session(request)
    await session.upgrade(request.query_params.get("user", "alice"))
    session["n"] = 0
    return JSONResponse({"token": session.token})


async def s_logout(request: Request) -> JSONResponse:
    session = await asgi_ext.get_session(request)
    await session.destroy()
    return JSONResponse({"logged_out": True})


async def s_logout_everywhere(request: Request) -> JSONResponse:
    session = await asgi_ext.get_session(request)
    await session.destroy_all()
    return JSONResponse({"logged_out": True})


class Recorder:
    """An outer ASGI middleware that keeps every WebSocket message sent to the server."""

    def __init__(self, app: Any, sent: list[Message]) -> None:
        self.app = app
        self.sent = sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def record(message: Message) -> None:
            if message["type"].startswith("websocket."):
                self.sent.append(message)
            await send(message)

        await self.app(scope, receive, record)


def starlette_app(
    store: RedisSessions, hook: Hook, sent: list[Message] | None = None, **options: Any
) -> Starlette:
    async def write_then_outage(request: Request) -> Any:
        """Changes the session, lets the test cut Redis off, then answers as `how` says."""
        session = await asgi_ext.get_session(request)
        if request.query_params.get("login"):
            await session.upgrade("mallory")
        session["changed"] = request.query_params.get("value", "yes")
        await hook()
        how = request.query_params.get("how", "return")
        if how == "redirect":
            return RedirectResponse("/whoami", status_code=302)
        if how == "stream":

            async def body() -> AsyncIterator[bytes]:
                yield b"streamed"

            return StreamingResponse(body())  # the middleware saves before the headers
        if how == "file":
            return FileResponse(Path(__file__))
        return JSONResponse({"changed": True})

    async def socket_then_outage(websocket: WebSocket) -> None:
        session = await asgi_ext.get_session(websocket)
        session["changed"] = "yes"
        await hook()
        await websocket.accept()  # the middleware saves here, before the accept goes out
        await websocket.send_text("connected")
        await websocket.close()

    async def socket(websocket: WebSocket) -> None:
        session = await asgi_ext.get_session(websocket)
        await websocket.accept()
        await websocket.send_text(session.user_id or "anonymous")
        await websocket.close()

    routes: list[Any] = [
        Route("/whoami", s_whoami),
        Route("/login", s_login, methods=["POST"]),
        Route("/logout", s_logout, methods=["POST"]),
        Route("/logout-everywhere", s_logout_everywhere, methods=["POST"]),
        Route("/write-then-outage", write_then_outage, methods=["GET", "POST"]),
        WebSocketRoute("/socket-then-outage", socket_then_outage),
        WebSocketRoute("/socket", socket),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(
        asgi_ext.SessionMiddleware, store=store, app_name=APP, secure=False, **options
    )
    app.add_middleware(Recorder, sent=[] if sent is None else sent)
    return app


MakeClient = Callable[..., Awaitable[tuple[Client, RedisSessions]]]


@pytest.fixture
async def make_client(own_server: OwnServer, framework: str) -> AsyncIterator[MakeClient]:
    """`await make_client(cachetime=0, url=None, **options)`: a client of the outage app
    on `framework`'s real server, and the app's store."""

    async def stop_server() -> None:
        await asyncio.to_thread(own_server.stop)

    async with contextlib.AsyncExitStack() as stack:

        async def make(
            cachetime: float = 0,
            url: str | None = None,
            sent: list[Message] | None = None,
            **options: Any,
        ) -> tuple[Client, RedisSessions]:
            store = RedisSessions(
                url=url or own_server.url, namespace=f"o{uuid.uuid4().hex[:10]}", wipe=0,
                cachetime=cachetime,
            )  # fmt: skip
            if framework == "aiohttp":
                app: Any = aiohttp_app(store, stop_server, **options)
            else:
                app = starlette_app(store, stop_server, sent, **options)
            port = free_port()
            base = await stack.enter_async_context(serve_app(app, port))
            http = aiohttp.ClientSession(base, cookie_jar=aiohttp.DummyCookieJar())
            stack.push_async_callback(http.close)
            return Client(http, store, port, framework), store

        yield make


# Helpers


def sid(token: str) -> dict[str, str]:
    return {"Cookie": f"sid={token}"}


async def login_as(client: Client, user: str = "alice") -> str:
    response = await client.post("/login", params={"user": user})
    assert response.status == 200, await response.text()
    token: str = (await response.json())["token"]
    assert set_cookies(response)["sid"].value == token
    return token


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT} s"
        await asyncio.sleep(0.01)


async def stop(server: OwnServer, store: RedisSessions) -> None:
    """Stop the server and wait until the store's cache knows (a cache hit is allowed
    while the subscription still looks healthy; it is not what these tests are about)."""
    await asyncio.to_thread(server.stop)
    if store.cache_stats()["enabled"]:
        await until(lambda: not store.cache_stats()["subscribed"], "the cache saw the loss")


async def assert_unavailable(response: Any) -> None:
    """A 503 that says what happened and when to retry, and touches no cookie."""
    body = await response.text()
    assert response.status == 503, (response.status, body)
    assert int(response.headers["Retry-After"]) >= 1
    assert response.content_type == "text/plain"
    assert "unavailable" in body.lower() and "retry" in body.lower(), body
    assert "Traceback" not in body and "Error" not in body, body
    assert "Set-Cookie" not in response.headers, response.headers.getall("Set-Cookie")


async def recover(server: OwnServer, client: Client, token: str) -> tuple[Any, float, int]:
    """Start the server; poll until a session request succeeds. Returns the answer,
    the seconds it took after the server answered PING, and the 503s seen meanwhile."""
    await asyncio.to_thread(server.start)  # returns once the server answers PING
    answered = time.monotonic()
    failures = 0
    while True:
        response = await client.get("/whoami", headers=sid(token))
        elapsed = time.monotonic() - answered
        if response.status == 200:
            return response, elapsed, failures
        assert response.status == 503, (response.status, await response.text())
        failures += 1
        assert elapsed < WAIT, f"still 503 {elapsed:.2f} s after the server came back"
        await asyncio.sleep(0.01)


CACHETIMES = pytest.mark.parametrize("cachetime", [0, 30], ids=["no-cache", "cache"])


# on_unavailable="error" (the default)


@CACHETIMES
async def test_error_mode_answers_503_and_recovers_within_a_second(
    make_client: MakeClient, own_server: OwnServer, cachetime: float
) -> None:
    client, store = await make_client(cachetime)
    token = await login_as(client)
    for _ in range(2):  # the second read is a cache hit when there is a cache
        me = await (await client.get("/whoami", headers=sid(token))).json()
        assert me == {"user": "alice", "data": {"n": 0}, "unavailable": False}

    await stop(own_server, store)
    await assert_unavailable(await client.get("/whoami", headers=sid(token)))
    # A login is a write: refused, and no new token handed out.
    await assert_unavailable(await client.post("/login", params={"user": "bob"}))
    await assert_unavailable(await client.post("/login", headers=sid(token)))
    # A page that needs no session still works: an anonymous request costs no Redis call.
    plain = await client.get("/whoami")
    assert plain.status == 200 and (await plain.json())["user"] is None

    # A burst larger than the connection pool fails fast, and leaks no connection.
    started = time.monotonic()
    burst = await asyncio.gather(*(client.get("/whoami", headers=sid(token)) for _ in range(100)))
    assert [response.status for response in burst] == [503] * 100
    assert time.monotonic() - started < WAIT

    response, elapsed, failures = await recover(own_server, client, token)
    print(f"recovered {elapsed * 1000:.1f} ms after PING, {failures} answers 503 meanwhile")
    assert elapsed < RECOVERY, f"took {elapsed:.2f} s and {failures} answers 503 to recover"
    # No persistence: the session is gone, so the cookie is cleared.
    assert (await response.json())["user"] is None
    assert set_cookies(response)["sid"]["max-age"] == "0"
    fresh = await login_as(client, "alice")
    me = await (await client.get("/whoami", headers=sid(fresh))).json()
    assert me["user"] == "alice"
    if cachetime:  # and the cache comes back by itself
        await until(lambda: store.cache_stats()["subscribed"], "the cache subscribed again")


@CACHETIMES
async def test_error_mode_logout_during_an_outage_is_refused(
    make_client: MakeClient, own_server: OwnServer, cachetime: float
) -> None:
    client, store = await make_client(cachetime)
    token = await login_as(client)
    await stop(own_server, store)
    for path in ("/logout", "/logout-everywhere"):
        await assert_unavailable(await client.post(path, headers=sid(token)))


# on_unavailable="anonymous"


@CACHETIMES
async def test_anonymous_mode_goes_on_and_the_handler_can_tell(
    make_client: MakeClient, own_server: OwnServer, cachetime: float
) -> None:
    client, store = await make_client(cachetime, on_unavailable="anonymous")
    token = await login_as(client)
    await stop(own_server, store)

    response = await client.get("/whoami", headers=sid(token))
    assert response.status == 200
    assert await response.json() == {"user": None, "data": {}, "unavailable": True}
    # The user is not logged out by an outage: the cookie is left alone.
    assert "Set-Cookie" not in response.headers

    # Writes are not faked: a login fails, and hands out no token.
    await assert_unavailable(await client.post("/login", headers=sid(token)))
    await assert_unavailable(await client.post("/login"))

    response, elapsed, _ = await recover(own_server, client, token)
    assert elapsed < RECOVERY
    assert await response.json() == {"user": None, "data": {}, "unavailable": False}


# A write that fails at the end of the request


async def raw_exchange(client: Client, request_head: str) -> tuple[int, dict[str, str], bytes]:
    """One request over a plain socket: the status, the headers, the body exactly as sent."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request_head.encode("latin-1"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


MESSAGE = b"The session store is unavailable. Please retry in a moment.\n"


def assert_raw_unavailable(status: int, headers: dict[str, str], body: bytes) -> None:
    """The 503 as a client parses it: framing included."""
    assert status == 503, (status, headers, body)
    assert int(headers["retry-after"]) >= 1
    assert "set-cookie" not in headers
    if "content-length" in headers:
        assert "transfer-encoding" not in headers, headers
        assert len(body) == int(headers["content-length"]), (
            f"Content-Length says {headers['content-length']} bytes, {len(body)} were sent:"
            f" {body!r}"
        )
    assert body == MESSAGE, body


@pytest.mark.parametrize("how", ["return", "redirect", "stream", "file"])
@pytest.mark.parametrize("on_unavailable", ["error", "anonymous"])
@CACHETIMES
async def test_a_save_that_fails_at_the_end_of_the_request_answers_503(
    make_client: MakeClient,
    own_server: OwnServer,
    how: str,
    on_unavailable: str,
    cachetime: float,
) -> None:
    client, _ = await make_client(cachetime, on_unavailable=on_unavailable)
    token = await login_as(client)
    # The handler changes the session, then the server is stopped (and waited for)
    # before the handler answers: the middleware's save is the first call to fail.
    status, headers, body = await raw_exchange(
        client,
        f"POST /write-then-outage?how={how} HTTP/1.1\r\nHost: test\r\nCookie: sid={token}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert_raw_unavailable(status, headers, body)


async def assert_socket_refused(
    client: Client, framework: str, sent: list[Message], path: str, token: str
) -> None:
    """The handshake is refused: aiohttp answers 503; on ASGI the middleware closes the
    socket with 1013 (try again later) before any accept, which the server turns into a
    refusal of the handshake."""
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect(path, headers=sid(token))
    if framework == "aiohttp":
        assert refused.value.status == 503
    else:
        assert refused.value.status != 101
        assert [message["type"] for message in sent] == ["websocket.close"], sent
        assert sent[0]["code"] == 1013


@pytest.mark.parametrize("on_unavailable", ["error", "anonymous"])
async def test_a_websocket_whose_save_fails_is_refused(
    make_client: MakeClient, own_server: OwnServer, framework: str, on_unavailable: str
) -> None:
    sent: list[Message] = []
    client, _ = await make_client(sent=sent, on_unavailable=on_unavailable)
    token = await login_as(client)
    path = "/write-then-outage?how=websocket" if framework == "aiohttp" else "/socket-then-outage"
    await assert_socket_refused(client, framework, sent, path, token)


@CACHETIMES
async def test_a_websocket_during_an_outage_is_refused_and_recovers(
    make_client: MakeClient, own_server: OwnServer, framework: str, cachetime: float
) -> None:
    sent: list[Message] = []
    client, store = await make_client(cachetime, sent=sent)
    token = await login_as(client)
    async with client.ws_connect("/socket", headers=sid(token)) as ws:
        assert await ws.receive_str() == "alice"
    sent.clear()
    await stop(own_server, store)
    await assert_socket_refused(client, framework, sent, "/socket", token)

    await recover(own_server, client, token)
    fresh = await login_as(client, "bob")
    async with client.ws_connect("/socket", headers=sid(fresh)) as ws:
        assert await ws.receive_str() == "bob"


@pytest.mark.parametrize("how", ["return", "redirect"])
async def test_a_login_whose_save_fails_hands_out_no_token(
    make_client: MakeClient, own_server: OwnServer, how: str
) -> None:
    client, _ = await make_client()
    response = await client.post(
        "/write-then-outage", params={"how": how, "login": "1"}, allow_redirects=False
    )
    await assert_unavailable(response)


# Logging out while the store is away (anonymous mode)


class Cutoff:
    """A TCP relay in front of the server: `cut()` makes Redis unreachable while its
    data lives on, `mend()` makes it reachable again on the same address."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def mend(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()
            self._writers.discard(sink)


@pytest.fixture
async def cutoff(own_server: OwnServer) -> AsyncIterator[Cutoff]:
    relay = Cutoff(own_server.port)
    await relay.mend()
    yield relay
    await relay.cut()


@pytest.mark.parametrize("path", ["/logout", "/logout-everywhere"])
@CACHETIMES
async def test_anonymous_mode_logout_during_an_outage_is_not_reported_as_done(
    make_client: MakeClient, cutoff: Cutoff, path: str, cachetime: float
) -> None:
    client, store = await make_client(cachetime, url=cutoff.url, on_unavailable="anonymous")
    token = await login_as(client)
    await cutoff.cut()
    if cachetime:
        await until(lambda: not store.cache_stats()["subscribed"], "the cache saw the loss")
    response = await client.post(path, headers=sid(token))
    status, cleared = response.status, "sid" in set_cookies(response)
    await cutoff.mend()
    still = (await (await client.get("/whoami", headers=sid(token))).json())["user"]
    assert status == 503, (
        f"logout during an outage answered {status}"
        f"{' and cleared the cookie' if cleared else ''}, yet the session was never killed:"
        f" once Redis is reachable again, the old cookie still logs in as {still!r}"
    )
    assert not cleared
