"""ASGI integration of cached-sessions (Starlette, FastAPI, any ASGI app)."""

from cached_sessions.web import (
    AnonymousSessionError,
    SavePolicy,
    Session,
    SessionEvent,
    SessionStoreUnavailable,
    TokenSigner,
)

from .events import SessionEvents
from .middleware import SessionMiddleware, get_session, get_store

__all__ = [
    "AnonymousSessionError",
    "SavePolicy",
    "Session",
    "SessionEvent",
    "SessionEvents",
    "SessionMiddleware",
    "SessionStoreUnavailable",
    "TokenSigner",
    "get_session",
    "get_store",
]
