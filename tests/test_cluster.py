"""On a real Redis Cluster: spread, invalidation per shard, failover, slot moves, durability.

The local cluster (tests/topology.py) has three primaries with a replica each. Tests that
kill nodes or move slots take `healed_cluster`, which returns the cluster to health after.
The HTTP tests run two aiohttp servers, each with a store and cache of its own, as two
workers of one service would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import TimeoutError as RedisTimeoutError

from aiohttp_ext import get_session, setup_sessions
from cached_sessions import NotDurableError, RedisSessions
from cached_sessions.keys import ClusterLayout
from tests.topology import LocalCluster

APP = "shop"
IP = "10.0.0.1"
MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def cluster_url(cluster: LocalCluster) -> str:
    host, port = next(
        address for address in cluster.startup_nodes if address[1] in cluster.primaries()
    )
    return f"redis+cluster://{host}:{port}"


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def eventually(action: Callable[[], Awaitable[Any]], seconds: float = 30.0) -> Any:
    """The first answer of `action` that is not an error, retrying through a failover."""
    last: Exception | None = None
    for _ in range(int(seconds / 0.05)):
        try:
            return await action()
        except Exception as error:  # a failover surfaces as several redis-py errors
            last = error
            await asyncio.sleep(0.05)
    raise AssertionError(f"no answer in {seconds} s: {last!r}")


def store(cluster: LocalCluster, namespace: str, **options: Any) -> RedisSessions:
    settings: dict[str, Any] = {"wipe": 0}
    settings.update(options)
    return RedisSessions(url=cluster_url(cluster), namespace=namespace, **settings)


# Layout


def test_buckets_lie_evenly_over_the_slots() -> None:
    layout = ClusterLayout("rs", 64)
    thirds = Counter(layout.slot(bucket) * 3 // 16384 for bucket in range(64))
    assert sorted(thirds.values()) == [21, 21, 22]
    assert [layout.bucket_of_token(layout.new_token(b)) for b in range(64)] == list(range(64))
    with pytest.raises(ValueError, match="buckets"):
        ClusterLayout("rs", 0)


async def test_one_app_spreads_over_every_primary(cluster: LocalCluster, namespace: str) -> None:
    async with store(cluster, namespace, references=["org"]) as rs:
        tokens: list[str] = []
        for start in range(0, 3000, 200):
            created = await asyncio.gather(
                *(
                    rs.create(app=APP, id=f"user{i}", ip=IP, d={"org": i % 3})
                    for i in range(start, start + 200)
                )
            )
            tokens += [c["token"] for c in created]
        per_primary = Counter(
            cluster.node_for_slot(key_slot(rs.layout.session(APP, t).encode())) for t in tokens
        )
        # Asked of the servers too: each primary holds the session hashes counted for it.
        for port, count in per_primary.items():
            node = cluster.nodes[port]
            held = sum(1 for _ in node.client.scan_iter(match=f"{namespace}:*", _type="hash"))
            assert held == count
        assert sorted(per_primary) == sorted(cluster.primaries())
        assert min(per_primary.values()) >= 0.2 * 3000
        assert await rs.activity(app=APP, delta_time=600) == {"activity": 3000}
        assert len((await rs.soapp(app=APP, delta_time=600))["sessions"]) == 3000
        # App-wide calls fan out over the buckets and add up exactly.
        assert await rs.kill_by(app=APP, field="org", value=1) == {"kill": 1000}
        assert await rs.activity(app=APP, delta_time=600) == {"activity": 2000}
        assert await rs.killall(app=APP) == {"kill": 2000}
        assert await rs.activity(app=APP, delta_time=600) == {"activity": 0}


# Invalidation


async def test_losing_one_shard_subscription_flushes_and_bypasses(
    cluster: LocalCluster, namespace: str
) -> None:
    async with store(cluster, namespace, cachetime=30, ping_interval=0.2) as rs:
        tokens = [(await rs.create(app=APP, id=f"u{i}", ip=IP))["token"] for i in range(30)]
        for token in tokens:
            await rs.get(app=APP, token=token)
        assert all(rs.is_cached(t) for t in tokens)
        one = cluster.primaries()[0]
        cluster.nodes[one].command("CLIENT", "KILL", "TYPE", "pubsub")
        # Every shard's entries go: what this shard published meanwhile is unknown.
        await until(lambda: not any(rs.is_cached(t) for t in tokens))
        assert rs.cache_stats()["flush_reasons"].get("connection_error") == 1
        await until(lambda: rs.cache_stats()["subscribed"])
        await rs.get(app=APP, token=tokens[0])
        assert rs.is_cached(tokens[0])


async def test_a_slot_moving_away_is_a_lost_subscription(
    healed_cluster: LocalCluster, namespace: str
) -> None:
    async with store(healed_cluster, namespace, cachetime=30, ping_interval=0.2) as rs:
        token = (await rs.create(app=APP, id="mover", ip=IP))["token"]
        await rs.get(app=APP, token=token)
        assert rs.is_cached(token)
        layout = rs.layout
        assert isinstance(layout, ClusterLayout)
        slot = layout.slot(layout.bucket_of_token(token))
        source = healed_cluster.node_for_slot(slot)
        target = next(p for p in healed_cluster.primaries() if p != source)
        await asyncio.to_thread(healed_cluster.migrate_slot, slot, target)
        reasons = ("slots_changed", "unsubscribed")  # seen migrating, or unsubscribed
        await until(lambda: any(rs.cache_stats()["flush_reasons"].get(r) for r in reasons))
        await until(lambda: rs.cache_stats()["subscribed"])
        # Subscribed on the new owner: a write there reaches this cache again.
        await rs.get(app=APP, token=token)
        assert rs.is_cached(token)
        async with store(healed_cluster, namespace) as writer:
            await writer.set(app=APP, token=token, d={"moved": True})
        await until(lambda: not rs.is_cached(token))


async def test_a_write_sent_on_by_ask_is_never_missed(
    healed_cluster: LocalCluster, namespace: str
) -> None:
    # Every key of the bucket has moved, the slot is not handed over yet: a kill runs
    # on the importing node (ASK) and publishes there, where no subscriber listens. The
    # reader saw the slot migrating and stopped trusting its cache before that.
    cluster = healed_cluster
    async with (
        store(cluster, namespace, cachetime=30, ping_interval=0.2) as reader,
        store(cluster, namespace) as writer,
    ):
        token = (await writer.create(app=APP, id="asked", ip=IP))["token"]
        await reader.get(app=APP, token=token)
        assert reader.is_cached(token)
        layout = reader.layout
        assert isinstance(layout, ClusterLayout)
        slot = layout.slot(layout.bucket_of_token(token))
        source = cluster.node_for_slot(slot)
        target = next(p for p in cluster.primaries() if p != source)
        migration = cluster.migrate_slot(slot, target, stop_after_keys=1000)
        await until(lambda: not reader.is_cached(token))
        assert reader.cache_stats()["flush_reasons"].get("slots_changed") == 1
        assert await writer.kill(app=APP, token=token) == {"kill": 1}
        assert await reader.get(app=APP, token=token) is None
        await asyncio.to_thread(migration.finish)
        try:
            await until(lambda: reader.cache_stats()["subscribed"])
        except AssertionError:
            raise AssertionError(str(reader.cache_stats())) from None


# Durable kills


def _cut_off(cluster: LocalCluster, replica: int, primary: int) -> Callable[[], None]:
    """Stop a replica and close its replication link, so that nothing the primary does
    from now on reaches it; returns what lets it run again. (Stopping it alone is not
    enough: the kernel would keep receiving the stream for it.)"""
    process = cluster.nodes[replica].process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    cluster.nodes[primary].command("CLIENT", "KILL", "TYPE", "replica")
    return lambda: os.kill(process.pid, signal.SIGCONT)


async def test_a_durable_kill_survives_the_failover_that_follows_it(
    healed_cluster: LocalCluster, namespace: str
) -> None:
    async with store(healed_cluster, namespace, durable_kills=1) as rs:
        token = (await rs.create(app=APP, id="victim", ip=IP))["token"]
        healed_cluster.wait_replicas_caught_up()
        assert await rs.kill(app=APP, token=token) == {"kill": 1}
        old = healed_cluster.kill_primary(slot=key_slot(rs.layout.session(APP, token).encode()))
        await asyncio.to_thread(healed_cluster.wait_failover, old)
        assert await eventually(lambda: rs.get(app=APP, token=token)) is None


async def test_a_kill_no_replica_has_is_refused_as_durable_and_can_come_back(
    healed_cluster: LocalCluster, namespace: str
) -> None:
    # The replica is cut off, so nothing the primary does reaches it. A durable kill
    # says so (NotDurableError) instead of returning; a plain kill returns, and the
    # failover that follows brings the session back: what durable_kills prevents.
    cluster = healed_cluster
    async with store(cluster, namespace, durable_kills=1, durable_wait=0.5) as durable:
        token = (await durable.create(app=APP, id="victim", ip=IP))["token"]
        slot = key_slot(durable.layout.session(APP, token).encode())
        primary = cluster.node_for_slot(slot)
        cluster.wait_replicas_caught_up()
        [replica] = cluster.replicas(of=primary)
        resume = _cut_off(cluster, replica, primary)
        try:
            with pytest.raises(NotDurableError, match="0 of the 1 replicas"):
                await durable.kill(app=APP, token=token)
        finally:
            resume()
    async with store(cluster, namespace) as plain:
        token = (await plain.create(app=APP, id="victim", ip=IP))["token"]
        await asyncio.to_thread(cluster.wait_replicas_caught_up)
        resume = _cut_off(cluster, replica, primary)
        try:
            assert await plain.kill(app=APP, token=token) == {"kill": 1}
            cluster.kill_node(primary)
        finally:
            resume()
        await asyncio.to_thread(cluster.wait_failover, primary)
        assert await eventually(lambda: plain.get(app=APP, token=token)) is not None


async def test_a_durable_kill_sent_on_by_ask_is_not_reported_durable(
    healed_cluster: LocalCluster, namespace: str
) -> None:
    # The slot is half moved with every key on the new owner, whose replica is cut
    # off: the kill runs there (ASK), and no replica of that node has it. Counting the
    # replicas of the old owner, which wrote nothing, would report it durable.
    cluster = healed_cluster
    options = {"durable_kills": 1, "durable_wait": 0.3, "redis_timeout": 2.0}
    async with store(cluster, namespace, **options) as rs:
        token = (await rs.create(app=APP, id="asked", ip=IP))["token"]
        layout = rs.layout
        assert isinstance(layout, ClusterLayout)
        slot = layout.slot(layout.bucket_of_token(token))
        source = cluster.node_for_slot(slot)
        target = next(p for p in cluster.primaries() if p != source)
        cluster.wait_replicas_caught_up()
        migration = cluster.migrate_slot(slot, target, stop_after_keys=1000)
        assert migration.keys_left() == 0
        [replica] = cluster.replicas(of=target)
        resume = _cut_off(cluster, replica, target)
        try:
            with pytest.raises(RedisTimeoutError):
                await rs.kill(app=APP, token=token)
        finally:
            resume()
        await asyncio.to_thread(migration.finish)


# A slot caught half moved


async def test_a_kill_waits_out_a_half_moved_slot_and_writes_nothing_partial(
    healed_cluster: LocalCluster, namespace: str
) -> None:
    # The user's token set has moved to the new owner, the session has not. The kill
    # reads the session, learns the user, and would update that set: on the wrong node
    # if it ran now. It names the set (UNDECLARED), the server then sees its keys split
    # and answers TRYAGAIN, and the kill waits, writing nothing, until the move ends.
    cluster = healed_cluster
    async with store(cluster, namespace, redis_timeout=30.0) as rs:
        token = (await rs.create(app=APP, id="split", ip=IP))["token"]
        other = (await rs.create(app=APP, id="split", ip=IP))["token"]
        layout = rs.layout
        assert isinstance(layout, ClusterLayout)
        slot = layout.slot(layout.bucket_of_id("split"))
        source = cluster.node_for_slot(slot)
        target = next(p for p in cluster.primaries() if p != source)
        migration = cluster.migrate_slot(slot, target, stop_after_keys=0)
        tokens_key = layout.user_tokens(APP, "split")
        migration.source.command("MIGRATE", "127.0.0.1", target, tokens_key, 0, 5000)
        kill = asyncio.create_task(rs.kill(app=APP, token=token))
        await asyncio.sleep(0.5)  # long enough to have run many times, were it allowed
        assert not kill.done()
        await asyncio.to_thread(migration.finish)
        assert await kill == {"kill": 1}
        async with store(cluster, namespace) as reader:
            assert await reader.get(app=APP, token=token) is None
            assert [s["id"] for s in (await reader.soid(app=APP, id="split"))["sessions"]] == [
                "split"
            ]
        client = RedisCluster.from_url(cluster.url, decode_responses=True)
        try:
            assert await client.smembers(tokens_key) == {other}
        finally:
            await client.aclose()


# HTTP traffic through a failover and a slot move


def build_app(rs: RedisSessions) -> web.Application:
    app = web.Application()
    setup_sessions(app, rs, app_name=APP, cookie_name="sid", secure=False)

    async def whoami(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.json_response({"user": session.user_id, "n": session.get("n", 0)})

    async def bump(request: web.Request) -> web.Response:
        session = await get_session(request)
        session["n"] = session.get("n", 0) + 1
        return web.json_response({"user": session.user_id})

    async def login(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.upgrade(request.query["user"])
        return web.json_response({"token": session.token})

    async def logout(request: web.Request) -> web.Response:
        await (await get_session(request)).destroy()
        return web.json_response({})

    app.router.add_get("/whoami", whoami)
    app.router.add_post("/bump", bump)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    return app


@pytest.fixture
async def workers(
    healed_cluster: LocalCluster, namespace: str, aiohttp_client: Any
) -> AsyncIterator[list[TestClient[Any, Any]]]:
    stores = [
        store(healed_cluster, namespace, cachetime=30, ping_interval=0.2, durable_kills=1)
        for _ in range(2)
    ]
    yield [await aiohttp_client(build_app(rs)) for rs in stores]


async def _get(client: TestClient[Any, Any], path: str, token: str) -> tuple[int, Any]:
    response = await client.get(path, cookies={"sid": token})
    return response.status, (await response.json() if response.status == 200 else None)


async def test_a_primary_failover_under_http_traffic(
    healed_cluster: LocalCluster, workers: list[TestClient[Any, Any]], namespace: str
) -> None:
    cluster = healed_cluster
    async with store(cluster, namespace) as admin:
        tokens = [(await admin.create(app=APP, id=f"u{i}", ip=IP))["token"] for i in range(60)]
    cluster.wait_replicas_caught_up()
    for client in workers:  # both workers cache every session
        for token in tokens:
            assert (await _get(client, "/whoami", token))[0] == 200
    victim = tokens[0]
    slot = key_slot(admin.layout.session(APP, victim).encode())
    statuses: Counter[int] = Counter()
    logged_out = asyncio.Event()
    stale: list[str] = []
    stop = asyncio.Event()

    async def traffic(client: TestClient[Any, Any]) -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            for token in tokens:
                was_out = logged_out.is_set()
                status, body = await _get(client, "/whoami", token)
                statuses[status] += 1
                if token == victim and was_out and status == 200 and body["user"] is not None:
                    stale.append(f"{client.port}")

    tasks = [asyncio.create_task(traffic(client)) for client in workers]
    old = cluster.kill_primary(slot=slot)
    # The logout goes through a worker. With durable kills it is acknowledged only
    # once a replica has it: not while the shard's primary is down, nor while the
    # promoted replica has no replica of its own. Until then the worker answers 503
    # and the user clicks again.
    await asyncio.to_thread(cluster.wait_failover, old)
    response = await workers[0].post("/logout", cookies={"sid": victim})
    assert response.status == 503
    await asyncio.to_thread(cluster.restart_node, old)
    for _ in range(600):
        response = await workers[0].post("/logout", cookies={"sid": victim})
        if response.status == 200:
            break
        assert response.status == 503
        await asyncio.sleep(0.05)
    logged_out.set()
    before = statuses[200]
    await until(lambda: statuses[200] > before + 2 * len(tokens))
    stop.set()
    await asyncio.gather(*tasks)
    assert stale == []
    assert set(statuses) <= {200, 503}
    for client in workers:  # every request works again, and the logout held
        for token in tokens:
            status, body = await _get(client, "/whoami", token)
            assert status == 200
            assert (body["user"] is None) == (token == victim)


async def test_a_live_slot_move_under_http_traffic(
    healed_cluster: LocalCluster, workers: list[TestClient[Any, Any]], namespace: str
) -> None:
    cluster = healed_cluster
    layout = ClusterLayout(namespace)
    users = [f"u{i}" for i in range(400)]
    bucket = layout.bucket_of_id(users[0])
    movers = [u for u in users if layout.bucket_of_id(u) == bucket]
    async with store(cluster, namespace) as admin:
        tokens = [(await admin.create(app=APP, id=u, ip=IP, d={"n": 0}))["token"] for u in movers]
    slot = layout.slot(bucket)
    source = cluster.node_for_slot(slot)
    target = next(p for p in cluster.primaries() if p != source)
    failures: list[str] = []
    stop = asyncio.Event()

    async def traffic(client: TestClient[Any, Any]) -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            for token in tokens:
                response = await client.post("/bump", cookies={"sid": token})
                if response.status != 200:
                    failures.append(f"bump {response.status}: {await response.text()}")
                status, _ = await _get(client, "/whoami", token)
                if status != 200:
                    failures.append(f"whoami {status}")
            # A login and a logout of a user of the moving bucket: create, kill.
            response = await client.post("/login", params={"user": movers[0]})
            if response.status != 200:
                failures.append(f"login {response.status}")
                continue
            fresh = (await response.json())["token"]
            response = await client.post("/logout", cookies={"sid": fresh})
            if response.status != 200:
                failures.append(f"logout {response.status}")

    tasks = [asyncio.create_task(traffic(client)) for client in workers]

    def let_traffic_run(_: int) -> None:
        # Runs in the migrating thread, between batches of ten keys (as redis-cli
        # moves them): requests meet MOVED, ASK and TRYAGAIN.
        time.sleep(0.02)

    await asyncio.to_thread(
        cluster.migrate_slot, slot, target, pause_between_keys=let_traffic_run, batch=10
    )
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    assert failures == []
    assert cluster.node_for_slot(slot) == target
    async with store(cluster, namespace) as admin:
        for token in tokens:
            session = await admin.get(app=APP, token=token)
            assert session is not None and session["d"]["n"] > 0


async def test_the_cluster_url_form_and_a_client_passed_in(
    cluster: LocalCluster, namespace: str
) -> None:
    host, port = cluster.startup_nodes[0]
    client = RedisCluster(host=host, port=port, decode_responses=True)
    try:
        async with RedisSessions(client, namespace=namespace, wipe=0) as rs:
            assert isinstance(rs.layout, ClusterLayout)
            token = (await rs.create(app=APP, id="u", ip=IP))["token"]
            assert await rs.get(app=APP, token=token) is not None
    finally:
        await client.aclose()
    async with store(cluster, namespace) as by_url:
        assert isinstance(by_url.layout, ClusterLayout)
        assert await by_url.get(app=APP, token=token) is not None
