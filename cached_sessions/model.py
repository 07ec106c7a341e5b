"""The session dict, as redis-sessions returns it, built from a script's reply."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final, NotRequired, TypeAlias, TypedDict

from .errors import StoredDataError

__all__ = ["EXPIRED", "FOUND", "MISSING", "Fetched", "SessionDict", "session_from_reply"]

# Why a read found no session (see RedisSessions.lookup).
FOUND: Final = "found"
MISSING: Final = "missing"
EXPIRED: Final = "expired"


class SessionDict(TypedDict):
    """A session: `d` only when it holds data, `no_resave` only when set."""

    id: str
    r: int
    w: int
    ttl: int
    idle: int
    ip: str
    d: NotRequired[dict[str, Any]]
    no_resave: NotRequired[bool]


# What one read of Redis gives: the session, EXPIRED, or None (unknown or killed).
Fetched: TypeAlias = "SessionDict | str | None"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def session_from_reply(raw: Sequence[Any]) -> SessionDict:
    """Scripts reply {id, r, w, ttl, idle, ip, d or nil, no_resave 0|1} (see _lib.lua)."""
    id, r, w, ttl, idle, ip, data, no_resave = raw
    session: SessionDict = {
        "id": _text(id),
        "r": int(r),
        "w": int(w),
        "ttl": int(ttl),
        "idle": int(idle),
        "ip": _text(ip),
    }
    if data:
        try:
            session["d"] = json.loads(data)
        except ValueError as error:
            raise StoredDataError(
                f"session of id {session['id']!r} holds d that is not JSON"
            ) from error
    if int(no_resave):
        session["no_resave"] = True
    return session
