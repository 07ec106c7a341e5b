"""HTTP throughput and latency: the same handler under each session layer, per framework.

One worker process (then two, sharing the port), Redis on loopback, a fixed number of
connections from a load generator in another process, every request carrying one of
`http_sessions` session cookies in turn. The handler reads one session value. Each
configuration is warmed first (every session read on every worker), then measured.

On aiohttp (section `http`): bare aiohttp, a middleware that only reads the cookie
(the floor), aiohttp-session's RedisStorage, this project with the cache off and on.
On ASGI under uvicorn (section `asgi`): bare Starlette, starsessions over its
RedisStore, this project's `asgi_ext` middleware with the cache off and on. Each row is
compared with the rival library and with the bare framework from the same run, since
only ratios measured together mean anything on a shared machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from cached_sessions import RedisSessions

from .harness import APP, IP, Progress, Server, Sizes, drop_keys, namespace
from .load import Fleet, hit_rate, loaded, warm
from .worker import (
    AIOHTTP_SESSION_COOKIE,
    CONFIGS,
    COOKIE,
    STARSESSIONS_COOKIE,
    STARSESSIONS_LIFETIME,
    starsessions_prefix,
)

WARM_PASSES = 20


@dataclass(frozen=True)
class Framework:
    """One framework's rows: its bare row, the library a user would pick instead."""

    name: str
    bare: str
    rival: str
    ratio: str  # the rows' key for their ratio to the rival
    needed: tuple[str, ...]  # modules without which the rival cannot run
    labels: dict[str, str]


AIOHTTP = Framework(
    "aiohttp", "bare", "aiohttp-session", "x_aiohttp_session", ("aiohttp_session",), {
        "bare": "bare aiohttp (no sessions)",
        "middleware": "aiohttp + a middleware reading the cookie (floor)",
        "aiohttp-session": "aiohttp-session RedisStorage",
        "cache-off": "cached-sessions, cache off",
        "cache-on": "cached-sessions, cache on (warm)",
    },
)  # fmt: skip
ASGI = Framework(
    "asgi", "starlette", "starsessions", "x_starsessions",
    ("uvicorn", "starlette", "starsessions"), {
        "starlette": "bare Starlette (no sessions)",
        "starsessions": "starsessions RedisStore",
        "cache-off": "cached-sessions asgi_ext, cache off",
        "cache-on": "cached-sessions asgi_ext, cache on (warm)",
    },
)  # fmt: skip


def missing(framework: Framework) -> str | None:
    """Why the rival's rows cannot run, or None when they can."""
    absent = [name for name in framework.needed if importlib.util.find_spec(name) is None]
    return f"{', '.join(absent)} not installed (pip install -e '.[bench]')" if absent else None


async def create_sessions(store: RedisSessions, count: int, d: dict[str, Any]) -> list[str]:
    tokens: list[str] = []
    for start in range(0, count, 200):
        created = await asyncio.gather(*(
            store.create(app=APP, id=f"user{i}", ip=IP, d=d)
            for i in range(start, min(start + 200, count))
        ))  # fmt: skip
        tokens += [c["token"] for c in created]
    return tokens


async def rival_sessions(framework: Framework, server: Server, ns: str, count: int) -> list[str]:
    """Sessions as the rival stores them, each with `n` = 1; their cookie values."""
    keys = [uuid.uuid4().hex for _ in range(count)]
    if framework is AIOHTTP:  # RedisStorage: one JSON string per session
        value = json.dumps({"created": int(time.time()), "session": {"n": 1}})
        client = server.client()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(f"{AIOHTTP_SESSION_COOKIE}_{ns}_{key}", value, ex=7200)
                await pipe.execute()
        finally:
            await client.aclose()
        return keys
    # starsessions: through its own store and serializer, as its middleware writes them
    from starsessions.serializers import JsonSerializer
    from starsessions.stores.redis import RedisStore

    client = server.client()
    stored = RedisStore(connection=client, prefix=starsessions_prefix(ns))
    now = time.time()
    metadata = {"lifetime": STARSESSIONS_LIFETIME, "created": now, "last_access": now}
    data = JsonSerializer().serialize({"n": 1, "__metadata__": metadata})
    try:
        for key in keys:
            await stored.write(key, data, STARSESSIONS_LIFETIME, STARSESSIONS_LIFETIME)
    finally:
        await client.aclose()
    return keys


def rival_keys(framework: Framework, ns: str) -> str:
    """The key pattern of the rival's sessions, to clean up."""
    if framework is AIOHTTP:
        return f"{AIOHTTP_SESSION_COOKIE}_{ns}_*"
    return starsessions_prefix(ns) + "*"


def scenario_for(
    framework: Framework, config: str, ns: str, ours: list[str], theirs: list[str]
) -> dict[str, Any]:
    """Every row carries a cookie: the rival's for the rival, else this project's."""
    if config != framework.rival:
        return {"kind": "read", "cookie": COOKIE, "tokens": ours}
    cookie = f"{AIOHTTP_SESSION_COOKIE}_{ns}" if framework is AIOHTTP else STARSESSIONS_COOKIE
    return {"kind": "read", "cookie": cookie, "tokens": theirs}


