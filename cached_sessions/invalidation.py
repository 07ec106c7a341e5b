"""The subscriber: hears invalidations on pub/sub and guards the cache.

Pub/sub is at most once: whatever is published while a connection is down is gone.
So any sign that messages may have been missed (an error, a reconnect, a PING that
gets no PONG in time, a channel the server unsubscribed, a primary that changed) empties
the cache and bypasses it until every subscription is confirmed again.

Where to listen depends on the deployment (`routes_for`):

* one Redis: one connection, `SUBSCRIBE` to the namespace's channel;
* Sentinel: the same, on the primary the sentinels name; every ping interval the
  subscriber asks them again, beside the listener and within the ping timeout, and a
  new primary (or no answer) counts as a loss. After a graceful switch the old primary
  stays a writable primary until the sentinels demote it, and the data connections
  opened before the switch still reach it: the subscription counts as confirmed only
  once no node the sentinels list as a replica answers as a primary, so that nothing
  read from the old one is cached while only the new one is heard;
* Redis Cluster: one connection per primary, `SSUBSCRIBE` to each bucket channel it
  owns. The server unsubscribes a shard channel whose slot moves away or whose node is
  demoted, and a dead primary breaks its connection: each is a loss, after which the
  slot map is read again. Each node is also asked, before it is trusted and every ping
  interval after, whether it is a primary that owns its buckets' slots with none of them
  migrating: while one migrates, writes sent on by ASK run on the importing node and
  publish there, so the cache is bypassed until the move ends. redis-py's
  `ClusterPubSub` is not used: it moves shard subscriptions to their new node by
  itself, so the messages published meanwhile are missed with no sign, which the
  never-stale rule cannot allow.

redis-py would reconnect and resubscribe silently; these connections have no retries,
so every loss surfaces, and a second confirmation of one channel counts as a loss too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from .cache import SessionCache
from .errors import ConfigurationError
from .keys import ClusterLayout, Layout

__all__ = ["Route", "Subscriber", "routes_for"]

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 1.0
CLEANUP_TIMEOUT = 5.0  # a listener that ignores its cancel is logged, not waited for
# Finding where to listen takes a few round trips; a server that accepts connections
# but never answers must not keep the subscriber from trying again.
ROUTES_TIMEOUT = 5.0
# What a pub/sub connection keeps of the data client's settings: where and who.
_CONNECTION_SETTINGS = (
    "host", "port", "path", "db", "username", "password", "credential_provider",
    "client_name", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data",
    "ssl_check_hostname", "ssl_min_version", "ssl_ciphers", "ssl_include_verify_flags",
    "ssl_exclude_verify_flags",
)  # fmt: skip


class _Lost(Exception):
    """A subscription ended; the cache was already told. Carries whether it had been
    confirmed, which resets the retry delay."""

    def __init__(self, was_subscribed: bool) -> None:
        super().__init__()
        self.was_subscribed = was_subscribed


def _loss_reason(error: BaseException) -> tuple[str, BaseException | None]:
    """The flush reason for what ended a subscription, and the error to log."""
    if isinstance(error, SubscriptionLost):
        return error.reason, None
    if isinstance(error, ConnectionError | TimeoutError | OSError):
        return "connection_error", error
    return "error", error


class SubscriptionLost(Exception):
    """Messages may have been missed; `reason` names the flush in the cache stats."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Route:
    """One pub/sub connection: the client it uses, and the channels it listens to.

    `still_current`, when given, is asked before the route is trusted and every ping
    interval after whether the server is still the one to listen to (Sentinel: still
    the primary; Cluster: still the settled owner of its slots); an error or no answer
    within the ping timeout counts as "no", and "no" is a loss named `changed`.
    """

    client: Redis
    channels: list[str]
    name: str
    still_current: Callable[[], Awaitable[bool]] | None = field(default=None, repr=False)
    changed: str = "primary_changed"


RouteSource = Callable[[], Awaitable[list[Route]]]


