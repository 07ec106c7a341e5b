"""Behind Redis Sentinel: the URL form, invalidation, and the cache through failovers.

The local topology (tests/topology.py) has one primary, one replica and three
sentinels. Tests that fail the primary over, or pause a process, take
`healed_sentinel`, which returns the setup to health after. Covered: the URL form and
a client passed in; invalidation between two stores; a graceful switch (SENTINEL
FAILOVER), during which the old primary stays writable for seconds; sentinels that stop
answering; durable kills through a failover; and a primary's crash under HTTP traffic
through two aiohttp servers, each with a store and cache of its own, as two workers of
one service would run.

The failover tests print how long the stores' subscribers took to be subscribed again,
and what the requests answered meanwhile (run with `-s` to see it).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio.sentinel import Sentinel

from aiohttp_ext import get_session, setup_sessions
from cached_sessions import NotDurableError, RedisSessions
from tests.topology import HOST, LocalSentinel, Node, caught_up_problem, wait_until

pytestmark = pytest.mark.timeout(150)

APP = "shop"
IP = "10.0.0.1"
FAST_PING = 0.2
# What a store's subscriber may call the loss of its primary.
PRIMARY_LOSS_REASONS = frozenset(
    {"connection_error", "primary_changed", "primary_unknown", "missed_pong"}
)


def sentinel_url(topology: LocalSentinel, db: int | None = None, userinfo: str = "") -> str:
    hosts = ",".join(f"{host}:{port}" for host, port in topology.sentinels)
    credentials = f"{userinfo}@" if userinfo else ""
    return f"redis+sentinel://{credentials}{hosts}/{topology.master_name}" + (
        f"/{db}" if db else ""
    )


def store(topology: LocalSentinel, namespace: str, **options: Any) -> RedisSessions:
    settings: dict[str, Any] = {"wipe": 0, "redis_timeout": 3.0}
    settings.update(options)
    return RedisSessions(url=sentinel_url(topology), namespace=namespace, **settings)


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def eventually(action: Callable[[], Awaitable[Any]], seconds: float = 30.0) -> Any:
    """The first answer of `action` that is not an error, retrying through a failover."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            return await action()
        except Exception as error:  # a failover surfaces as several redis-py errors
            if loop.time() > deadline:
                raise AssertionError(f"no answer in {seconds} s") from error
            await asyncio.sleep(0.05)


def subscribers(topology: LocalSentinel, channel: str) -> dict[int, int]:
    """How many clients each live data node has subscribed to `channel`."""
    counts = {}
    for port, node in topology.data_nodes.items():
        if node.alive:
            _, count = node.command("PUBSUB", "NUMSUB", channel)
            counts[port] = int(count)
    return counts


def wait_replicas_caught_up(topology: LocalSentinel, timeout: float = 30.0) -> None:
    """Return once every live replica has applied all the primary has written so far."""
    primary = topology.data_nodes[topology.primary_port()]
    offset = int(primary.replication()["master_repl_offset"])
    for port in topology.replica_ports():
        replica = topology.data_nodes[port]
        if replica.alive:
            wait_until(
                lambda r=replica: caught_up_problem(r, primary, offset),
                f"{port} catches up",
                timeout,
            )


def ask_for_failover(topology: LocalSentinel) -> int:
    """SENTINEL FAILOVER: a replica is promoted while the old primary stays alive, until
    the sentinels turn it into a replica of the new one. Returns the old primary."""
    old = topology.primary_port()
    sentinel = next(node for node in topology.sentinel_nodes.values() if node.alive)
    sentinel.command("SENTINEL", "FAILOVER", topology.master_name)
    return old


def all_name_another(topology: LocalSentinel, old: int) -> str | None:
    """What keeps every sentinel from naming a primary other than `old`, or None."""
    for node in topology.sentinel_nodes.values():
        _, port = node.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", topology.master_name)
        if int(port) == old:
            return f"sentinel {node.port} still names {old}"
    return None


