"""The local Cluster and Sentinel topologies keep their promises, seen from redis-py.

Besides proving the harness, these tests pin down what a redis-py 8 client meets on
the real servers (redirections, failovers, sharded pub/sub after a failover or a slot
move), which the library's cluster support is designed around.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError

from tests.topology import SLOTS, LocalCluster, LocalSentinel

CHANNEL = "rs:cache{app:7}"


async def cluster_client(topology: LocalCluster) -> RedisCluster:
    """A client that has read the slot map: ClusterPubSub.ssubscribe on a client that has
    not raises SlotNotCoveredError instead of connecting."""
    nodes = [ClusterNode(host, port) for host, port in topology.startup_nodes]
    client = RedisCluster(startup_nodes=nodes, decode_responses=True)
    await client.initialize()
    return client


@pytest.fixture
async def rc(cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    client = await cluster_client(cluster)
    yield client
    await client.aclose()


async def next_message(pubsub: ClusterPubSub, within: float = 5.0) -> dict[str, Any]:
    """The next sharded message, or fail; errors propagate to the caller."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        message = await pubsub.get_sharded_message(timeout=0.1)
        if message is not None:
            return message
    raise AssertionError(f"no sharded message within {within} s")


async def read_until(pubsub: ClusterPubSub, kind: str, within: float = 5.0) -> list[str]:
    """Read sharded messages up to the first of type `kind`; return the types read.

    Reads through the errors of a subscription that ClusterPubSub is moving in a task of
    its own, and lists them too: ConnectionError while it is still on a dead node,
    MovedError for its SUNSUBSCRIBE on a node that lost the slot, and at times
    RuntimeError("pubsub connection not set") when a read picks the per-node PubSub
    that the task has just closed.
    """
    seen: list[str] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            message = await pubsub.get_sharded_message(timeout=0.1)
        except (redis.exceptions.RedisError, RuntimeError) as error:
            seen.append(type(error).__name__)
            await asyncio.sleep(0.05)
            continue
        if message is not None:
            seen.append(message["type"])
            if message["type"] == kind:
                return seen
    raise AssertionError(f"no {kind} within {within} s; read {seen}")


def lasting(seen: list[str]) -> list[str]:
    """What `read_until` read, less the errors of a dead node or a closed PubSub."""
    return [kind for kind in seen if kind not in ("ConnectionError", "RuntimeError")]


def get_with(port: int, prefix: str, key: str) -> str | None:
    """GET on one node after `prefix` (READONLY to read a replica, ASKING to read an
    importing slot), both on one connection as these flags are per connection."""
    with redis.Redis(port=port, decode_responses=True, single_connection_client=True) as client:
        client.execute_command(prefix)
        value: str | None = client.get(key)
        return value


# --------------------------------------------------------------------------- cluster


async def test_cluster_forms_with_synced_replicas(cluster: LocalCluster, rc: RedisCluster) -> None:
    assert cluster.health_problem() is None
    primaries = cluster.primaries()
    assert len(primaries) == 3
    for port in primaries:
        [replica] = cluster.replicas(of=port)
        info = cluster.nodes[replica].replication()
        assert (info["role"], info["master_port"], info["master_link_status"]) == (
            "slave",
            port,
            "up",
        )
    assert sorted(node.port for node in rc.get_primaries()) == sorted(primaries)
    assert sorted(node.port for node in rc.get_replicas()) == cluster.replicas()
    owners = {rc.nodes_manager.slots_cache[slot][0].port for slot in range(SLOTS)}
    assert owners == set(primaries)
    async with RedisCluster.from_url(cluster.url) as from_url:
        assert len(await from_url.cluster_nodes()) == 6


async def test_every_primary_takes_writes(cluster: LocalCluster, rc: RedisCluster) -> None:
    keys = {f"topology:{{spread{n}}}": str(n) for n in range(30)}
    for key, value in keys.items():
        await rc.set(key, value)
    assert {cluster.node_for_key(key) for key in keys} == set(cluster.primaries())
    cluster.wait_replicas_caught_up()
    for key, value in keys.items():
        primary = cluster.node_for_key(key)
        [replica] = cluster.replicas(of=primary)
        assert get_with(replica, "READONLY", key) == value


