"""The subscriber: hears invalidations on the pub/sub channel and guards the cache.

Pub/sub is at most once: whatever is published while the connection is down is
gone. So any sign that messages may have been missed (an error, a reconnect, a PING
that gets no PONG in time) empties the cache and bypasses it until the subscription
is confirmed again. redis-py would reconnect and resubscribe silently; here the
connection has no retries, so every loss surfaces, and a second `subscribe`
confirmation on one connection counts as a loss too.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from .cache import SessionCache

__all__ = ["Subscriber"]

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 1.0


class SubscriptionLost(Exception):
    """Messages may have been missed; `reason` names the flush in the cache stats."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def subscriber_client(client: Redis) -> Redis:
    """A client for the pub/sub connection: same server and credentials, no retries."""
    pool = client.connection_pool
    options = {
        **pool.connection_kwargs,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "decode_responses": True,
    }
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **options))


class Subscriber:
    """Runs as one named background task per store; see the module docstring."""

    def __init__(
        self,
        client: Redis,
        channel: str,
        cache: SessionCache,
        *,
        ping_interval: float,
        ping_timeout: float,
    ) -> None:
        self._client = subscriber_client(client)
        self._channel = channel
        self._cache = cache
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self.confirmed = asyncio.Event()

    async def run(self) -> None:
        delay = 0.02
        try:
            while True:
                try:
                    await self._listen()
                except SubscriptionLost as lost:
                    was_subscribed = self._lose(lost.reason)
                except (ConnectionError, TimeoutError, OSError) as error:
                    raise_if_cancelling()
                    was_subscribed = self._lose("connection_error", error)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    raise_if_cancelling()
                    was_subscribed = self._lose("error", error)
                if was_subscribed:
                    delay = 0.02
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
        finally:
            self._cache.lost("closed")
            await self._client.aclose(close_connection_pool=True)

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

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._client.pubsub() as pubsub:
            await pubsub.subscribe(self._channel)
            confirmed = False
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
                    if kind == "message":
                        self._invalidate(_text(reply[2]))
                    elif kind == "pong":
                        ping_sent = None
                    elif kind == "subscribe" and not confirmed:
                        confirmed = True
                        self._cache.confirmed()
                        self.confirmed.set()
                        log.info("session cache subscribed to %s", self._channel)
                    elif kind == "subscribe":
                        raise SubscriptionLost("reconnect")
                    else:
                        raise SubscriptionLost("unsubscribed" if "unsubscribe" in kind else "error")
                if ping_sent is not None and now - ping_sent > self._ping_timeout:
                    raise SubscriptionLost("missed_pong")
                if ping_sent is None and now - last_ping >= self._ping_interval:
                    await pubsub.ping()
                    ping_sent = last_ping = now

    def _invalidate(self, data: str) -> None:
        app, sep, token = data.partition(":")
        if sep:
            self._cache.invalidate(app, token)
        else:
            # Which session it meant is unknown, so none of them can be trusted.
            log.warning("malformed message on %s; cache flushed", self._channel)
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
