"""Invariant 3 of the design brief under real faults: losing the subscription flushes.

Each test breaks the pub/sub connection for real (killed from the server side, the
server restarted, the server paused past a health ping) and checks that the cache is
flushed and bypassed, that nothing written or killed in the gap is served stale
afterwards, and that the cache comes back into use once subscribed again. Readers run
in this process (where the state can be looked at between two steps) and in worker
processes (tests/worker.py).

The `server` fixture is shared by the whole session: a test that stops it starts it
again, whatever happens, and a test that pauses it unpauses it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from cached_sessions import RedisSessions
from tests.servers import ServerProcess
from tests.worker import Worker, WorkerPool

# Every wait is bounded; this bounds a whole test should one of them not be.
pytestmark = pytest.mark.timeout(90)

APP = "shop"
IP = "10.0.0.1"
# For the tests that are not about health pings: no ping falls inside the test.
QUIET_PING = 30.0
FAST_PING = 0.2
PAUSE_MS = 1500

Stores = Callable[..., Awaitable[RedisSessions]]


@pytest.fixture
async def stores(server: ServerProcess, namespace: str) -> AsyncIterator[Stores]:
    """Makes started stores in this process (cache on unless cachetime=0)."""
    made: list[RedisSessions] = []

    async def make(**options: Any) -> RedisSessions:
        settings: dict[str, Any] = {"cachetime": 30, "wipe": 0, "ping_interval": QUIET_PING}
        settings.update(options)
        store = RedisSessions(url=server.url, namespace=namespace, **settings)
        made.append(store)
        await store.start(subscribe_timeout=5.0)
        return store

    try:
        yield make
    finally:
        for store in made:
            await store.aclose()


@pytest.fixture
async def pool(server: ServerProcess, namespace: str) -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(server.url, namespace)
    try:
        yield workers
    finally:
        codes = await workers.aclose()
    assert codes == [0] * len(codes), f"workers did not exit cleanly: {codes}"


async def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.0005)


async def new(store: RedisSessions, v: int = 1, id: str = "u1") -> str:
    return (await store.create(app=APP, id=id, ip=IP, d={"v": v}))["token"]


async def cache_here(store: RedisSessions, token: str, *, tries: int = 1) -> None:
    """Read twice in this process; the second read must be a hit.

    With `tries` > 1 a pair of reads that a flush split is tried again (for tests with
    a short ping interval, where a flush may come between them); any other miss fails.
    """
    for _ in range(tries):
        assert await store.get(app=APP, token=token) is not None
        before = store.cache_stats()
        assert await store.get(app=APP, token=token) is not None
        after = store.cache_stats()
        if after["hits"] == before["hits"] + 1:
            assert store.is_cached(token)
            return
        assert after["flushes"] > before["flushes"] or not before["subscribed"], after
        await wait_for(lambda: bool(store.cache_stats()["subscribed"]), 5.0, "resubscribed")
    raise AssertionError(f"no cache hit in {tries} tries: {store.cache_stats()}")


async def cache_there(worker: Worker, token: str, *, tries: int = 1) -> None:
    """The same in a worker process."""
    for _ in range(tries):
        assert (await worker.call("get", app=APP, token=token))["session"] is not None
        before = await worker.stats()
        assert (await worker.call("get", app=APP, token=token))["session"] is not None
        after = await worker.stats()
        if after["hits"] == before["hits"] + 1:
            assert (await worker.call("is_cached", token=token))["cached"]
            return
        assert after["flushes"] > before["flushes"] or not before["subscribed"], after
        await worker.call("wait_subscribed", timeout=5.0)
    raise AssertionError(f"{worker.name}: no cache hit in {tries} tries: {after}")


async def read_v(reader: RedisSessions | Worker, token: str) -> int | None:
    if isinstance(reader, Worker):
        session = (await reader.call("get", app=APP, token=token))["session"]
    else:
        session = await reader.get(app=APP, token=token)
    return None if session is None else int(session["d"]["v"])


def flushed_since(store: RedisSessions, before: dict[str, Any]) -> bool:
    return bool(store.cache_stats()["flushes"] > before["flushes"])


def reasons(stats: dict[str, Any]) -> dict[str, int]:
    return dict(stats["flush_reasons"])


# The server kills the pub/sub connections


async def test_a_killed_subscription_flushes_bypasses_and_serves_nothing_stale(
    stores: Stores, pool: WorkerPool, redis: Redis
) -> None:
    reader = await stores()
    writer = await stores(cachetime=0)
    workers = await pool.spawn(2, ping_interval=QUIET_PING)
    channel = reader.layout.channel()

    for _attempt in range(5):
        changed, killed, kept = [await new(writer) for _ in range(3)]
        for token in (changed, killed, kept):
            await cache_here(reader, token)
            for worker in workers:
                await cache_there(worker, token)
        before = reader.cache_stats()
        before_workers = [await worker.stats() for worker in workers]

        # Kill every subscriber, then write at once: the subscribers sleep before they
        # reconnect, so these invalidations go to nobody. NUMSUB proves it: nobody was
        # subscribed after the writes, hence nobody since the kill.
        assert await redis.client_kill_filter(_type="pubsub") >= 1 + len(workers)
        await writer.set(app=APP, token=changed, d={"v": 2})
        await writer.kill(app=APP, token=killed)
        [(_, listeners)] = await redis.pubsub_numsub(channel)

        await wait_for(partial(flushed_since, reader, before), 2.0, "the reader flushed")
        stats = reader.cache_stats()
        bypassed = not stats["subscribed"]
        if bypassed:
            # Not subscribed: this read must go to Redis, even for a session it held.
            assert await read_v(reader, kept) == 1
            after = reader.cache_stats()
            assert after["hits"] == stats["hits"]
            assert after["bypassed"] == stats["bypassed"] + 1
        if listeners == 0 and bypassed:
            break
        # Resubscribed faster than this test could look: try the whole window again.
        await wait_for(lambda: bool(reader.cache_stats()["subscribed"]), 5.0, "resubscribed")
    else:
        pytest.fail("could not hit the window between the kill and the resubscription")

    assert reader.cache_stats()["entries"] == 0
    assert reasons(reader.cache_stats()).get("connection_error", 0) > reasons(before).get(
        "connection_error", 0
    )
    assert not reader.is_cached(kept)
    await wait_for(lambda: bool(reader.cache_stats()["subscribed"]), 5.0, "resubscribed")
    for worker, stats in zip(workers, before_workers, strict=True):
        await worker.call("wait_subscribed", timeout=5.0)
        now = await worker.stats()
        assert now["flushes"] > stats["flushes"], (worker.name, now)
        assert "connection_error" in reasons(now), (worker.name, now)

    # Nothing from before the loss is served: the change and the kill are seen.
    everyone: list[RedisSessions | Worker] = [reader, *workers]
    for where in everyone:
        assert await read_v(where, changed) == 2, where
        assert await read_v(where, killed) is None, where
        assert await read_v(where, kept) == 1, where
    # And the cache serves again.
    await cache_here(reader, changed)
    for worker in workers:
        await cache_there(worker, changed)


# The server goes away and comes back empty


async def test_a_server_restart_flushes_every_process_and_the_cache_comes_back(
    server: ServerProcess, stores: Stores, pool: WorkerPool
) -> None:
    reader = await stores()
    workers = await pool.spawn(2, ping_interval=QUIET_PING)
    tokens = [await new(reader, v=i) for i in range(3)]
    for token in tokens:
        await cache_here(reader, token)
        for worker in workers:
            await cache_there(worker, token)
    try:
        server.stop()
        # The loss is noticed at once (a read that beat it would be no different from
        # one just before the stop); from then on nothing comes from the cache.
        await wait_for(lambda: not reader.cache_stats()["subscribed"], 5.0, "reader lost it")
        assert reader.cache_stats()["entries"] == 0
        for token in tokens:
            with pytest.raises(RedisConnectionError):
                await reader.get(app=APP, token=token)
        with pytest.raises(RedisConnectionError):
            await reader.set(app=APP, token=tokens[0], d={"v": 9})
        for worker in workers:
            await worker.call("wait_subscribed", value=False, timeout=5.0)
            reply = await worker.call("get", app=APP, token=tokens[0], check=False)
            assert reply.get("type") == "ConnectionError", reply
            reply = await worker.call("set", app=APP, token=tokens[0], d={"v": 9}, check=False)
            assert reply.get("type") == "ConnectionError", reply
    finally:
        if server.process is None:
            server.start()

    await wait_for(lambda: bool(reader.cache_stats()["subscribed"]), 5.0, "reader resubscribed")
    for worker in workers:
        await worker.call("wait_subscribed", timeout=5.0)
    # The restarted server is empty (no persistence): every cached session is gone.
    everyone: list[RedisSessions | Worker] = [reader, *workers]
    for where in everyone:
        for token in tokens:
            assert await read_v(where, token) is None, where
    assert "connection_error" in reasons(reader.cache_stats())
    for worker in workers:
        assert "connection_error" in reasons(await worker.stats()), worker.name

    fresh = await new(reader, v=7)
    await cache_here(reader, fresh)
    for worker in workers:
        await cache_there(worker, fresh)
        assert await read_v(worker, fresh) == 7


# The server stops answering for longer than the ping timeout


async def test_a_healthy_subscription_survives_its_health_pings(
    stores: Stores, redis: Redis
) -> None:
    """The control for the missed-pong test: answered pings never flush the cache."""
    reader = await stores(ping_interval=FAST_PING)
    token = await new(reader)
    await cache_here(reader, token)
    calls = await ping_calls(redis)
    await asyncio.sleep(8 * FAST_PING)
    assert await ping_calls(redis) >= calls + 4, "the subscriber sent no health pings"
    stats = reader.cache_stats()
    assert stats["subscribed"]
    assert stats["flushes"] == 0, f"flushed with the server healthy: {stats['flush_reasons']}"
    assert reader.is_cached(token)
    assert reader.cache_stats()["hits"] == 1


async def ping_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


async def test_a_missed_pong_flushes_and_writes_around_the_pause_are_read_fresh(
    stores: Stores, pool: WorkerPool, redis: Redis
) -> None:
    reader = await stores(ping_interval=FAST_PING)
    remote, writer = await pool.spawn(2, ping_interval=FAST_PING)
    before, during = await new(reader), await new(reader)
    for token in (before, during):
        await cache_here(reader, token, tries=20)
        await cache_there(remote, token, tries=20)
    # Subscribed right before the pause, so that the pause is what ends it.
    await remote.call("wait_subscribed", timeout=5.0)
    await wait_for(lambda: bool(reader.cache_stats()["subscribed"]), 5.0, "subscribed")

    await writer.call("set", app=APP, token=before, d={"v": 2})
    paused = time.monotonic()
    try:
        await redis.client_pause(PAUSE_MS, all=True)
        # Sent during the pause: it waits on the server until the pause ends.
        write = writer.send("set", app=APP, token=during, d={"v": 2})
        await wait_for(
            lambda: "missed_pong" in reasons(reader.cache_stats()), 3.0, "missed pong here"
        )
        assert not reader.cache_stats()["subscribed"]
        assert reader.cache_stats()["entries"] == 0
        assert not write.done(), "the write went through during the pause"
        await remote.call("wait_subscribed", value=False, timeout=3.0)
        assert "missed_pong" in reasons(await remote.stats())
        reply = await writer.wait(write, within=10.0)
        assert reply["now"] - paused >= PAUSE_MS / 1000 - 0.1, "the pause did not hold the write"
    finally:
        await redis.client_unpause()

    # Read at once, subscribed again or not: both writes are seen everywhere.
    readers: list[RedisSessions | Worker] = [reader, remote]
    for where in readers:
        assert await read_v(where, before) == 2, where
        assert await read_v(where, during) == 2, where
    await wait_for(lambda: bool(reader.cache_stats()["subscribed"]), 5.0, "resubscribed")
    await remote.call("wait_subscribed", timeout=5.0)
    for where in readers:
        assert await read_v(where, before) == 2, where
        assert await read_v(where, during) == 2, where
    await cache_here(reader, during, tries=20)
    await cache_there(remote, during, tries=20)