ConnectionClass = type[Connection] | type[UnixDomainSocketConnection]


def _plain_client(settings: dict[str, Any], connection_class: ConnectionClass) -> Redis:
    """A client for a pub/sub connection: same server and credentials, no retries."""
    kept = {key: value for key, value in settings.items() if key in _CONNECTION_SETTINGS}
    if connection_class is UnixDomainSocketConnection:
        kept.pop("host", None)
        kept.pop("port", None)
    pool = ConnectionPool(
        connection_class=connection_class,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        decode_responses=True,
        **kept,
    )
    return Redis(connection_pool=pool)


def _plain_class(connection_class: type[Any]) -> ConnectionClass:
    # Sentinel's managed connections ask the sentinels where to go; a subscriber
    # connects to the address it was given, over the same transport.
    if issubclass(connection_class, SSLConnection):
        return SSLConnection
    if issubclass(connection_class, UnixDomainSocketConnection):
        return UnixDomainSocketConnection
    return Connection


def routes_for(client: Redis | RedisCluster, layout: Layout) -> RouteSource:
    """Where this deployment's invalidations are heard (see the module docstring)."""
    if isinstance(client, RedisCluster):
        if not isinstance(layout, ClusterLayout):
            raise ConfigurationError("a RedisCluster client needs the cluster layout")
        return partial(_cluster_routes, client, layout)
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return partial(_sentinel_routes, pool, layout.channel())
    return partial(_standalone_routes, pool, layout.channel())


async def _standalone_routes(pool: ConnectionPool, channel: str) -> list[Route]:
    client = _plain_client(pool.connection_kwargs, _plain_class(pool.connection_class))
    return [Route(client, [channel], "redis")]


async def _sentinel_routes(pool: SentinelConnectionPool, channel: str) -> list[Route]:
    sentinels, service = pool.sentinel_manager, pool.service_name
    address = tuple(await sentinels.discover_master(service))
    host, port = address
    for replica in await sentinels.discover_slaves(service):
        if tuple(replica) != address and await _answers_as_primary(pool, *replica):
            # A demoted primary the sentinels have not turned into a replica yet: the
            # data connections of before may still read it, and what is written there
            # is published there, unheard. Not confirmed until it is demoted.
            raise SubscriptionLost("old_primary_alive")
    client = _plain_client(
        {**pool.connection_kwargs, "host": host, "port": port}, _plain_class(pool.connection_class)
    )

    async def still_primary() -> bool:
        return tuple(await sentinels.discover_master(service)) == address

    return [Route(client, [channel], f"primary {host}:{port}", still_primary)]


async def _answers_as_primary(pool: SentinelConnectionPool, host: str, port: int) -> bool:
    """Whether the node at host:port says it is a primary. One that refuses a connection
    is taken for gone (dead, or still starting): the data connections fail there too.

    Asked with HELLO (no arguments: the protocol stays as it is), which every user may
    run; ROLE and INFO are admin commands that an application's ACL user often lacks.
    """
    settings = {**pool.connection_kwargs, "host": host, "port": port}
    client = _plain_client(settings, _plain_class(pool.connection_class))
    try:
        reply = await client.execute_command("HELLO")  # type: ignore[no-untyped-call]
    except (ConnectionError, OSError):
        return False
    finally:
        await client.aclose(close_connection_pool=True)
    fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    return {_text(key): _text(value) for key, value in fields.items()}.get("role") == "master"


