"""The local cache in one process, against a real server.

Each test pins one invariant of the design brief; the interleavings that matter are
forced with events rather than left to timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cached_sessions import RedisSessions
from tests.conftest import Deployment, ManualClock

APP = "shop"
IP = "10.0.0.1"
Store = Callable[..., Awaitable[RedisSessions]]


@pytest.fixture
async def store(deployment: Deployment, namespace: str) -> AsyncIterator[Store]:
    """Makes started stores with the cache on; closes them after the test."""
    made: list[RedisSessions] = []

    async def make(**options: Any) -> RedisSessions:
        settings: dict[str, Any] = {"cachetime": 30, "wipe": 0, "ping_interval": 0.2}
        settings.update(options)
        rs = RedisSessions(url=deployment.url, namespace=namespace, **settings)
        made.append(rs)
        await rs.start()
        assert rs.cache_stats().get("subscribed", True)
        return rs

    yield make
    for rs in made:
        await rs.aclose()


async def new(rs: RedisSessions, id: str = "u1", **options: Any) -> str:
    return (await rs.create(app=APP, id=id, ip=IP, **options))["token"]


async def on_every_node(redis: Redis, method: str, *args: Any, **kwargs: Any) -> list[Any]:
    """A command's answer from every server: one, or every node of a cluster."""
    if isinstance(redis, RedisCluster):
        kwargs["target_nodes"] = RedisCluster.ALL_NODES
        answers = await getattr(redis, method)(*args, **kwargs)
        return list(answers.values()) if isinstance(answers, dict) else [answers]
    return [await getattr(redis, method)(*args, **kwargs)]


async def script_calls(redis: Redis) -> int:
    return sum(
        int(v["calls"])
        for stats in await on_every_node(redis, "info", "commandstats")
        for k, v in stats.items()
        if k in ("cmdstat_fcall", "cmdstat_evalsha", "cmdstat_eval")
    )


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


# Hits


async def test_a_hit_costs_no_redis_call(store: Store, redis: Redis) -> None:
    rs = await store(clock=ManualClock(), timer=ManualClock(1000.0))  # idle stays 0
    token = await new(rs, d={"a": 1})
    first = await rs.get(app=APP, token=token)
    before = await script_calls(redis)
    for _ in range(50):
        assert await rs.get(app=APP, token=token) == {**first, "r": first["r"] + _ + 1}  # type: ignore[dict-item]
    assert await script_calls(redis) == before
    assert rs.cache_stats()["hits"] == 50


async def test_a_hit_returns_a_copy(store: Store) -> None:
    rs = await store()
    token = await new(rs, d={"cart": 1})
    await rs.get(app=APP, token=token)
    served = await rs.get(app=APP, token=token)
    assert served is not None and rs.cache_stats()["hits"] == 1
    served["d"]["cart"] = 99
    served["id"] = "someone else"
    again = await rs.get(app=APP, token=token)
    assert again is not None and again["d"] == {"cart": 1} and again["id"] == "u1"


async def test_cached_answers_without_io_only_what_get_would_serve_from_the_cache(
    store: Store, deployment: Deployment, namespace: str
) -> None:
    rs = await store()
    writer = await store()
    token = await new(rs, d={"cart": 1})
    assert rs.cached(app=APP, token=token) is None  # not read yet: a miss, nothing counted
    assert rs.cache_stats()["hits"] == 0
    first = await rs.get(app=APP, token=token)
    assert first is not None
    hit = rs.cached(app=APP, token=token)
    assert hit is not None and hit["d"] == {"cart": 1} and hit["r"] == first["r"] + 1
    assert rs.cache_stats()["hits"] == 1  # a read like any other, written back later
    assert rs.cached(app="other", token=token) is None  # another app's token is not ours
    await writer.set(app=APP, token=token, d={"cart": 2})
    await until(lambda: rs.cached(app=APP, token=token) is None)
    async with RedisSessions(url=deployment.url, namespace=namespace, wipe=0) as uncached:
        await uncached.get(app=APP, token=token)
        assert uncached.cached(app=APP, token=token) is None  # no cache, never a hit


