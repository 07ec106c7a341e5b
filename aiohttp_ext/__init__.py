"""aiohttp integration of cached-sessions: middleware, request-scoped sessions, demo."""

from .middleware import (
    SessionConfig,
    SessionStoreUnavailable,
    get_session,
    get_store,
    setup_sessions,
)
from .events import SessionEvent, SessionEvents
from .session import AnonymousSessionError, SavePolicy, Session
from .signing import TokenSigner

__all__ = [
    "AnonymousSessionError",
    "SavePolicy",
    "Session",
    "SessionConfig",
    "SessionEvent",
    "SessionEvents",
    "SessionStoreUnavailable",
    "TokenSigner",
    "get_session",
    "get_store",
    "setup_sessions",
]