async def _cluster_routes(cluster: RedisCluster, layout: ClusterLayout) -> list[Route]:
    # Read the slot map afresh: after a failover the client's own map may be stale
    # until a command of its own meets a MOVED.
    slots: Any = await cluster.cluster_slots(target_nodes=RedisCluster.RANDOM)
    by_node: dict[tuple[str, int], list[int]] = {}
    for bucket in range(layout.buckets):
        slot = layout.slot(bucket)
        owner = next(
            (info["primary"] for (low, high), info in slots.items() if low <= slot <= high), None
        )
        if owner is None:
            raise SubscriptionLost("slot_not_covered")
        by_node.setdefault((str(owner[0]), int(owner[1])), []).append(bucket)
    settings = cluster.get_connection_kwargs()
    connection_class = _plain_class(settings.get("connection_class") or Connection)
    routes = []
    for (host, port), buckets in sorted(by_node.items()):
        client = _plain_client({**settings, "host": host, "port": port}, connection_class)
        owned = {layout.slot(bucket) for bucket in buckets}
        routes.append(
            Route(
                client,
                [layout.channel(bucket) for bucket in buckets],
                f"primary {host}:{port}",
                partial(_owns_settled, client, owned),
                changed="slots_changed",
            )
        )
    return routes


async def _owns_settled(client: Redis, slots: set[int]) -> bool:
    """Whether the node, asked itself, is a primary that owns these slots, none of them
    migrating. Asked before a route is trusted (the map came from any node, maybe a
    stale one) and every ping interval after: while a slot migrates, writes sent on by
    ASK run on the importing node and publish there, where this route does not listen.
    """
    text = await client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
    myself = next((line for line in _text(text).splitlines() if "myself" in line.split()[2]), "")
    fields = myself.split()
    if len(fields) < 8 or "master" not in fields[2].split(","):
        return False
    owned: set[int] = set()
    for entry in fields[8:]:
        if entry.startswith("["):
            if int(entry[1:].split("-", 1)[0]) in slots:
                return False  # [slot->-target] or [slot-<-source]: on the move
            continue
        low, _, high = entry.partition("-")
        owned.update(range(int(low), int(high or low) + 1))
    return slots <= owned


