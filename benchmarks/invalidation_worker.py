"""One cache-holding process for the invalidation benchmark.

`python -m benchmarks.invalidation_worker URL NAMESPACE` keeps a RedisSessions with its
cache on. On `cache TOKEN` (a line on stdin) it reads the session, so it holds it, and
answers `cached 1` (or `cached 0`). Whenever its subscriber drops a session it held,
it prints `dropped TOKEN T`, T being `time.monotonic()` just after the drop:
CLOCK_MONOTONIC is one clock for the whole machine on Linux, so the writing process
can subtract the moment its write returned.

The drop is seen by wrapping `SessionCache.invalidate` in this process, the method the
subscriber calls for each message; nothing polls, so the measured delay is the
library's and the scheduler's, not a polling loop's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from cached_sessions import RedisSessions
from cached_sessions.cache import SessionCache

APP = "bench"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def watch_drops() -> None:
    original = SessionCache.invalidate

    def invalidate(self: SessionCache, app: str, token: str) -> None:
        held = self.holds(app, token)
        original(self, app, token)
        if held and not self.holds(app, token):
            dropped = time.monotonic()
            say(f"dropped {token} {dropped!r}")

    SessionCache.invalidate = invalidate  # type: ignore[method-assign]


async def serve(url: str, namespace: str) -> None:
    watch_drops()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with RedisSessions(url=url, namespace=namespace, wipe=0, cachetime=600) as store:
        say("ready")
        while line := (await reader.readline()).decode().strip():
            command, _, token = line.partition(" ")
            if command == "cache":
                await store.get(app=APP, token=token)
                say(f"cached {int(store.is_cached(token))}")
            elif command == "quit":
                break


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.invalidation_worker")
    parser.add_argument("url")
    parser.add_argument("namespace")
    arguments = parser.parse_args()
    asyncio.run(serve(arguments.url, arguments.namespace))


if __name__ == "__main__":
    main()
