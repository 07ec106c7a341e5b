"""The errors the library raises, all under one base: `except SessionsError` catches
every one of them.

Input errors derive from `InvalidInputError`, a `ValueError` too, because each means
"the caller passed bad input"; they keep redis-sessions' `name` values
(`missingParameter`, `invalidFormat`, `invalidValue`) so code that switches on them
keeps working. The errors that mean "Redis failed" are redis-py's errors as well, so
that code that turns those into a retry or a 503 does so here too.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "ConfigurationError",
    "IncompleteKillError",
    "InvalidFormatError",
    "InvalidInputError",
    "InvalidValueError",
    "MissingParameterError",
    "NotDurableError",
    "SessionsClosedError",
    "SessionsError",
    "StoredDataError",
    "UnreachableSinceStartError",
    "UsageError",
]


class SessionsError(Exception):
    """Base of every error this library raises; `name` is redis-sessions' error name."""

    name: str = "sessionsError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigurationError(SessionsError, ValueError):
    """An option given to the store, the middleware or a URL cannot work.

    Raised where the option is given (construction, setup), so a mistake stops the
    app before it serves a request rather than on the first one.
    """

    name = "configuration"


class UsageError(SessionsError, RuntimeError):
    """A call made at the wrong time: before the store started, after a setting was
    frozen, or on a request that no session middleware saw."""

    name = "usage"


class InvalidInputError(SessionsError, ValueError):
    """Base of the input errors: an argument was refused before any I/O."""

    name = "invalidInput"


class MissingParameterError(InvalidInputError):
    """A required argument was not given (None or empty)."""

    name = "missingParameter"


class InvalidFormatError(InvalidInputError):
    """An argument has the wrong shape (app, token, id, ip)."""

    name = "invalidFormat"


class InvalidValueError(InvalidInputError):
    """An argument has the right shape but a value the store refuses (ttl, d, ...)."""

    name = "invalidValue"


class StoredDataError(SessionsError, RuntimeError):
    """Redis holds a session whose `d` this library cannot merge without losing data.

    Raised instead of rewriting it lossily; nothing was written.
    """

    name = "storedData"


class SessionsClosedError(SessionsError, RuntimeError):
    """The store was used after `aclose()`."""

    name = "sessionsClosed"

    def __init__(self) -> None:
        super().__init__("this RedisSessions is closed; create a new one")


class NotDurableError(SessionsError, RedisTimeoutError):
    """A kill was applied on the primary, but fewer replicas than asked acknowledged
    it in time, so a failover now could bring the killed sessions back.

    The kill is idempotent: calling it again retries, and succeeds once enough
    replicas answer. It is a redis-py TimeoutError (the wait for the replicas timed
    out), so that code that turns those into a retry or a 503 does so here too.
    """

    def __init__(self, operation: str, acknowledged: int, wanted: int, timeout: float) -> None:
        super().__init__(
            f"{operation}: applied, but {acknowledged} of the {wanted} replicas asked for "
            f"acknowledged it within {timeout} s; a failover now could undo it: call again"
        )
        self.acknowledged = acknowledged
        self.wanted = wanted


class IncompleteKillError(SessionsError, RedisConnectionError, RedisTimeoutError):
    """A batched kill (killall, kill_by, the wipe) stopped part way: Redis failed.

    Each batch is one atomic script, so what was killed is gone for good and what was
    not is intact: calling the same operation again carries on where this one stopped.
    `killed` counts the sessions of the batches that answered; the batch that failed
    may have run too, so more may be gone. The cause is `__cause__`.

    It is both of redis-py's unavailability errors, the two a batch fails with, so
    that code that turned them into a retry or a 503 still does.
    """

    def __init__(self, operation: str, killed: int, cause: BaseException) -> None:
        done = "removing" if operation == "wipe" else "killing"
        sessions = "session" if killed == 1 else "sessions"
        super().__init__(
            f"{operation} stopped after {done} {killed} {sessions}, because Redis failed "
            f"({cause}); the others are still there: call {operation} again to finish "
            "(the batch that failed may have been applied too)"
        )
        self.operation = operation
        self.killed = killed


class UnreachableSinceStartError(SessionsError, RedisConnectionError):
    """Redis has not answered since start-up; the store keeps trying in the background.

    A redis-py ConnectionError too, so the middleware answers 503 (without a log line
    per request: the store logged the outage once, at start-up).
    """

    name = "unreachableSinceStart"
