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
from .model import Device
from .store import RedisSessions, SessionDict
from .validation import ANONYMOUS_ID

__all__ = [
    "ANONYMOUS_ID",
    "ClusterLayout",
    "ConfigurationError",
    "Device",
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