class Subscriber:
    """Runs as one named background task per store; see the module docstring."""

    def __init__(
        self,
        routes: RouteSource,
        cache: SessionCache,
        *,
        sharded: bool,
        ping_interval: float,
        ping_timeout: float,
    ) -> None:
        self._routes = routes
        self._cache = cache
        self._sharded = sharded
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self.confirmed = asyncio.Event()

    async def run(self) -> None:
        delay = 0.02
        try:
            while True:
                if await self._subscription():
                    delay = 0.02
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
        finally:
            self._cache.lost("closed")

    async def _subscription(self) -> bool:
        """One subscription, from finding its routes to its loss; returns whether it had
        been confirmed. The loss flushes the cache at once, before the connections are
        closed: nothing a slow close does may leave the cache trusted meanwhile."""
        try:
            await self._listen_everywhere()
        except asyncio.CancelledError:
            raise
        except _Lost as lost:
            return lost.was_subscribed
        except Exception as error:  # raised before any listener ran
            raise_if_cancelling()
            return self._lose(*_loss_reason(error))
        return False

    def _lose(self, reason: str, error: BaseException | None = None) -> bool:
        was_subscribed = self.confirmed.is_set()
        self.confirmed.clear()
        if was_subscribed:
            log.warning(
                "session cache subscription lost (%s%s); cache flushed", reason, _detail(error)
            )
            self._cache.lost(reason)
        else:
            log.debug("session cache subscription not established (%s%s)", reason, _detail(error))
        return was_subscribed

    async def _listen_everywhere(self) -> None:
        """Listen on every route at once; returns only by raising the first loss."""
        async with asyncio.timeout(ROUTES_TIMEOUT):
            routes = await self._routes()
            try:
                for route in routes:
                    if route.still_current is not None and not await route.still_current():
                        raise SubscriptionLost(route.changed)
            except BaseException:
                for route in routes:
                    await route.client.aclose(close_connection_pool=True)
                raise
        unconfirmed = {route.name for route in routes}

        def on_confirmed(route: Route) -> None:
            unconfirmed.discard(route.name)
            if not unconfirmed:
                self._cache.confirmed()
                self.confirmed.set()
                log.info("session cache subscribed (%s)", ", ".join(r.name for r in routes))

        tasks = [
            asyncio.create_task(
                self._listen(route, on_confirmed), name=f"cached-sessions listener ({route.name})"
            )
            for route in routes
        ]
        tasks += [
            asyncio.create_task(
                self._watch(route), name=f"cached-sessions route check ({route.name})"
            )
            for route in routes
            if route.still_current is not None
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            error = next(iter(done)).exception() or SubscriptionLost("error")
            raise _Lost(self._lose(*_loss_reason(error)))  # before the cleanup below
        finally:
            for task in tasks:
                task.cancel()
            _, stuck = await asyncio.wait(tasks, timeout=CLEANUP_TIMEOUT)
            for task in stuck:
                log.error("%s did not stop within %s s", task.get_name(), CLEANUP_TIMEOUT)
            for route in routes:
                await route.client.aclose(close_connection_pool=True)

    async def _listen(self, route: Route, on_confirmed: Callable[[Route], None]) -> None:
        loop = asyncio.get_running_loop()
        async with route.client.pubsub() as pubsub:
            await self._subscribe(pubsub, route.channels)
            pending = set(route.channels)
            last_ping = loop.time()
            ping_sent: float | None = None
            while True:
                # Raw replies: redis-py's message parsing misreads a PONG as a message.
                reply = await pubsub.parse_response(block=False, timeout=self._ping_interval)
                now = loop.time()
                if isinstance(reply, str | bytes):
                    ping_sent = None  # the only plain reply here answers our PING
                elif reply is not None:
                    kind = _text(reply[0]).lower()
                    if kind in ("message", "smessage"):
                        self._invalidate(_text(reply[2]))
                    elif kind == "pong":
                        ping_sent = None
                    elif kind in ("subscribe", "ssubscribe") and _text(reply[1]) in pending:
                        pending.discard(_text(reply[1]))
                        if not pending:
                            on_confirmed(route)
                    elif kind in ("subscribe", "ssubscribe"):
                        raise SubscriptionLost("reconnect")
                    else:
                        raise SubscriptionLost("unsubscribed" if "unsubscribe" in kind else "error")
                if ping_sent is not None and now - ping_sent > self._ping_timeout:
                    raise SubscriptionLost("missed_pong")
                if ping_sent is None and now - last_ping >= self._ping_interval:
                    await pubsub.ping()
                    ping_sent = last_ping = now

    async def _watch(self, route: Route) -> None:
        """Ask every ping interval whether the route still leads where to listen.

        A task of its own, beside the listener: while the answer is awaited, the
        invalidations keep being heard. No answer within the ping timeout is a loss
        too, since a switch may be under way unseen.
        """
        assert route.still_current is not None
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                async with asyncio.timeout(self._ping_timeout):
                    current = await route.still_current()
            except (ConnectionError, TimeoutError, OSError) as error:  # OSError: the timeout's
                raise_if_cancelling()
                raise SubscriptionLost("primary_unknown") from error
            if not current:
                raise SubscriptionLost(route.changed)

    async def _subscribe(self, pubsub: Any, channels: Sequence[str]) -> None:
        if not self._sharded:
            await pubsub.subscribe(*channels)
            return
        # One SSUBSCRIBE per channel: the server refuses channels of several slots in one.
        for channel in channels:
            await pubsub.ssubscribe(channel)

    def _invalidate(self, data: str) -> None:
        app, sep, token = data.partition(":")
        if sep:
            self._cache.invalidate(app, token)
        else:
            # Which session it meant is unknown, so none of them can be trusted.
            log.warning("malformed invalidation message; cache flushed")
            self._cache.flush("malformed_message")


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a timeout turned into TimeoutError.

    On Python 3.11 a cancel that races with a read timeout inside the client can come
    out as TimeoutError; a loop that catches it and goes on would never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _detail(error: BaseException | None) -> str:
    return f": {error}" if error is not None else ""
