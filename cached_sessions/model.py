"""The session dict, as redis-sessions returns it, built from a script's reply."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Final, NotRequired, TypeAlias, TypedDict

from .errors import StoredDataError

__all__ = [
    "EXPIRED",
    "FOUND",
    "MAX_DATA_DEPTH",
    "MISSING",
    "Device",
    "Fetched",
    "SessionDict",
    "device_from_reply",
    "session_from_reply",
]

# How deeply `d` may nest (`d` itself is level 1). Another client may have written
# anything; a bound keeps a hostile `d` from costing recursion on every read.
MAX_DATA_DEPTH: Final = 16

# Why a read found no session (see RedisSessions.lookup).
FOUND: Final = "found"
MISSING: Final = "missing"
EXPIRED: Final = "expired"


class SessionDict(TypedDict):
    """A session: `d` only when it holds data, `no_resave` only when set, `ends_in`
    (seconds left before its absolute end) only when the store has a `max_lifetime`."""

    id: str
    r: int
    w: int
    ttl: int
    idle: int
    ip: str
    d: NotRequired[dict[str, Any]]
    no_resave: NotRequired[bool]
    ends_in: NotRequired[int]


class Device(TypedDict):
    """One live session of a user, as a device list shows it.

    `handle` names it for `revoke` without being a credential: it cannot be used as a
    token, and it names a session only among its own user's. `created` and
    `user_agent` are None for a session written by another library (Node).
    """

    handle: str
    current: bool
    created: int | None
    last_active: int
    idle: int
    ip: str
    user_agent: str | None


# What one read of Redis gives: the session, EXPIRED, or None (unknown or killed).
Fetched: TypeAlias = "SessionDict | str | None"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _stored_data(text: Any, id: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except RecursionError:
        raise StoredDataError(f"session of id {id!r} holds d nested too deeply") from None
    except ValueError as error:
        raise StoredDataError(f"session of id {id!r} holds d that is not JSON") from error
    if not isinstance(data, dict):
        raise StoredDataError(f"session of id {id!r} holds d that is not a JSON object")
    if nesting_depth(data) > MAX_DATA_DEPTH:
        raise StoredDataError(
            f"session of id {id!r} holds d nested deeper than {MAX_DATA_DEPTH} levels"
        )
    return data


def nesting_depth(value: object) -> int:
    """Levels of lists and objects in a parsed JSON value (a scalar is 0).

    Iterative, so that a hostile value cannot exhaust the stack. The common case, an
    object of scalars, is one pass over its values.
    """
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def session_from_reply(raw: Sequence[Any]) -> SessionDict:
    """Scripts reply {id, r, w, ttl, idle, ip, d or nil, no_resave 0|1, ends or nil}
    (see _lib.lua)."""
    id, r, w, ttl, idle, ip, data, no_resave = raw[:8]
    session: SessionDict = {
        "id": _text(id),
        "r": int(r),
        "w": int(w),
        "ttl": int(ttl),
        "idle": int(idle),
        "ip": _text(ip),
    }
    if data:
        session["d"] = _stored_data(data, session["id"])
    if int(no_resave):
        session["no_resave"] = True
    if len(raw) > 8 and raw[8] is not None:
        session["ends_in"] = int(raw[8])
    return session


def device_from_reply(raw: Sequence[Any]) -> Device:
    """devices.lua replies {handle, current 0|1, created or nil, la, ip, ua or nil, idle}."""
    handle, current, created, la, ip, user_agent, idle = raw
    return {
        "handle": _text(handle),
        "current": bool(int(current)),
        "created": None if created is None else int(created),
        "last_active": int(la),
        "idle": int(idle),
        "ip": _text(ip),
        "user_agent": None if user_agent is None else _text(user_agent),
    }
