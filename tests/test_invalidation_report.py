"""The cache reports the drops that invalidation messages make, and when the last was.

`cache_stats()["invalidation_drops"]` and `["last_invalidation_drop"]` are what the
invalidation benchmark times propagation with, instead of patching the cache: a
writer compares its own `time.monotonic()` with the reader's (one clock per machine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from cached_sessions import RedisSessions
from tests.conftest import Deployment

APP = "shop"
IP = "10.0.0.1"
WAIT = 10.0  # seconds a message may take on a loaded machine


@pytest.fixture
async def pair(deployment: Deployment, namespace: str) -> AsyncIterator[list[RedisSessions]]:
    """A writer and a reader with its cache on, both subscribed."""
    stores = [
        RedisSessions(url=deployment.url, namespace=namespace, wipe=0, cachetime=30)
        for _ in range(2)
    ]
    for store in stores:
        await store.start()
    yield stores
    for store in stores:
        await store.aclose()


async def drops_become(reader: RedisSessions, count: int) -> dict[str, object]:
    deadline = time.monotonic() + WAIT
    while (stats := reader.cache_stats())["invalidation_drops"] != count:
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.005)
    return stats


async def test_a_write_elsewhere_is_reported_as_a_drop_with_its_time(
    pair: list[RedisSessions],
) -> None:
    writer, reader = pair
    token = (await writer.create(app=APP, id="u1", ip=IP, d={"n": 1}))["token"]
    await reader.get(app=APP, token=token)
    assert reader.is_cached(token, app=APP)
    before = reader.cache_stats()
    assert before["invalidation_drops"] == 0 and before["last_invalidation_drop"] is None

    sent = time.monotonic()
    await writer.set(app=APP, token=token, d={"n": 2})
    stats = await drops_become(reader, 1)
    assert not reader.is_cached(token, app=APP)
    dropped = stats["last_invalidation_drop"]
    assert isinstance(dropped, float) and sent <= dropped <= time.monotonic()

    # A message for a session the reader does not hold is heard, but drops nothing.
    other = (await writer.create(app=APP, id="u2", ip=IP))["token"]
    heard = reader.cache_stats()["invalidations"]
    await writer.kill(app=APP, token=other)
    deadline = time.monotonic() + WAIT
    while reader.cache_stats()["invalidations"] == heard:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    stats = reader.cache_stats()
    assert stats["invalidation_drops"] == 1 and stats["last_invalidation_drop"] == dropped