async def test_cachemax_bounds_the_entries(store: Store) -> None:
    rs = await store(cachemax=3)
    tokens = [await new(rs, f"u{i}") for i in range(5)]
    for token in tokens:
        await rs.get(app=APP, token=token)
    assert rs.cache_stats()["entries"] == 3
    assert [rs.is_cached(t) for t in tokens] == [False, False, True, True, True]


async def test_the_least_recently_used_entry_leaves_first(store: Store) -> None:
    rs = await store(cachemax=3)
    tokens = [await new(rs, f"u{i}") for i in range(4)]
    for token in tokens[:3]:
        await rs.get(app=APP, token=token)
    await rs.get(app=APP, token=tokens[0])  # a hit: now the most recent
    await rs.get(app=APP, token=tokens[3])
    assert [rs.is_cached(t) for t in tokens] == [True, False, True, True]


async def test_cachetime_bounds_the_age_of_an_entry(store: Store) -> None:
    timer = ManualClock(1000.0)
    rs = await store(cachetime=5, timer=timer)
    token = await new(rs)
    await rs.get(app=APP, token=token)
    timer.advance(4.9)
    await rs.get(app=APP, token=token)
    assert rs.cache_stats()["hits"] == 1
    timer.advance(0.2)
    await rs.get(app=APP, token=token)
    assert rs.cache_stats()["hits"] == 1
    assert rs.cache_stats()["misses"] == 2


async def test_an_expired_session_is_never_served_from_the_cache(store: Store) -> None:
    wall = ManualClock()
    timer = ManualClock(1000.0)
    rs = await store(cachetime=600, clock=wall, timer=timer, touch_interval=2)
    token = await new(rs, ttl=20)
    await rs.get(app=APP, token=token)
    wall.advance(10)
    timer.advance(10)
    assert await rs.get(app=APP, token=token) is not None
    assert rs.cache_stats()["hits"] == 1
    # No flush of the hit: Redis still dates the last access at the fill.
    wall.advance(11)
    timer.advance(11)
    assert await rs.get(app=APP, token=token) is None
    assert rs.cache_stats()["hits"] == 1


async def test_no_resave_sessions_count_down_in_the_cache(store: Store) -> None:
    wall = ManualClock()
    timer = ManualClock(1000.0)
    rs = await store(cachetime=600, clock=wall, timer=timer)
    token = await new(rs, ttl=100, no_resave=True)
    await rs.get(app=APP, token=token)
    wall.advance(30)
    timer.advance(30)
    hit = await rs.get(app=APP, token=token)
    assert hit is not None and rs.cache_stats()["hits"] == 1
    assert (hit["ttl"], hit["idle"], hit["no_resave"]) == (70, 30, True)
    wall.advance(68)
    timer.advance(68)
    near_end = await rs.get(app=APP, token=token)  # too close to its end: read from Redis
    assert near_end is not None and near_end["ttl"] == 2 and rs.cache_stats()["hits"] == 1
    wall.advance(3)
    timer.advance(3)
    assert await rs.get(app=APP, token=token) is None


# Hits are activity


async def test_hits_are_written_back_as_activity(
    store: Store, redis: Redis, namespace: str
) -> None:
    wall = ManualClock()
    timer = ManualClock(1000.0)
    rs = await store(clock=wall, timer=timer)
    token = await new(rs, "u:1", ttl=60)
    await rs.get(app=APP, token=token)
    for _ in range(10):
        wall.advance(1)
        timer.advance(1)
        await rs.get(app=APP, token=token)
    assert rs.cache_stats()["hits"] == 10
    assert await rs.flush_touches() == 1
    layout, bucket = rs.layout, rs.layout.bucket_of_id("u:1")
    key = layout.session(APP, token)
    now = int(wall.now)
    assert await redis.hget(key, "r") == "12"  # create, the fill, ten hits
    assert await redis.hget(key, "la") == str(now)
    assert await redis.zscore(layout.expiry_index(bucket), f"{APP}:{token}:u:1") == now + 60
    assert await redis.zscore(layout.app_sessions(APP, bucket), f"{token}:u:1") == now
    assert await redis.zscore(layout.app_users(APP, bucket), "u:1") == now
    assert rs.cache_stats()["touches_flushed"] == 1


