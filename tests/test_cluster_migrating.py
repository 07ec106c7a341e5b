"""Removals on a slot that is migrating: all of their writes, or none until the move ends.

While a slot migrates, its source checks every command a script sends against the keys
it still holds. A set or sorted set that a removal empties is deleted, so a script that
touched it again would fail halfway, and Redis keeps what it had already written. Each
test leaves a bucket's slot MIGRATING, with no key moved or with a bystander's keys
moved, runs one kind of removal there, and checks the structures at every step: either
the call completes (and a caching reader hears the invalidation) or it waits, having
written nothing, and completes once the move ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from cached_sessions import RedisSessions
from cached_sessions.keys import ClusterLayout
from tests.conftest import ManualClock
from tests.test_cluster import APP, IP, store, until
from tests.topology import LocalCluster, SlotMigration

USER = "owner"
Snapshot = dict[str, Any]

# "none": the slot is MIGRATING and every key is still on the source. "bystander": the
# keys of another user of the bucket (untouched by the call, unless it kills every
# session of the app) have already moved to the target.
MOVED = pytest.mark.parametrize("moved", ["none", "bystander"])


async def snapshot(client: RedisCluster, namespace: str) -> Snapshot:
    """Every key of the namespace on every primary, with its content."""
    found: Snapshot = {}
    async for key in client.scan_iter(match=f"{namespace}:*"):
        kind = await client.type(key)
        if kind == "hash":
            found[key] = await client.hgetall(key)
        elif kind == "zset":
            found[key] = set(await client.zrange(key, 0, -1))
        elif kind == "set":
            found[key] = await client.smembers(key)
        else:
            found[key] = await client.get(key)
    return found


def problems(data: Snapshot) -> list[str]:
    """Where the structures of APP disagree: a partial write leaves some."""
    out: list[str] = []
    sessions = {key: value for key, value in data.items() if isinstance(value, dict)}

    def prefix(key: str) -> str:
        return key[: key.index("}") + 1]

    def session_of(pre: str, token: str) -> dict[str, str] | None:
        return sessions.get(f"{pre}:{APP}:{token}")

    for key, session in sessions.items():
        pre, token, id = prefix(key), key.rsplit(":", 1)[1], session["id"]
        if f"{token}:{id}" not in data.get(f"{pre}:{APP}:_sessions", set()):
            out.append(f"{key} missing from _sessions")
        if id not in data.get(f"{pre}:{APP}:_users", set()):
            out.append(f"{key}: {id} missing from _users")
        if token not in data.get(f"{pre}:{APP}:us:{id}", set()):
            out.append(f"{key} missing from the tokens of {id}")
        if f"{APP}:{token}:{id}" not in data.get(f"{pre}:SESSIONS", set()):
            out.append(f"{key} missing from SESSIONS")
    for key, members in data.items():
        if not isinstance(members, set):
            continue
        pre, rest = prefix(key), key[key.index("}") + 2 :]
        for member in members:
            if rest == f"{APP}:_sessions" or rest == "SESSIONS":
                token, id = member.removeprefix(f"{APP}:").split(":", 1)
                if (session_of(pre, token) or {}).get("id") != id:
                    out.append(f"{key} lists {member}, which has no session")
            elif rest == f"{APP}:_users":
                if not data.get(f"{pre}:{APP}:us:{member}"):
                    out.append(f"{key} lists {member}, who has no token")
            elif rest.startswith(f"{APP}:us:"):
                if (session_of(pre, member) or {}).get("id") != rest.split(":", 2)[2]:
                    out.append(f"{key} lists {member}, which has no session")
            elif rest.startswith(f"{APP}:ref:") and session_of(pre, member) is None:
                out.append(f"{key} lists {member}, which has no session")
    return out


def same_bucket_id(layout: ClusterLayout, bucket: int, stem: str) -> str:
    return next(f"{stem}{i}" for i in range(100_000) if layout.bucket_of_id(f"{stem}{i}") == bucket)


class Scene:
    """A bucket with USER's sessions and a bystander's, its slot about to migrate."""

    def __init__(self, cluster: LocalCluster, rs: RedisSessions, client: RedisCluster) -> None:
        layout = rs.layout
        assert isinstance(layout, ClusterLayout)
        self.cluster, self.rs, self.client, self.layout = cluster, rs, client, layout
        self.bucket = layout.bucket_of_id(USER)
        self.slot = layout.slot(self.bucket)
        self.bystander = same_bucket_id(layout, self.bucket, "bystander")
        self.bystander_token = ""

    async def populate(self, sessions: int, **options: Any) -> list[str]:
        """USER's sessions (with `options`), and one bystander session."""
        rs = self.rs
        created = [await rs.create(app=APP, id=USER, ip=IP, **options) for _ in range(sessions)]
        other = await rs.create(app=APP, id=self.bystander, ip=IP, d={"org": 2})
        self.bystander_token = other["token"]
        return [c["token"] for c in created]

    def in_slot(self, data: Snapshot) -> Snapshot:
        tag = "{" + self.layout.tag(self.bucket) + "}"
        return {key: value for key, value in data.items() if tag in key}

    def migrate(self, moved: str) -> SlotMigration:
        source = self.cluster.node_for_slot(self.slot)
        target = next(p for p in self.cluster.primaries() if p != source)
        migration = self.cluster.migrate_slot(self.slot, target, stop_after_keys=0)
        layout = self.layout
        if moved == "bystander":
            keys = [
                layout.session(APP, self.bystander_token),
                layout.user_tokens(APP, self.bystander),
            ]
            migration.source.command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        if moved == "indexes":  # the app's indexes, read by no removal before it writes them
            keys = [layout.app_sessions(APP, self.bucket), layout.app_users(APP, self.bucket)]
            migration.source.command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        return migration

    async def through_migration(
        self,
        moved: str,
        call: Callable[[], Awaitable[Any]],
        *,
        completes_during_move: bool,
    ) -> Any:
        """Runs `call` while the slot migrates; checks the structures throughout."""
        before = await snapshot(self.client, self.layout.namespace)
        assert problems(before) == []
        migration = self.migrate(moved)
        try:
            task = asyncio.create_task(call())
            if completes_during_move:
                # Every key it writes is on the source: nothing to wait for. Until it
                # returns, what it has written so far must be whole.
                for _ in range(300):
                    await asyncio.wait([task], timeout=0.2)
                    current = await snapshot(self.client, self.layout.namespace)
                    assert problems(current) == []
                    if task.done():
                        break
                assert task.done(), "still running on a slot whose keys are all here"
            else:
                await asyncio.wait([task], timeout=1.0)  # long enough to run many times
            during = await snapshot(self.client, self.layout.namespace)
            assert problems(during) == []
            if not task.done():  # waiting, it wrote nothing in the slot
                assert self.in_slot(during) == self.in_slot(before)
        finally:
            await asyncio.to_thread(migration.finish)
        result = await asyncio.wait_for(task, 60)
        assert problems(await snapshot(self.client, self.layout.namespace)) == []
        return result


