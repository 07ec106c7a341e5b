"""HTTP throughput and latency under uvicorn: the ASGI session layers side by side.

The aiohttp rows' method (http_load.py) with ASGI workers (asgi_worker.py): one worker
process, then two sharing the port, Redis on loopback, the same connections and
seconds per row from the same load generator, every request carrying one of
`http_sessions` session cookies in turn, each configuration warmed before it is
measured. The rows: bare Starlette, starsessions over its RedisStore, this project's
`asgi_ext.SessionMiddleware` with the cache off and on. Each row is compared with
starsessions and with bare Starlette from the same run, since only ratios measured
together mean anything on a shared machine.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from typing import Any

from cached_sessions import RedisSessions

from . import loadgen
from .asgi_worker import (
    CONFIGS,
    OUR_COOKIE,
    STARSESSIONS_COOKIE,
    STARSESSIONS_LIFETIME,
    starsessions_prefix,
)
from .harness import APP, Progress, Server, Sizes, drop_keys, namespace
from .fleet import Fleet, difference, hit_rate, total
from .http_load import CpuMeter, create_sessions, warm_up

LABELS = {
    "starlette": "bare Starlette (no sessions)",
    "starsessions": "starsessions RedisStore",
    "cache-off": "cached-sessions asgi_ext, cache off",
    "cache-on": "cached-sessions asgi_ext, cache on (warm)",
}
NEEDED = ("uvicorn", "starlette", "starsessions", "redis")


def missing() -> str | None:
    """Why the section cannot run, or None when it can: it needs all of its servers."""
    absent = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed (pip install -e '.[bench]')"
    return None


async def starsessions_ids(server: Server, ns: str, count: int) -> list[str]:
    """Sessions created through starsessions' own store and serializer, in the shape its
    middleware writes them (the data and its `__metadata__`)."""
    from starsessions.serializers import JsonSerializer
    from starsessions.stores.redis import RedisStore

    client = server.client()
    store = RedisStore(connection=client, prefix=starsessions_prefix(ns))
    serializer = JsonSerializer()
    now = time.time()
    metadata = {"lifetime": STARSESSIONS_LIFETIME, "created": now, "last_access": now}
    data = serializer.serialize({"n": 1, "__metadata__": metadata})
    ids = [uuid.uuid4().hex for _ in range(count)]
    try:
        for session_id in ids:
            await store.write(session_id, data, STARSESSIONS_LIFETIME, STARSESSIONS_LIFETIME)
    finally:
        await client.aclose()
    return ids


def scenario_for(config: str, ours: list[str], theirs: list[str]) -> dict[str, Any]:
    if config == "starsessions":
        return {"kind": "read", "cookie": STARSESSIONS_COOKIE, "tokens": theirs}
    # bare Starlette ignores the cookie; it still carries one, as every other row's does
    return {"kind": "read", "cookie": OUR_COOKIE, "tokens": ours}


async def run_one(
    config: str,
    workers: int,
    server: Server,
    ns: str,
    scenario: dict[str, Any],
    sizes: Sizes,
    generator: str,
) -> dict[str, Any]:
    async with Fleet(config, workers, server.url, ns, module="asgi_worker") as fleet:
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


def add_ratios(rows: list[dict[str, Any]]) -> None:
    for workers in {row["workers"] for row in rows}:
        group = {r["config"]: r for r in rows if r["workers"] == workers and "rps" in r}
        for row in group.values():
            for anchor, key in (("starsessions", "x_starsessions"), ("starlette", "x_bare")):
                base = group.get(anchor)
                row[key] = round(row["rps"] / base["rps"], 2) if base and base["rps"] else None


async def measure(
    server: Server, sizes: Sizes, generator: str, progress: Progress
) -> dict[str, Any]:
    why = missing()
    if why is not None:
        progress(f"asgi: skipped ({why})")
        return {"skipped": why, "rows": []}
    ns = namespace("asgi")
    store = RedisSessions(url=server.url, namespace=ns, wipe=0)
    rows: list[dict[str, Any]] = []
    async with store:
        ours = await create_sessions(store, sizes.http_sessions, {"n": 1})
        try:
            theirs = await starsessions_ids(server, ns, sizes.http_sessions)
            for workers in sizes.worker_counts:
                for config in CONFIGS:
                    scenario = scenario_for(config, ours, theirs)
                    row = await run_one(config, workers, server, ns, scenario, sizes, generator)
                    rows.append(row)
                    progress(
                        f"asgi {config} x{workers}: {row['rps']:.0f} req/s, "
                        f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, CPU/request: "
                        f"worker {row['worker_cpu_us']} us, Redis {row['redis_cpu_us']} us"
                        + (f", hit rate {row['hit_rate']}" if "hit_rate" in row else "")
                        + (f", errors {row['errors']}" if row["errors"] else "")
                    )
        finally:
            await store.killall(app=APP)
            client = server.client()
            try:
                await drop_keys(client, starsessions_prefix(ns) + "*")
            finally:
                await client.aclose()
    add_ratios(rows)
    return {
        "server": uvicorn_described(),
        "connections": sizes.connections,
        "seconds": sizes.http_seconds,
        "sessions": sizes.http_sessions,
        "rows": rows,
    }


def uvicorn_described() -> str:
    """uvicorn's version and the event loop and HTTP parser its defaults pick here."""
    import starlette
    import starsessions  # type: ignore[import-untyped,unused-ignore]
    import uvicorn

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    version = getattr(starsessions, "__version__", None) or _version("starsessions")
    return (
        f"uvicorn {uvicorn.__version__} ({loop}, {parser}), Starlette {starlette.__version__}, "
        f"starsessions {version}"
    )


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def summary(result: dict[str, Any]) -> str:
    """One progress line: the ratios the section is about."""
    if "skipped" in result:
        return f"asgi: skipped ({result['skipped']})"
    parts = []
    for row in result["rows"]:
        if row["config"] in ("cache-on", "cache-off"):
            parts.append(
                f"{row['config']} x{row['workers']} {row.get('x_starsessions')}x starsessions"
            )
    return "asgi: " + ", ".join(parts)
