"""What one shard holds: memory per session, and the script calls one primary sustains.

Memory: INFO `used_memory` of each primary before and after a fill of sessions (the
library's create script, harness.fill), less what does not grow with them (client
and replication buffers, scripts) at either moment, over the sessions that primary
counts itself (SCAN). Hash tables grow by doubling, so bytes per session move by some
percent with the count: the figure is for the count measured.

Throughput: the Python client is the bottleneck of a call through the library (about
a core for a few thousand calls a second), so it cannot show what a primary sustains.
Here the library's own EVALSHA for `get` and `set` (asked of `Scripts.queue`, so the
very calls the store makes, every key declared as on a cluster) is encoded once and
written in pipelined batches on `CONNECTIONS` plain connections to one primary, at
sessions that primary owns; the client then costs about a microsecond a call. The run
reports calls per second, the primary's CPU time over the same wall time (near 100%:
the primary was the limit; less: the machine was, its cores shared with the client, the
replica and whoever else), its CPU time per call, and so the calls one core of its own
would answer (calls over the primary's CPU seconds): on a shared machine that is the
figure that says what a primary sustains. The replica's CPU time per call comes with
it: a `get` is a write too (it records the read), so it replicates.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from redis.asyncio import Redis

from cached_sessions.keys import Layout
from cached_sessions.validation import MAX_DATA_BYTES, MAX_DATA_KEYS, encode_data_patch

from .harness import (
    APP,
    HOST,
    SMALL_D,
    Target,
    fill,
    script_call,
    scripts_on,
    send,
    sessions_per_primary,
)

CONNECTIONS = 4
DEPTH = 100  # calls per batch; two batches in flight per connection
GIB = 1 << 30
FREE_WAIT = 30.0  # seconds a server may take to free a flushed dataset
LARGE_D = {"profile": "x" * 1000, "lang": "en", "n": 1}  # about 1 KiB of JSON
DATA = {"small d": SMALL_D, "1 KiB d": LARGE_D}


async def node_info(port: int, section: str) -> dict[str, Any]:
    client = Redis(host=HOST, port=port, decode_responses=True)
    try:
        return await client.info(section)
    finally:
        await client.aclose()


async def cpu_seconds(port: int) -> float:
    info = await node_info(port, "cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def sustained(
    port: int,
    replicas: list[int],
    layout: Layout,
    tokens: list[str],
    operation: str,
    seconds: float,
) -> dict[str, Any]:
    """Calls per second one primary answers under a pipelined load, and its CPU time
    (and its replicas') per call."""
    url = f"redis://{HOST}:{port}"
    scripts = await scripts_on(Target.standalone(url), layout, operation)
    now = int(time.time())
    commands = []
    for n, token in enumerate(tokens):
        args: list[Any] = [now, APP, token]
        if operation == "set":
            args += [MAX_DATA_BYTES, MAX_DATA_KEYS]
            for triple in encode_data_patch({"n": n}):
                args.extend(triple)
        commands.append(script_call(scripts, operation, layout.token_keys(APP, token), args))
    before = {node: await cpu_seconds(node) for node in [port, *replicas]}
    started = time.perf_counter()
    deadline = started + seconds
    answered = sum(await asyncio.gather(*(
        send(url, commands[i::CONNECTIONS], lambda r: isinstance(r, list), deadline, DEPTH)
        for i in range(CONNECTIONS)
    )))  # fmt: skip
    elapsed = time.perf_counter() - started
    spent = {node: await cpu_seconds(node) - before[node] for node in before}
    primary = spent.pop(port)
    return {
        "calls_per_s": round(answered / elapsed),
        "server_cpu_share": round(primary / elapsed, 2),
        "server_cpu_us_per_call": round(primary / answered * 1e6, 1),
        "calls_per_core_s": round(answered / primary) if primary else None,
        "replica_cpu_us_per_call": round(sum(spent.values()) / answered * 1e6, 1)
        if replicas
        else None,
    }


async def _freed(port: int) -> None:
    """Return once the server has nothing left to free in the background."""
    for _ in range(int(FREE_WAIT / 0.05)):
        if int((await node_info(port, "memory")).get("lazyfree_pending_objects", 0)) == 0:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{port} was still freeing memory after {FREE_WAIT} s")


async def _memory(port: int) -> int:
    """used_memory less what does not grow with the sessions: client buffers, the
    replication buffers (the backlog fills up to its fixed size with the first writes)
    and the scripts (loaded once)."""
    info = await node_info(port, "memory")
    if "mem_total_replication_buffers" in info:
        replication = int(info["mem_total_replication_buffers"])
    else:  # before Redis 7: the backlog and the replicas' buffers apart
        replication = int(info.get("mem_replication_backlog", 0)) + int(
            info.get("mem_clients_slaves", 0)
        )
    fixed = int(info.get("mem_clients_normal", 0)) + int(info.get("used_memory_scripts", 0))
    return int(info["used_memory"]) - replication - fixed


async def memory(
    target: Target, layout: Layout, count: int, d: dict[str, Any], settle: Any
) -> dict[str, Any]:
    """Bytes per session on each primary after `count` sessions with data `d`.

    `settle` is awaited after the fill, before the second reading (on a cluster: the
    replicas catch up, so the primaries' replica buffers are drained).
    """
    for port in target.ports:
        await _freed(port)
    before = {port: await _memory(port) for port in target.ports}
    now = int(time.time())
    await fill(target, layout, (f"m{n}" for n in range(count)), last_access=now, ttl=86_400, d=d)
    await settle()
    after = {port: await _memory(port) for port in target.ports}
    held = dict(zip(target.ports, (await sessions_per_primary(target, layout.namespace)).values(),
                    strict=True))  # fmt: skip
    grown = {port: after[port] - before[port] for port in target.ports}
    per_session = {port: round(grown[port] / held[port]) for port in target.ports if held[port]}
    mean = sum(grown.values()) / max(1, sum(held.values()))
    return {
        "sessions": count,
        "d_bytes": len(json.dumps(d, separators=(",", ":"))),
        "sessions_per_primary": list(held.values()),
        "bytes_per_session": [per_session.get(port) for port in target.ports],
        "mean_bytes_per_session": round(mean),
        "sessions_per_gib": round(GIB / mean) if mean > 0 else None,
    }