async def warm_up(fleet: Fleet, scenario: dict[str, Any], seconds: float) -> None:
    """Read every session on every worker; with the cache on, until each one holds all."""
    await warm(fleet.port, scenario, seconds)
    for _ in range(WARM_PASSES if fleet.config == "cache-on" else 0):
        counters = await fleet.counters()
        if all(c["cache"]["entries"] >= len(scenario["tokens"]) for c in counters):
            return
        await warm(fleet.port, scenario, 0)


async def run_one(
    framework: Framework, config: str, workers: int, server: Server, ns: str,
    scenario: dict[str, Any], sizes: Sizes, generator: str, **profiling: Any,
) -> dict[str, Any]:  # fmt: skip
    async with Fleet(framework.name, config, workers, server.url, ns, **profiling) as fleet:
        await warm_up(fleet, scenario, sizes.http_warmup)
        result, served, cpu = await loaded(
            fleet, server, generator, scenario,
            connections=sizes.connections, seconds=sizes.http_seconds,
        )  # fmt: skip
    row: dict[str, Any] = {"config": config, "label": framework.labels[config], "workers": workers}
    row.update(result)
    row["served"] = served["requests"]["read"]
    row.update(cpu.per_request(row["served"]))
    if config == "cache-on":
        row["hit_rate"] = hit_rate(served["cache"])
    return row


async def run_or_skip(
    framework: Framework, config: str, workers: int, why: str | None, server: Server, ns: str,
    scenario: dict[str, Any], sizes: Sizes, generator: str, progress: Progress,
) -> dict[str, Any]:  # fmt: skip
    """One run of one row; the rival's row is skipped when it is not installed."""
    name = f"{'http' if framework is AIOHTTP else 'asgi'} {config} x{workers}"
    if config == framework.rival and why:
        progress(f"{name}: skipped ({why})")
        return {"config": config, "label": framework.labels[config], "workers": workers,
                "skipped": why}  # fmt: skip
    row = await run_one(framework, config, workers, server, ns, scenario, sizes, generator)
    progress(describe(name, row))
    return row


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of the median throughput, with every run's throughput beside it."""
    if len(runs) == 1 or "skipped" in runs[0]:
        return runs[0]
    ordered = sorted(runs, key=lambda row: row["rps"])
    return {**ordered[len(ordered) // 2], "rps_runs": [round(row["rps"]) for row in runs]}


def add_ratios(framework: Framework, rows: list[dict[str, Any]]) -> None:
    for workers in {row["workers"] for row in rows}:
        group = {r["config"]: r for r in rows if r["workers"] == workers and "rps" in r}
        for row in group.values():
            for anchor, key in ((framework.rival, framework.ratio), (framework.bare, "x_bare")):
                base = group.get(anchor)
                row[key] = round(row["rps"] / base["rps"], 2) if base and base["rps"] else None


async def measure(
    framework: Framework, server: Server, sizes: Sizes, generator: str, progress: Progress
) -> dict[str, Any]:
    why = missing(framework)
    if framework is ASGI and why is not None:  # the whole section is about ASGI
        progress(f"asgi: skipped ({why})")
        return {"skipped": why, "rows": []}
    ns = namespace(framework.name)
    rows: list[dict[str, Any]] = []
    async with RedisSessions(url=server.url, namespace=ns, wipe=0) as store:
        ours = await create_sessions(store, sizes.http_sessions, {"n": 1})
        try:
            theirs = [] if why else await rival_sessions(framework, server, ns, sizes.http_sessions)
            runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for turn in range(sizes.http_rounds):
                for workers in sizes.worker_counts:
                    configs = CONFIGS[framework.name]
                    for config in configs if turn % 2 == 0 else configs[::-1]:
                        scenario = scenario_for(framework, config, ns, ours, theirs)
                        row = await run_or_skip(framework, config, workers, why, server, ns,
                                                scenario, sizes, generator, progress)  # fmt: skip
                        runs.setdefault((config, workers), []).append(row)
            rows.extend(median_run(group) for group in runs.values())
        finally:
            await store.killall(app=APP)
            client = server.client()
            try:
                await drop_keys(client, rival_keys(framework, ns))
            finally:
                await client.aclose()
    add_ratios(framework, rows)
    result = {"connections": sizes.connections, "seconds": sizes.http_seconds,
              "sessions": sizes.http_sessions, "rows": rows}  # fmt: skip
    return result if framework is AIOHTTP else {"server": uvicorn_described(), **result}


def describe(name: str, row: dict[str, Any]) -> str:
    return (
        f"{name}: {row['rps']:.0f} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
        f"CPU/request: worker {row['worker_cpu_us']} us, Redis {row['redis_cpu_us']} us"
        + (f", hit rate {row['hit_rate']}" if "hit_rate" in row else "")
        + (f", errors {row['errors']}" if row["errors"] else "")
    )


def uvicorn_described() -> str:
    """uvicorn's version and the event loop and HTTP parser its defaults pick here."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return (f"uvicorn {of('uvicorn')} ({loop}, {parser}), Starlette {of('starlette')}, "
            f"starsessions {of('starsessions')}")  # fmt: skip


def summary(result: dict[str, Any]) -> str:
    """One progress line for the ASGI section: the ratios it is about."""
    if "skipped" in result:
        return f"asgi: skipped ({result['skipped']})"
    return "asgi: " + ", ".join(
        f"{row['config']} x{row['workers']} {row.get('x_starsessions')}x starsessions"
        for row in result["rows"]
        if row["config"] in ("cache-on", "cache-off")
    )