async def test_acknowledged_write_survives_failover(healed_cluster: LocalCluster) -> None:
    cluster = healed_cluster
    key = "topology:{failover}"
    primary = cluster.node_for_key(key)
    async with Redis(port=primary, single_connection_client=True) as direct:
        await direct.set(key, "kept")
        assert await direct.wait(1, 5000) == 1
    rc = await cluster_client(cluster)
    try:
        assert await rc.get(key) == "kept"
        [replica] = cluster.replicas(of=primary)
        assert cluster.kill_primary(slot=key_slot(key.encode())) == primary
        assert cluster.wait_failover(primary) == replica
        assert await rc.get(key) == "kept"  # the old client finds the new primary itself
        await rc.set(key, "after")
        cluster.restart_node(primary)
        assert cluster.replicas(of=replica) == [primary]
        cluster.wait_caught_up(primary)
        assert get_with(primary, "READONLY", key) == "after"
    finally:
        await rc.aclose()


async def test_slot_migration_redirects(healed_cluster: LocalCluster, rc: RedisCluster) -> None:
    cluster = healed_cluster
    keys = {f"topology:{{moving}}:{n}": str(n) for n in range(25)}
    for key, value in keys.items():
        await rc.set(key, value)
    slot = key_slot(b"{moving}")
    source = cluster.node_for_slot(slot)
    target = next(port for port in cluster.primaries() if port != source)

    migration = cluster.migrate_slot(slot, target, stop_after_keys=10, batch=4)
    assert migration.keys_left() == 15
    still_there = set(cluster.nodes[source].command("CLUSTER", "GETKEYSINSLOT", slot, 100))
    moved = [key for key in keys if key not in still_there]
    assert len(moved) == 10
    with pytest.raises(AskError, match=rf"^{slot} 127.0.0.1:{target}$"):
        cluster.nodes[source].client.get(moved[0])
    for key, value in keys.items():  # moved keys through ASK, the rest from the source
        assert await rc.get(key) == value
    await rc.set("topology:{moving}:new", "n")  # a new key goes to the target (ASK)
    assert get_with(target, "ASKING", "topology:{moving}:new") == "n"

    migration.finish()
    assert cluster.node_for_slot(slot) == target
    with pytest.raises(MovedError, match=rf"^{slot} 127.0.0.1:{target}$"):
        cluster.nodes[source].client.get(moved[0])
    for key, value in keys.items():
        assert await rc.get(key) == value  # MOVED, then the client's map is updated
    node = rc.get_node_from_key(moved[0])
    assert node is not None
    assert node.port == target
    assert cluster.health_problem() is None

    cluster.migrate_slot(slot, source)  # back, all at once
    assert cluster.node_for_slot(slot) == source
    assert await rc.get("topology:{moving}:new") == "n"


async def test_traffic_during_a_migration(healed_cluster: LocalCluster, rc: RedisCluster) -> None:
    """A test can run its own traffic between batches, from its event loop."""
    cluster = healed_cluster
    keys = {f"topology:{{busy}}:{n}": str(n) for n in range(12)}
    for key, value in keys.items():
        await rc.set(key, value)
    slot = key_slot(b"{busy}")
    source = cluster.node_for_slot(slot)
    target = next(port for port in cluster.primaries() if port != source)
    loop = asyncio.get_running_loop()
    seen: list[int] = []

    async def read_all() -> list[Any]:
        return [await rc.get(key) for key in keys]

    def between_batches(moved: int) -> None:
        seen.append(moved)
        assert asyncio.run_coroutine_threadsafe(read_all(), loop).result(10) == list(keys.values())

    await asyncio.to_thread(
        cluster.migrate_slot, slot, target, pause_between_keys=between_batches, batch=5
    )
    assert seen == [5, 10, 12]
    assert cluster.node_for_slot(slot) == target
    await asyncio.to_thread(cluster.migrate_slot, slot, source)


async def test_heal_after_kills_without_waiting(healed_cluster: LocalCluster) -> None:
    """heal() copes with a test that killed nodes and left at once."""
    cluster = healed_cluster
    first, second, _ = cluster.primaries()
    cluster.kill_primary(first)
    cluster.kill_node(cluster.replicas(of=second)[0])
    cluster.heal()
    assert len(cluster.primaries()) == 3
    assert len(cluster.replicas()) == 3
    assert cluster.health_problem() is None


