"""One ASGI worker process under uvicorn: `python -m benchmarks.asgi_worker CONFIG PORT URL NS`.

The ASGI counterpart of worker.py, speaking the same protocol to fleet.py (`ready PID`
once it listens, `stats {json}` on SIGUSR1 and when SIGTERM stops it), so the load,
the warm-up and the CPU meter are the aiohttp rows' own. The same Starlette handler in
every configuration reads one session value (`n`) and answers `n=<value>`:

* `starlette`: bare Starlette, no session layer (the ceiling);
* `starsessions`: starsessions' SessionMiddleware over its RedisStore (a GET and, since
  it saves every loaded session on the way out, a SET per request: its own behaviour);
* `cache-off`: this project's `asgi_ext.SessionMiddleware`, every read from Redis;
* `cache-on`: the same with the per-process cache.

uvicorn runs with its defaults (`loop="auto"`, `http="auto"`: uvloop and httptools when
installed) and no access log; several processes share the port through a socket bound
with SO_REUSEPORT, as the aiohttp workers do, so the kernel spreads the connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp

CONFIGS = ("starlette", "starsessions", "cache-off", "cache-on")
APP_NAME = "bench"
OUR_COOKIE = "sid"
STARSESSIONS_COOKIE = "starsessions"
STARSESSIONS_LIFETIME = 7200  # seconds, as long as the aiohttp-session rows' keys live
CACHETIME = 300.0
START_TIMEOUT = 20.0  # seconds for uvicorn to start listening

COUNTS: Counter[str] = Counter()
STORE: list[Any] = []  # this project's store, when the configuration has one


def starsessions_prefix(namespace: str) -> str:
    """The Redis key prefix of starsessions' sessions in this run's namespace."""
    return f"starsessions.{namespace}."


def bare_app() -> ASGIApp:
    async def read(request: Request) -> PlainTextResponse:
        COUNTS["read"] += 1
        return PlainTextResponse("n=0")

    return Starlette(routes=[Route("/", read)])


def starsessions_app(url: str, namespace: str) -> ASGIApp:
    from redis.asyncio import Redis
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
    store = RedisStore(connection=client, prefix=starsessions_prefix(namespace))
    return SessionMiddleware(
        app, store=store, lifetime=STARSESSIONS_LIFETIME, cookie_name=STARSESSIONS_COOKIE,
        cookie_https_only=False,
    )  # fmt: skip


def cached_sessions_app(url: str, namespace: str, cachetime: float) -> ASGIApp:
    from asgi_ext import SessionMiddleware, get_session
    from cached_sessions import RedisSessions

    async def read(request: Request) -> PlainTextResponse:
        COUNTS["read"] += 1
        session = await get_session(request)
        return PlainTextResponse(f"n={session.get('n')}")

    store = RedisSessions(url=url, namespace=namespace, wipe=0, cachetime=cachetime)
    STORE.append(store)
    app = Starlette(routes=[Route("/", read)])
    return SessionMiddleware(
        app, store=store, app_name=APP_NAME, cookie_name=OUR_COOKIE, secure=False
    )


def build(config: str, url: str, namespace: str) -> ASGIApp:
    if config == "starlette":
        return bare_app()
    if config == "starsessions":
        return starsessions_app(url, namespace)
    if config in ("cache-off", "cache-on"):
        return cached_sessions_app(url, namespace, CACHETIME if config == "cache-on" else 0)
    raise SystemExit(f"unknown configuration {config!r}; one of {', '.join(CONFIGS)}")


def stats() -> dict[str, Any]:
    cache = STORE[0].cache_stats() if STORE else {"enabled": False}
    return {"requests": dict(COUNTS), "cache": cache}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def shared_socket(port: int) -> socket.socket:
    """A listening socket the other workers can bind too (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def serve(config: uvicorn.Config, sock: socket.socket) -> None:
    """Serve until SIGTERM, saying `ready` once uvicorn has started (lifespan included)."""
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: say("stats " + json.dumps(stats())))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if task.done():
            await task  # raises what stopped it
            raise SystemExit("uvicorn stopped before it started")
        if time.monotonic() > deadline:
            raise SystemExit(f"uvicorn did not start within {START_TIMEOUT} s")
        await asyncio.sleep(0.01)
    say(f"ready {os.getpid()}")
    try:
        await task  # uvicorn turns SIGTERM into a graceful exit
    finally:
        say("stats " + json.dumps(stats()))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.asgi_worker")
    parser.add_argument("config", choices=CONFIGS)
    parser.add_argument("port", type=int)
    parser.add_argument("url")
    parser.add_argument("namespace")
    arguments = parser.parse_args()
    app = build(arguments.config, arguments.url, arguments.namespace)
    config = uvicorn.Config(app, access_log=False, log_level="warning", lifespan="on", backlog=1024)
    # uvicorn re-raises the signal that stopped it once it is done; a handler that does
    # nothing lets the final `stats` line out instead of dying on the default action.
    signal.signal(signal.SIGTERM, lambda *_: None)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = config.get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config, shared_socket(arguments.port)))


if __name__ == "__main__":
    main()
