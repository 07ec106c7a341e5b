"""cached-sessions: server-side sessions in Redis, read through a per-process cache.

The store speaks the data model of the Node library redis-sessions 4.x.
"""

from .embedded import EmbeddedServer
from .errors import (
    ConfigurationError,
    IncompleteKillError,
    InvalidFormatError,
    InvalidInputError,
    InvalidValueError,
    MissingParameterError,
    NotDurableError,
    SessionsClosedError,
    SessionsError,
    StoredDataError,
    UsageError,
)
from .keys import ClusterLayout, KeyLayout
from .store import RedisSessions, SessionDict

__all__ = [
    "ClusterLayout",
    "ConfigurationError",
    "EmbeddedServer",
    "IncompleteKillError",
    "InvalidFormatError",
    "InvalidInputError",
    "InvalidValueError",
    "KeyLayout",
    "MissingParameterError",
    "NotDurableError",
    "RedisSessions",
    "SessionDict",
    "SessionsClosedError",
    "SessionsError",
    "StoredDataError",
    "UsageError",
]
