"""Session events an app can subscribe to, as aiohttp signals.

    events = setup_sessions(app, store, app_name="shop")
    events.on_session_created.append(audit)   # async def audit(request, event)

Each event also goes to the `aiohttp_ext.sessions` logger, with only the first
characters of a token.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiosignal import Signal

from cached_sessions.web.events import SessionEvent, log_event

__all__ = ["SessionEvent", "SessionEvents"]

log = logging.getLogger("aiohttp_ext.sessions")


class SessionEvents:
    """One signal per event; each callback is `async def (request, event)`."""

    def __init__(self, app: web.Application) -> None:
        self.on_session_missed: Signal[web.Request, SessionEvent] = Signal(app)
        self.on_session_invalid: Signal[web.Request, SessionEvent] = Signal(app)
        self.on_session_expired: Signal[web.Request, SessionEvent] = Signal(app)
        self.on_session_created: Signal[web.Request, SessionEvent] = Signal(app)
        self.on_session_destroyed: Signal[web.Request, SessionEvent] = Signal(app)

    def freeze(self) -> None:
        for signal in self._signals():
            signal.freeze()

    def _signals(self) -> list[Signal[web.Request, SessionEvent]]:
        return [
            self.on_session_missed,
            self.on_session_invalid,
            self.on_session_expired,
            self.on_session_created,
            self.on_session_destroyed,
        ]

    async def emit(self, request: web.Request, event: SessionEvent) -> None:
        log_event(log, event)
        signal: Signal[web.Request, SessionEvent] = getattr(self, f"on_session_{event.kind}")
        if signal.frozen and len(signal):
            await signal.send(request, event)
