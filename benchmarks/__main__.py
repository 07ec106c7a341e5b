"""`python -m benchmarks [--quick] [--url URL]`: store figures, measured in one run.

What it measures, each against a real server (the embedded Valkey unless --url):
* store operations, microseconds per call, p50 and p99: `get` served from the cache,
  `get` read from Redis, `set`, `create`, `kill`; and the ratio of a cached `get` to
  an uncached one;
* invalidation: time from a `set` returning in one store to another store (its own
  connections and subscriber) dropping its cached copy, p50, p99 and max;
* the wipe of many expired sessions: total time and the longest single script call
  as the server measured it (SLOWLOG), which is what blocks other clients.

Results go to benchmarks/results/store.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from cached_sessions import EmbeddedServer, RedisSessions

RESULTS = Path(__file__).parent / "results"
APP = "bench"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 2),
        "p99_us": round(ordered[int(len(ordered) * 0.99) - 1] * 1e6, 2),
        "max_us": round(ordered[-1] * 1e6, 2),
        "n": len(ordered),
    }


async def timed(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    samples = []
    clock = time.perf_counter
    for _ in range(count):
        started = clock()
        await call()
        samples.append(clock() - started)
    return samples


async def store_operations(url: str, count: int) -> dict[str, Any]:
    cached = RedisSessions(url=url, namespace="bench-ops", wipe=0, cachetime=600)
    plain = RedisSessions(url=url, namespace="bench-ops", wipe=0)
    async with cached, plain:
        token = (await plain.create(app=APP, id="u1", ip="127.0.0.1", d={"cart": 3}))["token"]
        await cached.get(app=APP, token=token)
        for _ in range(200):  # warm up both paths
            await cached.get(app=APP, token=token)
            await plain.get(app=APP, token=token)
        ops = {
            "get (cache hit)": await timed(lambda: cached.get(app=APP, token=token), count * 10),
            "get (Redis)": await timed(lambda: plain.get(app=APP, token=token), count),
        }
        counter = iter(range(10**9))
        ops["set"] = await timed(
            lambda: plain.set(app=APP, token=token, d={"n": next(counter)}), count
        )
        tokens: list[str] = []

        async def create() -> None:
            tokens.append((await plain.create(app=APP, id="u2", ip="127.0.0.1"))["token"])

        ops["create"] = await timed(create, count)
        victims = iter(tokens)
        ops["kill"] = await timed(lambda: plain.kill(app=APP, token=next(victims)), count)
        assert cached.cache_stats()["hits"] >= count * 10
        await plain.killall(app=APP)
    figures = {name: percentiles(samples) for name, samples in ops.items()}
    ratio = figures["get (Redis)"]["p50_us"] / figures["get (cache hit)"]["p50_us"]
    return {"operations": figures, "hit_speedup_p50": round(ratio, 1)}


async def invalidation(url: str, count: int) -> dict[str, Any]:
    reader = RedisSessions(url=url, namespace="bench-inv", wipe=0, cachetime=600)
    writer = RedisSessions(url=url, namespace="bench-inv", wipe=0)
    delays: list[float] = []
    async with reader, writer:
        token = (await writer.create(app=APP, id="u", ip="127.0.0.1"))["token"]
        for n in range(count):
            await reader.get(app=APP, token=token)
            assert reader.is_cached(token)
            await writer.set(app=APP, token=token, d={"n": n})
            returned = time.perf_counter()
            deadline = returned + 2
            while reader.is_cached(token) and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0)  # polls as tightly as the loop allows, to measure
            delays.append(time.perf_counter() - returned)
        await writer.kill(app=APP, token=token)
    return percentiles(delays)


async def wipe_cost(url: str, sessions: int) -> dict[str, Any]:
    offset = 0.0
    rs = RedisSessions(url=url, namespace="bench-wipe", wipe=0, clock=lambda: time.time() + offset)
    async with rs:
        client: Redis = rs.redis
        started = time.perf_counter()
        for start in range(0, sessions, 500):
            await asyncio.gather(
                *(
                    rs.create(app=APP, id=f"u{i % 1000}:x", ip="127.0.0.1", ttl=10)
                    for i in range(start, min(start + 500, sessions))
                )
            )
        created_in = time.perf_counter() - started
        used = await client.info("memory")
        offset = 11.0
        # Above what one command inside a script takes, below what a batch takes.
        await client.config_set("slowlog-log-slower-than", 200)
        await client.config_set("slowlog-max-len", 100000)
        await client.slowlog_reset()
        started = time.perf_counter()
        removed = await rs.wipe()
        total = time.perf_counter() - started
        entries = await client.slowlog_get(100000)
        await client.config_set("slowlog-log-slower-than", 10000)
        script_us = [e["duration"] for e in entries if _command(e).startswith("evalsha")]
    assert removed == sessions, (removed, sessions)
    return {
        "sessions": sessions,
        "create_per_s": round(sessions / created_in),
        "redis_used_memory_bytes": int(used["used_memory"]),
        "wipe_total_s": round(total, 3),
        "wipe_script_calls": len(script_us),
        "longest_script_call_ms": round(max(script_us) / 1000, 2) if script_us else None,
        "median_script_call_ms": round(statistics.median(script_us) / 1000, 2)
        if script_us
        else None,
    }


def _command(entry: dict[str, Any]) -> str:
    command = entry["command"]
    return (command.decode() if isinstance(command, bytes) else str(command)).lower()


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured {report['date']} on {report['cpu']} ({report['cores']} cores), "
        f"{report['server']}, Python {report['python']}.",
        "",
        "| operation | p50 µs | p99 µs |",
        "|---|---:|---:|",
    ]
    for name, figures in report["store"]["operations"].items():
        lines.append(f"| {name} | {figures['p50_us']} | {figures['p99_us']} |")
    inv = report["invalidation"]
    wipe = report["wipe"]
    lines += [
        "",
        f"A cache hit is {report['store']['hit_speedup_p50']}x faster than a read from Redis "
        "(p50).",
        f"Invalidation, `set` returned → other store dropped its copy: p50 {inv['p50_us']} µs, "
        f"p99 {inv['p99_us']} µs, max {inv['max_us']} µs ({inv['n']} writes).",
        f"Wipe of {wipe['sessions']:,} expired sessions: {wipe['wipe_total_s']} s in "
        f"{wipe['wipe_script_calls']} script calls; longest call "
        f"{wipe['longest_script_call_ms']} ms, median {wipe['median_script_call_ms']} ms "
        "(server-side, SLOWLOG).",
    ]
    return "\n".join(lines)


async def run(url: str | None, quick: bool) -> dict[str, Any]:
    embedded = None
    if url is None:
        embedded = EmbeddedServer()
        url = await asyncio.to_thread(embedded.start)
    try:
        client = Redis.from_url(url, decode_responses=True)
        info = await client.info("server")
        await client.aclose()
        name = "Valkey" if "valkey_version" in info else "Redis"
        server = f"{name} {info.get('valkey_version') or info['redis_version']}"
        print(f"server: {server} at {url}", flush=True)
        print("store operations ...", flush=True)
        store = await store_operations(url, 300 if quick else 3000)
        print("invalidation ...", flush=True)
        inv = await invalidation(url, 100 if quick else 1000)
        print("wipe ...", flush=True)
        wipe = await wipe_cost(url, 5_000 if quick else 100_000)
    finally:
        if embedded is not None:
            embedded.stop()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "server": server,
        "quick": quick,
        "store": store,
        "invalidation": inv,
        "wipe": wipe,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--url", help="Redis URL (default: an embedded Valkey server)")
    parser.add_argument("--out", type=Path, default=RESULTS / "store.json")
    args = parser.parse_args()
    report = asyncio.run(run(args.url, args.quick))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(markdown(report))


if __name__ == "__main__":
    main()
