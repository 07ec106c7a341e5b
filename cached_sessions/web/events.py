"""Session events: what happened to a session, and the log line each one leaves.

Each adapter delivers events to the app's callbacks, `async def (request, event)`, in
its own framework's way; every event also goes to that adapter's logger, with only the
first characters of a token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

__all__ = ["EVENT_KINDS", "Emit", "SessionEvent", "hint", "log_event"]

R = TypeVar("R")

EVENT_KINDS: Final = ("missed", "invalid", "expired", "created", "destroyed")
LEVELS: Final = {
    "missed": logging.INFO,
    "invalid": logging.WARNING,
    "expired": logging.INFO,
    "created": logging.INFO,
    "destroyed": logging.INFO,
}


@dataclass(frozen=True, slots=True)
class SessionEvent:
    kind: str  # missed, invalid, expired, created or destroyed
    reason: str
    user_id: str | None = None
    token_hint: str | None = None  # the first six characters, for correlating logs


Emit = Callable[[R, SessionEvent], Awaitable[None]]
"""How an adapter hands an event to the app's callbacks, with the request it concerns."""


def hint(token: str | None) -> str | None:
    return f"{token[:6]}..." if token else None


def log_event(log: logging.Logger, event: SessionEvent) -> None:
    log.log(
        LEVELS[event.kind],
        "session %s: %s (user %s, token %s)",
        event.kind, event.reason, event.user_id, event.token_hint,
    )  # fmt: skip
