"""One HTTP worker under load: `python -m benchmarks.worker FRAMEWORK CONFIG PORT URL NS`.

The same handler in every configuration reads one session value (`n`) and answers
`n=<value>`. On aiohttp:

* `bare`: no session layer (the ceiling);
* `middleware`: a middleware that only reads the session cookie (the way this
  project reads it): the floor of what a middleware-based cookie session layer costs;
* `aiohttp-session`: aiohttp-session with its RedisStorage;
* `cache-off`, `cache-on`: this project, without and with the per-process cache.

On ASGI, under uvicorn with its defaults (uvloop and httptools when installed):
`starlette` (bare), `starsessions` (its SessionMiddleware over its RedisStore) and
this project's `asgi_ext.SessionMiddleware` with the cache off and on.

This project's aiohttp configurations also serve the mixed load's writes: `POST /login`
(a new session for the user in `X-User`), `POST /logout` and `POST /update` (one data
key changed). A request carrying `X-User` gets it back, so a load generator can tell
whose response it reads.

Several processes share the port (SO_REUSEPORT). The process prints `ready PID` once it
listens, and `stats {json}` (its cache counters and the requests it served) on SIGUSR1.
`--pyinstrument FILE` profiles it while it runs (profiling.py prefers py-spy).

These apps are the benchmark's own, not the tests' (tests/web_apps.py): the tests' app
exercises every feature, these measure one read, and tests never import benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from cached_sessions import RedisSessions

CONFIGS = {
    "aiohttp": ("bare", "middleware", "aiohttp-session", "cache-off", "cache-on"),
    "asgi": ("starlette", "starsessions", "cache-off", "cache-on"),
}
APP_NAME = "bench"
COOKIE = "sid"  # this project's cookie
AIOHTTP_SESSION_COOKIE = "AIOHTTP_SESSION"
STARSESSIONS_COOKIE = "starsessions"
STARSESSIONS_LIFETIME = 7200  # seconds, as long as the aiohttp-session rows' keys live
CACHETIME = 300.0

COUNTS: Counter[str] = Counter()
STORES: list[RedisSessions] = []


def store(url: str, namespace: str, config: str) -> RedisSessions:
    cachetime = CACHETIME if config == "cache-on" else 0
    made = RedisSessions(url=url, namespace=namespace, wipe=0, cachetime=cachetime)
    STORES.append(made)
    return made


def starsessions_prefix(namespace: str) -> str:
    """The Redis key prefix of starsessions' sessions in this run's namespace."""
    return f"starsessions.{namespace}."


def stats() -> str:
    cache = STORES[0].cache_stats() if STORES else {"enabled": False}
    return "stats " + json.dumps({"requests": dict(COUNTS), "cache": cache})


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# aiohttp

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COOKIE_KEY = web.RequestKey("bench.cookie", str)


def _answer(request: web.Request, text: str, kind: str = "read") -> web.Response:
    COUNTS[kind] += 1
    user = request.headers.get("X-User")
    return web.Response(text=text, headers=None if user is None else {"X-User": user})


def aiohttp_app(config: str, url: str, namespace: str) -> web.Application:
    if config == "bare":

        async def bare(request: web.Request) -> web.Response:
            return _answer(request, "n=0")

        app = web.Application()
        app.router.add_get("/", bare)
    elif config == "middleware":
        from aiohttp_ext.cookies import request_cookie

        @web.middleware
        async def cookie(request: web.Request, handler: Handler) -> web.StreamResponse:
            request[COOKIE_KEY] = request_cookie(request, COOKIE) or ""
            return await handler(request)

        async def read(request: web.Request) -> web.Response:
            return _answer(request, f"n={len(request[COOKIE_KEY]) and 1}")

        app = web.Application(middlewares=[cookie])
        app.router.add_get("/", read)
    elif config == "aiohttp-session":
        app = _aiohttp_session_app(url, f"{AIOHTTP_SESSION_COOKIE}_{namespace}")
    else:
        app = _cached_sessions_app(store(url, namespace, config))
    return app


def _aiohttp_session_app(url: str, cookie_name: str) -> web.Application:
    import aiohttp_session
    from aiohttp_session.redis_storage import RedisStorage
    from redis.asyncio import Redis

    async def read(request: web.Request) -> web.Response:
        session = await aiohttp_session.get_session(request)
        return _answer(request, f"n={session.get('n')}")

    async def close_client(_: web.Application) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = web.Application()
    client = Redis.from_url(url)
    aiohttp_session.setup(app, RedisStorage(client, cookie_name=cookie_name, httponly=True))
    app.cleanup_ctx.append(close_client)
    app.router.add_get("/", read)
    return app


def _cached_sessions_app(sessions: RedisSessions) -> web.Application:
    from aiohttp_ext import get_session, setup_sessions

    async def read(request: web.Request) -> web.Response:
        session = await get_session(request)
        return _answer(request, f"n={session.get('n')}")

    async def login(request: web.Request) -> web.Response:
        await (await get_session(request)).upgrade(request.headers.get("X-User", "anonymous"))
        return _answer(request, "in", "login")

    async def logout(request: web.Request) -> web.Response:
        await (await get_session(request)).destroy()
        return _answer(request, "out", "logout")

    async def update(request: web.Request) -> web.Response:
        session = await get_session(request)
        if session.user_id is None:  # logged out by another request meanwhile
            COUNTS["update_anonymous"] += 1
        else:
            session["n"] = int(session.get("n") or 0) + 1
        return _answer(request, "ok", "update")

    app = web.Application()
    setup_sessions(app, sessions, app_name=APP_NAME, cookie_name=COOKIE, secure=False)
    app.router.add_get("/", read)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/update", update)
    return app


async def serve_aiohttp(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: say(stats()))
    say(f"ready {os.getpid()}")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# ASGI


def asgi_app(config: str, url: str, namespace: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    if config == "starlette":

        async def bare(request: Request) -> PlainTextResponse:
            COUNTS["read"] += 1
            return PlainTextResponse("n=0")

        return Starlette(routes=[Route("/", bare)])
    if config == "starsessions":
        return _starsessions_app(url, namespace)
    from asgi_ext import SessionMiddleware, get_session

    async def read(request: Request) -> PlainTextResponse:
        COUNTS["read"] += 1
        return PlainTextResponse(f"n={(await get_session(request)).get('n')}")

    return SessionMiddleware(
        Starlette(routes=[Route("/", read)]), store=store(url, namespace, config),
        app_name=APP_NAME, cookie_name=COOKIE, secure=False,
    )  # fmt: skip


def _starsessions_app(url: str, namespace: str) -> Any:
    from redis.asyncio import Redis
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starsessions import SessionMiddleware, load_session
    from starsessions.stores.redis import RedisStore

    client = Redis.from_url(url)

    async def read(request: Request) -> PlainTextResponse:
        COUNTS["read"] += 1
        await load_session(request)
        return PlainTextResponse(f"n={request.session.get('n')}")

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = Starlette(routes=[Route("/", read)], lifespan=lifespan)
    return SessionMiddleware(
        app, store=RedisStore(connection=client, prefix=starsessions_prefix(namespace)),
        lifetime=STARSESSIONS_LIFETIME, cookie_name=STARSESSIONS_COOKIE, cookie_https_only=False,
    )  # fmt: skip


def serve_asgi(app: Any, port: int) -> None:
    """uvicorn on a socket the other workers bind too; `ready` once it has started."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    config = uvicorn.Config(app, access_log=False, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def serve() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: say(stats()))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                await task  # raises what stopped it
                raise SystemExit("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        say(f"ready {os.getpid()}")
        await task  # uvicorn turns SIGTERM into a graceful exit

    # uvicorn re-raises the signal that stopped it once it is done; a handler that does
    # nothing lets the process end normally instead of dying on the default action.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())


@contextmanager
def profiled(path: str | None) -> Iterator[None]:
    """pyinstrument over the block, written to `path` as text; nothing without a path."""
    if path is None:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        Path(path).write_text(profiler.output_text(unicode=False, color=False))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("framework", choices=CONFIGS)
    parser.add_argument("config")
    parser.add_argument("port", type=int)
    parser.add_argument("url")
    parser.add_argument("namespace")
    parser.add_argument("--pyinstrument", help="profile to this text file")
    arguments = parser.parse_args()
    if arguments.config not in CONFIGS[arguments.framework]:
        parser.error(f"config: one of {', '.join(CONFIGS[arguments.framework])}")
    build = aiohttp_app if arguments.framework == "aiohttp" else asgi_app
    app = build(arguments.config, arguments.url, arguments.namespace)
    with profiled(arguments.pyinstrument):
        if arguments.framework == "aiohttp":
            asyncio.run(serve_aiohttp(app, arguments.port))
        else:
            serve_asgi(app, arguments.port)


if __name__ == "__main__":
    main()
