"""The errors of the web layer, and the ones that mean "Redis is away"."""

from __future__ import annotations

from typing import Final

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cached_sessions.errors import SessionsError

__all__ = [
    "REDIS_AWAY",
    "RETRY_AFTER_SECONDS",
    "UNAVAILABLE_ERRORS",
    "UNAVAILABLE_MESSAGE",
    "AnonymousSessionError",
    "SessionStoreUnavailable",
]


class SessionStoreUnavailable(SessionsError):
    """Redis could not be reached; the middleware answers 503 with Retry-After."""

    name = "sessionStoreUnavailable"


class AnonymousSessionError(SessionsError, RuntimeError):
    """Data was written to a session that has no user yet."""

    name = "anonymousSession"

    def __init__(self) -> None:
        super().__init__(
            "this session is anonymous and holds no data: call `await session.upgrade(user_id)` "
            "(log in) before storing values in it"
        )


REDIS_AWAY: Final = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
"""What the store raises when Redis cannot answer (a lookup retries on these)."""

UNAVAILABLE_ERRORS: Final = (SessionStoreUnavailable, *REDIS_AWAY)
"""What a request meets when the store cannot answer: the middleware answers 503."""

RETRY_AFTER_SECONDS: Final = 1
UNAVAILABLE_MESSAGE: Final = "The session store is unavailable. Please retry in a moment.\n"