async def test_a_session_used_only_through_the_cache_stays_alive(
    store: Store, deployment: Deployment, namespace: str
) -> None:
    wall = ManualClock()
    timer = ManualClock(1000.0)
    rs = await store(cachetime=3600, clock=wall, timer=timer, touch_interval=2)
    token = await new(rs, ttl=10)
    await rs.get(app=APP, token=token)
    for _ in range(30):  # a minute of use, six times the ttl
        wall.advance(2)
        timer.advance(2)
        assert await rs.get(app=APP, token=token) is not None
        await rs.flush_touches()
    assert rs.cache_stats()["hits"] > 20
    async with RedisSessions(url=deployment.url, namespace=namespace, wipe=0, clock=wall) as other:
        assert await other.wipe() == 0
        assert await other.get(app=APP, token=token) is not None


async def test_a_touch_never_revives_a_killed_session(
    store: Store, redis: Redis, namespace: str
) -> None:
    rs = await store()
    other = await store(cachetime=0)
    token = await new(rs)
    await rs.get(app=APP, token=token)
    rs._cache.invalidate = lambda app, token: None  # type: ignore[union-attr, method-assign]
    await rs.get(app=APP, token=token)  # a hit, waiting to be written
    await other.kill(app=APP, token=token)
    await rs.flush_touches()
    assert await redis.keys(f"{namespace}:*") == []


# Writes and invalidations


async def test_a_process_reads_its_own_writes_at_once(store: Store) -> None:
    rs = await store()
    # Deaf to the channel: only the writer's own drop can keep this test green.
    rs._cache.invalidate = lambda app, token: None  # type: ignore[union-attr, method-assign]
    token = await new(rs, d={"v": 1})
    await rs.get(app=APP, token=token)
    await rs.get(app=APP, token=token)
    await rs.set(app=APP, token=token, d={"v": 2})
    session = await rs.get(app=APP, token=token)
    assert session is not None and session["d"] == {"v": 2}
    await rs.kill(app=APP, token=token)
    assert await rs.get(app=APP, token=token) is None
    mine = [await new(rs, "me") for _ in range(2)]
    for t in mine:
        await rs.get(app=APP, token=t)
    await rs.killsoid(app=APP, id="me")
    assert [await rs.get(app=APP, token=t) for t in mine] == [None, None]
    everyone = [await new(rs, f"u{i}") for i in range(2)]
    for t in everyone:
        await rs.get(app=APP, token=t)
    await rs.killall(app=APP)
    assert [await rs.get(app=APP, token=t) for t in everyone] == [None, None]


async def test_another_process_write_drops_the_entry(store: Store) -> None:
    reader = await store()
    writer = await store()
    token = await new(writer, d={"v": 1})
    await reader.get(app=APP, token=token)
    assert reader.is_cached(token)
    await writer.set(app=APP, token=token, d={"v": 2})
    await until(lambda: not reader.is_cached(token))
    session = await reader.get(app=APP, token=token)
    assert session is not None and session["d"] == {"v": 2}
    assert reader.cache_stats()["invalidations"] == 1


# The fill race


class GatedFetch:
    """Holds the reply of a real Redis read until the test lets it through; with
    `app`, only the reads of that app."""

    def __init__(self, rs: RedisSessions, app: str | None = None) -> None:
        self.read_done = asyncio.Event()
        self.release = asyncio.Event()
        real = rs._fetch

        async def gated(scripts: Any, app_read: str, token: str) -> Any:
            session = await real(scripts, app_read, token)
            if app is None or app_read == app:
                self.read_done.set()
                await self.release.wait()
            return session

        rs._fetch = gated  # type: ignore[method-assign]


