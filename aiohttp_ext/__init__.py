"""aiohttp integration of cached-sessions: middleware, request-scoped sessions, demo."""

from .middleware import (
    SessionConfig,
    SessionStoreUnavailable,
    get_session,
    get_store,
    setup_sessions,
)
from .session import AnonymousSessionError, Session
from .signing import TokenSigner

__all__ = [
    "AnonymousSessionError",
    "Session",
    "SessionConfig",
    "SessionStoreUnavailable",
    "TokenSigner",
    "get_session",
    "get_store",
    "setup_sessions",
]
