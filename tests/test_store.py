"""RedisSessions against a real server: the data model, the semantics, atomicity."""

from __future__ import annotations

import asyncio
import json
import random
import string
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from cached_sessions import (
    ConfigurationError,
    InvalidValueError,
    RedisSessions,
    SessionsClosedError,
    StoredDataError,
)
from cached_sessions import keys as keys_module
from cached_sessions.model import MAX_DATA_DEPTH, nesting_depth
from tests.conftest import Deployment, ManualClock
from tests.servers import ServerProcess

APP = "shop"
IP = "10.0.0.1"


async def new(rs: RedisSessions, id: str = "user1", **options: Any) -> str:
    created = await rs.create(app=APP, id=id, ip=IP, **options)
    return created["token"]


async def keys_of(redis: Redis, namespace: str) -> list[str]:
    return sorted(await redis.keys(f"{namespace}:*"))


class Indexes:
    """The names of the index keys that hold one user's sessions, in any layout."""

    def __init__(self, rs: RedisSessions, id: str, bucket: int | None = None) -> None:
        layout = rs.layout
        bucket = layout.bucket_of_id(id) if bucket is None else bucket
        self.sessions = layout.app_sessions(APP, bucket)
        self.users = layout.app_users(APP, bucket)
        self.tokens = layout.user_tokens(APP, id)
        self.expiry = layout.expiry_index(bucket)


# The data model


