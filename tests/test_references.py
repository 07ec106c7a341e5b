"""References: kill every session whose data holds a value (koa's redis-session-sets)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from cached_sessions import InvalidValueError, RedisSessions
from cached_sessions.validation import MAX_DATA_BYTES
from tests.conftest import ManualClock
from tests.servers import ServerProcess

APP = "shop"


@pytest.fixture
async def rs(
    server: ServerProcess, namespace: str, clock: ManualClock
) -> AsyncIterator[RedisSessions]:
    store = RedisSessions(
        url=server.url, namespace=namespace, wipe=0, clock=clock, references=("org_id", "team")
    )
    async with store:
        yield store


async def new(rs: RedisSessions, id: str, **options: Any) -> str:
    return (await rs.create(app=APP, id=id, ip="10.0.0.1", **options))["token"]


async def alive(rs: RedisSessions, *tokens: str) -> list[bool]:
    return [await rs.get(app=APP, token=t) is not None for t in tokens]


async def test_kill_by_kills_every_session_holding_the_value(rs: RedisSessions) -> None:
    seven = [await new(rs, f"u{i}", d={"org_id": 7}) for i in range(3)]
    eight = await new(rs, "u9", d={"org_id": 8, "team": "a"})
    plain = await new(rs, "u10")
    assert await rs.kill_by(app=APP, field="org_id", value=7) == {"kill": 3}
    assert await alive(rs, *seven) == [False, False, False]
    assert await alive(rs, eight, plain) == [True, True]
    assert await rs.kill_by(app=APP, field="org_id", value=7) == {"kill": 0}
    assert await rs.kill_by(app=APP, field="team", value="a") == {"kill": 1}


async def test_the_index_follows_value_changes(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    token = await new(rs, "u1", d={"org_id": 7})
    await rs.set(app=APP, token=token, d={"org_id": 9})
    assert await redis.smembers(f"{namespace}:{APP}:ref:org_id:7") == set()
    assert await redis.smembers(f"{namespace}:{APP}:ref:org_id:9") == {token}
    assert await rs.kill_by(app=APP, field="org_id", value=7) == {"kill": 0}
    assert await alive(rs, token) == [True]
    await rs.set(app=APP, token=token, d={"org_id": None})
    assert await redis.keys(f"{namespace}:{APP}:ref:*") == []
    await rs.set(app=APP, token=token, d={"org_id": "9"})  # a string is another value
    assert await rs.kill_by(app=APP, field="org_id", value=9) == {"kill": 0}
    assert await rs.kill_by(app=APP, field="org_id", value="9") == {"kill": 1}


async def test_kill_killsoid_killall_and_wipe_clean_the_index(
    rs: RedisSessions, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    a = await new(rs, "a", d={"org_id": 1})
    await new(rs, "b", d={"org_id": 1})
    await new(rs, "c", d={"org_id": 2}, ttl=10)
    await new(rs, "d", d={"org_id": 3})
    await rs.kill(app=APP, token=a)
    await rs.killsoid(app=APP, id="b")
    clock.advance(11)
    assert await rs.wipe() == 1
    assert await redis.keys(f"{namespace}:{APP}:ref:*") == [f"{namespace}:{APP}:ref:org_id:3"]
    await rs.killall(app=APP)
    assert await redis.keys(f"{namespace}:*") == []


async def test_sessions_changed_by_a_writer_that_ignores_the_index(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    """A Node redis-sessions writer rewrites `d` and knows nothing of the index."""
    moved = await new(rs, "u1", d={"org_id": 7})
    stays = await new(rs, "u2", d={"org_id": 7})
    await redis.hset(f"{namespace}:{APP}:{moved}", "d", '{"org_id":8}')
    await redis.delete(f"{namespace}:{APP}:{stays}")  # as Node's kill would, index untouched
    gone = await new(rs, "u3", d={"org_id": 7})
    assert await rs.kill_by(app=APP, field="org_id", value=7) == {"kill": 1}
    assert await alive(rs, moved, gone) == [True, False]
    assert await redis.exists(f"{namespace}:{APP}:ref:org_id:7") == 0


async def test_kill_by_publishes_and_drops_the_writer_cache(
    server: ServerProcess, namespace: str
) -> None:
    async with RedisSessions(
        url=server.url, namespace=namespace, wipe=0, cachetime=30, references=["org_id"]
    ) as rs:
        tokens = [await new(rs, f"u{i}", d={"org_id": 5}) for i in range(3)]
        for t in tokens:
            await rs.get(app=APP, token=t)
        rs._cache.invalidate = lambda app, token: None  # type: ignore[union-attr, method-assign]
        assert await rs.kill_by(app=APP, field="org_id", value=5) == {"kill": 3}
        assert [rs.is_cached(t) for t in tokens] == [False, False, False]
        assert await alive(rs, *tokens) == [False, False, False]


async def test_kill_by_in_batches(server: ServerProcess, namespace: str) -> None:
    async with RedisSessions(
        url=server.url, namespace=namespace, wipe=0, batch=3, references=["org_id"]
    ) as rs:
        await asyncio.gather(*(new(rs, f"u{i}", d={"org_id": 1}) for i in range(10)))
        assert await rs.kill_by(app=APP, field="org_id", value=1) == {"kill": 10}


async def test_kill_by_refuses_a_field_that_is_not_indexed(rs: RedisSessions) -> None:
    with pytest.raises(InvalidValueError, match="not an indexed reference"):
        await rs.kill_by(app=APP, field="nope", value=1)
    with pytest.raises(InvalidValueError, match="a string, a number or a boolean"):
        await rs.kill_by(app=APP, field="org_id", value=[1])  # type: ignore[arg-type]


async def test_references_are_fixed_once_started(rs: RedisSessions) -> None:
    with pytest.raises(RuntimeError, match="before the store starts"):
        rs.index_references(["another"])
    rs.index_references(["org_id"])  # nothing new: fine


async def test_lookup_says_why_a_session_is_absent(rs: RedisSessions, clock: ManualClock) -> None:
    live = await new(rs, "a")
    killed = await new(rs, "b")
    await rs.kill(app=APP, token=killed)
    expired = await new(rs, "c", ttl=10)
    clock.advance(11)
    assert (await rs.lookup(app=APP, token=live))[1] == "found"
    assert await rs.lookup(app=APP, token=killed) == (None, "missing")
    assert await rs.lookup(app=APP, token="Z" * 64) == (None, "missing")
    assert await rs.lookup(app=APP, token=expired) == (None, "expired")


async def test_sessions_without_the_field_or_without_data(
    rs: RedisSessions, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    bare = await new(rs, "a", ttl=10)
    other = await new(rs, "b", d={"x": 1})
    await rs.set(app=APP, token=bare, d={"y": 2})
    await rs.set(app=APP, token=other, d={"x": None})
    assert await redis.keys(f"{namespace}:{APP}:ref:*") == []
    await rs.set(app=APP, token=bare, d={"team": "t"})
    clock.advance(11)
    assert await rs.wipe() == 1
    assert await redis.keys(f"{namespace}:{APP}:ref:*") == []
    assert await rs.killall(app=APP) == {"kill": 1}


# Reference values are read from adversarial data exactly


async def rewrite(redis: Redis, namespace: str, token: str, raw: str) -> None:
    """As a writer that knows nothing of the index (Node's redis-sessions) would."""
    await redis.hset(f"{namespace}:{APP}:{token}", "d", raw)


async def test_indexing_reads_the_value_that_counts(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    """Field names and `"field":` text inside strings, escaped quotes: none of them count."""
    d = {"note": '"org_id":7,"team":"a"', 'org_id"': 7, "\\": '\\"org_id\\":7', "org_id": 8}
    token = await new(rs, "u1", d=d)
    assert await redis.keys(f"{namespace}:{APP}:ref:*") == [f"{namespace}:{APP}:ref:org_id:8"]
    await rs.set(app=APP, token=token, d={"team": "b", "note": '"team":"a"'})
    assert sorted(await redis.keys(f"{namespace}:{APP}:ref:*")) == [
        f"{namespace}:{APP}:ref:org_id:8",
        f'{namespace}:{APP}:ref:team:"b"',
    ]
    assert await rs.kill_by(app=APP, field="org_id", value=7) == {"kill": 0}
    assert await rs.kill_by(app=APP, field="team", value="a") == {"kill": 0}
    assert await rs.kill_by(app=APP, field="org_id", value=8) == {"kill": 1}


@pytest.mark.parametrize(
    ("raw", "killed"),
    [
        ('{"note":"\\"org_id\\":7,","org_id":8}', False),
        ('{"org_id":8,"org_id":7}', True),  # a repeated key: the last one wins
        ('{"org_id":7,"org_id":8}', False),
        ('{"org_id\\"":7,"org_id":8}', False),
        ('{"\\u006frg_id":7}', True),  # the same key, escaped
        (' { "a" : "\\\\" , "org_id" :\t7 } ', True),
        ('{"a":"\\\\\\"org_id\\":8","org_id":7}', True),
        ('{"org_id":"7"}', False),
        ("{}", False),
    ],
)  # fmt: skip
async def test_kill_by_reads_data_rewritten_elsewhere_exactly(
    rs: RedisSessions, redis: Redis, namespace: str, raw: str, killed: bool
) -> None:
    assert json.loads(raw) is not None  # each one is valid JSON
    token = await new(rs, "u1", d={"org_id": 7})
    await rewrite(redis, namespace, token, raw)
    assert await rs.kill_by(app=APP, field="org_id", value=7) == {"kill": int(killed)}
    assert await alive(rs, token) == [not killed]


async def test_a_removal_unindexes_the_values_indexed_even_after_a_rewrite(
    rs: RedisSessions, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    tokens = [await new(rs, f"u{i}", d={"org_id": 7, "team": "a"}, ttl=10) for i in range(3)]
    for token in tokens:
        await rewrite(redis, namespace, token, '{"org_id":8}')
    await rs.kill(app=APP, token=tokens[0])
    await rs.killsoid(app=APP, id="u1")
    clock.advance(11)
    assert await rs.wipe() == 1
    assert await redis.keys(f"{namespace}:{APP}:ref:*") == []


async def test_kill_by_kills_a_session_whose_data_it_cannot_read(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    """Data another library wrote past this one's reach: a revocation errs on ending it."""
    nested = await new(rs, "u1", d={"org_id": 7})
    huge = await new(rs, "u2", d={"org_id": 7})
    read = await new(rs, "u3", d={"org_id": 7})
    await rewrite(redis, namespace, nested, '{"org_id":8,"more":{"a":1}')
    await rewrite(redis, namespace, huge, json.dumps({"org_id": 8, "x": "y" * MAX_DATA_BYTES}))
    await rewrite(redis, namespace, read, '{"org_id":8}')
    assert await rs.kill_by(app=APP, field="org_id", value=7) == {"kill": 2}
    assert await alive(rs, nested, huge, read) == [False, False, True]
