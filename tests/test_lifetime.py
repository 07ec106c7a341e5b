"""`max_lifetime`: a session ends that long after its creation however active it is,
in Redis and in the cache alike. The store on one server and on a cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cached_sessions import RedisSessions
from tests.conftest import Deployment, ManualClock

APP = "shop"
IP = "10.0.0.1"
LIFETIME = 100


@pytest.fixture
async def limited(
    deployment: Deployment, namespace: str, clock: ManualClock
) -> AsyncIterator[RedisSessions]:
    """A store with an absolute lifetime and a cache, both on the test's clock."""
    store = RedisSessions(
        url=deployment.url,
        namespace=namespace,
        wipe=0,
        clock=clock,
        timer=clock,
        cachetime=3600,
        max_lifetime=LIFETIME,
    )
    async with store:
        yield store


async def test_an_active_session_ends_at_its_lifetime(
    limited: RedisSessions, clock: ManualClock
) -> None:
    token = (await limited.create(app=APP, id="alice", ip=IP, ttl=60))["token"]
    for _ in range(4):
        clock.advance(24)  # never idle for long
        session = await limited.get(app=APP, token=token)
        assert session is not None
        await limited.flush_touches()  # what the flusher does every touch interval
    assert session["ends_in"] == LIFETIME - 96
    clock.advance(5)  # 101 s after creation, 5 s idle
    assert await limited.lookup(app=APP, token=token) == (None, "expired")
    await limited.flush_touches()
    assert await limited.set(app=APP, token=token, d={"x": 1}) is None


async def test_the_cache_never_serves_past_the_end(
    limited: RedisSessions, clock: ManualClock
) -> None:
    token = (await limited.create(app=APP, id="alice", ip=IP, ttl=3600))["token"]
    assert await limited.get(app=APP, token=token) is not None  # the fill
    clock.advance(LIFETIME - 10)
    hit = limited.cached(app=APP, token=token)
    assert hit is not None and hit["ends_in"] == 10
    await limited.flush_touches()  # a touch slides the idle expiry, not the end
    clock.advance(8)
    # Within the guard of the end (the touch interval and a margin): read from Redis.
    assert limited.cached(app=APP, token=token) is None
    assert await limited.get(app=APP, token=token) is not None
    clock.advance(3)
    assert limited.cached(app=APP, token=token) is None
    assert await limited.get(app=APP, token=token) is None


async def test_the_wipe_removes_sessions_past_their_lifetime(
    limited: RedisSessions, redis: Redis, clock: ManualClock
) -> None:
    token = (await limited.create(app=APP, id="alice", ip=IP, ttl=3600))["token"]
    clock.advance(LIFETIME + 1)
    assert await limited.wipe() == 1
    assert not await redis.exists(limited.layout.session(APP, token))
    assert await limited.soid(app=APP, id="alice") == {"sessions": []}


async def test_without_a_lifetime_nothing_ends_early(rs: RedisSessions, clock: ManualClock) -> None:
    token = (await rs.create(app=APP, id="alice", ip=IP, ttl=60))["token"]
    for _ in range(10):
        clock.advance(50)
        session = await rs.get(app=APP, token=token)
        assert session is not None and "ends_in" not in session


@pytest.mark.parametrize("value", [-1, 5, 1.5, True, 10**9])
def test_a_bad_max_lifetime_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="max_lifetime"):
        RedisSessions(max_lifetime=value)  # type: ignore[arg-type]