async def wait_all_name_another(topology: LocalSentinel, old: int) -> None:
    check = partial(all_name_another, topology, old)
    await asyncio.to_thread(wait_until, check, "every sentinel names a new primary", 30.0)


@dataclass
class SubscriptionWatch:
    """Records when a store's subscription was lost and when it was confirmed again,
    on the event loop's clock, by polling its cache stats."""

    rs: RedisSessions
    lost_at: float | None = None
    back_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> SubscriptionWatch:
        self.task = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while self.back_at is None:
            subscribed = self.rs.cache_stats()["subscribed"]
            if self.lost_at is None and not subscribed:
                self.lost_at = loop.time()
            elif self.lost_at is not None and subscribed:
                self.back_at = loop.time()
            await asyncio.sleep(0.005)

    async def wait(self, seconds: float = 60.0) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, seconds)


# The URL form, a client passed in, and where the cache subscribes


async def exercise(rs: RedisSessions) -> str:
    """create, get, set and kill through `rs`; returns the killed session's token."""
    token = (await rs.create(app=APP, id="alice", ip=IP))["token"]
    session = await rs.get(app=APP, token=token)
    assert session is not None and session["id"] == "alice"
    await rs.set(app=APP, token=token, d={"cart": 3})
    session = await rs.get(app=APP, token=token)
    assert session is not None and session["d"] == {"cart": 3}
    assert await rs.kill(app=APP, token=token) == {"kill": 1}
    assert await rs.get(app=APP, token=token) is None
    return token


async def test_the_url_form_works_and_subscribes_on_the_primary(
    sentinel: LocalSentinel, namespace: str
) -> None:
    async with store(sentinel, namespace, cachetime=30) as rs:
        await until(lambda: rs.cache_stats()["subscribed"])
        primary = sentinel.primary_port()
        assert subscribers(sentinel, rs.layout.channel()) == {
            port: int(port == primary) for port in sentinel.data_nodes
        }
        token = await exercise(rs)
        # Written on the primary, replicated to the replica.
        wait_replicas_caught_up(sentinel)
        for port in sentinel.data_nodes:
            client = sentinel.data_nodes[port].client
            assert client.zscore(f"{namespace}:{APP}:_users", "alice") is None
            assert client.exists(rs.layout.session(APP, token)) == 0
            assert client.exists(f"{namespace}:{APP}:us:alice") == 0


async def test_the_url_form_selects_its_database(sentinel: LocalSentinel, namespace: str) -> None:
    url = sentinel_url(sentinel, db=3)
    async with RedisSessions(url=url, namespace=namespace, wipe=0) as rs:
        token = (await rs.create(app=APP, id="bob", ip=IP))["token"]
        key = rs.layout.session(APP, token)
    with redis.Redis(host=HOST, port=sentinel.primary_port(), db=3) as db3:
        assert db3.exists(key) == 1
    assert sentinel.data_nodes[sentinel.primary_port()].client.exists(key) == 0


async def test_a_store_closes_the_sentinel_connections_it_opened(
    sentinel: LocalSentinel, namespace: str
) -> None:
    # An unclosed connection says so when it is collected (ResourceWarning).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            async with RedisSessions(url=sentinel_url(sentinel), namespace=namespace, wipe=0) as rs:
                await rs.ping()
        del rs
        gc.collect()
    ports = [str(port) for port in sentinel.sentinel_nodes]
    unclosed = [str(w.message) for w in caught if any(port in str(w.message) for port in ports)]
    assert unclosed == []


async def test_a_client_passed_in_works_and_subscribes_on_the_primary(
    sentinel: LocalSentinel, namespace: str
) -> None:
    sentinels = Sentinel(sentinel.sentinels)
    client = sentinels.master_for(sentinel.master_name, decode_responses=True)
    try:
        async with RedisSessions(client, namespace=namespace, wipe=0, cachetime=30) as rs:
            await until(lambda: rs.cache_stats()["subscribed"])
            primary = sentinel.primary_port()
            assert subscribers(sentinel, rs.layout.channel()) == {
                port: int(port == primary) for port in sentinel.data_nodes
            }
            await exercise(rs)
        # The store closed its subscriber, and left the caller's client open.
        assert sum(subscribers(sentinel, rs.layout.channel()).values()) == 0
        assert await client.ping()
    finally:
        await client.aclose()
        await sentinels.aclose()


