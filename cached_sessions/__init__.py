"""cached-sessions: server-side sessions in Redis, read through a per-process cache.

The store speaks the data model of the Node library redis-sessions 4.x.
"""

from .embedded import EmbeddedServer
from .errors import (
    InvalidFormatError,
    InvalidValueError,
    MissingParameterError,
    SessionsClosedError,
    SessionsError,
    StoredDataError,
)
from .keys import KeyLayout
from .store import RedisSessions, SessionDict

__all__ = [
    "EmbeddedServer",
    "InvalidFormatError",
    "InvalidValueError",
    "KeyLayout",
    "MissingParameterError",
    "RedisSessions",
    "SessionDict",
    "SessionsClosedError",
    "SessionsError",
    "StoredDataError",
]
