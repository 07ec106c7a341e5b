"""1. HTTP throughput and latency: the same handler under each session layer.

One worker process (then two, sharing the port), Redis on loopback, a fixed number of
connections from a load generator in another process, every request carrying one of
`http_sessions` session cookies in turn. The handler reads one session value. Each
configuration is warmed first (every session read on every worker), then measured.
Each row's requests per second are compared with aiohttp-session's RedisStorage and
with bare aiohttp, from the same run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
import uuid
from typing import Any

from cached_sessions import RedisSessions

from . import loadgen
from .harness import APP, IP, Progress, Server, Sizes, drop_keys, namespace
from .fleet import Fleet, difference, hit_rate, total
from .worker import AIOHTTP_SESSION_COOKIE, CONFIGS

LABELS = {
    "bare": "bare aiohttp (no sessions)",
    "middleware": "aiohttp + a middleware reading the cookie (floor)",
    "aiohttp-session": "aiohttp-session RedisStorage",
    "cache-off": "cached-sessions, cache off",
    "cache-on": "cached-sessions, cache on (warm)",
}
OUR_COOKIE = "sid"
WARM_PASSES = 20


def aiohttp_session_missing() -> str | None:
    """Why the aiohttp-session row cannot run, or None when it can."""
    if importlib.util.find_spec("aiohttp_session") is None:
        return "aiohttp-session is not installed (pip install -e '.[bench]')"
    return None


async def create_sessions(store: RedisSessions, count: int, d: dict[str, Any]) -> list[str]:
    tokens: list[str] = []
    for start in range(0, count, 200):
        batch = range(start, min(start + 200, count))
        created = await asyncio.gather(
            *(store.create(app=APP, id=f"user{i}", ip=IP, d=d) for i in batch)
        )
        tokens += [c["token"] for c in created]
    return tokens


async def aiohttp_session_keys(server: Server, ns: str, count: int) -> list[str]:
    """Sessions as aiohttp-session's RedisStorage stores them (one JSON string each)."""
    cookie = f"{AIOHTTP_SESSION_COOKIE}_{ns}"
    keys = [uuid.uuid4().hex for _ in range(count)]
    value = json.dumps({"created": int(time.time()), "session": {"n": 1}})
    client = server.client()
    try:
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(f"{cookie}_{key}", value, ex=7200)
            await pipe.execute()
    finally:
        await client.aclose()
    return keys


def scenario_for(config: str, ns: str, ours: list[str], theirs: list[str]) -> dict[str, Any]:
    if config == "aiohttp-session":
        return {"kind": "read", "cookie": f"{AIOHTTP_SESSION_COOKIE}_{ns}", "tokens": theirs}
    return {"kind": "read", "cookie": OUR_COOKIE, "tokens": ours}


async def warm_up(fleet: Fleet, scenario: dict[str, Any], seconds: float) -> None:
    """Read every session on every worker; with the cache on, until each one holds all."""
    await loadgen.warm(fleet.port, scenario, seconds)
    if fleet.config != "cache-on":
        return
    for _ in range(WARM_PASSES):
        if all(s["cache"]["entries"] >= len(scenario["tokens"]) for s in await fleet.stats()):
            return
        await loadgen.warm(fleet.port, scenario, 0)


async def run_one(
    config: str,
    workers: int,
    server: Server,
    ns: str,
    scenario: dict[str, Any],
    sizes: Sizes,
    generator: str,
    **profiling: Any,
) -> dict[str, Any]:
    async with Fleet(config, workers, server.url, ns, **profiling) as fleet:
        await warm_up(fleet, scenario, sizes.http_warmup)
        before = total(await fleet.stats())
        cpu = CpuMeter(fleet, server)
        await cpu.start()
        result = await loadgen.generate(
            generator, fleet.port, scenario, connections=sizes.connections,
            seconds=sizes.http_seconds,
        )  # fmt: skip
        await cpu.stop()
        after = total(await fleet.stats())
    served = difference(after, before)
    row: dict[str, Any] = {"config": config, "label": LABELS[config], "workers": workers}
    row.update(result)
    row["served"] = served["requests"].get("read", 0)
    row.update(cpu.per_request(row["served"]))
    if config == "cache-on":
        row["hit_rate"] = hit_rate(served["cache"])
    return row


class CpuMeter:
    """CPU time per request of the workers and of the Redis server, over a window."""

    def __init__(self, fleet: Fleet, server: Server) -> None:
        self.fleet = fleet
        self.server = server
        self.workers: float | None = None
        self.redis: float | None = None

    async def start(self) -> None:
        self.workers = self.fleet.cpu_seconds()
        self.redis = await self.server.cpu_seconds()

    async def stop(self) -> None:
        workers = self.fleet.cpu_seconds()
        self.workers = None if workers is None or self.workers is None else workers - self.workers
        self.redis = await self.server.cpu_seconds() - (self.redis or 0.0)

    def per_request(self, requests: int) -> dict[str, float | None]:
        def per(seconds: float | None) -> float | None:
            return None if seconds is None or not requests else round(seconds / requests * 1e6, 1)

        return {"worker_cpu_us": per(self.workers), "redis_cpu_us": per(self.redis)}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    for workers in {row["workers"] for row in rows}:
        group = {r["config"]: r for r in rows if r["workers"] == workers and "rps" in r}
        for row in group.values():
            for anchor, key in (("aiohttp-session", "x_aiohttp_session"), ("bare", "x_bare")):
                base = group.get(anchor)
                row[key] = round(row["rps"] / base["rps"], 2) if base and base["rps"] else None


async def measure(
    server: Server, sizes: Sizes, generator: str, progress: Progress
) -> dict[str, Any]:
    ns = namespace("http")
    missing = aiohttp_session_missing()
    store = RedisSessions(url=server.url, namespace=ns, wipe=0)
    rows: list[dict[str, Any]] = []
    async with store:
        ours = await create_sessions(store, sizes.http_sessions, {"n": 1})
        theirs = [] if missing else await aiohttp_session_keys(server, ns, sizes.http_sessions)
        try:
            for workers in sizes.worker_counts:
                for config in CONFIGS:
                    if config == "aiohttp-session" and missing:
                        rows.append(
                            {"config": config, "label": LABELS[config], "workers": workers,
                             "skipped": missing}
                        )  # fmt: skip
                        progress(f"http {config} x{workers}: skipped ({missing})")
                        continue
                    scenario = scenario_for(config, ns, ours, theirs)
                    row = await run_one(config, workers, server, ns, scenario, sizes, generator)
                    rows.append(row)
                    progress(
                        f"http {config} x{workers}: {row['rps']:.0f} req/s, "
                        f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, CPU/request: "
                        f"worker {row['worker_cpu_us']} us, Redis {row['redis_cpu_us']} us"
                        + (f", hit rate {row['hit_rate']}" if "hit_rate" in row else "")
                        + (f", errors {row['errors']}" if row["errors"] else "")
                    )
        finally:
            await store.killall(app=APP)
            client = server.client()
            try:
                await drop_keys(client, f"{AIOHTTP_SESSION_COOKIE}_{ns}_*")
            finally:
                await client.aclose()
    add_ratios(rows)
    return {
        "connections": sizes.connections,
        "seconds": sizes.http_seconds,
        "sessions": sizes.http_sessions,
        "rows": rows,
    }
