"""The wipe of many expired sessions: total time and the longest single script call.

`wipe_sessions` sessions that expired a while ago are put in Redis (populate.py), then
`RedisSessions.wipe()` removes them, one script call per batch. What blocks other
clients is the longest call, measured by the server itself: SLOWLOG, with a threshold
above what one command inside a script takes and below what a batch takes. The
server's SLOWLOG settings are put back afterwards. The server time per removed session
(INFO commandstats) says what the scripts cost apart from the round trips, and is
steadier than the total on a shared machine.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from redis.exceptions import ResponseError

from cached_sessions import RedisSessions
from cached_sessions.store import DEFAULT_BATCH

from .harness import Progress, Server, ServerTime, Sizes, namespace, populate

SLOWLOG_US = 200
EXPIRED_TTL = 10


def _command(entry: dict[str, Any]) -> str:
    command = entry["command"]
    return (command.decode() if isinstance(command, bytes) else str(command)).lower()


async def measure(server: Server, sizes: Sizes, progress: Progress) -> dict[str, Any]:
    ns = namespace("wipe")
    count = sizes.wipe_sessions
    now = time.time()
    _, took = await populate(
        server.url, ns, count, last_access=(now - 3600, now - 600), ttl=EXPIRED_TTL
    )
    progress(f"wipe: {count:,} expired sessions in Redis ({count / took:,.0f}/s)")
    client = server.client()
    store = RedisSessions(url=server.url, namespace=ns, wipe=0)
    slowlog: str | None = None  # why the server's own timing is missing
    entries: list[dict[str, Any]] = []
    try:
        try:
            saved = await client.config_get("slowlog-*")
            await client.config_set("slowlog-log-slower-than", SLOWLOG_US)
            await client.config_set("slowlog-max-len", 100_000)
            await client.slowlog_reset()
        except ResponseError as error:  # CONFIG refused (a managed server)
            saved, slowlog = {}, f"SLOWLOG not available: {error}"
        try:
            async with store, ServerTime(client) as server_time:
                started = time.perf_counter()
                removed = await store.wipe()
                total = time.perf_counter() - started
            if slowlog is None:
                entries = await client.slowlog_get(100_000)
        finally:
            for name, value in saved.items():
                await client.config_set(str(name), str(value))
    finally:
        await client.aclose()
    if removed != count:
        raise RuntimeError(f"the wipe removed {removed} sessions, expected {count}")
    script_us = [e["duration"] for e in entries if _command(e).startswith(("evalsha", "fcall"))]
    return {
        "sessions": count,
        "batch": DEFAULT_BATCH,
        "wipe_total_s": round(total, 3),
        "removed_per_s": round(count / total),
        "script_calls": server_time.calls,
        "server_us_per_session": round(server_time.usec / count, 1),
        "slowlog_threshold_us": SLOWLOG_US,
        "slowlog_missing": slowlog,
        "script_calls_over_threshold": len(script_us),
        "longest_script_call_ms": round(max(script_us) / 1000, 2) if script_us else None,
        "median_script_call_ms": round(statistics.median(script_us) / 1000, 2)
        if script_us
        else None,
    }