async def test_a_fill_overtaken_by_an_invalidation_is_not_kept(store: Store) -> None:
    reader = await store()
    writer = await store(cachetime=0)
    token = await new(writer, d={"v": 1})
    gate = GatedFetch(reader)
    read = asyncio.create_task(reader.get(app=APP, token=token))
    await gate.read_done.wait()  # the reader holds v1, fetched before the write
    await writer.set(app=APP, token=token, d={"v": 2})
    await until(lambda: reader.cache_stats()["invalidations"] == 1)
    gate.release.set()
    old = await read
    assert old is not None and old["d"] == {"v": 1}  # it started before the write
    assert not reader.is_cached(token)
    assert reader.cache_stats()["fills_refused"] == 1
    fresh = await reader.get(app=APP, token=token)
    assert fresh is not None and fresh["d"] == {"v": 2}


async def test_a_read_of_the_token_under_another_app_never_shields_a_fill(
    store: Store,
) -> None:
    # One app per tenant: the same token looked up under another tenant (an attacker
    # replaying a stolen token on another host) is another session. It must not take
    # the place of the fill in flight, or the logout's invalidation would mark the
    # wrong fill stale and the killed session would be cached and served.
    reader = await store()
    writer = await store(cachetime=0)
    token = await new(writer, d={"v": 1})
    gate = GatedFetch(reader, app=APP)
    read = asyncio.create_task(reader.get(app=APP, token=token))
    await gate.read_done.wait()  # the tenant's read holds the session, fetched before the kill
    assert await reader.get(app="other-tenant", token=token) is None
    await writer.kill(app=APP, token=token)
    await until(lambda: reader.cache_stats()["invalidations"] == 1)
    gate.release.set()
    assert await read is not None  # it started before the kill
    assert not reader.is_cached(token, app=APP)
    assert await reader.get(app=APP, token=token) is None


async def test_an_entry_is_kept_per_app_and_token(store: Store) -> None:
    rs = await store()
    token = await new(rs, d={"v": 1})
    await rs.get(app=APP, token=token)
    assert rs.is_cached(token, app=APP)
    assert not rs.is_cached(token, app="other-tenant")
    assert await rs.get(app="other-tenant", token=token) is None
    assert rs.is_cached(token, app=APP)  # the other tenant's miss left the entry alone


async def test_a_fill_overtaken_by_a_flush_is_not_kept(store: Store) -> None:
    rs = await store()
    token = await new(rs)
    gate = GatedFetch(rs)
    read = asyncio.create_task(rs.get(app=APP, token=token))
    await gate.read_done.wait()
    assert rs._cache is not None
    rs._cache.lost("test")
    rs._cache.confirmed()  # even back under a new subscription, the old fill is refused
    gate.release.set()
    assert await read is not None
    assert not rs.is_cached(token)
    assert rs.cache_stats()["fills_refused"] == 1


async def test_close_cancels_and_awaits_the_fetches_in_flight(
    deployment: Deployment, namespace: str
) -> None:
    rs = RedisSessions(url=deployment.url, namespace=namespace, wipe=0, cachetime=30)
    await rs.start()
    token = await new(rs)
    gate = GatedFetch(rs)  # never released: the fetch would wait forever
    read = asyncio.create_task(rs.get(app=APP, token=token))
    await gate.read_done.wait()
    fills = [t for t in asyncio.all_tasks() if t.get_name() == "cached-sessions fill"]
    assert len(fills) == 1
    await rs.aclose()
    assert fills[0].cancelled()
    with pytest.raises(asyncio.CancelledError):
        await read