@pytest.fixture
def app_user(sentinel: LocalSentinel, namespace: str) -> Iterator[str]:
    """`user:password` of an ACL user on every data node that may run neither admin nor
    dangerous commands, as an application's user often is."""
    user, password = f"app-{namespace}", uuid.uuid4().hex
    rules = ["on", f">{password}", "~*", "&*", "+@all", "-@admin", "-@dangerous"]
    for node in sentinel.data_nodes.values():
        node.command("ACL", "SETUSER", user, *rules)
    yield f"{user}:{password}"
    for node in sentinel.data_nodes.values():
        if node.alive:
            node.command("ACL", "DELUSER", user)


async def test_an_application_user_without_admin_commands(
    sentinel: LocalSentinel, namespace: str, app_user: str
) -> None:
    url = sentinel_url(sentinel, userinfo=app_user)
    async with RedisSessions(url=url, namespace=namespace, wipe=0, cachetime=30) as rs:
        await until(lambda: rs.cache_stats()["subscribed"])
        await exercise(rs)
        assert rs.cache_stats()["flushes"] == 0


# Invalidation between two workers


async def test_a_write_through_one_worker_drops_the_others_entry(
    sentinel: LocalSentinel, namespace: str
) -> None:
    async with (
        store(sentinel, namespace, cachetime=30) as first,
        store(sentinel, namespace, cachetime=30) as second,
    ):
        token = (await first.create(app=APP, id="carol", ip=IP, d={"v": 1}))["token"]
        for rs in (first, second):
            await rs.get(app=APP, token=token)
            assert rs.is_cached(token)
        await first.set(app=APP, token=token, d={"v": 2})
        await until(lambda: not second.is_cached(token))
        session = await second.get(app=APP, token=token)
        assert session is not None and session["d"] == {"v": 2}
        assert second.is_cached(token)
        await second.kill(app=APP, token=token)
        await until(lambda: not first.is_cached(token))
        assert await first.get(app=APP, token=token) is None
        assert second.cache_stats()["invalidations"] >= 1
        assert first.cache_stats()["invalidations"] >= 1


# A graceful switch


async def test_a_graceful_switch_is_a_lost_subscription(
    healed_sentinel: LocalSentinel, namespace: str
) -> None:
    topology = healed_sentinel
    async with (
        store(topology, namespace, cachetime=30, ping_interval=FAST_PING) as rs,
        store(topology, namespace) as writer,
    ):
        token = (await writer.create(app=APP, id="dave", ip=IP, d={"v": 1}))["token"]
        await rs.get(app=APP, token=token)
        assert rs.is_cached(token)
        watch = SubscriptionWatch(rs).start()
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        old = ask_for_failover(topology)
        await wait_all_name_another(topology, old)
        named_at = loop.time()
        new = await asyncio.to_thread(topology.wait_failover, old)
        demoted_at = loop.time()  # and in sync with the new primary
        await watch.wait()
        assert watch.lost_at is not None and watch.back_at is not None
        print(
            f"\n[{topology.kind}] graceful switch {old} -> {new}: every sentinel named it "
            f"{named_at - asked_at:.2f} s after SENTINEL FAILOVER; subscription lost "
            f"{watch.lost_at - named_at:+.2f} s after that, subscribed again "
            f"{watch.back_at - named_at:.2f} s after it; the old primary demoted and in sync "
            f"{demoted_at - named_at:.2f} s after it"
        )
        assert not rs.is_cached(token)
        # Seen by asking the sentinels, while the old primary still kept the connection.
        assert rs.cache_stats()["flush_reasons"] == {"primary_changed": 1}
        await until(lambda: subscribers(topology, rs.layout.channel()) == {old: 0, new: 1})
        # Subscribed on the new primary: what is published there reaches the cache.
        await eventually(lambda: rs.get(app=APP, token=token))
        assert rs.is_cached(token)
        await eventually(lambda: writer.set(app=APP, token=token, d={"v": 2}))
        await until(lambda: not rs.is_cached(token))
        session = await rs.get(app=APP, token=token)
        assert session is not None and session["d"] == {"v": 2}