async def test_heal_finishes_an_open_migration(healed_cluster: LocalCluster) -> None:
    cluster = healed_cluster
    slot = key_slot(b"{open}")
    source = cluster.node_for_slot(slot)
    target = next(port for port in cluster.primaries() if port != source)
    cluster.migrate_slot(slot, target, stop_after_keys=0)
    assert str(cluster.health_problem()).endswith(": a slot migration is open")
    cluster.heal()
    assert cluster.node_for_slot(slot) == target
    cluster.migrate_slot(slot, source)


async def test_flushall_empties_every_shard(cluster: LocalCluster, rc: RedisCluster) -> None:
    for n in range(20):
        await rc.set(f"topology:{{flush{n}}}", "x")
    cluster.flushall()
    for port in cluster.nodes:
        assert cluster.nodes[port].client.dbsize() == 0


# --------------------------------------------------------------------------- sharded pub/sub


async def test_sharded_pubsub_delivers(rc: RedisCluster) -> None:
    pubsub = rc.pubsub()
    try:
        await pubsub.ssubscribe(CHANNEL)
        assert (await next_message(pubsub))["type"] == "ssubscribe"
        assert await rc.spublish(CHANNEL, "hello") == 1
        message = await next_message(pubsub)
        assert (message["type"], message["channel"], message["data"]) == (
            "smessage",
            CHANNEL,
            "hello",
        )
    finally:
        await pubsub.aclose()


async def test_sharded_pubsub_after_primary_killed(healed_cluster: LocalCluster) -> None:
    """What a subscriber sees when its shard's primary dies (redis-py 8.1):

    every read raises ConnectionError from the first read after the kill; the
    ClusterPubSub moves its subscription to the promoted replica only when its
    RedisCluster refreshes its slot map (on its own traffic, or when asked), and says
    so with an `ssubscribe` confirmation. Without a refresh it stays on the dead node
    for good, however long ago the failover ended.
    """
    cluster = healed_cluster
    rc = await cluster_client(cluster)
    pubsub = rc.pubsub()
    try:
        await pubsub.ssubscribe(CHANNEL)
        assert (await next_message(pubsub))["type"] == "ssubscribe"
        old = cluster.kill_primary(slot=key_slot(CHANNEL.encode()))
        killed = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            await pubsub.get_sharded_message(timeout=1.0)
        assert time.monotonic() - killed < 2.0
        new = await asyncio.to_thread(cluster.wait_failover, old)

        with pytest.raises(redis.exceptions.ConnectionError):  # no refresh: still lost
            await pubsub.get_sharded_message(timeout=0.5)
        await rc.nodes_manager.initialize()  # what any MOVED or connection error triggers
        assert lasting(await read_until(pubsub, "ssubscribe")) == ["ssubscribe"]
        assert list(pubsub.node_pubsub_mapping) == [f"127.0.0.1:{new}"]
        assert await rc.spublish(CHANNEL, "again") == 1
        assert (await next_message(pubsub))["data"] == "again"
    finally:
        await pubsub.aclose()
        await rc.aclose()


async def test_sharded_pubsub_after_graceful_failover(healed_cluster: LocalCluster) -> None:
    """On CLUSTER FAILOVER the demoted primary ends its shard subscriptions with a
    `sunsubscribe` (count 0) nobody asked for, and no error. redis-py 8.1 still counts
    the channel as subscribed and does not subscribe again, and nothing makes its client
    refresh (the demoted node, a replica of the same shard, takes SPUBLISH without a
    MOVED): later messages never arrive. A refresh, when asked for, moves it."""
    cluster = healed_cluster
    rc = await cluster_client(cluster)
    pubsub = rc.pubsub()
    try:
        await pubsub.ssubscribe(CHANNEL)
        assert (await next_message(pubsub))["type"] == "ssubscribe"
        primary = cluster.node_for_key(CHANNEL)
        [replica] = cluster.replicas(of=primary)
        await asyncio.to_thread(cluster.manual_failover, replica)
        message = await next_message(pubsub)
        assert (message["type"], message["channel"], message["data"]) == (
            "sunsubscribe",
            CHANNEL,
            0,
        )
        assert CHANNEL in pubsub.shard_channels  # redis-py believes it still listens
        async with await cluster_client(cluster) as publisher:
            await publisher.spublish(CHANNEL, "lost")
            assert await pubsub.get_sharded_message(timeout=1.0) is None

            await rc.nodes_manager.initialize()  # a refresh moves it to the new primary
            # The move unsubscribes on the old node first, which confirms it once more.
            seen = await read_until(pubsub, "ssubscribe")
            assert lasting(seen) == ["sunsubscribe", "ssubscribe"]
            assert list(pubsub.node_pubsub_mapping) == [f"127.0.0.1:{replica}"]
            await publisher.spublish(CHANNEL, "heard")
            assert (await next_message(pubsub))["data"] == "heard"
    finally:
        await pubsub.aclose()
        await rc.aclose()


