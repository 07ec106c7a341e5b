"""2. Store operations: microseconds per call, p50 and p99, one call at a time.

`get` served from the cache, `get` read from Redis (a store with no cache), `set`,
`create` and `kill`; and how much faster a cached `get` is than one from Redis. For the
operations that reach Redis, also the server's own time per script call (INFO
commandstats), which tells the server's share of a call from the client's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from cached_sessions import RedisSessions

from .harness import APP, IP, Server, ServerTime, Sizes, namespace, percentiles


async def timed(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    samples = []
    clock = time.perf_counter
    for _ in range(count):
        started = clock()
        await call()
        samples.append(clock() - started)
    return samples


async def measure(server: Server, sizes: Sizes) -> dict[str, Any]:
    count = sizes.store_calls
    ns = namespace("ops")
    cached = RedisSessions(url=server.url, namespace=ns, wipe=0, cachetime=600)
    plain = RedisSessions(url=server.url, namespace=ns, wipe=0)
    async with cached, plain:
        token = (await plain.create(app=APP, id="u1", ip=IP, d={"cart": 3}))["token"]
        await cached.get(app=APP, token=token)
        for _ in range(200):  # warm up both paths
            await cached.get(app=APP, token=token)
            await plain.get(app=APP, token=token)
        client = plain.redis
        ops: dict[str, list[float]] = {}
        server_us: dict[str, float | None] = {}

        async def run(name: str, call: Callable[[], Awaitable[Any]], times: int) -> None:
            async with ServerTime(client) as spent:
                ops[name] = await timed(call, times)
            server_us[name] = spent.per_call if name != "get (cache hit)" else None

        await run("get (cache hit)", lambda: cached.get(app=APP, token=token), count * 10)
        await run("get (Redis)", lambda: plain.get(app=APP, token=token), count)
        counter = iter(range(10**9))
        await run("set", lambda: plain.set(app=APP, token=token, d={"n": next(counter)}), count)
        tokens: list[str] = []

        async def create() -> None:
            tokens.append((await plain.create(app=APP, id="u2", ip=IP))["token"])

        await run("create", create, count)
        victims = iter(tokens)
        await run("kill", lambda: plain.kill(app=APP, token=next(victims)), count)
        hits = cached.cache_stats()["hits"]
        await plain.killall(app=APP)
    if hits < count * 10:
        raise RuntimeError(f"the cached store served {hits} hits, expected {count * 10}")
    figures = {name: percentiles(samples) for name, samples in ops.items()}
    for name, spent in server_us.items():
        figures[name]["server_us"] = spent
    ratio = figures["get (Redis)"]["p50_us"] / figures["get (cache hit)"]["p50_us"]
    return {"operations": figures, "hit_speedup_p50": round(ratio, 1)}