async def test_the_old_primarys_data_is_not_cached_after_a_graceful_switch(
    healed_sentinel: LocalSentinel, namespace: str
) -> None:
    # After SENTINEL FAILOVER the old primary stays a writable primary until the
    # sentinels turn it into a replica, seconds later, and connections opened before
    # the switch still reach it. A kill made meanwhile on the new primary must not be
    # undone in a cache by a read of the old primary's copy.
    topology = healed_sentinel
    async with (
        store(topology, namespace, cachetime=30, ping_interval=FAST_PING) as rs,
        store(topology, namespace) as writer,
    ):
        token = (await writer.create(app=APP, id="erin", ip=IP))["token"]
        wait_replicas_caught_up(topology)
        await rs.get(app=APP, token=token)
        assert rs.is_cached(token)
        old = ask_for_failover(topology)
        await wait_all_name_another(topology, old)
        # A worker that connects now writes to the new primary.
        async with store(topology, namespace) as late:
            assert await late.kill(app=APP, token=token) == {"kill": 1}
        converted = asyncio.create_task(asyncio.to_thread(topology.wait_failover, old))
        while not converted.done():  # reads meanwhile, through the connections of before
            await eventually(lambda: rs.get(app=APP, token=token))
            await asyncio.sleep(0.05)
        await converted
        await until(lambda: rs.cache_stats()["subscribed"])
        for _ in range(20):
            assert await eventually(lambda: rs.get(app=APP, token=token)) is None
            await asyncio.sleep(0.05)


# Sentinels that stop answering


@contextmanager
def stopped(nodes: list[Node]) -> Iterator[None]:
    """The nodes' processes paused (SIGSTOP): they accept connections, never answer."""
    for node in nodes:
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for node in nodes:
            assert node.process is not None
            os.kill(node.process.pid, signal.SIGCONT)


@pytest.fixture(params=["url", "client"])
async def caching_store(
    request: pytest.FixtureRequest, healed_sentinel: LocalSentinel, namespace: str
) -> AsyncIterator[RedisSessions]:
    """A started store with a cache, from the URL form or from a client passed in whose
    sentinel connections have redis-py's defaults (no timeout)."""
    options: dict[str, Any] = {"cachetime": 30, "ping_interval": FAST_PING}
    if request.param == "url":
        async with store(healed_sentinel, namespace, **options) as rs:
            yield rs
        return
    sentinels = Sentinel(healed_sentinel.sentinels)
    client = sentinels.master_for(healed_sentinel.master_name, decode_responses=True)
    try:
        async with RedisSessions(client, namespace=namespace, wipe=0, **options) as rs:
            yield rs
    finally:
        await client.aclose()
        await sentinels.aclose()


async def test_hung_sentinels_do_not_hold_up_invalidations(
    healed_sentinel: LocalSentinel, caching_store: RedisSessions, namespace: str
) -> None:
    topology, rs = healed_sentinel, caching_store
    async with store(topology, namespace) as writer:
        token = (await writer.create(app=APP, id="frank", ip=IP, d={"v": 1}))["token"]
        await rs.get(app=APP, token=token)
        assert rs.is_cached(token)
        with stopped(list(topology.sentinel_nodes.values())):
            await asyncio.sleep(5 * FAST_PING)  # past a few of the subscriber's checks
            await writer.set(app=APP, token=token, d={"v": 2})
            await until(lambda: not rs.is_cached(token), 10.0)
            session = await rs.get(app=APP, token=token)
            assert session is not None and session["d"] == {"v": 2}
        await until(lambda: rs.cache_stats()["subscribed"])


