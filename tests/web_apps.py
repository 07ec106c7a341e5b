"""One app, written for both adapters, and a real server for each: the fixtures of the
behaviour tests that run on aiohttp and on ASGI (Starlette on uvicorn) alike.

`serve(framework, store, **options)` starts the app on a free loopback port and
yields its base URL; the options are the adapters' shared keyword options.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import aiohttp_ext
import asgi_ext
from cached_sessions import RedisSessions
from tests.servers import free_port

APP = "shop"
FRAMEWORKS = ("aiohttp", "asgi")


# The app on aiohttp


async def _a_whoami(request: web.Request) -> web.Response:
    session = await aiohttp_ext.get_session(request)
    return web.json_response({"user": session.user_id, "data": dict(session)})


async def _a_login(request: web.Request) -> web.Response:
    session = await aiohttp_ext.get_session(request)
    await session.upgrade(request.query.get("user", "alice"))
    session["n"] = 0
    return web.json_response({"token": session.token, "csrf": await session.csrf_token()})


async def _a_token(request: web.Request) -> web.Response:
    session = await aiohttp_ext.get_session(request)
    return web.json_response({"csrf": await session.csrf_token()})


async def _a_logout(request: web.Request) -> web.Response:
    await (await aiohttp_ext.get_session(request)).destroy()
    raise web.HTTPFound("/whoami")


async def _a_stream(request: web.Request) -> web.StreamResponse:
    session = await aiohttp_ext.get_session(request)
    session["streamed"] = True
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"streamed")
    return response


async def _a_fail(request: web.Request) -> web.Response:
    await (await aiohttp_ext.get_session(request)).upgrade("mallory")
    raise RuntimeError("the handler failed after the login")


async def _a_socket(request: web.Request) -> web.WebSocketResponse:
    session = await aiohttp_ext.get_session(request)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(session.user_id or "anonymous")
    await ws.close()
    return ws


def aiohttp_app(store: RedisSessions, **options: Any) -> web.Application:
    app = web.Application()
    aiohttp_ext.setup_sessions(app, store, app_name=APP, secure=False, **options)
    app.router.add_get("/whoami", _a_whoami)
    app.router.add_post("/whoami", _a_whoami)
    app.router.add_post("/login", _a_login)
    app.router.add_post("/logout", _a_logout)
    app.router.add_get("/token", _a_token)
    app.router.add_get("/stream", _a_stream)
    app.router.add_post("/fail", _a_fail)
    app.router.add_get("/socket", _a_socket)
    return app


# The same app on Starlette


async def _s_whoami(request: Request) -> JSONResponse:
    session = await asgi_ext.get_session(request)
    return JSONResponse({"user": session.user_id, "data": dict(session)})


async def _s_login(request: Request) -> JSONResponse:
    session = await asgi_ext.get_session(request)
    await session.upgrade(request.query_params.get("user", "alice"))
    session["n"] = 0
    return JSONResponse({"token": session.token, "csrf": await session.csrf_token()})


async def _s_token(request: Request) -> JSONResponse:
    session = await asgi_ext.get_session(request)
    return JSONResponse({"csrf": await session.csrf_token()})


async def _s_logout(request: Request) -> RedirectResponse:
    await (await asgi_ext.get_session(request)).destroy()
    return RedirectResponse("/whoami", status_code=302)


async def _s_stream(request: Request) -> StreamingResponse:
    session = await asgi_ext.get_session(request)
    session["streamed"] = True

    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"

    return StreamingResponse(body())


async def _s_fail(request: Request) -> JSONResponse:
    await (await asgi_ext.get_session(request)).upgrade("mallory")
    raise RuntimeError("the handler failed after the login")


async def _s_socket(websocket: WebSocket) -> None:
    session = await asgi_ext.get_session(websocket)
    await websocket.accept()
    await websocket.send_text(session.user_id or "anonymous")
    await websocket.close()


def starlette_app(store: RedisSessions, **options: Any) -> Starlette:
    routes = [
        Route("/whoami", _s_whoami, methods=["GET", "POST"]),
        Route("/login", _s_login, methods=["POST"]),
        Route("/logout", _s_logout, methods=["POST"]),
        Route("/token", _s_token),
        Route("/stream", _s_stream),
        Route("/fail", _s_fail, methods=["POST"]),
        WebSocketRoute("/socket", _s_socket),
    ]
    settings = {"store": store, "app_name": APP, "secure": False, **options}
    return Starlette(routes=routes, middleware=[Middleware(asgi_ext.SessionMiddleware, **settings)])


# Real servers


@asynccontextmanager
async def serve(framework: str, store: RedisSessions, **options: Any) -> AsyncIterator[str]:
    """The app on `framework`'s real server; yields its base URL."""
    port = free_port()
    if framework == "aiohttp":
        runner = web.AppRunner(aiohttp_app(store, **options))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()
        return
    config = uvicorn.Config(
        starlette_app(store, **options), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
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
