"""4. The cost curve: what a session costs as Redis holds more of them.

Redis is filled step by step to each of `curve_sizes` sessions (harness.populate: the
library's own create script, pipelined; each session with a last access between two
and one hours ago and a small `d`). At each size:

* `get` p50 on a cache miss (a read from Redis that fills the cache) and on a hit, for
  `curve_samples` sessions drawn at random from all of them;
* the create rate through `RedisSessions.create`, 64 calls in flight;
* Redis memory per session: the growth of INFO `used_memory` since before the first
  session, over the sessions held;
* process memory per cached entry: what tracemalloc sees the cache of a fresh store
  grow by while it reads `memory_entries` sessions (small `d`), over that count;
* `soapp` and `activity` latency, p50, over an index of that size. Both look at a
  window of recent activity, so that their reply does not grow with the size: 100
  sessions are created "in the future" (a store whose clock runs a day ahead) and
  both are asked, on that clock, for the last hour: always those 100.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc
from typing import Any

from cached_sessions import RedisSessions

from .harness import (
    APP,
    IP,
    SMALL_D,
    Progress,
    Server,
    ServerTime,
    Sizes,
    drop_keys,
    namespace,
    percentiles,
    populate,
)  # fmt: skip

AHEAD = 86_400.0  # the "future" store's clock runs this much ahead
RECENT = 100  # sessions in the soapp/activity window
WINDOW = 3600
CONCURRENT_CREATES = 64
TTL = 30 * 86_400


async def _timed(call: Any) -> float:
    started = time.perf_counter()
    await call
    return time.perf_counter() - started


async def get_latencies(
    server: Server, ns: str, tokens: list[str]
) -> tuple[list[float], list[float]]:
    """(misses, hits): each token read once through a fresh cache, then three times more."""
    store = RedisSessions(url=server.url, namespace=ns, wipe=0, cachetime=600,
                          cachemax=len(tokens) + 10)  # fmt: skip
    async with store:
        await store.get(app=APP, token=tokens[0])  # warm the code path and connection
        misses = [await _timed(store.get(app=APP, token=t)) for t in tokens[1:]]
        hits = [await _timed(store.get(app=APP, token=t)) for t in tokens[1:] * 3]
        if store.cache_stats()["hits"] < len(hits):
            raise RuntimeError("the cost curve's hits were not served from the cache")
    return misses, hits


async def create_rate(store: RedisSessions, count: int, first_id: int) -> float:
    # One untimed round first, so that the pool's connections are open.
    await asyncio.gather(
        *(store.create(app=APP, id=f"w{first_id + i}", ip=IP) for i in range(CONCURRENT_CREATES))
    )
    started = time.perf_counter()
    for start in range(0, count, CONCURRENT_CREATES):
        batch = range(start, min(start + CONCURRENT_CREATES, count))
        await asyncio.gather(
            *(store.create(app=APP, id=f"c{first_id + i}", ip=IP, d=SMALL_D) for i in batch)
        )
    return count / (time.perf_counter() - started)


async def cache_memory(server: Server, ns: str, tokens: list[str]) -> float:
    """Bytes of Python heap per cached session, as tracemalloc counts them."""
    store = RedisSessions(url=server.url, namespace=ns, wipe=0, cachetime=600,
                          cachemax=len(tokens) + 10)  # fmt: skip
    async with store:
        await store.get(app=APP, token=tokens[0])
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for token in tokens[1:]:
                await store.get(app=APP, token=token)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        held = int(store.cache_stats()["entries"])
    return float(after - before) / max(1, held - 1)


async def measure(server: Server, sizes: Sizes, progress: Progress) -> dict[str, Any]:
    ns = namespace("curve")
    client = server.client()
    baseline = int((await client.info("memory"))["used_memory"])
    future = RedisSessions(url=server.url, namespace=ns, wipe=0,
                           clock=lambda: time.time() + AHEAD)  # fmt: skip
    store = RedisSessions(url=server.url, namespace=ns, wipe=0)
    rows: list[dict[str, Any]] = []
    tokens: list[str] = []
    draw = random.Random(1)
    try:
        async with future, store:
            for i in range(RECENT):
                await future.create(app=APP, id=f"recent{i}", ip=IP, ttl=TTL, d=SMALL_D)
            created = 0
            for size in sizes.curve_sizes:
                if size <= RECENT * 2:
                    raise ValueError(f"cost curve sizes must be above {RECENT * 2}")
                now = time.time()
                more = size - len(tokens) - created - RECENT
                if more > 0:
                    new, took = await populate(
                        server.url, ns, more, start=len(tokens),
                        last_access=(now - 7200, now - 3600), ttl=TTL,
                    )  # fmt: skip
                    tokens += new
                    progress(f"cost curve: {size:,} sessions in Redis "
                             f"(+{more:,} at {more / took:,.0f}/s)")  # fmt: skip
                held = len(tokens) + created + RECENT
                used = int((await client.info("memory"))["used_memory"])
                sample = draw.sample(tokens, min(sizes.curve_samples + 1, len(tokens)))
                misses, hits = await get_latencies(server, ns, sample)
                count = min(sizes.curve_samples, 2000)
                rate = await create_rate(store, count, created)
                created += count + CONCURRENT_CREATES
                memory_sample = draw.sample(tokens, min(sizes.memory_entries + 1, len(tokens)))
                per_entry = await cache_memory(server, ns, memory_sample)
                soapp, activity = [], []
                async with ServerTime(client) as soapp_server:
                    for _ in range(50):
                        soapp.append(await _timed(future.soapp(app=APP, delta_time=WINDOW)))
                async with ServerTime(client, "zcount") as activity_server:
                    for _ in range(50):
                        activity.append(await _timed(future.activity(app=APP, delta_time=WINDOW)))
                found = len((await future.soapp(app=APP, delta_time=WINDOW))["sessions"])
                active = (await future.activity(app=APP, delta_time=WINDOW))["activity"]
                row = {
                    "sessions": size,
                    "held": held,
                    "populate_per_s": round(more / took) if more > 0 else None,
                    "get_miss_p50_us": percentiles(misses)["p50_us"],
                    "get_miss_p99_us": percentiles(misses)["p99_us"],
                    "get_hit_p50_us": percentiles(hits)["p50_us"],
                    "get_hit_p99_us": percentiles(hits)["p99_us"],
                    "create_per_s": round(rate),
                    "redis_bytes_per_session": round((used - baseline) / held),
                    "cache_bytes_per_entry": round(per_entry),
                    "soapp_p50_us": percentiles(soapp)["p50_us"],
                    "soapp_server_us": soapp_server.per_call,
                    "soapp_returned": found,
                    "activity_p50_us": percentiles(activity)["p50_us"],
                    "activity_server_us": activity_server.per_call,
                    "activity_counted": active,
                }
                rows.append(row)
                progress(
                    f"cost curve @ {size:,}: get hit {row['get_hit_p50_us']} us, "
                    f"miss {row['get_miss_p50_us']} us, create {row['create_per_s']:,}/s, "
                    f"Redis {row['redis_bytes_per_session']} B/session, "
                    f"cache {row['cache_bytes_per_entry']} B/entry, "
                    f"soapp {row['soapp_p50_us']} us"
                )
    finally:
        started = time.perf_counter()
        if not server.owned:  # an owned server is thrown away whole at the end
            await drop_keys(client, f"{ns}:*")
        await client.aclose()
        if not server.owned:
            progress(f"cost curve: cleaned up in {time.perf_counter() - started:.1f} s")
    return {"sample": sizes.curve_samples, "memory_entries": sizes.memory_entries, "rows": rows}