async def test_one_hung_sentinel_does_not_stop_new_connections(
    healed_sentinel: LocalSentinel, namespace: str
) -> None:
    topology = healed_sentinel
    async with store(topology, namespace) as rs:
        token = (await rs.create(app=APP, id="grace", ip=IP))["token"]
        primary = topology.data_nodes[topology.primary_port()]
        first = next(iter(topology.sentinel_nodes.values()))  # the one asked first
        with stopped([first]):
            # Every connection of the store is gone: the next call needs a new one,
            # and so asks the sentinels where the primary is.
            primary.command("CLIENT", "KILL", "TYPE", "normal")
            assert await eventually(lambda: rs.get(app=APP, token=token)) is not None


# Durable kills


def cut_off(topology: LocalSentinel, replica: int, primary: int) -> Callable[[], None]:
    """Pause a replica and close its replication link, so that nothing the primary does
    from now on reaches it; returns what lets it run again. (Pausing it alone is not
    enough: the kernel would keep receiving the stream for it.)"""
    process = topology.data_nodes[replica].process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    topology.data_nodes[primary].command("CLIENT", "KILL", "TYPE", "replica")
    return lambda: os.kill(process.pid, signal.SIGCONT)


async def test_a_kill_no_replica_has_is_refused_as_durable_and_can_come_back(
    healed_sentinel: LocalSentinel, namespace: str
) -> None:
    # What durable kills prevent: a kill only the primary had is undone by the
    # failover that follows. The durable one says so (NotDurableError, a 503 through
    # the middleware) instead of returning.
    topology = healed_sentinel
    primary = topology.primary_port()
    [replica] = topology.replica_ports()
    async with (
        store(topology, namespace, durable_kills=1, durable_wait=0.5) as durable,
        store(topology, namespace) as plain,
    ):
        refused = (await plain.create(app=APP, id="henry", ip=IP))["token"]
        acknowledged = (await plain.create(app=APP, id="iris", ip=IP))["token"]
        wait_replicas_caught_up(topology)
        resume = cut_off(topology, replica, primary)
        try:
            with pytest.raises(NotDurableError, match="0 of the 1 replicas"):
                await durable.kill(app=APP, token=refused)
            assert await plain.kill(app=APP, token=acknowledged) == {"kill": 1}
            topology.kill_primary()
        finally:
            resume()
        assert await asyncio.to_thread(topology.wait_failover, primary) == replica
        for token in (refused, acknowledged):
            assert await eventually(lambda t=token: plain.get(app=APP, token=t)) is not None


# HTTP traffic through a primary's crash


