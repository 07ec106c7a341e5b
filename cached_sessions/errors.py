"""The errors the store raises.

Validation errors keep redis-sessions' `name` values (`missingParameter`,
`invalidFormat`, `invalidValue`) so code that switches on them keeps working, and
they are `ValueError`s because every one of them means "the caller passed bad input".
"""

from __future__ import annotations

__all__ = [
    "InvalidFormatError",
    "InvalidValueError",
    "MissingParameterError",
    "NotDurableError",
    "SessionsClosedError",
    "SessionsError",
    "StoredDataError",
]


class SessionsError(ValueError):
    """Base of every input error; `name` is redis-sessions' error name."""

    name: str = "sessionsError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class MissingParameterError(SessionsError):
    """A required argument was not given (None or empty)."""

    name = "missingParameter"


class InvalidFormatError(SessionsError):
    """An argument has the wrong shape (app, token, id, ip)."""

    name = "invalidFormat"


class InvalidValueError(SessionsError):
    """An argument has the right shape but a value the store refuses (ttl, d, ...)."""

    name = "invalidValue"


class StoredDataError(RuntimeError):
    """Redis holds a session whose `d` this library cannot merge without losing data.

    Raised instead of rewriting it lossily; nothing was written.
    """


class SessionsClosedError(RuntimeError):
    """The store was used after `aclose()`."""

    def __init__(self) -> None:
        super().__init__("this RedisSessions is closed; create a new one")


class NotDurableError(RuntimeError):
    """A kill was applied on the primary, but fewer replicas than asked acknowledged
    it in time, so a failover now could bring the killed sessions back.

    The kill is idempotent: calling it again retries, and succeeds once enough
    replicas answer.
    """

    def __init__(self, operation: str, acknowledged: int, wanted: int, timeout: float) -> None:
        super().__init__(
            f"{operation}: applied, but {acknowledged} of the {wanted} replicas asked for "
            f"acknowledged it within {timeout} s; a failover now could undo it: call again"
        )
        self.acknowledged = acknowledged
        self.wanted = wanted