async def test_sharded_pubsub_when_its_slot_moves(healed_cluster: LocalCluster) -> None:
    """Moving a slot away ends its shard subscriptions on the source with a
    `sunsubscribe` (count 0), as soon as the source stops owning the slot. A refresh of
    the client's map (a MOVED on its own traffic does it too) moves the subscription;
    the reply to its SUNSUBSCRIBE on the source, a MOVED, is raised to the reader."""
    cluster = healed_cluster
    rc = await cluster_client(cluster)
    pubsub = rc.pubsub()
    slot = key_slot(CHANNEL.encode())
    source = cluster.node_for_slot(slot)
    target = next(port for port in cluster.primaries() if port != source)
    try:
        await pubsub.ssubscribe(CHANNEL)
        assert (await next_message(pubsub))["type"] == "ssubscribe"
        await asyncio.to_thread(cluster.migrate_slot, slot, target)
        message = await next_message(pubsub)
        assert (message["type"], message["data"]) == ("sunsubscribe", 0)
        await rc.nodes_manager.initialize()  # a refresh moves it; the source says MOVED
        assert lasting(await read_until(pubsub, "ssubscribe")) == ["MovedError", "ssubscribe"]
        assert await rc.spublish(CHANNEL, "heard") == 1
        assert (await next_message(pubsub))["data"] == "heard"
    finally:
        await pubsub.aclose()
        await rc.aclose()
        await asyncio.to_thread(cluster.migrate_slot, slot, source)


# --------------------------------------------------------------------------- sentinel


@pytest.fixture
async def sentinel_client(sentinel: LocalSentinel) -> AsyncIterator[Sentinel]:
    client = Sentinel(sentinel.sentinels, decode_responses=True)  # type: ignore[no-untyped-call]
    yield client
    for connection in client.sentinels:
        await connection.aclose()


async def test_sentinel_setup_is_healthy(
    sentinel: LocalSentinel, sentinel_client: Sentinel
) -> None:
    assert sentinel.health_problem() is None
    client = sentinel_client
    host, port = await client.discover_master(sentinel.master_name)
    assert (host, port) == ("127.0.0.1", sentinel.primary_port())
    replicas = await client.discover_slaves(sentinel.master_name)
    assert sorted(int(port) for _, port in replicas) == sentinel.replica_ports()


async def test_sentinel_failover_is_followed(
    healed_sentinel: LocalSentinel, sentinel_client: Sentinel
) -> None:
    topology = healed_sentinel
    primary = sentinel_client.master_for(topology.master_name, decode_responses=True)
    try:
        async with primary.client() as connection:  # WAIT counts this connection's writes
            await connection.set("topology:sentinel", "kept")
            assert await connection.wait(1, 5000) == 1
        old = topology.kill_primary()
        new = await asyncio.to_thread(topology.wait_failover, old)
        assert new != old
        assert await primary.get("topology:sentinel") == "kept"
        await primary.set("topology:sentinel", "after")
        assert await primary.connection_pool.get_master_address() == ("127.0.0.1", new)
        await asyncio.to_thread(topology.restart_old_primary, old)
        assert topology.replica_ports() == [old]
        assert topology.data_nodes[old].replication()["master_port"] == new
    finally:
        await primary.aclose()
