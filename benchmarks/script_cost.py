"""How long each script holds Redis, by the server's own clock (SLOWLOG, every call).

1. `set` as a function of the number of keys in `d`, up to MAX_DATA_KEYS, with and
   without indexed references, for plain data and for the worst data per key (keys
   that need escapes, values that change kind at every key).
2. Every call of create, set, kill_by, killall and the wipe on sessions at both caps
   (MAX_DATA_KEYS keys, MAX_DATA_BYTES bytes, the bytes dense with escapes), so the
   longest call is the worst case. kill_by runs twice: on data this library wrote (the
   reference values are read beside `d`), and on data rewritten by another writer
   (each `d` is parsed).
3. `get` as FCALL (the function library) and as EVALSHA (the fallback, through a user
   whose ACL forbids Functions), in interleaved rounds: a read in the same second as
   the session's last access, and a read in a new second (which moves its scores).

`python -m benchmarks.script_cost [--url URL] [--sessions N] [--rounds N] [--only-get]`;
without --url it starts an embedded server. The server's SLOWLOG settings are put back
afterwards. Timings include whatever else the machine runs: read the minimum as the
cost, the maximum as what a busy machine adds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis

from cached_sessions import RedisSessions
from cached_sessions.validation import MAX_DATA_BYTES, MAX_DATA_KEYS, dump_value

from .harness import APP, IP, Server, namespace

REFERENCES = ("org_id", "team")
KEY_COUNTS = (1, 100, 200, 300, 400, MAX_DATA_KEYS)
SETS_PER_POINT = 15


def plain_data(keys: int) -> dict[str, Any]:
    return {f"key{i:04d}": "value-8c" for i in range(keys)}


def worst_data(keys: int) -> dict[str, Any]:
    """The most work per key: every key escaped, values of alternating kinds."""
    return {f'k"{i}': (i if i % 2 else "\\") for i in range(keys)}


def data_at_caps() -> dict[str, Any]:
    """Worst per key, then filled to the byte cap with escaped quotes."""
    d = worst_data(MAX_DATA_KEYS - 3)
    d.update(org_id=7, team="t")
    used = len(dump_value(d).encode()) + len(',"pad":""')
    d["pad"] = '"' * ((MAX_DATA_BYTES - used) // 2)
    return d


class SlowLog:
    """Every script call's duration in µs, as the server measured it."""

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def reset(self) -> None:
        await self.client.slowlog_reset()

    async def scripts(self) -> list[int]:
        entries = await self.client.slowlog_get(100_000)
        await self.client.slowlog_reset()
        return sorted(int(e["duration"]) for e in entries if _is_script(e["command"]))


def _is_script(command: str | bytes) -> bool:
    text = command.decode(errors="replace") if isinstance(command, bytes) else command
    return text.upper().startswith(("EVAL", "FCALL"))


@asynccontextmanager
async def every_call(client: Redis) -> AsyncIterator[SlowLog]:
    saved = await client.config_get("slowlog-*")
    await client.config_set("slowlog-log-slower-than", 0)
    await client.config_set("slowlog-max-len", 100_000)
    try:
        log = SlowLog(client)
        await log.reset()
        yield log
    finally:
        for name, value in saved.items():
            await client.config_set(str(name), str(value))


def summary(us: list[int]) -> str:
    if not us:
        return "no calls"
    return (
        f"{len(us):4} calls: min {us[0] / 1000:6.2f} ms, median "
        f"{statistics.median(us) / 1000:6.2f} ms, max {us[-1] / 1000:6.2f} ms"
    )


async def set_curve(url: str, log: SlowLog, report: Callable[[str], None]) -> None:
    report(f"1. set, Redis time by keys in d ({SETS_PER_POINT} sets a point; min / median)")
    for shape, make in (("plain", plain_data), ("worst", worst_data)):
        for references in ((), REFERENCES):
            store = RedisSessions(
                url=url, namespace=namespace("cost"), wipe=0, references=references
            )
            async with store:
                row = []
                for keys in KEY_COUNTS:
                    d = make(keys - 1) | {"org_id": 7}
                    token = (await store.create(app=APP, id="u", ip=IP, d=d))["token"]
                    await log.reset()
                    for i in range(SETS_PER_POINT):
                        await store.set(app=APP, token=token, d={"org_id": i})
                    us = await log.scripts()
                    row.append(f"{keys}: {us[0] / 1000:.2f}/{statistics.median(us) / 1000:.2f}")
                    await store.killall(app=APP)
            label = f"{shape}, {'indexed' if references else 'no index'}"
            report(f"   {label:18} " + "  ".join(row) + " ms")