def build_app(rs: RedisSessions) -> web.Application:
    app = web.Application()
    setup_sessions(app, rs, app_name=APP, cookie_name="sid", secure=False)

    async def whoami(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.json_response({"user": session.user_id})

    async def logout(request: web.Request) -> web.Response:
        await (await get_session(request)).destroy()
        return web.json_response({})

    app.router.add_get("/whoami", whoami)
    app.router.add_post("/logout", logout)
    return app


@dataclass
class Worker:
    name: str
    client: TestClient[Any, Any]
    rs: RedisSessions


@pytest.fixture
async def workers(
    healed_sentinel: LocalSentinel, namespace: str, aiohttp_client: Any
) -> AsyncIterator[list[Worker]]:
    stores = [
        store(healed_sentinel, namespace, cachetime=30, ping_interval=FAST_PING, durable_kills=1)
        for _ in range(2)
    ]
    yield [
        Worker(f"worker {i}", await aiohttp_client(build_app(rs)), rs)
        for i, rs in enumerate(stores)
    ]


async def whoami(worker: Worker, token: str) -> tuple[int, str | None]:
    response = await worker.client.get("/whoami", cookies={"sid": token})
    user = (await response.json())["user"] if response.status == 200 else None
    return response.status, user


async def logout(worker: Worker, token: str) -> int:
    response = await worker.client.post("/logout", cookies={"sid": token})
    return response.status


@dataclass
class Traffic:
    """Reads of every session through every worker in a loop, and what they answered."""

    workers: list[Worker]
    tokens: list[str]
    statuses: Counter[int] = field(default_factory=Counter)
    # Sessions that must be anonymous in every request that starts from now on.
    dead: set[str] = field(default_factory=set)
    stale: list[str] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    failed_at: dict[str, list[float]] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            for token in self.tokens:
                must_be_dead = token in self.dead
                status, user = await whoami(worker, token)
                self.statuses[status] += 1
                if status != 200:
                    self.failures[worker.name] += 1
                    self.failed_at.setdefault(worker.name, []).append(loop.time())
                elif must_be_dead and user is not None:
                    self.stale.append(f"{token} served as {user} by {worker.name}")


async def test_a_primary_crash_under_http_traffic(
    healed_sentinel: LocalSentinel, workers: list[Worker], namespace: str
) -> None:
    topology = healed_sentinel
    async with store(topology, namespace) as admin:
        tokens = [(await admin.create(app=APP, id=f"u{i}", ip=IP))["token"] for i in range(30)]
    for worker in workers:  # both workers cache every session
        for i, token in enumerate(tokens):
            assert await whoami(worker, token) == (200, f"u{i}")
    early, late = tokens[0], tokens[1]
    traffic = Traffic(workers, tokens)
    tasks = [asyncio.create_task(traffic.run(worker)) for worker in workers]
    watches = [SubscriptionWatch(worker.rs).start() for worker in workers]
    loop = asyncio.get_running_loop()
    await until(lambda: traffic.statuses[200] > 2 * len(tokens))
    # Just before the crash, a logout acknowledged by the replica: the failover that
    # follows cannot undo it.
    assert await logout(workers[1], early) == 200
    await until(lambda: not any(worker.rs.is_cached(early) for worker in workers))
    traffic.dead.add(early)
    crashed_at = loop.time()
    old = topology.kill_primary()
    await wait_all_name_another(topology, old)
    named_at = loop.time()
    new = await asyncio.to_thread(topology.wait_failover, old)
    for watch in watches:
        await watch.wait()
    # The new primary has no replica until the old node is back: until then a durable
    # logout is refused (503), and the user clicks again.
    assert await logout(workers[0], late) == 503
    restart = asyncio.create_task(asyncio.to_thread(topology.restart_old_primary, old))
    refused = 1
    for _ in range(1200):
        status = await logout(workers[0], late)
        if status == 200:
            break
        assert status == 503
        refused += 1
        await asyncio.sleep(0.05)
    assert status == 200
    traffic.dead.add(late)
    await restart
    before = traffic.statuses[200]
    await until(lambda: traffic.statuses[200] > before + 4 * len(tokens))
    traffic.stop.set()
    await asyncio.gather(*tasks)

    print(
        f"\n[{topology.kind}] primary {old} killed; every sentinel named {new} "
        f"{named_at - crashed_at:.2f} s after; the late logout was refused {refused} times"
    )
    for worker, watch in zip(workers, watches, strict=True):
        assert watch.lost_at is not None and watch.back_at is not None
        failed = traffic.failed_at.get(worker.name, [crashed_at])
        print(
            f"  {worker.name}: subscription lost {watch.lost_at - crashed_at:.2f} s after the "
            f"kill, subscribed again {watch.back_at - crashed_at:.2f} s after it; "
            f"{traffic.failures[worker.name]} requests answered 503, from "
            f"{failed[0] - crashed_at:.2f} s to {failed[-1] - crashed_at:.2f} s after the kill; "
            f"flushes {worker.rs.cache_stats()['flush_reasons']}"
        )
    assert traffic.stale == []
    assert set(traffic.statuses) <= {200, 503}
    for worker in workers:
        reasons = worker.rs.cache_stats()["flush_reasons"]
        assert set(reasons) <= PRIMARY_LOSS_REASONS and sum(reasons.values()) >= 1
        for token in tokens:  # every request works again, and both logouts held
            status, user = await whoami(worker, token)
            assert status == 200
            assert (user is None) == (token in (early, late))
