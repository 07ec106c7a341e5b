"""`RedisSessions`: the public async API of the session store.

Every operation validates its input, then makes exactly one script call (killall and
the wipe make one per batch), so each one applies all of its keys or none. The layout
and the scripts speak redis-sessions 4.x, so a Node service can share the sessions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .cache import SessionCache
from .connect import check_url, connect, is_cluster_url, redacted_url
from .embedded import EmbeddedServer
from .errors import (
    ConfigurationError,
    IncompleteKillError,
    InvalidFormatError,
    InvalidValueError,
    MissingParameterError,
    SessionsClosedError,
    StoredDataError,
    UnreachableSinceStartError,
    UsageError,
)
from .invalidation import Subscriber, raise_if_cancelling, routes_for
from .keys import DEFAULT_BUCKETS, ClusterLayout, KeyLayout, Layout, check_buckets, touched_keys
from .model import (
    EXPIRED,
    FOUND,
    MISSING,
    Device,
    Fetched,
    SessionDict,
    device_from_reply,
    session_from_reply,
)
from .scripts import Client, Durability, Scripts
from .slots import ConnectionSlots
from .touch import TouchFlusher
from .validation import (
    ANONYMOUS_ID,
    MAX_DATA_BYTES,
    MAX_DATA_KEYS,
    MAX_TTL,
    MIN_TTL,
    DataPatch,
    dump_value,
    encode_create_data,
    encode_data_patch,
    is_int,
    validate_app,
    validate_data_item,
    validate_delta_time,
    validate_id,
    validate_ip,
    validate_no_resave,
    validate_token,
    validate_ttl,
    validate_user_agent,
)

__all__ = ["DEFAULT_ANONYMOUS_TTL", "Device", "RedisSessions", "SessionDict"]

log = logging.getLogger(__name__)

MIN_WIPE_INTERVAL = 10
DEFAULT_BATCH = 100
# What one call of a batched script (killall, kill_by, the wipe) may spend, in bytes of
# `d` read (lua/_lib.lua counts a removal and a parse as fixed amounts too): at most a
# few milliseconds of Redis time, whatever the sessions hold and whatever `batch` says.
WORK_BUDGET = 1024 * 1024
DEFAULT_TOUCH_INTERVAL = 2.0
DEFAULT_PING_INTERVAL = 1.0
MIN_PING_TIMEOUT = 0.5
TOUCH_MARGIN = 1.0
CLOSE_FLUSH_TIMEOUT = 2.0
CLOSE_TASK_TIMEOUT = 5.0
# How long a session that belongs to no user (data kept before login) lives idle.
DEFAULT_ANONYMOUS_TTL = 1800
_HANDLE = re.compile(r"[0-9a-f]{32}")
STARTUP_RETRY_INTERVAL = 1.0
# What connecting to a server that is not there raises (a cluster: its own class).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError)


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        raise ConfigurationError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} number of seconds"
        )
    return float(value)  # type: ignore[arg-type]


def _durability(replicas: object, wait: object, redis_timeout: float) -> Durability | None:
    if not is_int(replicas) or replicas < 0:
        raise ConfigurationError("durable_kills must be 0 (off) or a number of replicas")
    seconds = _seconds("durable_wait", wait)
    if not replicas:
        return None
    if seconds >= redis_timeout:
        raise ConfigurationError("durable_wait must be shorter than redis_timeout")
    return Durability(replicas, seconds)


async def _close_with_sentinels(client: Redis) -> None:
    """Close a client this store made; one from a Sentinel URL owns its sentinels too."""
    pool = client.connection_pool
    await client.aclose(close_connection_pool=True)
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose(close_connection_pool=True)


def _max_lifetime(value: object) -> int:
    if not is_int(value) or value < 0:
        raise ConfigurationError("max_lifetime must be 0 (off) or a number of seconds (an int)")
    if value and not MIN_TTL <= value <= MAX_TTL:
        raise ConfigurationError(f"max_lifetime must be from {MIN_TTL} to {MAX_TTL} seconds, or 0")
    return value


def _validate_handle(handle: object) -> str:
    if not isinstance(handle, str) or _HANDLE.fullmatch(handle) is None:
        raise InvalidFormatError("Invalid device handle format")
    return handle


def _patch_or_empty(d: dict[str, Any] | None) -> DataPatch:
    return encode_data_patch(d) if d else []


def _raw_values(d: dict[str, Any]) -> dict[str, str]:
    return {key: dump_value(value) for key, value in d.items() if value is not None}


def _raise_first(results: list[Any]) -> list[Any]:
    """The results of a fan-out, or the first error among them."""
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


class RedisSessions:
    """Sessions in Redis under the redis-sessions 4.x data model.

    The Redis connection comes from `redis` (a client the caller owns and closes: a
    `Redis`, a Sentinel's `master_for(...)`, or a `RedisCluster`), else `url`, else the
    `REDIS_URL` environment variable (see connect.py for the cluster and Sentinel
    forms), else an embedded Valkey server this object starts on first use and stops on
    `aclose()`. On a cluster the keys follow the cluster layout (keys.py): every app
    spreads over `buckets` hash slots, a number all processes must share.

    With `durable_kills=n`, every kill (kill, killsoid, killall, kill_by) returns only
    once `n` replicas have it, or raises NotDurableError after `durable_wait` seconds,
    so that no failover brings a killed session back.

    With `max_lifetime=n` (seconds; 0, the default, is off) every session ends `n`
    seconds after its creation however active it is (an absolute timeout besides the
    idle `ttl`); the cache never serves one past that point.

    `clock` returns unix seconds; every operation reads it once. All processes that
    share a Redis must agree on the time (NTP), as with redis-sessions.

    With `cachetime > 0`, `get` reads through a local cache of at most `cachemax`
    sessions, each kept at most `cachetime` seconds, and dropped as soon as any process
    writes or kills it (see cache.py for the exact rules). Reads served from the cache
    are written back every `touch_interval` seconds; `ping_interval` is how often the
    subscriber checks its connection. `timer` is the cache's monotonic clock.

    At most `max_connections` calls to Redis are in flight at once (so at most that
    many connections, plus one for the subscriber), and each call fails after
    `redis_timeout` seconds, the wait for a free connection included. With
    `auto_pipeline`, the script calls that concurrent requests make in one turn of the
    event loop go out as one pipeline on one connection (pipelining.py); a cluster
    client keeps direct calls.
    """

    def __init__(
        self,
        redis: Client | None = None,
        *,
        url: str | None = None,
        namespace: str = "rs",
        wipe: int = 600,
        cachetime: float = 0,
        cachemax: int = 5000,
        clock: Callable[[], float] = time.time,
        batch: int = DEFAULT_BATCH,
        max_connections: int = 64,
        redis_timeout: float = 5.0,
        touch_interval: float = DEFAULT_TOUCH_INTERVAL,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        timer: Callable[[], float] = time.monotonic,
        references: Sequence[str] = (),
        buckets: int = DEFAULT_BUCKETS,
        durable_kills: int = 0,
        durable_wait: float = 1.0,
        max_lifetime: int = 0,
        auto_pipeline: bool = True,
    ) -> None:
        if redis is not None and url is not None:
            raise ConfigurationError("pass either redis= or url=, not both")
        if not is_int(wipe) or wipe < 0:
            raise ConfigurationError("wipe must be 0 (off) or a number of seconds")
        cachetime = _seconds("cachetime", cachetime, allow_zero=True)
        touch_interval = _seconds("touch_interval", touch_interval)
        self._ping_interval = _seconds("ping_interval", ping_interval)
        if touch_interval > MIN_TTL / 2:
            raise ConfigurationError(
                f"touch_interval must be at most {MIN_TTL / 2} s (half the shortest ttl)"
            )
        if not is_int(cachemax) or cachemax < 1:
            raise ConfigurationError("cachemax must be a positive integer")
        if not isinstance(batch, int) or batch < 1:
            raise ConfigurationError("batch must be a positive integer")
        if not isinstance(auto_pipeline, bool):
            raise ConfigurationError("auto_pipeline must be True or False")
        self._auto_pipeline = auto_pipeline
        self._given = redis
        self._url = url if url is not None else os.environ.get("REDIS_URL") or None
        if self._url is not None:
            check_url(self._url)
        check_buckets(buckets)
        on_cluster = isinstance(redis, RedisCluster) or (
            self._url is not None and is_cluster_url(self._url)
        )
        self._layout: Layout = (
            ClusterLayout(namespace, buckets) if on_cluster else KeyLayout(namespace)
        )
        self._clock = clock
        self._max_lifetime = _max_lifetime(max_lifetime)
        self._batch = batch
        # Every call of this store holds a slot and a deadline (slots.py).
        self._slots = ConnectionSlots(max_connections, _seconds("redis_timeout", redis_timeout))
        self._durability = _durability(durable_kills, durable_wait, self._slots.timeout)
        self._wipe_interval = 0 if wipe == 0 else max(wipe, MIN_WIPE_INTERVAL)
        self._redis: Client | None = None
        self._scripts: Scripts | None = None
        self._embedded: EmbeddedServer | None = None
        self._touch_interval = touch_interval
        self._references: tuple[str, ...] = ()
        self.index_references(references)
        self._cache: SessionCache | None = None
        if cachetime > 0:
            # A hit needs the touch interval plus a margin of Redis-side life left,
            # so that the touch lands before Redis could see the session expire.
            guard = touch_interval + TOUCH_MARGIN
            self._cache = SessionCache(maxsize=cachemax, ttl=cachetime, guard=guard, timer=timer)
        self._subscriber: Subscriber | None = None
        self._flusher: TouchFlusher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._unreachable: str | None = None  # why, while retrying since start-up

    def __repr__(self) -> str:
        return f"RedisSessions(namespace={self._layout.namespace!r}, server={self.server!r})"

    @property
    def server(self) -> str:
        """Which server this store uses, fit for a log line (credentials masked)."""
        if self._given is not None:
            return "a client passed in"
        if self._url is not None:
            return redacted_url(self._url)
        if self._embedded is not None and self._embedded.running:
            return f"embedded {self._embedded.url}"
        return "embedded (not started)"

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def max_lifetime(self) -> int:
        """Seconds after creation when every session ends (0: no absolute end)."""
        return self._max_lifetime

    @property
    def redis(self) -> Client:
        """The client in use; for tests and tools that need to look at Redis directly."""
        if self._redis is None:
            raise UsageError("not started: call `await start()` or use `async with`")
        return self._redis

    # Lifecycle

    async def start(self, subscribe_timeout: float = 2.0) -> RedisSessions:
        """Connect (starting the embedded server when needed) and start the tasks.

        Operations call this on first use, so calling it is optional; doing it at
        startup moves the connection cost (and its errors) out of the first request,
        and waits up to `subscribe_timeout` for the cache's subscription, so the
        cache serves from the first request on.
        """
        await self._ready()
        if self._subscriber is not None:
            try:
                await asyncio.wait_for(self._subscriber.confirmed.wait(), subscribe_timeout)
            except TimeoutError:
                log.warning("cache subscription not confirmed yet; reading from Redis meanwhile")
        return self

    async def start_or_keep_trying(self, retry_interval: float = STARTUP_RETRY_INTERVAL) -> bool:
        """Start now if Redis answers, else keep trying in the background; True if started.

        The failure policy at start-up: an app whose Redis is not there yet starts
        anyway, and recovers by itself once Redis answers, rather than dying (a
        restart would not make Redis come sooner). One warning says which server, what
        error, and that this store keeps trying; meanwhile every operation fails at
        once with redis-py's ConnectionError (the middleware answers 503 then), rather
        than each waiting on its own connection attempt.
        """
        try:
            await self.start()
        except UNREACHABLE as error:
            self._unreachable = f"session store {self.server} unreachable since start-up ({error})"
            log.warning(
                "%s; retrying every %g s in the background, failing calls meanwhile",
                self._unreachable, retry_interval,
            )  # fmt: skip
            self._spawn(self._keep_trying(retry_interval), "cached-sessions start-up retry")
            return False
        return True

    async def _keep_trying(self, interval: float) -> None:
        began = time.monotonic()
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                await self._start_now()
            except UNREACHABLE:
                continue
            except SessionsClosedError:
                return
            self._unreachable = None
            log.warning(
                "session store %s reachable after %.0f s: serving sessions",
                self.server, time.monotonic() - began,
            )  # fmt: skip
            return

    async def __aenter__(self) -> RedisSessions:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write pending touches, stop the tasks, close what this object opened.

        Safe to call twice.
        """
        if self._flusher is not None and not self._closed:
            try:
                await asyncio.wait_for(self._flusher.flush(), CLOSE_FLUSH_TIMEOUT)
            except Exception as error:
                log.warning("could not write the last cached reads on close (%s)", error)
        self._closed = True
        # A first use may be starting the store right now: let it finish, so that
        # nothing it starts is left running (it sees `_closed` and stops short after).
        async with self._start_lock:
            scripts, self._scripts = self._scripts, None
        if scripts is not None and scripts.auto is not None:
            await scripts.auto.aclose(CLOSE_TASK_TIMEOUT)
        if self._cache is not None:
            await self._cache.aclose()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_TASK_TIMEOUT)
            for task in stuck:
                log.error("task %r did not stop within %s s", task.get_name(), CLOSE_TASK_TIMEOUT)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("task %r had failed: %s", task.get_name(), task.exception())
        client, self._redis = self._redis, None
        if client is None or client is self._given:
            pass
        elif isinstance(client, RedisCluster):
            await client.aclose()
        else:
            await _close_with_sentinels(client)
        embedded, self._embedded = self._embedded, None
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)

    async def _ready(self) -> Scripts:
        scripts = self._scripts
        if scripts is not None:
            return scripts
        if self._unreachable is not None:  # the start-up retry owns connecting
            raise UnreachableSinceStartError(self._unreachable)
        return await self._start_now()

    async def _start_now(self) -> Scripts:
        async with self._start_lock:
            if self._closed:
                raise SessionsClosedError()
            if self._scripts is None:
                if self._redis is None:  # once: a failed preload retries on this client
                    self._redis = self._given or await self._connect()
                client = self._redis
                scripts = Scripts.bind(
                    client, self._layout, self._slots, self._references, self._max_lifetime,
                    auto_pipeline=self._auto_pipeline,
                )  # fmt: skip
                await scripts.preload()
                self._start_tasks(client, scripts)
                self._scripts = scripts
            return self._scripts

    def _start_tasks(self, client: Client, scripts: Scripts) -> None:
        namespace = self._layout.namespace
        if self._wipe_interval:
            self._spawn(self._wipe_loop(), f"cached-sessions wipe ({namespace})")
        cache = self._cache
        if cache is None:
            return
        self._subscriber = Subscriber(
            routes_for(client, self._layout),
            cache,
            sharded=self._layout.cluster,
            ping_interval=self._ping_interval,
            ping_timeout=max(self._ping_interval, MIN_PING_TIMEOUT),
        )
        self._spawn(self._subscriber.run(), f"cached-sessions subscriber ({namespace})")
        self._flusher = TouchFlusher(
            scripts, self._layout, cache, interval=self._touch_interval, clock=self._clock
        )
        self._spawn(self._flusher.run(), f"cached-sessions touches ({namespace})")

    def index_references(self, fields: Sequence[str]) -> None:
        """Index sessions by these data keys, so `kill_by` can find them.

        Must be called before the store starts: every process that writes sessions
        must index the same fields.
        """
        if isinstance(fields, str):
            raise ConfigurationError("references must be a list of data keys, not one string")
        for field in fields:
            validate_data_item(field, "")
        wanted = tuple(dict.fromkeys((*self._references, *fields)))
        if wanted != self._references and self._scripts is not None:
            raise UsageError("references must be set before the store starts")
        self._references = wanted

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    async def _connect(self) -> Client:
        url = self._url
        if url is None:
            self._embedded = EmbeddedServer()
            url = await asyncio.to_thread(self._embedded.start)
            log.info("no redis= or url= given and REDIS_URL unset: using an embedded server")
        # Bounded waits everywhere: a paused or unreachable server fails a request
        # in seconds (the middleware answers 503) instead of hanging it. Each call's
        # deadline is the slots' (see slots.py); connecting has one of its own.
        return connect(url, connect_timeout=self._slots.timeout)

    def _now(self) -> int:
        return int(self._clock())

    # Operations

    async def create(
        self,
        *,
        app: str,
        id: str,
        ip: str,
        ttl: int = 7200,
        d: dict[str, Any] | None = None,
        no_resave: bool = False,
        user_agent: str = "",
    ) -> dict[str, str]:
        """Create a session for `id`; returns `{"token": ...}`. `user_agent` (at most
        MAX_USER_AGENT_LENGTH characters) is recorded for the user's device list."""
        app, id, ip = validate_app(app), validate_id(id), validate_ip(ip)
        ttl = validate_ttl(ttl)
        data = encode_create_data(d)
        flag = "1" if validate_no_resave(no_resave) else ""
        ua = validate_user_agent(user_agent)
        return {"token": await self._create(app, id, ip, ttl, data, flag, ua, d)}

    async def create_anonymous(
        self,
        *,
        app: str,
        ip: str,
        d: dict[str, Any],
        ttl: int = DEFAULT_ANONYMOUS_TTL,
        user_agent: str = "",
    ) -> dict[str, str]:
        """Create a session that belongs to no user, holding `d` (a visitor's data
        before login: the page to return to, a cart, a flash message); returns
        `{"token": ...}`.

        It is in no user's sessions: `soid`, `soapp`, `activity`, `killsoid` and
        `devices` never see it; `kill`, `killall` and the wipe remove it, and
        `upgrade` turns it into a user's session, its data kept. Node's redis-sessions
        reads it as a session of the id ANONYMOUS_ID.
        """
        app, ip = validate_app(app), validate_ip(ip)
        ttl = validate_ttl(ttl)
        data = encode_create_data(d)
        if not data:
            raise MissingParameterError("an anonymous session holds data: d must have a value")
        ua = validate_user_agent(user_agent)
        return {"token": await self._create(app, ANONYMOUS_ID, ip, ttl, data, "", ua, d)}

    async def _create(
        self,
        app: str,
        id: str,
        ip: str,
        ttl: int,
        data: str,
        flag: str,
        ua: str,
        d: dict[str, Any] | None,
    ) -> str:
        scripts = await self._ready()
        layout = self._layout
        anonymous = id == ANONYMOUS_ID
        # An anonymous session has no user to place it: any bucket, to spread them.
        bucket = secrets.randbelow(layout.buckets) if anonymous else layout.bucket_of_id(id)
        while True:
            token = layout.new_token(bucket)
            keys = [
                layout.session(app, token),
                layout.app_sessions(app, bucket),
                layout.app_users(app, bucket),
            ]
            if not anonymous:
                keys.append(layout.user_tokens(app, id))
            keys.append(layout.expiry_index(bucket))
            args = [self._now(), app, token, id, ip, ttl, data, flag, ua]
            if layout.strict and data:
                keys += self._reference_keys(app, token, _raw_values(d or {}))
            # 0 only if the token already exists: draw another rather than overwrite.
            if await scripts.run("create", keys, args):
                return token

    async def upgrade(
        self,
        *,
        app: str,
        token: str | None,
        id: str,
        ip: str,
        ttl: int = 7200,
        d: dict[str, Any] | None = None,
        keep: bool = True,
        no_resave: bool = False,
        user_agent: str = "",
    ) -> dict[str, Any]:
        """Log in: a new session for `id` replaces the session of `token` (None: none);
        returns `{"token": <the new token>, "session": <the new session>}`.

        With `keep`, the new session starts with the old one's data, when the old one
        is anonymous or of the same id (one user's data never passes to another), and
        `d` (None removes a key) is merged over it: the new session's own keys win.
        Without, it holds `d` alone. The new token is always new (a token known
        before a login never gains the user's rights).

        One script creates the new session, removes the old one and publishes both
        invalidations: a failure leaves the old session as it was. On a cluster, when
        the two live in different slots (most logins), the old one is removed first,
        its data read in the same script, then the new one is created: a failure
        between them leaves no session (a login to do again), never two.
        """
        app, id, ip = validate_app(app), validate_id(id), validate_ip(ip)
        if token is not None:
            token = validate_token(token)
        ttl = validate_ttl(ttl)
        flag = "1" if validate_no_resave(no_resave) else ""
        ua = validate_user_agent(user_agent)
        if not isinstance(keep, bool):
            raise InvalidValueError("keep must be a boolean")
        patch = _patch_or_empty(d)
        scripts = await self._ready()
        layout = self._layout
        bucket = layout.bucket_of_id(id)
        base, together = "", token is not None and layout.bucket_of_token(token) == bucket
        if token is not None and not together:
            base = await self._take(scripts, app, token, id if keep else None)
        while True:
            new = layout.new_token(bucket)
            keys = [*touched_keys(layout, app, new, bucket), layout.user_tokens(app, id)]
            if together:
                keys.append(layout.session(app, token or ""))
            old = token if together else ""
            args: list[Any] = [self._now(), app, new, id, ip, ttl, flag, ua]
            args += ["1" if keep else "", old, base, MAX_DATA_BYTES, MAX_DATA_KEYS]
            for triple in patch:
                args.extend(triple)
            try:
                raw = await scripts.run("upgrade", keys, args)
            except ResponseError as error:
                raise self._set_error(error) from None
            finally:
                if together and token is not None:
                    self._drop(app, token)
            if raw != 0:
                return {"token": new, "session": session_from_reply(raw)}

    async def _take(self, scripts: Scripts, app: str, token: str, keep_for: str | None) -> str:
        """Kill the session of `token`; its data, when `keep_for` (an id) may have it."""
        try:
            keys = self._layout.token_keys(app, token)
            bucket = self._layout.bucket_of_token(token)
            args = [self._now(), app, token, "1"]
            live, id, data = await self._kill_call(scripts, bucket, "kill", keys, args)
        finally:
            self._drop(app, token)
        owner = None if id is None else (id.decode() if isinstance(id, bytes) else str(id))
        if not int(live) or data is None or keep_for is None:
            return ""
        if owner not in (ANONYMOUS_ID, keep_for):
            return ""
        return data.decode() if isinstance(data, bytes) else str(data)

    async def get(self, *, app: str, token: str) -> SessionDict | None:
        """The session, or None when it is unknown, expired or killed.

        Counts as activity: `r` grows by one and the expiry slides (unless no_resave).
        """
        session = self.cached(app=app, token=token)
        if session is not None:
            return session
        found = await self._read(app, token)
        return found if isinstance(found, dict) else None

    def cached(self, *, app: str, token: str) -> SessionDict | None:
        """The session when this process may serve it from its cache, else None.

        No I/O and no await: a caller on a hot path (the middleware) tries this first
        and pays for a coroutine only on a miss. A hit counts as a read, like `get`.
        """
        cache = self._cache
        # Only validated tokens are ever cached, so a hit needs no validation.
        return None if cache is None else cache.hit(app, token)

    async def lookup(self, *, app: str, token: str) -> tuple[SessionDict | None, str]:
        """Like `get`, and says why a session is absent: `found`, `missing` or `expired`.

        `missing` covers unknown and killed tokens; `expired` means the session ran out
        of time and the wipe has not removed it yet.
        """
        session = self.cached(app=app, token=token)
        if session is not None:
            return session, FOUND
        found = await self._read(app, token)
        if isinstance(found, dict):
            return found, FOUND
        return None, found or MISSING

    async def _read(self, app: str, token: str) -> Fetched:
        app, token = validate_app(app), validate_token(token)
        scripts = self._scripts or await self._ready()  # no coroutine once started
        if self._cache is not None:
            return await self._cache.fill(app, token, partial(self._fetch, scripts, app, token))
        return await self._fetch(scripts, app, token)

    async def _fetch(self, scripts: Scripts, app: str, token: str) -> Fetched:
        raw = await scripts.run(
            "get", self._layout.token_keys(app, token), [self._now(), app, token]
        )
        if raw is None:
            return None
        if raw == 0:
            return EXPIRED
        return session_from_reply(raw)

    async def set(self, *, app: str, token: str, d: dict[str, Any]) -> SessionDict | None:
        """Merge `d` into the session's data (None removes a key); returns the result.

        The result is refused (InvalidValueError, nothing written) when it would hold
        more than MAX_DATA_KEYS keys or MAX_DATA_BYTES bytes of JSON.
        """
        app, token = validate_app(app), validate_token(token)
        patch = encode_data_patch(d)
        scripts = await self._ready()
        args: list[Any] = [self._now(), app, token, MAX_DATA_BYTES, MAX_DATA_KEYS]
        for triple in patch:
            args.extend(triple)
        try:
            keys = self._layout.token_keys(app, token)
            if self._layout.strict:  # the new reference values are known: declare them
                keys += self._reference_keys(app, token, {k: v for k, _, v in patch if v})
            raw = await scripts.run("set", keys, args)
        except ResponseError as error:
            raise self._set_error(error) from None
        finally:
            # Also when the reply was lost: the write may have happened.
            self._drop(app, token)
        return None if raw is None else session_from_reply(raw)

    async def kill(self, *, app: str, token: str) -> dict[str, int]:
        app, token = validate_app(app), validate_token(token)
        scripts = await self._ready()
        try:
            bucket = self._layout.bucket_of_token(token)
            keys = self._layout.token_keys(app, token)
            known = self._cache.known_id(app, token) if self._cache is not None else None
            if self._layout.strict and known not in (None, ANONYMOUS_ID):
                # The user's token set, which the script would ask for: one round trip
                # less. Only a hint: the script checks the session's own id.
                keys.append(self._layout.user_tokens(app, known))
            call = ("kill", keys, [self._now(), app, token])
            killed = await self._kill_call(scripts, bucket, *call)
        finally:
            self._drop(app, token)
        return {"kill": int(killed)}

    async def killall(self, *, app: str) -> dict[str, int]:
        """Kill every session of `app`, in batches so no script call runs long.

        When Redis fails part way it raises IncompleteKillError, which says how many were
        killed; calling again kills the rest.
        """
        app = validate_app(app)
        scripts = await self._ready()
        layout = self._layout

        def keys(bucket: int) -> list[str]:
            return [layout.app_sessions(app, bucket), layout.app_users(app, bucket)]

        try:
            total = await self._run_batches(scripts, "killall", keys, app, kills=True)
        finally:
            if self._cache is not None:
                self._cache.drop_where(app)
        return {"kill": total}

    async def killsoid(self, *, app: str, id: str) -> dict[str, int]:
        """Kill every session of one id ("log out everywhere")."""
        app, id = validate_app(app), validate_id(id)
        return await self._kill_user(app, id, keep="", handle="")

    async def kill_by(
        self, *, app: str, field: str, value: str | int | float | bool
    ) -> dict[str, int]:
        """Kill every session whose data holds `field` = `value` (an indexed reference).

        One script call per batch; each killed session publishes its invalidation. A
        session whose data cannot be read within the caps (written by another library)
        is killed too: a revocation errs on the side of ending sessions. When Redis fails
        part way it raises IncompleteKillError; calling again kills the rest.
        """
        app = validate_app(app)
        if field not in self._references:
            raise InvalidValueError(
                f"{field!r} is not an indexed reference; pass references=[...] to index it"
            )
        if value is None:
            raise MissingParameterError("No value supplied")
        if isinstance(value, list | dict):
            raise InvalidValueError("kill_by takes a string, a number or a boolean")
        validate_data_item(field, value)
        raw = dump_value(value)
        scripts = await self._ready()
        layout = self._layout

        def keys(bucket: int) -> list[str]:
            return [layout.reference(app, field, raw, bucket)]

        try:
            args = (app, field, raw, MAX_DATA_KEYS, MAX_DATA_BYTES)
            total = await self._run_batches(scripts, "kill_by", keys, *args, kills=True)
        finally:
            if self._cache is not None:
                self._cache.drop_where(app, field=field, value=value)
        return {"kill": total}

    async def devices(self, *, app: str, id: str, current: str | None = None) -> list[Device]:
        """The live sessions of one id as devices (see model.Device), oldest first;
        `current` (a token) marks the one it belongs to. Listing them is not activity."""
        app, id = validate_app(app), validate_id(id)
        mine = "" if current is None else validate_token(current)
        scripts = await self._ready()
        keys = [self._layout.user_tokens(app, id)]
        raw = await scripts.run("devices", keys, [self._now(), app, id, mine])
        found = [device_from_reply(item) for item in raw]
        return sorted(found, key=lambda device: (device["created"] or 0, device["handle"]))

    async def revoke(self, *, app: str, id: str, handle: str) -> dict[str, int]:
        """Kill the session of `id` that `handle` names (a handle from `devices`);
        a handle of another id's session kills nothing."""
        app, id, handle = validate_app(app), validate_id(id), _validate_handle(handle)
        return await self._kill_user(app, id, keep="", handle=handle)

    async def kill_others(self, *, app: str, id: str, token: str) -> dict[str, int]:
        """Kill every session of `id` but the one of `token` ("log out my other
        devices"), in one script, so a login racing with it is either killed or kept
        whole."""
        app, id, token = validate_app(app), validate_id(id), validate_token(token)
        return await self._kill_user(app, id, keep=token, handle="")

    async def _kill_user(self, app: str, id: str, *, keep: str, handle: str) -> dict[str, int]:
        scripts = await self._ready()
        keys = [self._layout.user_tokens(app, id)]
        try:
            bucket = self._layout.bucket_of_id(id)
            args = [self._now(), app, id, keep, handle]
            killed = await self._kill_call(scripts, bucket, "killsoid", keys, args)
        finally:
            if self._cache is not None:
                self._cache.drop_where(app, id, spare=keep or None)
        return {"kill": int(killed)}

    async def soid(self, *, app: str, id: str) -> dict[str, list[SessionDict]]:
        """The live sessions of one id. Listing them is not activity."""
        app, id = validate_app(app), validate_id(id)
        scripts = await self._ready()
        keys = [self._layout.user_tokens(app, id)]
        raw = await scripts.run("soid", keys, [self._now(), app, id])
        return {"sessions": [session_from_reply(item) for item in raw]}

    async def soapp(self, *, app: str, delta_time: int) -> dict[str, list[SessionDict]]:
        """Sessions of `app` active within `delta_time` seconds, newest first."""
        app, delta_time = validate_app(app), validate_delta_time(delta_time)
        scripts = await self._ready()
        layout, args = self._layout, [self._now(), app, delta_time]
        calls = [([layout.app_sessions(app, b)], args) for b in range(layout.buckets)]
        sessions = [
            session_from_reply(item)
            for reply in _raise_first(await scripts.run_many("soapp", calls))
            for item in reply
        ]
        if layout.buckets > 1:
            sessions.sort(key=lambda session: session["idle"])  # stable: each bucket's order
        return {"sessions": sessions}

    async def activity(self, *, app: str, delta_time: int) -> dict[str, int]:
        """Distinct ids active within `delta_time` seconds (one ZCOUNT, atomic)."""
        app, delta_time = validate_app(app), validate_delta_time(delta_time)
        scripts = await self._ready()
        since = self._now() - delta_time
        # A user lives in one bucket, so the buckets' counts add up exactly.
        pipe = scripts.pipeline()
        for bucket in range(self._layout.buckets):
            pipe.zcount(self._layout.app_users(app, bucket), since, "+inf")
        if not self._layout.cluster:
            # Node's redis-sessions, reading an anonymous session, lists its id as a
            # user: it is no user, and is not counted.
            pipe.zscore(self._layout.app_users(app), ANONYMOUS_ID)
        replies = await self._slots.call(pipe.execute)
        count = sum(int(count) for count in replies[: self._layout.buckets])
        if not self._layout.cluster and replies[-1] is not None and replies[-1] >= since:
            count -= 1
        return {"activity": count}

    async def ping(self) -> str:
        await self._ready()
        await self._slots.call(self.redis.ping)
        return "PONG"

    async def wipe(self) -> int:
        """Remove the sessions that expired; returns how many. Batched like killall."""
        scripts = await self._ready()
        layout = self._layout

        def keys(bucket: int) -> list[str]:
            return [layout.expiry_index(bucket)]

        return await self._run_batches(scripts, "wipe", keys, kills=False)

    async def _run_batches(
        self,
        scripts: Scripts,
        operation: str,
        keys: Callable[[int], list[str]],
        *args: Any,
        kills: bool,
    ) -> int:
        """Call a batched script (args: now, *args, batch, budget) on every bucket until
        each says nothing is left. The buckets of a round go out together (on a cluster,
        one pipeline per node, the nodes at once), and the counts add up exactly.

        A failed batch never passes for the end: the error carries the count so far.
        """
        pending, total = list(range(self._layout.buckets)), 0
        while pending:
            batch_args = [self._now(), *args, self._batch, WORK_BUDGET]
            calls = [(keys(bucket), batch_args) for bucket in pending]
            try:
                results = await self._batch_round(scripts, operation, pending, calls, kills)
            except (RedisError, OSError) as error:  # the whole round failed
                results = [error] * len(pending)
            failure, left = None, []
            for bucket, result in zip(pending, results, strict=True):
                if isinstance(result, Exception):
                    failure = failure or result
                    continue
                done, more = result
                total += int(done)
                if int(more):
                    left.append(bucket)
            # Any failure of Redis (unreachable, a failover's CLUSTERDOWN or READONLY, a
            # deadline) says how far the kill got; the error of an input is raised as is.
            if isinstance(failure, RedisError | OSError):
                raise IncompleteKillError(operation, total, failure) from failure
            if failure is not None:
                raise failure
            pending = left
        return total

    async def _batch_round(
        self,
        scripts: Scripts,
        operation: str,
        buckets: list[int],
        calls: list[tuple[list[str], list[Any]]],
        kills: bool,
    ) -> list[Any]:
        """One batch per bucket; each result, or the exception of its bucket."""
        if kills and self._durability is not None:
            return await asyncio.gather(
                *(
                    self._kill_call(scripts, bucket, operation, *call)
                    for bucket, call in zip(buckets, calls, strict=True)
                ),
                return_exceptions=True,
            )
        if len(calls) > 1:
            return await scripts.run_many(operation, calls)
        try:
            return [await scripts.run(operation, *calls[0])]
        except Exception as error:
            return [error]

    def cache_stats(self) -> dict[str, Any]:
        """Counters of the local cache (all zero-cost to read); `enabled` False without one."""
        if self._cache is None:
            return {"enabled": False}
        return self._cache.stats()

    def is_cached(self, token: str, *, app: str | None = None) -> bool:
        """Whether this process holds the session in its cache (no hit is counted);
        without `app`, whether it holds that token under any app."""
        cache = self._cache
        if cache is None:
            return False
        return cache.holds_token(token) if app is None else cache.holds(app, token)

    async def flush_touches(self) -> int:
        """Write the reads served from the cache now instead of at the next interval."""
        if self._flusher is None:
            return 0
        return await self._flusher.flush()

    # Helpers

    async def _kill_call(
        self, scripts: Scripts, bucket: int, operation: str, keys: list[str], args: list[Any]
    ) -> Any:
        """One kill script call; with durable kills, it returns once replicated."""
        if self._durability is None:
            return await scripts.run(operation, keys, args)
        marker = self._layout.durable_marker(bucket)
        return await scripts.run_durable(
            operation, keys, args, marker=marker, durability=self._durability
        )

    def _drop(self, app: str, token: str) -> None:
        if self._cache is not None:
            self._cache.drop(app, token)

    def _reference_keys(self, app: str, token: str, raw_values: dict[str, str]) -> list[str]:
        """The reference sets a write of these values (JSON texts) puts the token in."""
        bucket = self._layout.bucket_of_token(token)
        return [
            self._layout.reference(app, field, raw_values[field], bucket)
            for field in self._references
            if field in raw_values
        ]

    @staticmethod
    def _set_error(error: ResponseError) -> Exception:
        message = str(error)
        if message.startswith("DATA_TOO_LARGE"):
            size = message.split()[-1]
            return InvalidValueError(
                f"d would be {size} bytes as JSON after the merge; at most {MAX_DATA_BYTES} "
                "are allowed (nothing was written)"
            )
        if message.startswith("TOO_MANY_KEYS"):
            count = message.split()[-1]
            return InvalidValueError(
                f"d would have {count} keys after the merge; at most {MAX_DATA_KEYS} are "
                "allowed (nothing was written)"
            )
        if message.startswith("STORED_DATA_NOT_FLAT"):
            return StoredDataError(
                "the stored d is not a JSON object this library can read as members, so "
                "it cannot be merged without changing it (nothing was written)"
            )
        if message.startswith(("STORED_DATA_TOO_MANY_KEYS", "STORED_DATA_TOO_LARGE")):
            return StoredDataError(
                f"the stored d (written by another library) is over the caps of "
                f"{MAX_DATA_KEYS} keys and {MAX_DATA_BYTES} bytes, so it is not merged "
                "(nothing was written)"
            )
        return error

    async def wipe_if_due(self, interval: int | None = None) -> int | None:
        """Wipe unless another process wiped within `interval` seconds.

        Returns the number removed, or None when another process holds the lock. The
        lock outlives the run on purpose: one wipe per interval across all processes,
        whoever wins the race.
        """
        if interval is not None and (not is_int(interval) or interval < 1):
            raise ConfigurationError("interval must be a positive number of seconds (an int)")
        await self._ready()
        seconds = interval or self._wipe_interval or MIN_WIPE_INTERVAL
        key = self._layout.wipe_lock()
        locked = await self._slots.call(self.redis.set, key, "1", nx=True, ex=seconds)
        if not locked:
            return None
        return await self.wipe()

    async def _wipe_loop(self) -> None:
        interval = self._wipe_interval
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.wipe_if_due()
                if removed:
                    log.info("wipe removed %d expired sessions", removed)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                raise_if_cancelling()
                log.warning("wipe failed (%s); trying again in %d s", error, interval)
