"""Session events for ASGI apps: lists of callbacks, `async def (request, event)`.

    middleware = SessionMiddleware(app, store, app_name="shop")
    middleware.events.on_session_created.append(audit)

Each event also goes to the `asgi_ext.sessions` logger, with only the first
characters of a token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection

from cached_sessions.web.events import SessionEvent, log_event

__all__ = ["Callback", "SessionEvent", "SessionEvents"]

log = logging.getLogger("asgi_ext.sessions")

Callback = Callable[[HTTPConnection, SessionEvent], Awaitable[None]]


class SessionEvents:
    """One list of callbacks per event kind."""

    def __init__(self) -> None:
        self.on_session_missed: list[Callback] = []
        self.on_session_invalid: list[Callback] = []
        self.on_session_expired: list[Callback] = []
        self.on_session_created: list[Callback] = []
        self.on_session_destroyed: list[Callback] = []

    async def emit(self, request: HTTPConnection, event: SessionEvent) -> None:
        log_event(log, event)
        callbacks: list[Callback] = getattr(self, f"on_session_{event.kind}")
        for callback in callbacks:
            await callback(request, event)
