"""2. Store operations: microseconds per call, p50 and p99, one call at a time.

`get` served from the cache, `get` read from Redis (a store with no cache), `set`,
`create` and `kill`; and how much faster a cached `get` is than one from Redis. For the
operations that reach Redis, also the server's own time per script call (INFO
commandstats), which tells the server's share of a call from the client's.

Then auto-pipelining on and off: `get` from Redis (no cache) by CONCURRENCY callers at
once, calls per second, and a lone `get`, µs per call; the two stores take turns, round
after round, so that a busy machine slows both alike.
"""

from __future__ import annotations

import asyncio
import statistics
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
    pipelining = await auto_pipelining(server, sizes)
    return {"operations": figures, "hit_speedup_p50": round(ratio, 1), "pipelining": pipelining}


CONCURRENCY = 32  # callers at once, as many as the HTTP load's connections
ROUNDS = 7


async def concurrent_rate(store: RedisSessions, tokens: list[str], calls: int) -> float:
    """Calls per second of `get`, len(tokens) callers at once, each turn a new wave."""
    waves = max(1, calls // len(tokens))
    started = time.perf_counter()
    for _ in range(waves):
        await asyncio.gather(*(store.get(app=APP, token=token) for token in tokens))
    return waves * len(tokens) / (time.perf_counter() - started)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


async def auto_pipelining(server: Server, sizes: Sizes) -> dict[str, Any]:
    """Concurrent and lone `get` from Redis with auto_pipeline on and off, interleaved."""
    ns = namespace("pipe")
    on = RedisSessions(url=server.url, namespace=ns, wipe=0, auto_pipeline=True)
    off = RedisSessions(url=server.url, namespace=ns, wipe=0, auto_pipeline=False)
    rates: dict[bool, list[float]] = {True: [], False: []}
    lone: dict[bool, list[float]] = {True: [], False: []}
    lone_calls = max(50, sizes.store_calls // 10)
    async with on, off:
        made = [await on.create(app=APP, id=f"u{i}", ip=IP) for i in range(CONCURRENCY)]
        tokens = [found["token"] for found in made]
        for turn in range(ROUNDS):
            for auto in (True, False) if turn % 2 else (False, True):
                store = on if auto else off
                rates[auto].append(await concurrent_rate(store, tokens, sizes.store_calls * 3))
                samples = await timed(lambda s=store: s.get(app=APP, token=tokens[0]), lone_calls)
                lone[auto].append(statistics.median(samples) * 1e6)
        await on.killall(app=APP)
    return {
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "concurrent_get_per_s": {"on": spread(rates[True]), "off": spread(rates[False])},
        "lone_get_p50_us": {"on": spread(lone[True]), "off": spread(lone[False])},
        "speedup_median": round(
            statistics.median(rates[True]) / statistics.median(rates[False]), 2
        ),
    }


MISS_CALLERS = 16  # callers at once for the worker's CPU per miss


async def miss_cpu(url: str, calls: int = 20_000, callers: int = MISS_CALLERS) -> float:
    """This process's CPU time per `get` read from Redis (no cache), µs, with `callers`
    callers at once: what a worker pays per cache miss below the middleware."""
    store = RedisSessions(url=url, namespace=namespace("miss"), wipe=0)
    async with store:
        tokens = [(await store.create(app=APP, id=f"u{i}", ip=IP, d={"n": i}))["token"]
                  for i in range(callers)]  # fmt: skip
        each = calls // callers

        async def caller(token: str) -> None:
            for _ in range(each):
                await store.get(app=APP, token=token)

        await asyncio.gather(*(caller(token) for token in tokens))  # warm up
        started = time.process_time()
        await asyncio.gather(*(caller(token) for token in tokens))
        spent = time.process_time() - started
        await store.killall(app=APP)
    return spent / (each * callers) * 1e6


async def main() -> None:
    """`python -m benchmarks.store_ops [--url URL] [--calls N]`: the worker's CPU per miss."""
    import argparse

    parser = argparse.ArgumentParser(description="the worker's CPU per cache miss")
    parser.add_argument("--url", help="a Redis to measure (default: an embedded server)")
    parser.add_argument("--calls", type=int, default=20_000)
    options = parser.parse_args()
    server = await Server(options.url).start()
    try:
        spent = await miss_cpu(server.url, options.calls)
        print(f"{spent:.1f} µs of CPU per get from Redis ({MISS_CALLERS} callers at once)")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
