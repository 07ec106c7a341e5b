"""Work in Redis: no script call holds the server long, whatever the sessions hold.

Sessions at the caps (MAX_DATA_KEYS keys, MAX_DATA_BYTES bytes, indexed references)
are the worst case for every script: the tests give each operation such sessions and
read the server's own timing (SLOWLOG) around it. A batched kill that loses Redis part
way says how far it got, and a second call finishes it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from cached_sessions import InvalidValueError, RedisSessions, StoredDataError
from cached_sessions.errors import IncompleteKillError
from cached_sessions.scripts import Scripts
from cached_sessions.validation import MAX_DATA_BYTES, MAX_DATA_KEYS, dump_value
from tests.conftest import ManualClock
from tests.servers import ServerProcess

APP = "shop"
IP = "10.0.0.1"
REFERENCES = ("org_id", "team")
# Enough sessions at the caps that one unbounded batch would take far over the limit
# (of those whose `d` must be parsed, fewer do).
SESSIONS = 150
REWRITTEN = 20
SLOW_US = 10_000  # the longest a script call may hold Redis
ATTEMPTS = 5  # runs of an operation before its slow calls count
T = TypeVar("T")


def data_at_caps(org: int = 7) -> dict[str, Any]:
    """The most work per key and per byte for the scripts that read `d`.

    Every key needs an escape (decoded one by one), values change kind at every key (two
    pattern matches each), and a string of escaped quotes fills `d` up to the byte cap.
    """
    d: dict[str, Any] = {f'k"{i}': (i if i % 2 else "\\") for i in range(MAX_DATA_KEYS - 3)}
    d.update(org_id=org, team="t")
    used = len(dump_value(d).encode()) + len(',"pad":""')
    d["pad"] = '"' * ((MAX_DATA_BYTES - used) // 2)
    assert len(d) == MAX_DATA_KEYS
    assert MAX_DATA_BYTES - 2 <= len(dump_value(d).encode()) <= MAX_DATA_BYTES
    return d


@pytest.fixture
async def rs(
    server: ServerProcess, namespace: str, clock: ManualClock
) -> AsyncIterator[RedisSessions]:
    # A batch count far above what the work budget allows: only the budget bounds a call.
    store = RedisSessions(
        url=server.url,
        namespace=namespace,
        wipe=0,
        clock=clock,
        batch=10_000,
        references=REFERENCES,
    )
    async with store:
        yield store


class SlowLog:
    """The script calls that held the server over SLOW_US, by the server's own clock."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def around(self, call: Awaitable[T]) -> tuple[T, list[str]]:
        await self.redis.slowlog_reset()
        result = await call
        entries = await self.redis.slowlog_get(1024)
        slow = [
            f"{entry['duration']} µs: {entry['command'][:60]!r}"
            for entry in entries
            if entry["command"].upper().startswith((b"EVAL", b"FCALL"))
        ]
        return result, slow


@pytest.fixture
async def slowlog(redis: Redis) -> AsyncIterator[SlowLog]:
    saved = await redis.config_get("slowlog-*")
    await redis.config_set("slowlog-log-slower-than", SLOW_US)
    await redis.config_set("slowlog-max-len", 1024)
    try:
        yield SlowLog(redis)
    finally:
        for name, value in saved.items():
            await redis.config_set(name, value)


async def slow_calls(attempt: Callable[[], Awaitable[list[str]]]) -> list[str]:
    """The slow script calls of `attempt`, which is run again while it has any.

    SLOWLOG measures wall time, and a busy machine can stall the server in the middle
    of a short call (seen: 18 ms for a 1.5 ms call while two test suites shared two
    cores); a call that is slow by itself is slow every time.
    """
    slow = await attempt()
    for _ in range(ATTEMPTS - 1):
        if not slow:
            break
        slow = await attempt()
    return slow


async def new_sessions(
    rs: RedisSessions, count: int, d: dict[str, Any], ttl: int = 3600
) -> list[str]:
    tokens = []
    for i in range(count):
        created = await rs.create(app=APP, id=f"user{i}", ip=IP, ttl=ttl, d=d)
        tokens.append(created["token"])
    return tokens


