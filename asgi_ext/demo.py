"""`python -m asgi_ext.demo`: the demo page of `aiohttp_ext.demo` on Starlette and uvicorn.

uvicorn runs the worker processes (two by default) on one port; each has its own
session cache, all share one Redis (REDIS_URL, --redis-url, else an embedded server
that this process starts and stops). Logging out everywhere in one worker logs the
user out in all of them at once. CSRF protection is on, with a token in every form;
the launcher refuses, in one line, a port already served and an unreachable Redis.
"""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from aiohttp_ext.demo import (
    account,
    log_in,
    log_out_others,
    login_form,
    refuse_to_start,
    revoke_device,
)
from cached_sessions import EmbeddedServer, RedisSessions

from . import SessionMiddleware, get_session

log = logging.getLogger("asgi_ext.demo")

APP_NAME = "demo"
URL_VARIABLE = "CACHED_SESSIONS_DEMO_URL"  # how the workers learn the Redis URL

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cached-sessions demo</title></head><body>
<h1>cached-sessions demo</h1>
<p id="worker">Served by the worker of pid {pid}</p>
{body}
</body></html>
"""


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(pid=os.getpid(), body=body), status_code=status)


async def index(request: Request) -> Response:
    session = await get_session(request)
    if session.user_id is None:
        return _page(await login_form(session))
    return _page(await account(session))


async def login(request: Request) -> Response:
    user = str((await request.form()).get("user", "")).strip()
    session = await get_session(request)
    problem = await log_in(session, user)
    if problem is not None:
        return _page(await login_form(session, problem), status=400)
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    await (await get_session(request)).destroy()
    return RedirectResponse("/", status_code=303)


async def revoke(request: Request) -> Response:
    handle = (await request.form()).get("handle")
    await revoke_device(await get_session(request), handle)
    return RedirectResponse("/", status_code=303)


async def logout_others(request: Request) -> Response:
    await log_out_others(await get_session(request))
    return RedirectResponse("/", status_code=303)


async def logout_everywhere(request: Request) -> Response:
    await (await get_session(request)).destroy_all()
    return RedirectResponse("/", status_code=303)


async def me(request: Request) -> Response:
    session = await get_session(request)
    return JSONResponse({"pid": os.getpid(), "user": session.user_id})


def make_app(redis_url: str, *, cachetime: float = 30) -> Starlette:
    """The demo app; its store starts and closes with the server's lifespan."""
    routes = [
        Route("/", index),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/devices/revoke", revoke, methods=["POST"]),
        Route("/logout-others", logout_others, methods=["POST"]),
        Route("/logout-everywhere", logout_everywhere, methods=["POST"]),
        Route("/api/me", me),
    ]
    app = Starlette(routes=routes)
    # Plain HTTP on loopback: the cookie cannot be Secure. Behind TLS keep secure=True.
    store = RedisSessions(url=redis_url, cachetime=cachetime)
    app.add_middleware(SessionMiddleware, store=store, app_name=APP_NAME, secure=False, csrf=True)
    return app


def worker_app() -> Starlette:
    """What each uvicorn worker imports (uvicorn needs an import string for workers)."""
    return make_app(os.environ[URL_VARIABLE])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m asgi_ext.demo", description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    arguments = parser.parse_args(argv)
    if arguments.workers < 1:
        parser.error("--workers must be at least 1")
    logging.basicConfig(level=logging.INFO, format="demo: %(message)s")
    refuse_to_start(arguments.host, arguments.port, arguments.redis_url)
    embedded = None if arguments.redis_url else EmbeddedServer()
    url = arguments.redis_url or embedded.start()  # type: ignore[union-attr]
    os.environ[URL_VARIABLE] = url
    try:
        uvicorn.run(
            "asgi_ext.demo:worker_app",
            factory=True,
            host=arguments.host,
            port=arguments.port,
            workers=arguments.workers,
        )
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
