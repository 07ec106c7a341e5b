"""One HTTP worker process under load: `python -m benchmarks.worker CONFIG PORT URL NAMESPACE`.

The same handler in every configuration reads one session value (`n`) and answers
`n=<value>`:

* `bare`: aiohttp with no session layer (the ceiling);
* `middleware`: aiohttp with a middleware that only reads the session cookie (the
  way this project reads it) and passes it to the handler: the floor of what a
  middleware-based cookie session layer costs;
* `aiohttp-session`: aiohttp-session with its RedisStorage;
* `cache-off`: this project, every read from Redis;
* `cache-on`: this project with the per-process cache.

This project's configurations also serve the writes of the mixed load: `POST /login`
(a new session for the user named in `X-User`), `POST /logout` and `POST /update` (one
data key changed). A request carrying `X-User` gets it back, so a load generator can
tell whose response it reads.

Several processes may share the port (SO_REUSEPORT). The process prints `ready PID`
once it listens, `stats {json}` (its cache counters and the requests it served) on
SIGUSR1 and when it stops (SIGTERM). `--pyinstrument FILE` profiles it while it runs;
profiling.py runs it under `py-spy record` instead when py-spy is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

CONFIGS = ("bare", "middleware", "aiohttp-session", "cache-off", "cache-on")
APP_NAME = "bench"
AIOHTTP_SESSION_COOKIE = "AIOHTTP_SESSION"
CACHETIME = 300.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

COUNTS: Counter[str] = Counter()
STORE: list[Any] = []  # this project's store, when the configuration has one


def _echo(request: web.Request) -> dict[str, str] | None:
    user = request.headers.get("X-User")
    return {"X-User": user} if user is not None else None


def bare_app() -> web.Application:
    async def read(request: web.Request) -> web.Response:
        COUNTS["read"] += 1
        return web.Response(text="n=0", headers=_echo(request))

    app = web.Application()
    app.router.add_get("/", read)
    return app


COOKIE_KEY = web.RequestKey("bench.cookie", str)


def middleware_app() -> web.Application:
    # The cookie is read the way this project's middleware reads it (without aiohttp's
    # full parse of the header), so this row is the floor of a cookie session layer.
    from aiohttp_ext.cookies import request_cookie

    @web.middleware
    async def cookie(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[COOKIE_KEY] = request_cookie(request, "sid") or ""
        return await handler(request)

    async def read(request: web.Request) -> web.Response:
        COUNTS["read"] += 1
        return web.Response(text=f"n={len(request[COOKIE_KEY]) and 1}", headers=_echo(request))

    app = web.Application(middlewares=[cookie])
    app.router.add_get("/", read)
    return app


def aiohttp_session_app(url: str, cookie_name: str) -> web.Application:
    import aiohttp_session
    from aiohttp_session.redis_storage import RedisStorage
    from redis.asyncio import Redis

    async def read(request: web.Request) -> web.Response:
        COUNTS["read"] += 1
        session = await aiohttp_session.get_session(request)
        return web.Response(text=f"n={session.get('n')}", headers=_echo(request))

    app = web.Application()
    client = Redis.from_url(url)
    aiohttp_session.setup(app, RedisStorage(client, cookie_name=cookie_name, httponly=True))

    async def close_client(_: web.Application) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app.cleanup_ctx.append(close_client)
    app.router.add_get("/", read)
    return app


def cached_sessions_app(url: str, namespace: str, cachetime: float) -> web.Application:
    from aiohttp_ext import get_session, setup_sessions
    from cached_sessions import RedisSessions

    async def read(request: web.Request) -> web.Response:
        COUNTS["read"] += 1
        session = await get_session(request)
        return web.Response(text=f"n={session.get('n')}", headers=_echo(request))

    async def login(request: web.Request) -> web.Response:
        COUNTS["login"] += 1
        session = await get_session(request)
        await session.upgrade(request.headers.get("X-User", "anonymous"))
        return web.Response(text="in", headers=_echo(request))

    async def logout(request: web.Request) -> web.Response:
        COUNTS["logout"] += 1
        await (await get_session(request)).destroy()
        return web.Response(text="out", headers=_echo(request))

    async def update(request: web.Request) -> web.Response:
        COUNTS["update"] += 1
        session = await get_session(request)
        if session.user_id is None:  # logged out by another request meanwhile
            COUNTS["update_anonymous"] += 1
        else:
            session["n"] = int(session.get("n") or 0) + 1
        return web.Response(text="ok", headers=_echo(request))

    store = RedisSessions(url=url, namespace=namespace, wipe=0, cachetime=cachetime)
    STORE.append(store)
    app = web.Application()
    setup_sessions(app, store, app_name=APP_NAME, secure=False)
    app.router.add_get("/", read)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/update", update)
    return app


def build(config: str, url: str, namespace: str) -> web.Application:
    if config == "bare":
        return bare_app()
    if config == "middleware":
        return middleware_app()
    if config == "aiohttp-session":
        return aiohttp_session_app(url, f"{AIOHTTP_SESSION_COOKIE}_{namespace}")
    if config in ("cache-off", "cache-on"):
        return cached_sessions_app(url, namespace, CACHETIME if config == "cache-on" else 0)
    raise SystemExit(f"unknown configuration {config!r}; one of {', '.join(CONFIGS)}")


def stats() -> dict[str, Any]:
    cache = STORE[0].cache_stats() if STORE else {"enabled": False}
    return {"requests": dict(COUNTS), "cache": cache}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve(arguments: argparse.Namespace) -> str | None:
    """Serve until SIGTERM; returns the profile's text when profiling."""
    app = build(arguments.config, arguments.url, arguments.namespace)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", arguments.port, reuse_port=True, backlog=1024)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: say("stats " + json.dumps(stats())))
    profiler = None
    profile: str | None = None
    if arguments.pyinstrument:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
    say(f"ready {os.getpid()}")
    try:
        await stop.wait()
    finally:
        if profiler is not None:
            profiler.stop()
            profile = profiler.output_text(unicode=False, color=False, show_all=False)
        say("stats " + json.dumps(stats()))
        await runner.cleanup()
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("config", choices=CONFIGS)
    parser.add_argument("port", type=int)
    parser.add_argument("url")
    parser.add_argument("namespace")
    parser.add_argument("--pyinstrument", help="profile to this text file")
    arguments = parser.parse_args()
    profile = asyncio.run(serve(arguments))
    if profile is not None:
        Path(arguments.pyinstrument).write_text(profile)


if __name__ == "__main__":
    main()
