"""aiohttp integration of cached-sessions: middleware, request-scoped sessions, demo."""

from cached_sessions.web import (
    AnonymousSessionError,
    SavePolicy,
    Session,
    SessionEvent,
    SessionStoreUnavailable,
    TokenSigner,
)

from .events import SessionEvents
from .middleware import SessionConfig, get_session, get_store, setup_sessions

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