async def script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_fcall", "cmdstat_evalsha")
    )


# The server's own timing, around each operation on sessions at the caps


async def test_set_at_the_caps_holds_redis_briefly(rs: RedisSessions, slowlog: SlowLog) -> None:
    d = data_at_caps()
    token = (await new_sessions(rs, 1, d))[0]
    # Every key changed at once: the merge does the most work it can.
    changed = {key: "\\" if isinstance(value, int) else 1 for key, value in d.items()}
    del changed["pad"]

    async def sets() -> None:
        for patch in ({"team": "u"}, changed, {"org_id": 8}, changed):
            assert await rs.set(app=APP, token=token, d=patch) is not None

    async def attempt() -> list[str]:
        return (await slowlog.around(sets()))[1]

    assert await slow_calls(attempt) == []


async def test_kill_by_at_the_caps_holds_redis_briefly(
    rs: RedisSessions, redis: Redis, slowlog: SlowLog
) -> None:
    async def attempt() -> list[str]:
        await new_sessions(rs, SESSIONS, data_at_caps())
        calls = await script_calls(redis)
        killed, slow = await slowlog.around(rs.kill_by(app=APP, field="org_id", value=7))
        assert killed == {"kill": SESSIONS}
        assert await script_calls(redis) - calls > 1
        return slow

    assert await slow_calls(attempt) == []


async def test_kill_by_of_data_rewritten_elsewhere_holds_redis_briefly(
    rs: RedisSessions, redis: Redis, namespace: str, slowlog: SlowLog
) -> None:
    """A writer that knows nothing of the index changed every `d`: each one is parsed."""

    async def attempt() -> list[str]:
        for token in await new_sessions(rs, REWRITTEN, data_at_caps()):
            key = f"{namespace}:{APP}:{token}"
            stored = await redis.hget(key, "d")
            await redis.hset(key, "d", stored.replace('"team":"t"', '"team":"u"'))
        killed, slow = await slowlog.around(rs.kill_by(app=APP, field="org_id", value=7))
        assert killed == {"kill": REWRITTEN}
        return slow

    assert await slow_calls(attempt) == []


async def test_killall_at_the_caps_holds_redis_briefly(
    rs: RedisSessions, redis: Redis, slowlog: SlowLog
) -> None:
    async def attempt() -> list[str]:
        await new_sessions(rs, SESSIONS, data_at_caps())
        calls = await script_calls(redis)
        killed, slow = await slowlog.around(rs.killall(app=APP))
        assert killed == {"kill": SESSIONS}
        assert await script_calls(redis) - calls > 1
        return slow

    assert await slow_calls(attempt) == []


async def test_wipe_at_the_caps_holds_redis_briefly(
    rs: RedisSessions, redis: Redis, clock: ManualClock, slowlog: SlowLog
) -> None:
    async def attempt() -> list[str]:
        await new_sessions(rs, SESSIONS, data_at_caps(), ttl=10)
        clock.advance(11)
        calls = await script_calls(redis)
        removed, slow = await slowlog.around(rs.wipe())
        assert removed == SESSIONS
        assert await script_calls(redis) - calls > 1
        return slow

    assert await slow_calls(attempt) == []


# The key cap