async def new_sessions(store: RedisSessions, count: int, ttl: int = 3600) -> list[str]:
    d = data_at_caps()
    return [
        (await store.create(app=APP, id=f"user{i}", ip=IP, ttl=ttl, d=d))["token"]
        for i in range(count)
    ]


async def at_caps(
    url: str, client: Redis, log: SlowLog, sessions: int, report: Callable[[str], None]
) -> None:
    size = len(dump_value(data_at_caps()).encode())
    report(f"2. every call on {sessions} sessions at the caps ({MAX_DATA_KEYS} keys, {size} B)")
    ns = namespace("cost")
    clock = [time.time()]
    store = RedisSessions(
        url=url, namespace=ns, wipe=0, references=REFERENCES, clock=lambda: clock[0]
    )
    async with store:
        await log.reset()
        tokens = await new_sessions(store, sessions)
        report(f"   create               {summary(await log.scripts())}")
        for token in tokens[:20]:
            await store.set(app=APP, token=token, d={"team": "u"})
        report(f"   set                  {summary(await log.scripts())}")
        await store.kill_by(app=APP, field="org_id", value=7)
        report(f"   kill_by              {summary(await log.scripts())}")
        tokens = await new_sessions(store, sessions)
        for token in tokens:
            key = store.layout.session(APP, token)
            stored = str(await client.hget(key, "d"))
            await client.hset(key, "d", stored.replace('"team":"t"', '"team":"x"'))
        await log.reset()
        await store.kill_by(app=APP, field="org_id", value=7)
        report(f"   kill_by, rewritten   {summary(await log.scripts())}")
        await new_sessions(store, sessions)
        await log.reset()
        await store.killall(app=APP)
        report(f"   killall              {summary(await log.scripts())}")
        await new_sessions(store, sessions, ttl=10)
        clock[0] += 11
        await log.reset()
        await store.wipe()
        report(f"   wipe                 {summary(await log.scripts())}")


READS_PER_ROUND = 300


@asynccontextmanager
async def user_without_functions(url: str, client: Redis) -> AsyncIterator[str]:
    """The URL of a user who may run every command but FUNCTION and FCALL."""
    name, password = f"bench-nofn-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await client.acl_setuser(
        name, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
        commands=["+@all", "-function", "-fcall"],
    )  # fmt: skip
    parts = urlsplit(url)
    try:
        yield urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.netloc}"))
    finally:
        await client.acl_deluser(name)


async def get_round(url: str, log: SlowLog) -> dict[str, float]:
    """Median µs of server time per get on one path: each session read once in the
    second it was created in, then once in the next (its scores move)."""
    clock = [float(int(time.time()))]
    store = RedisSessions(url=url, namespace=namespace("cost"), wipe=0, clock=lambda: clock[0])
    async with store:
        tokens = [
            (await store.create(app=APP, id=f"u{i}", ip=IP, d={"n": i, "lang": "en"}))["token"]
            for i in range(READS_PER_ROUND)
        ]
        medians = {}
        for label in ("same second", "new second"):
            if label == "new second":
                clock[0] += 1
            await log.reset()
            for i in range(READS_PER_ROUND):
                await store.get(app=APP, token=tokens[i])
            medians[label] = statistics.median(await log.scripts())
        await store.killall(app=APP)
    return medians


async def get_paths(
    url: str, client: Redis, log: SlowLog, rounds: int, report: Callable[[str], None]
) -> None:
    report(f"3. get, server µs per read by path ({rounds} interleaved rounds of "
           f"{READS_PER_ROUND} reads; median of the round medians [min-max])")  # fmt: skip
    found: dict[str, list[dict[str, float]]] = {"FCALL": [], "EVALSHA": []}
    async with user_without_functions(url, client) as fallback_url:
        for _ in range(rounds):
            found["FCALL"].append(await get_round(url, log))
            found["EVALSHA"].append(await get_round(fallback_url, log))
    for path, results in found.items():
        cells = []
        for label in ("same second", "new second"):
            values = sorted(r[label] for r in results)
            cells.append(
                f"{label} {statistics.median(values):5.1f} [{values[0]:.0f}-{values[-1]:.0f}]"
            )
        report(f"   {path:8} " + ", ".join(cells))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a Redis to measure (default: an embedded server)")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7, help="rounds of section 3")
    parser.add_argument("--only-get", action="store_true", help="section 3 alone")
    options = parser.parse_args()
    server = await Server(options.url).start()
    print(f"server: {server.version}", flush=True)
    client = server.client()
    try:
        async with every_call(client) as log:
            if not options.only_get:
                await set_curve(server.url, log, lambda line: print(line, flush=True))
                await at_caps(server.url, client, log, options.sessions, print)
            await get_paths(server.url, client, log, options.rounds, print)
    finally:
        await client.aclose()
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
