"""`max_connections` bounds the connections a store opens, and a full store fails clearly.

The bound is a semaphore around every call (slots.py), over an unbounded pool: these
tests look at the server's own list of clients, and at what a call sees when every
slot stays busy.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from cached_sessions import RedisSessions
from cached_sessions.slots import ConnectionSlots
from tests.servers import ServerProcess

APP = "bound"
PAUSE_MS = 300
CALLERS = 40


def named(url: str, name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}client_name={name}"


async def connections_named(redis: Redis, name: str) -> int:
    return sum(1 for client in await redis.client_list() if client.get("name") == name)


@pytest.mark.parametrize("bound", [1, 3])
async def test_a_burst_of_calls_opens_at_most_max_connections(
    server: ServerProcess, redis: Redis, namespace: str, bound: int
) -> None:
    name = f"bound-{namespace}"
    store = RedisSessions(
        url=named(server.url, name), namespace=namespace, wipe=0, max_connections=bound
    )
    async with store:
        token = (await store.create(app=APP, id="u1", ip="127.0.0.1", d={"n": 1}))["token"]
        # The pause holds every call on the server, so all of them are in flight at once.
        await redis.client_pause(PAUSE_MS, all=True)
        try:
            found = await asyncio.wait_for(
                asyncio.gather(*(store.get(app=APP, token=token) for _ in range(CALLERS))),
                timeout=10,
            )
        finally:
            await redis.client_unpause()
        assert all(session is not None and session["d"] == {"n": 1} for session in found)
        assert await connections_named(redis, name) <= bound


async def test_a_waiting_call_gets_the_slot_when_it_frees() -> None:
    slots = ConnectionSlots(1, 5.0)
    order: list[str] = []

    async def user(name: str, hold: float) -> None:
        order.append(f"{name} in")
        await asyncio.sleep(hold)
        order.append(f"{name} out")

    await asyncio.gather(slots.call(user, "a", 0.05), slots.call(user, "b", 0))
    assert order == ["a in", "a out", "b in", "b out"]


async def test_a_server_that_stops_answering_fails_the_call_after_redis_timeout(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    store = RedisSessions(
        url=server.url, namespace=namespace, wipe=0, redis_timeout=0.3, max_connections=1
    )
    async with store:
        token = (await store.create(app=APP, id="u1", ip="127.0.0.1"))["token"]
        await redis.client_pause(PAUSE_MS * 4, all=True)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError, match=r"Redis did not answer within 0.3 s"):
                await store.get(app=APP, token=token)
            waited = time.monotonic() - started
        finally:
            await redis.client_unpause()
        assert 0.29 <= waited < 1.0
        # The one connection, whose reply never came, was dropped rather than handed out
        # again with that reply still on its way: the next calls read their own answers.
        assert await store.activity(app=APP, delta_time=60) == {"activity": 1}
        session = await store.get(app=APP, token=token)
        assert session is not None and session["id"] == "u1"


def test_max_connections_and_redis_timeout_refuse_bad_values() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_connections must be a positive integer"):
            RedisSessions(url="redis://127.0.0.1:1", max_connections=bad)  # type: ignore[arg-type]
    for wrong in (0, -1.0, float("nan"), float("inf"), "5", True, None):
        with pytest.raises(ValueError, match="redis_timeout must be a positive number of seconds"):
            RedisSessions(url="redis://127.0.0.1:1", redis_timeout=wrong)  # type: ignore[arg-type]


async def test_a_cancel_from_outside_always_cancels_the_call(
    server: ServerProcess, namespace: str
) -> None:
    """A socket timeout would send writes through asyncio.wait_for, which on Python 3.11
    can swallow a cancel that lands as the write completes: the call then returns as if
    nothing happened, and a background loop that aclose() cancels never stops."""
    chance = random.Random(7)
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0) as store:
        assert store.redis.connection_pool.connection_kwargs.get("socket_timeout") is None
        token = (await store.create(app=APP, id="u1", ip="127.0.0.1"))["token"]
        delivered = ignored = 0
        for _ in range(200):
            calls = [asyncio.create_task(store.get(app=APP, token=token)) for _ in range(20)]
            await asyncio.sleep(chance.random() * 0.002)
            cancelled = [call for call in calls[:5] if call.cancel()]
            await asyncio.gather(*calls, return_exceptions=True)
            delivered += len(cancelled)
            ignored += sum(not call.cancelled() for call in cancelled)
        assert delivered > 0, "no cancel reached a call in flight: the test proved nothing"
        assert ignored == 0, f"{ignored} of {delivered} cancels were swallowed"
