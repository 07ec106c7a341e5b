"""The errors the aiohttp integration raises."""

from __future__ import annotations

__all__ = ["AnonymousSessionError", "SessionStoreUnavailable"]


class SessionStoreUnavailable(Exception):
    """Redis could not be reached; the middleware answers 503 with Retry-After."""


class AnonymousSessionError(RuntimeError):
    """Data was written to a session that has no user yet."""

    def __init__(self) -> None:
        super().__init__(
            "this session is anonymous and holds no data: call `await session.upgrade(user_id)` "
            "(log in) before storing values in it"
        )
