"""Invalidation propagation: from a write's return to every other cache dropping it.

`invalidation_workers` processes (the tests' cache worker, tests/worker.py) each hold
one session in their cache; this process, which caches nothing, writes it (`set`) or
kills it (`kill`), in turn, `invalidation_rounds` times. For each round and worker:
the time from the write returning here to that worker's cache dropping its copy, as
the worker's own `cache_stats()` reports it (`last_invalidation_drop`, taken by the
library at the drop on the machine-wide monotonic clock; asking for it afterwards
adds nothing to the figure). A drop may even come first (the script publishes before
it replies): such delays count as 0 and are reported apart. A worker that has not
dropped its copy after `TIMEOUT` seconds counts as missed. `since_call` times the
same drops from just before the write was sent: an upper bound that includes the
write's own round trip.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from cached_sessions import RedisSessions

from .harness import APP, IP, Progress, Server, Sizes, namespace, percentiles

if TYPE_CHECKING:
    from tests.worker import Worker

TIMEOUT = 2.0
# The drop's time comes from the worker, so asking late costs nothing but wall time;
# asking often would take the workers' CPU while the message is on its way.
FIRST_ASK = 0.005
POLL = 0.01


async def hold(worker: Worker, token: str) -> int:
    """Have the worker cache the session; its drop count before the write."""
    for _ in range(5):
        reply = await worker.call(
            "batch",
            commands=[{"op": "get", "app": APP, "token": token}, {"op": "stats"}],
        )
        _, stats = reply["replies"]
        if stats["stats"]["entries"]:
            return int(stats["stats"]["invalidation_drops"])
    raise RuntimeError("a worker could not cache the session (is its subscription up?)")


async def dropped(worker: Worker, before: int) -> float:
    """The monotonic time of the worker's next drop, once it has reported one."""
    deadline = time.monotonic() + TIMEOUT
    await asyncio.sleep(FIRST_ASK)
    while time.monotonic() < deadline:
        stats = await worker.stats()
        if stats["invalidation_drops"] > before:
            return float(stats["last_invalidation_drop"])
        await asyncio.sleep(POLL)
    raise TimeoutError


async def measure(server: Server, sizes: Sizes, progress: Progress) -> dict[str, Any]:
    from tests.worker import WorkerPool

    ns = namespace("inv")
    rounds = sizes.invalidation_rounds
    pool = WorkerPool(server.url, ns)
    delays: dict[str, list[float]] = {"set": [], "kill": []}
    since_call: list[float] = []
    early = missed = 0
    try:
        workers = await pool.spawn(sizes.invalidation_workers, cachetime=600)
        async with RedisSessions(url=server.url, namespace=ns, wipe=0) as writer:
            token = ""
            for n in range(rounds):
                operation = "kill" if n % 2 else "set"
                if not token:
                    token = (await writer.create(app=APP, id="u", ip=IP, d={"n": 0}))["token"]
                counts = await asyncio.gather(*(hold(w, token) for w in workers))
                called = time.monotonic()
                if operation == "set":
                    await writer.set(app=APP, token=token, d={"n": n})
                else:
                    await writer.kill(app=APP, token=token)
                returned = time.monotonic()
                seen = await asyncio.gather(
                    *(dropped(w, c) for w, c in zip(workers, counts, strict=True)),
                    return_exceptions=True,
                )
                for at in seen:
                    if isinstance(at, BaseException):
                        missed += 1
                        continue
                    since_call.append(at - called)
                    early += at < returned
                    delays[operation].append(max(at - returned, 0.0))
                if missed:
                    raise RuntimeError(f"{missed} workers kept a stale copy {TIMEOUT} s")
                if operation == "kill":
                    token = ""
                if (n + 1) % max(1, rounds // 4) == 0:
                    progress(f"invalidation: {n + 1}/{rounds} writes")
            await writer.killall(app=APP)
    finally:
        await pool.aclose()
    return {
        "workers": sizes.invalidation_workers,
        "writes": rounds,
        "all": percentiles(delays["set"] + delays["kill"]),
        "set": percentiles(delays["set"]),
        "kill": percentiles(delays["kill"]),
        "since_call": percentiles(since_call),
        "dropped_before_return": early,
        "missed": missed,
    }