async def test_concurrent_misses_share_one_redis_call(store: Store, redis: Redis) -> None:
    rs = await store()
    token = await new(rs, d={"a": 1})
    before = await script_calls(redis)
    results = await asyncio.gather(*(rs.get(app=APP, token=token) for _ in range(50)))
    assert await script_calls(redis) == before + 1
    assert all(r is not None and r["d"] == {"a": 1} for r in results)
    results[0]["d"]["a"] = 2  # type: ignore[index]
    assert results[1]["d"] == {"a": 1}  # type: ignore[index]
    stats = rs.cache_stats()
    assert (stats["misses"], stats["coalesced"]) == (1, 49)
    await rs.flush_touches()
    assert await redis.hget(rs.layout.session(APP, token), "r") == "51"


# Losing the subscription


async def test_losing_the_subscription_flushes_and_bypasses(store: Store, redis: Redis) -> None:
    rs = await store()
    token = await new(rs)
    await rs.get(app=APP, token=token)
    assert rs.is_cached(token)
    await on_every_node(redis, "client_kill_filter", _type="pubsub")
    await until(lambda: not rs.cache_stats()["subscribed"] or rs.cache_stats()["flushes"] > 0)
    assert not rs.is_cached(token)
    assert rs.cache_stats()["flush_reasons"].get("connection_error") == 1
    await until(lambda: rs.cache_stats()["subscribed"])
    await rs.get(app=APP, token=token)
    await rs.get(app=APP, token=token)
    assert rs.cache_stats()["hits"] == 1


async def test_the_cache_is_bypassed_until_subscribed(store: Store) -> None:
    rs = await store()
    cache = rs._cache
    assert cache is not None
    token = await new(rs)
    cache.lost("test")  # what the subscriber reports on any loss
    for _ in range(3):
        assert await rs.get(app=APP, token=token) is not None
    assert not rs.is_cached(token)
    assert rs.cache_stats()["bypassed"] == 3
    cache.confirmed()
    await rs.get(app=APP, token=token)
    assert rs.is_cached(token)


async def test_a_malformed_message_flushes(store: Store, redis: Redis, namespace: str) -> None:
    rs = await store()
    token = await new(rs)
    await rs.get(app=APP, token=token)
    layout = rs.layout
    if layout.cluster:
        await redis.spublish(layout.channel(layout.bucket_of_token(token)), "no-separator")
    else:
        await redis.publish(layout.channel(), "no-separator")
    await until(lambda: not rs.is_cached(token))
    assert rs.cache_stats()["flush_reasons"] == {"malformed_message": 1}


async def test_close_writes_pending_touches_and_stops_every_task(
    deployment: Deployment, redis: Redis, namespace: str
) -> None:
    rs = RedisSessions(url=deployment.url, namespace=namespace, wipe=10, cachetime=30)
    await rs.start()
    token = await new(rs)
    for _ in range(5):
        await rs.get(app=APP, token=token)
    tasks = list(rs._tasks)
    assert sorted(t.get_name().split(" (")[0] for t in tasks) == [
        "cached-sessions subscriber",
        "cached-sessions touches",
        "cached-sessions wipe",
    ]
    await rs.aclose()
    assert all(t.done() for t in tasks)
    assert await redis.hget(rs.layout.session(APP, token), "r") == "6"
    assert all(
        clients == [] for clients in await on_every_node(redis, "client_list", _type="pubsub")
    )
    await rs.aclose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cachetime": -1}, "cachetime must be a non-negative number of seconds"),
        ({"cachetime": True}, "cachetime must be a non-negative number of seconds"),
        ({"cachetime": float("nan")}, "cachetime must be a non-negative number of seconds"),
        ({"cachemax": 0}, "cachemax must be a positive integer"),
        ({"touch_interval": 0}, "touch_interval must be a positive number of seconds"),
        ({"touch_interval": 6}, "touch_interval must be at most 5.0 s (half the shortest ttl)"),
        ({"ping_interval": 0}, "ping_interval must be a positive number of seconds"),
    ],
)
def test_bad_cache_settings_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        RedisSessions(url="redis://127.0.0.1:1/0", **options)
    assert str(caught.value) == message