@pytest.fixture
async def client(healed_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    raw = RedisCluster.from_url(healed_cluster.url, decode_responses=True)
    yield raw
    await raw.aclose()


@pytest.fixture
async def reader(healed_cluster: LocalCluster, namespace: str) -> AsyncIterator[RedisSessions]:
    """A store that caches what it reads, for as long as no invalidation says otherwise."""
    async with store(healed_cluster, namespace, cachetime=30, ping_interval=0.2) as rs:
        yield rs


async def cache(reader: RedisSessions, tokens: list[str]) -> None:
    for token in tokens:
        assert await reader.get(app=APP, token=token) is not None
        assert reader.is_cached(token)


async def heard(reader: RedisSessions, tokens: list[str]) -> None:
    """The reader dropped every token (its invalidation arrived) and serves none."""
    await until(lambda: not any(reader.is_cached(t) for t in tokens), 30)
    for token in tokens:
        assert await reader.get(app=APP, token=token) is None


@MOVED
async def test_killing_a_users_last_session_on_a_migrating_slot(
    healed_cluster: LocalCluster,
    namespace: str,
    client: RedisCluster,
    reader: RedisSessions,
    moved: str,
) -> None:
    async with store(healed_cluster, namespace, redis_timeout=60.0) as rs:
        scene = Scene(healed_cluster, rs, client)
        [token] = await scene.populate(1)
        await cache(reader, [token])
        kill = scene.through_migration(
            moved, lambda: rs.kill(app=APP, token=token), completes_during_move=True
        )
        assert await kill == {"kill": 1}
        await heard(reader, [token])
        assert await client.zscore(rs.layout.app_users(APP, scene.bucket), USER) is None
        assert await client.exists(rs.layout.user_tokens(APP, USER)) == 0


@MOVED
async def test_killsoid_on_a_migrating_slot(
    healed_cluster: LocalCluster,
    namespace: str,
    client: RedisCluster,
    reader: RedisSessions,
    moved: str,
) -> None:
    async with store(healed_cluster, namespace, redis_timeout=60.0, references=["org"]) as rs:
        scene = Scene(healed_cluster, rs, client)
        tokens = await scene.populate(3, d={"org": 1})
        await cache(reader, tokens)
        killsoid = scene.through_migration(
            moved, lambda: rs.killsoid(app=APP, id=USER), completes_during_move=True
        )
        assert await killsoid == {"kill": 3}
        await heard(reader, tokens)
        assert await client.zscore(rs.layout.app_users(APP, scene.bucket), USER) is None


@MOVED
async def test_kill_by_on_a_migrating_slot(
    healed_cluster: LocalCluster,
    namespace: str,
    client: RedisCluster,
    reader: RedisSessions,
    moved: str,
) -> None:
    async with store(healed_cluster, namespace, redis_timeout=60.0, references=["org"]) as rs:
        scene = Scene(healed_cluster, rs, client)
        tokens = await scene.populate(3, d={"org": 1})
        await cache(reader, tokens)
        kill_by = scene.through_migration(
            moved,
            lambda: rs.kill_by(app=APP, field="org", value=1),
            completes_during_move=True,
        )
        assert await kill_by == {"kill": 3}
        await heard(reader, tokens)
        assert await client.exists(rs.layout.reference(APP, "org", "1", scene.bucket)) == 0
        assert await rs.get(app=APP, token=scene.bystander_token) is not None


@MOVED
async def test_killall_on_a_migrating_slot(
    healed_cluster: LocalCluster,
    namespace: str,
    client: RedisCluster,
    reader: RedisSessions,
    moved: str,
) -> None:
    async with store(healed_cluster, namespace, redis_timeout=60.0, references=["org"]) as rs:
        scene = Scene(healed_cluster, rs, client)
        tokens = await scene.populate(3, d={"org": 1})
        elsewhere = [(await rs.create(app=APP, id=f"far{i}", ip=IP))["token"] for i in range(6)]
        await cache(reader, tokens)
        # The bystander's session is the app's too: once it has moved, the batch that
        # names it waits for the move to end.
        killall = scene.through_migration(
            moved, lambda: rs.killall(app=APP), completes_during_move=moved == "none"
        )
        assert await killall == {"kill": 3 + 1 + len(elsewhere)}
        if moved == "none":
            await heard(reader, tokens)
        assert await snapshot(client, namespace) == {}


@pytest.mark.parametrize("moved", ["none", "bystander", "indexes"])
async def test_the_wipe_on_a_migrating_slot(
    healed_cluster: LocalCluster,
    namespace: str,
    client: RedisCluster,
    moved: str,
) -> None:
    clock = ManualClock()
    options: dict[str, Any] = {"redis_timeout": 60.0, "references": ["org"], "clock": clock}
    async with store(healed_cluster, namespace, **options) as rs:
        scene = Scene(healed_cluster, rs, client)
        tokens = await scene.populate(3, ttl=10, d={"org": 1})
        clock.advance(60)  # USER's sessions expire; the bystander's (ttl 7200) does not
        wipe = scene.through_migration(moved, rs.wipe, completes_during_move=moved != "indexes")
        assert await wipe == 3
        data = await snapshot(client, namespace)
        assert not any(rs.layout.session(APP, token) in data for token in tokens)
        assert rs.layout.user_tokens(APP, USER) not in data
        assert await rs.get(app=APP, token=scene.bystander_token) is not None
