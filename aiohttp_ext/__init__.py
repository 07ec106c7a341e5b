"""aiohttp integration of cached-sessions: middleware, request-scoped sessions, demo."""

from .errors import AnonymousSessionError, SessionStoreUnavailable
from .events import SessionEvent, SessionEvents
from .middleware import SessionConfig, get_session, get_store, setup_sessions
from .session import SavePolicy, Session
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