async def test_set_refuses_a_merge_over_the_key_cap_and_writes_nothing(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    token = (await new_sessions(rs, 1, {f"a{i}": i for i in range(MAX_DATA_KEYS - 1)}))[0]
    key = f"{namespace}:{APP}:{token}"
    before = await redis.hgetall(key)
    with pytest.raises(InvalidValueError) as caught:
        await rs.set(app=APP, token=token, d={"b1": 1, "b2": 2})
    assert str(caught.value) == (
        f"d would have {MAX_DATA_KEYS + 1} keys after the merge; at most {MAX_DATA_KEYS} "
        "are allowed (nothing was written)"
    )
    assert await redis.hgetall(key) == before
    # Replacing and removing keys is fine at the cap.
    updated = await rs.set(app=APP, token=token, d={"a0": None, "b1": 1, "a1": "x"})
    assert updated is not None and len(updated["d"]) == MAX_DATA_KEYS - 1


async def test_set_refuses_stored_data_over_the_caps_and_writes_nothing(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    """Another library may store more than the caps; merging it would cost too much."""
    token = (await new_sessions(rs, 1, {"a": 1}))[0]
    key = f"{namespace}:{APP}:{token}"
    for stored in (
        dump_value({f"k{i}": 0 for i in range(MAX_DATA_KEYS + 1)}),
        dump_value({"big": "x" * MAX_DATA_BYTES}),
    ):
        await redis.hset(key, "d", stored)
        before = await redis.hgetall(key)
        with pytest.raises(StoredDataError, match="over the caps"):
            await rs.set(app=APP, token=token, d={"k0": None})
        assert await redis.hgetall(key) == before


# A kill that loses Redis part way


class OutageAfter:
    """The store's scripts, with an outage started after the first `calls` batch calls."""

    def __init__(self, scripts: Scripts, calls: int, outage: Callable[[], Awaitable[None]]):
        self._scripts = scripts
        self._left = calls
        self._outage = outage

    def run(self, operation: str, keys: Sequence[str], args: Sequence[Any]) -> Awaitable[Any]:
        return self._run(operation, keys, args)

    async def _run(self, operation: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        result = await self._scripts.run(operation, keys, args)
        self._left -= 1
        if self._left == 0:
            await self._outage()
        return result


@pytest.fixture
async def small_batches(server: ServerProcess, namespace: str) -> AsyncIterator[RedisSessions]:
    store = RedisSessions(
        url=server.url,
        namespace=namespace,
        wipe=0,
        batch=2,
        redis_timeout=0.5,
        references=REFERENCES,
    )
    async with store:
        yield store


async def test_killall_that_loses_redis_part_way_says_so_and_resumes(
    small_batches: RedisSessions, redis: Redis
) -> None:
    rs = small_batches
    tokens = await new_sessions(rs, 7, {"org_id": 1})
    real = rs._scripts
    assert real is not None

    async def pause() -> None:
        await redis.client_pause(60_000, all=False)  # writes wait, this client's UNPAUSE not

    rs._scripts = OutageAfter(real, 1, pause)  # type: ignore[assignment]
    try:
        with pytest.raises(IncompleteKillError) as caught:
            await rs.killall(app=APP)
    finally:
        await redis.client_unpause()
        rs._scripts = real
    assert caught.value.killed == 2
    assert str(caught.value).startswith("killall stopped after killing 2 sessions")
    assert "call killall again to finish" in str(caught.value)
    alive = [await rs.get(app=APP, token=token) is not None for token in tokens]
    assert alive.count(True) == 5
    assert await rs.killall(app=APP) == {"kill": 5}
    assert [await rs.get(app=APP, token=token) for token in tokens] == [None] * 7


async def test_kill_by_that_loses_redis_part_way_says_so_and_resumes(
    small_batches: RedisSessions, server: ServerProcess, namespace: str, redis: Redis
) -> None:
    rs = small_batches
    tokens = await new_sessions(rs, 9, {"org_id": 1})
    real = rs._scripts
    assert real is not None and server.process is not None
    pid = server.process.pid

    async def stop_the_server() -> None:
        os.kill(pid, signal.SIGSTOP)

    rs._scripts = OutageAfter(real, 2, stop_the_server)  # type: ignore[assignment]
    try:
        with pytest.raises(IncompleteKillError) as caught:
            await rs.kill_by(app=APP, field="org_id", value=1)
    finally:
        os.kill(pid, signal.SIGCONT)
        rs._scripts = real
    assert caught.value.killed == 4
    assert str(caught.value).startswith("kill_by stopped after killing 4 sessions")
    # The batch that timed out may still have run once the server went on.
    rest = (await asyncio.wait_for(rs.kill_by(app=APP, field="org_id", value=1), 10))["kill"]
    assert 9 - 4 - 2 <= rest <= 9 - 4
    assert [await rs.get(app=APP, token=token) for token in tokens] == [None] * 9
    assert await redis.keys(f"{namespace}:{APP}:ref:*") == []