async def test_create_writes_the_redis_sessions_layout(
    rs: RedisSessions, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    token = await new(rs, "u:1", ttl=100, d={"a": 1, "gone": None})
    now = int(clock.now)
    assert await redis.hgetall(rs.layout.session(APP, token)) == {
        "id": "u:1", "r": "1", "w": "1", "ip": IP, "la": str(now), "ttl": "100", "d": '{"a":1}',
        "ct": str(now),
    }  # fmt: skip
    index = Indexes(rs, "u:1")
    assert await redis.zrange(index.sessions, 0, -1, withscores=True) == [(f"{token}:u:1", now)]
    assert await redis.zrange(index.users, 0, -1, withscores=True) == [("u:1", now)]
    assert await redis.smembers(index.tokens) == {token}
    assert await redis.zrange(index.expiry, 0, -1, withscores=True) == [
        (f"{APP}:{token}:u:1", now + 100)
    ]


async def test_no_resave_is_stored_as_a_flag(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    token = await new(rs, no_resave=True)
    assert await redis.hget(rs.layout.session(APP, token), "no_resave") == "1"
    assert await redis.hget(rs.layout.session(APP, token), "d") is None


async def test_session_dict_has_exactly_the_documented_keys(rs: RedisSessions) -> None:
    plain = await rs.get(app=APP, token=await new(rs))
    assert plain is not None
    assert set(plain) == {"id", "r", "w", "ttl", "idle", "ip"}
    full = await rs.get(app=APP, token=await new(rs, d={"k": "v"}, no_resave=True))
    assert full is not None
    assert set(full) == {"id", "r", "w", "ttl", "idle", "ip", "d", "no_resave"}
    assert full["no_resave"] is True


async def test_create_refuses_to_overwrite_an_existing_token(
    rs: RedisSessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = iter(["A" * 64, "A" * 64, "B" * 64])
    monkeypatch.setattr(keys_module, "new_token", lambda: next(drawn))
    first = await new(rs, "u", d={"n": 1})
    second = await new(rs, "u", d={"n": 2})
    # A cluster token starts with its bucket; the rest is what was drawn.
    assert first.endswith("A" * 62) and second.endswith("B" * 62)
    session = await rs.get(app=APP, token=first)
    assert session is not None and session["d"] == {"n": 1}


# get


async def test_get_returns_reads_before_this_one_and_counts(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    token = await new(rs)
    first = await rs.get(app=APP, token=token)
    second = await rs.get(app=APP, token=token)
    assert first is not None and second is not None
    assert (first["r"], second["r"]) == (1, 2)
    assert await redis.hget(rs.layout.session(APP, token), "r") == "3"


async def test_get_is_activity_and_slides_the_expiry(
    rs: RedisSessions, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    token = await new(rs, "u1", ttl=100)
    clock.advance(60)
    session = await rs.get(app=APP, token=token)
    assert session is not None and session["idle"] == 60
    now = int(clock.now)
    assert await redis.hget(rs.layout.session(APP, token), "la") == str(now)
    index = Indexes(rs, "u1")
    assert await redis.zscore(index.expiry, f"{APP}:{token}:u1") == now + 100
    assert await redis.zscore(index.sessions, f"{token}:u1") == now
    assert await redis.zscore(index.users, "u1") == now
    clock.advance(100)  # idle == ttl: still alive
    assert await rs.get(app=APP, token=token) is not None
    clock.advance(101)
    assert await rs.get(app=APP, token=token) is None


async def test_expired_unknown_and_killed_read_alike(rs: RedisSessions, clock: ManualClock) -> None:
    expired = await new(rs, "u1", ttl=10)
    killed = await new(rs, "u2")
    await rs.kill(app=APP, token=killed)
    clock.advance(11)
    unknown = "Z" * 64
    for token in (expired, killed, unknown):
        assert await rs.get(app=APP, token=token) is None
        assert await rs.set(app=APP, token=token, d={"a": 1}) is None
        assert await rs.kill(app=APP, token=token) == {"kill": 0}


# set


async def test_set_merges_and_removes_keys(rs: RedisSessions, redis: Redis, namespace: str) -> None:
    token = await new(rs, d={"a": 1, "b": 2})
    updated = await rs.set(app=APP, token=token, d={"b": None, "c": "three"})
    assert updated is not None
    assert updated["d"] == {"a": 1, "c": "three"}
    assert updated["w"] == 2
    emptied = await rs.set(app=APP, token=token, d={"a": None, "c": None, "never": None})
    assert emptied is not None and "d" not in emptied and emptied["w"] == 3
    assert await redis.hexists(rs.layout.session(APP, token), "d") == 0
    again = await rs.get(app=APP, token=token)
    assert again is not None and "d" not in again and again["w"] == 3


async def test_set_keeps_numbers_and_text_exact(rs: RedisSessions) -> None:
    data = {
        "big": 2**53 - 1,
        "neg": -(2**53 - 1),
        "precise": 0.1234567890123456,
        "tiny": 5e-324,
        "huge": 1.7976931348623157e308,
        "text": 'quote " backslash \\ slash / newline \n tab \t é ✓ 😀',
        'key "with" quotes \\': True,
        "zero": 0,
        "no": False,
    }
    token = await new(rs, d={"seed": 1})
    updated = await rs.set(app=APP, token=token, d=data)
    assert updated is not None and updated["d"] == {"seed": 1, **data}
    session = await rs.get(app=APP, token=token)
    assert session is not None and session["d"] == {"seed": 1, **data}
    assert all(type(session["d"][key]) is type(value) for key, value in data.items())


async def test_set_merges_data_written_by_another_writer(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    token = await new(rs, d={"x": 1})
    raw = ' { "a" : 1 ,\n "b":"x\\"y,}" , "\\u00e9":null, "a": 2 } '
    await redis.hset(rs.layout.session(APP, token), "d", raw)
    updated = await rs.set(app=APP, token=token, d={"c": 3})
    assert updated is not None
    assert updated["d"] == {"a": 2, "b": 'x"y,}', "é": None, "c": 3}
    removed = await rs.set(app=APP, token=token, d={"a": None, "é": None})
    assert removed is not None and removed["d"] == {"b": 'x"y,}', "c": 3}


async def test_set_refuses_stored_data_it_cannot_merge_exactly(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    token = await new(rs)
    key = rs.layout.session(APP, token)
    await redis.hset(key, "d", '{"nested":{"a":1}')
    before = await redis.hgetall(key)
    with pytest.raises(StoredDataError, match="nothing was written"):
        await rs.set(app=APP, token=token, d={"a": 1})
    assert await redis.hgetall(key) == before


def _nested(levels: int) -> str:
    """A `d` of `levels` levels: an object holding lists inside lists."""
    return '{"deep":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


@pytest.mark.parametrize("levels", [MAX_DATA_DEPTH + 1, 200_000])
async def test_a_read_refuses_data_nested_beyond_the_bound(
    rs: RedisSessions, redis: Redis, namespace: str, levels: int
) -> None:
    # Written by another client; a hostile depth must give a clear error, not a
    # RecursionError from the JSON parser nor a slow walk on every read.
    token = await new(rs)
    await redis.hset(rs.layout.session(APP, token), "d", _nested(levels))
    with pytest.raises(StoredDataError, match="nested"):
        await rs.get(app=APP, token=token)


async def test_a_read_takes_data_nested_up_to_the_bound(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    token = await new(rs)
    await redis.hset(rs.layout.session(APP, token), "d", _nested(MAX_DATA_DEPTH))
    session = await rs.get(app=APP, token=token)
    assert session is not None and nesting_depth(session["d"]) == MAX_DATA_DEPTH


async def test_set_refuses_a_merge_that_grows_too_large(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    token = await new(rs, d={"first": "x" * 40_000})
    key = rs.layout.session(APP, token)
    before = await redis.hgetall(key)
    with pytest.raises(InvalidValueError, match="after the merge"):
        await rs.set(app=APP, token=token, d={"second": "y" * 40_000})
    assert await redis.hgetall(key) == before


async def test_set_on_a_missing_session_writes_nothing(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    assert await rs.set(app=APP, token="Q" * 64, d={"a": 1}) is None
    assert await keys_of(redis, namespace) == []


async def test_random_patches_match_a_model(rs: RedisSessions) -> None:
    rng = random.Random(20261126)
    values: list[Any] = [
        None,
        True,
        False,
        0,
        -1,
        2**53 - 1,
        0.5,
        -1e-7,
        "",
        "é",
        '"',
        "\\",
        "a,b}",
    ]
    model: dict[str, Any] = {"start": 1}
    token = await new(rs, d=dict(model))
    for _ in range(200):
        patch = {
            rng.choice(string.ascii_letters[:8]) + rng.choice(["", '"', ",", ":", "é"]): rng.choice(
                values
            )
            for _ in range(rng.randint(1, 4))
        }
        for key, value in patch.items():
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
        updated = await rs.set(app=APP, token=token, d=patch)
        assert updated is not None
        assert updated.get("d", {}) == model


# Atomicity and concurrency


async def test_concurrent_sets_of_different_keys_all_survive(rs: RedisSessions) -> None:
    token = await new(rs)
    results = await asyncio.gather(
        *(rs.set(app=APP, token=token, d={f"k{i}": i}) for i in range(200))
    )
    assert sorted(result["w"] for result in results if result) == list(range(2, 202))
    session = await rs.get(app=APP, token=token)
    assert session is not None
    assert session["d"] == {f"k{i}": i for i in range(200)}
    assert session["w"] == 201


async def test_thousand_concurrent_creates_give_thousand_active_ids(rs: RedisSessions) -> None:
    tokens = await asyncio.gather(*(new(rs, f"user{i}") for i in range(1000)))
    assert len(set(tokens)) == 1000
    assert await rs.activity(app=APP, delta_time=600) == {"activity": 1000}


# kill, killsoid, killall


async def test_kill_removes_the_session_from_every_structure(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    first = await new(rs, "u:1")
    second = await new(rs, "u:1")
    assert await rs.kill(app=APP, token=first) == {"kill": 1}
    assert not await redis.exists(rs.layout.session(APP, first))
    assert await redis.smembers(Indexes(rs, "u:1").tokens) == {second}
    assert await redis.zscore(Indexes(rs, "u:1").users, "u:1") is not None
    assert await rs.kill(app=APP, token=second) == {"kill": 1}
    # Nothing is left, and nothing was refreshed or re-added by the kill.
    assert await keys_of(redis, namespace) == []
    assert await rs.kill(app=APP, token=second) == {"kill": 0}
    assert await keys_of(redis, namespace) == []


async def test_kill_cleans_up_an_expired_session_but_counts_zero(
    rs: RedisSessions, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    token = await new(rs, ttl=10)
    clock.advance(11)
    assert await rs.kill(app=APP, token=token) == {"kill": 0}
    assert await keys_of(redis, namespace) == []


async def test_killsoid_counts_the_live_sessions_it_deleted(
    rs: RedisSessions, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    await new(rs, "org:7:user", ttl=10)
    clock.advance(11)
    mine = [await new(rs, "org:7:user") for _ in range(3)]
    other = await new(rs, "org:7:user2")
    assert await rs.killsoid(app=APP, id="org:7:user") == {"kill": 3}
    for token in mine:
        assert await rs.get(app=APP, token=token) is None
    assert await redis.zscore(Indexes(rs, "org:7:user").users, "org:7:user") is None
    assert not await redis.exists(Indexes(rs, "org:7:user").tokens)
    assert await rs.get(app=APP, token=other) is not None
    assert await rs.killsoid(app=APP, id="org:7:user") == {"kill": 0}


async def test_killall_kills_one_app_in_batches(
    server: ServerProcess, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    async with RedisSessions(
        url=server.url, namespace=namespace, wipe=0, clock=clock, batch=2
    ) as rs:
        for i in range(7):
            await new(rs, f"u{i % 3}:x")
        survivor = (await rs.create(app="other", id="u0:x", ip=IP))["token"]
        assert await rs.killall(app=APP) == {"kill": 7}
        assert await rs.activity(app=APP, delta_time=600) == {"activity": 0}
        assert [key for key in await redis.keys(f"{namespace}:*") if f":{APP}:" in key] == []
        assert await rs.get(app="other", token=survivor) is not None
        assert await rs.killall(app=APP) == {"kill": 0}


# no_resave


async def test_no_resave_counts_down_and_never_slides(
    rs: RedisSessions, clock: ManualClock
) -> None:
    token = await new(rs, ttl=100, no_resave=True)
    clock.advance(30)
    session = await rs.get(app=APP, token=token)
    assert session is not None
    assert (session["ttl"], session["idle"], session["no_resave"]) == (70, 30, True)
    clock.advance(30)
    updated = await rs.set(app=APP, token=token, d={"a": 1})
    assert updated is not None
    assert (updated["ttl"], updated["w"]) == (40, 2)
    clock.advance(40)
    assert await rs.get(app=APP, token=token) is not None
    clock.advance(1)
    assert await rs.get(app=APP, token=token) is None


# Listing and activity


async def test_soapp_lists_active_sessions_newest_first_without_touching(
    rs: RedisSessions, clock: ManualClock
) -> None:
    tokens = []
    for name in ("old", "mid:dle", "new"):
        tokens.append(await new(rs, name))
        clock.advance(10)
    recent = await rs.soapp(app=APP, delta_time=25)
    assert [s["id"] for s in recent["sessions"]] == ["new", "mid:dle"]
    everything = await rs.soapp(app=APP, delta_time=600)
    assert [s["id"] for s in everything["sessions"]] == ["new", "mid:dle", "old"]
    assert [s["r"] for s in everything["sessions"]] == [1, 1, 1]


async def test_soid_lists_the_live_sessions_of_an_id(rs: RedisSessions, clock: ManualClock) -> None:
    await new(rs, "a:b", ttl=10)
    clock.advance(11)
    live = {await new(rs, "a:b", d={"n": i}) for i in range(2)}
    await new(rs, "a")
    listed = (await rs.soid(app=APP, id="a:b"))["sessions"]
    assert sorted(s["d"]["n"] for s in listed) == [0, 1]
    assert {s["id"] for s in listed} == {"a:b"}
    assert len(live) == 2


async def test_activity_counts_distinct_ids_in_the_window(
    rs: RedisSessions, clock: ManualClock
) -> None:
    await new(rs, "a")
    await new(rs, "a")
    clock.advance(100)
    await new(rs, "b")
    assert await rs.activity(app=APP, delta_time=600) == {"activity": 2}
    assert await rs.activity(app=APP, delta_time=50) == {"activity": 1}


# Publishing


@pytest.fixture
async def channel(redis: Redis, namespace: str) -> AsyncIterator[list[str]]:
    """Messages seen on the namespace's cache channel, collected in the background."""
    seen: list[str] = []
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"{namespace}:cache")

    async def collect() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                seen.append(message["data"])

    task = asyncio.create_task(collect(), name="test channel collector")
    yield seen
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pubsub.aclose()


async def settle(seen: list[str], count: int) -> list[str]:
    for _ in range(200):
        if len(seen) >= count:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # and no more than that
    return list(seen)


@pytest.mark.single_server
async def test_every_write_publishes_and_reads_do_not(
    rs: RedisSessions, channel: list[str], clock: ManualClock
) -> None:
    token = await new(rs, "a")
    await rs.get(app=APP, token=token)
    await rs.soid(app=APP, id="a")
    await rs.soapp(app=APP, delta_time=600)
    assert await settle(channel, 1) == []
    await rs.set(app=APP, token=token, d={"x": 1})
    assert await settle(channel, 1) == [f"{APP}:{token}"]
    await rs.kill(app=APP, token=token)
    assert await settle(channel, 2) == [f"{APP}:{token}"] * 2
    channel.clear()
    same_id = {await new(rs, "b:c") for _ in range(2)}
    await rs.killsoid(app=APP, id="b:c")
    assert sorted(await settle(channel, 2)) == sorted(f"{APP}:{t}" for t in same_id)
    channel.clear()
    apps = {await new(rs, f"u{i}") for i in range(3)}
    await rs.killall(app=APP)
    assert sorted(await settle(channel, 3)) == sorted(f"{APP}:{t}" for t in apps)
    channel.clear()
    doomed = await new(rs, "d", ttl=10)
    clock.advance(11)
    assert await rs.wipe() == 1
    assert await settle(channel, 1) == [f"{APP}:{doomed}"]


# Wipe


async def test_wipe_removes_expired_sessions_in_batches(
    deployment: Deployment, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    async with RedisSessions(
        url=deployment.url, namespace=namespace, wipe=0, clock=clock, batch=3
    ) as rs:
        for i in range(10):
            await new(rs, f"gone:{i % 4}", ttl=10)
        keep = await new(rs, "gone:0", ttl=1000)
        clock.advance(11)
        assert await rs.wipe() == 10
        # The indexes as the wipe left them, before a read of `keep` touches them.
        index = Indexes(rs, "gone:0")
        assert await redis.zrange(index.expiry, 0, -1) == [f"{APP}:{keep}:gone:0"]
        assert await redis.zrange(index.sessions, 0, -1) == [f"{keep}:gone:0"]
        assert await redis.zrange(index.users, 0, -1) == ["gone:0"]
        assert await redis.smembers(index.tokens) == {keep}
        for i in (1, 2, 3):
            assert not await redis.exists(Indexes(rs, f"gone:{i}").tokens)
        assert await rs.get(app=APP, token=keep) is not None
        assert await rs.wipe() == 0


async def test_wipe_trusts_the_session_over_a_stale_index(
    rs: RedisSessions, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    token = await new(rs, "u", ttl=100)
    member = f"{APP}:{token}:u"
    await redis.zadd(Indexes(rs, "u").expiry, {member: 1})
    clock.advance(50)
    assert await rs.wipe() == 0
    assert await rs.get(app=APP, token=token) is not None
    assert await redis.zscore(Indexes(rs, "u").expiry, member) == int(clock.now) + 100


async def test_wipe_reads_each_session_once_and_writes_each_key_once_per_call(
    server: ServerProcess, namespace: str, clock: ManualClock
) -> None:
    """The wipe's cost per session is what a removal needs: one HMGET of the expiry
    fields, the user set's size, the user set's SREM and the message; the session
    hashes go in one DEL and each index in one ZREM per call. A full default batch
    (100) goes in one call, so 100,000 expired sessions take 1,000 calls."""
    redis = Redis.from_url(server.url, decode_responses=True)
    try:
        async with RedisSessions(url=server.url, namespace=namespace, wipe=0, clock=clock) as rs:
            for i in range(150):
                await new(rs, f"u{i}", ttl=10)
            clock.advance(11)
            await redis.config_resetstat()
            assert await rs.wipe() == 150
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    calls = {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}
    assert calls.get("fcall", 0) + calls.get("evalsha", 0) == 2  # one call per batch
    assert {name: calls.get(name, 0) for name in ("hmget", "scard", "srem", "publish")} == {
        "hmget": 150, "scard": 150, "srem": 150, "publish": 150,
    }  # fmt: skip
    assert {name: calls.get(name, 0) for name in ("del", "zrem", "sismember", "hget")} == {
        "del": 2, "zrem": 6, "sismember": 0, "hget": 0,
    }  # fmt: skip


async def test_wipe_runs_in_one_process_per_interval(
    deployment: Deployment, namespace: str, clock: ManualClock
) -> None:
    first = RedisSessions(url=deployment.url, namespace=namespace, wipe=0, clock=clock)
    second = RedisSessions(url=deployment.url, namespace=namespace, wipe=0, clock=clock)
    async with first, second:
        await new(first, "u", ttl=10)
        clock.advance(11)
        assert await first.wipe_if_due(60) == 1
        assert await second.wipe_if_due(60) is None
        with pytest.raises(ValueError, match="interval must be a positive number"):
            await first.wipe_if_due(-5)


# Lifecycle


async def connections(redis: Redis) -> int:
    return len(await redis.client_list())


@pytest.mark.single_server
async def test_aclose_closes_every_connection_and_task(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    before = await connections(redis)
    rs = RedisSessions(url=server.url, namespace=namespace, wipe=10)
    await asyncio.gather(*(new(rs, f"u{i}") for i in range(20)))
    (task,) = rs._tasks
    assert task.get_name().startswith("cached-sessions wipe")
    assert await connections(redis) > before
    await rs.aclose()
    assert task.cancelled()
    for _ in range(100):
        if await connections(redis) == before:
            break
        await asyncio.sleep(0.01)
    assert await connections(redis) == before
    await rs.aclose()  # idempotent
    with pytest.raises(SessionsClosedError):
        await rs.get(app=APP, token="a" * 64)


@pytest.mark.single_server
async def test_aclose_during_the_first_use_leaves_nothing_running(
    server: ServerProcess, namespace: str
) -> None:
    rs = RedisSessions(url=server.url, namespace=namespace, wipe=10, cachetime=30)
    first = asyncio.create_task(rs.ping())
    for _ in range(3):  # the first use is connecting and loading the scripts
        await asyncio.sleep(0)
    await rs.aclose()
    await asyncio.gather(first, return_exceptions=True)
    running = [t.get_name() for t in asyncio.all_tasks() if "cached-sessions" in t.get_name()]
    assert running == []


async def test_a_client_passed_in_stays_open(redis: Redis, namespace: str) -> None:
    async with RedisSessions(redis, namespace=namespace, wipe=0) as rs:
        await new(rs)
    assert await redis.ping()


async def test_script_is_loaded_again_after_the_server_forgets_it(
    rs: RedisSessions, redis: Redis
) -> None:
    token = await new(rs)
    await redis.script_flush()
    await redis.function_flush()
    assert await rs.get(app=APP, token=token) is not None


async def test_works_with_a_client_that_returns_bytes(
    server: ServerProcess, namespace: str
) -> None:
    client = Redis.from_url(server.url)
    try:
        async with RedisSessions(client, namespace=namespace, wipe=0) as rs:
            token = await new(rs, "é:1", d={"k": "é"})
            session = await rs.get(app=APP, token=token)
            assert session is not None
            assert (session["id"], session["ip"], session["d"]) == ("é:1", IP, {"k": "é"})
            assert json.loads(json.dumps(session)) == session
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis://app:s3cret-pw@db.internal:6380/2",
        "redis://:s3cret-pw@db.internal:6380/2",
        "rediss://db.internal:6380/2?password=s3cret-pw&ssl_cert_reqs=none",
        "redis://app@db.internal:6380/2?username=app&password=s3cret-pw",
        "unix:///run/redis.sock?db=2&password=s3cret-pw",
    ],
)
def test_repr_never_shows_the_password(url: str) -> None:
    rs = RedisSessions(url=url, wipe=0)
    assert "s3cret-pw" not in repr(rs)
    assert "db.internal" in repr(rs) or "redis.sock" in repr(rs)


@pytest.mark.parametrize(
    "url",
    [
        "redis://app:s3cret-pw@db.internal:bad-port/2",
        "http://app:s3cret-pw@db.internal:6379/2",
        "redis+sentinel://app:s3cret-pw@db.internal:26379",
        "redis+cluster://app:s3cret-pw@db.internal:port/0",
    ],
)
def test_a_bad_url_is_refused_when_the_store_is_made_without_its_password(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"bad Redis URL|sentinel") as refused:
        RedisSessions(url=url, wipe=0)
    assert "s3cret-pw" not in str(refused.value)


def test_tokens_come_from_the_os_not_from_random() -> None:
    from cached_sessions.tokens import new_token

    random.seed(7)
    first = new_token()
    random.seed(7)
    second = new_token()
    assert first != second
    assert len(first) == 64 and first.isalnum() and first.isascii()
    assert len({new_token() for _ in range(2000)}) == 2000
