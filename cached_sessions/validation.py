"""Input rules. Every public store call runs these before any I/O.

The rules follow redis-sessions 4.x so both libraries accept the same sessions, with
three deliberate differences, each because the original loses data or time:

* `id` is checked by length and a character class, in linear time; the original's
  pattern backtracks catastrophically on long input.
* integers in `d` must be exact in a JavaScript number (|n| <= 2**53 - 1) at any depth
  of a list or object, and floats finite, so every value written by Python reads back
  equal in Node and in Python. Lists and objects nest at most MAX_DATA_DEPTH levels.
  (JSON has one number type: once Node rewrites `d`, a whole float such as 2.0 comes
  back as the int 2, equal but of another type.)
* the serialized `d` is bounded (`MAX_DATA_BYTES`) and so is its number of keys
  (`MAX_DATA_KEYS`), so one session can neither grow without limit nor hold Redis for
  long: the scripts that merge or index `d` take time in proportion to its keys. Both
  bounds are checked again on the merged result inside the script.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final, TypeGuard

from .errors import InvalidFormatError, InvalidValueError, MissingParameterError
from .model import MAX_DATA_DEPTH

__all__ = [
    "ANONYMOUS_ID",
    "MAX_DATA_BYTES",
    "MAX_DATA_KEYS",
    "MAX_ID_LENGTH",
    "MAX_SAFE_INTEGER",
    "MAX_TTL",
    "MAX_USER_AGENT_LENGTH",
    "MIN_TTL",
    "DataPatch",
    "dump_value",
    "encode_create_data",
    "encode_data_patch",
    "is_int",
    "is_token",
    "validate_app",
    "validate_data_item",
    "validate_delta_time",
    "validate_id",
    "validate_ip",
    "validate_no_resave",
    "validate_token",
    "validate_ttl",
    "validate_user_agent",
]


def is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool: `True` is an int to Python, never a count here."""
    return isinstance(value, int) and not isinstance(value, bool)


MIN_TTL: Final = 10
MAX_TTL: Final = 365 * 24 * 3600  # one year; longer belongs in a remember-me token
MAX_ID_LENGTH: Final = 128
MAX_IP_LENGTH: Final = 39  # the longest textual IPv6 address
MAX_DATA_BYTES: Final = 64 * 1024
# The scripts that read `d` (set, create with references, kill_by on data another
# writer changed) take about 1.2 µs of Redis time per key at worst, and up to about
# 1 ms more for 64 KiB dense with escapes. At both caps a set takes 1.5 ms on Valkey 9
# and 1.8 ms on Redis 7 (2-core VM; `python -m benchmarks.script_cost`): under 2 ms.
# Lists and objects cost a balanced match and a cjson parse each (in C): a `d` of 500
# small objects merges in about 1 ms; the worst, 64 KiB of empty lists (21,000 tables
# for cjson), about 2.5 ms (Valkey 9, same VM).
MAX_DATA_KEYS: Final = 500
MAX_SAFE_INTEGER: Final = 2**53 - 1
MAX_USER_AGENT_LENGTH: Final = 256
# The id of a session that belongs to no user (data kept before login). No user may
# have it; Node's redis-sessions reads such a session with this id.
ANONYMOUS_ID: Final = "_anonymous"

_APP = re.compile(r"[A-Za-z0-9_-]{3,20}")
_TOKEN = re.compile(r"[A-Za-z0-9]{64}")
# C0, DEL and C1 controls: they break logs and line-based tools that read ids.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# One triple per changed key: (key, key as JSON, value as JSON or "" to delete).
DataPatch = list[tuple[str, str, str]]


def _present(value: object, item: str) -> None:
    if value is None or value == "":
        raise MissingParameterError(f"No {item} supplied")


def validate_app(app: object) -> str:
    _present(app, "app")
    if not isinstance(app, str) or _APP.fullmatch(app) is None:
        raise InvalidFormatError("Invalid app format")
    return app


def is_token(text: str) -> bool:
    """Whether `text` has a token's form (a check without an error, for hot paths)."""
    return _TOKEN.fullmatch(text) is not None


def validate_token(token: object) -> str:
    _present(token, "token")
    if not isinstance(token, str) or not is_token(token):
        raise InvalidFormatError("Invalid token format")
    return token


def _text_item(value: object, item: str, max_length: int) -> str:
    _present(value, item)
    # Length first: a huge value is refused without scanning it.
    if not isinstance(value, str) or len(value) > max_length or _CONTROL.search(value):
        raise InvalidFormatError(f"Invalid {item} format")
    _require_utf8(value, f"Invalid {item} format")
    return value


def validate_id(id: object) -> str:
    id = _text_item(id, "id", MAX_ID_LENGTH)
    if id == ANONYMOUS_ID:
        raise InvalidValueError(
            f"id {ANONYMOUS_ID!r} is reserved for sessions that belong to no user"
        )
    return id


def validate_user_agent(user_agent: object) -> str:
    """A user agent to record beside a session ('' for none); the web layer trims what
    a client sends to fit before it gets here."""
    if user_agent == "":
        return ""
    return _text_item(user_agent, "user agent", MAX_USER_AGENT_LENGTH)


def validate_ip(ip: object) -> str:
    return _text_item(ip, "ip", MAX_IP_LENGTH)


def validate_ttl(ttl: object, item: str = "ttl") -> int:
    # bool is an int in Python; `ttl=True` is a mistake, not one second.
    if not is_int(ttl) or ttl < MIN_TTL:
        raise InvalidValueError(f"{item} must be a positive integer >= {MIN_TTL}")
    if ttl > MAX_TTL:
        raise InvalidValueError(f"{item} must be at most {MAX_TTL} (one year)")
    return ttl


def validate_delta_time(delta_time: object) -> int:
    return validate_ttl(delta_time, "delta_time")


def validate_no_resave(no_resave: object) -> bool:
    if not isinstance(no_resave, bool):
        raise InvalidValueError("no_resave must be a boolean")
    return no_resave


def _require_utf8(text: str, message: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidFormatError(message) from None


# A JSON string literal, and the brackets it may hold, as JSON escapes.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_ESCAPED_BRACKETS = str.maketrans({"[": "\\u005b", "]": "\\u005d", "{": "\\u007b", "}": "\\u007d"})


def _escape_brackets(match: re.Match[str]) -> str:
    return match.group().translate(_ESCAPED_BRACKETS)


def dump_value(value: Any) -> str:
    """The JSON text of a value as stored (and as indexed for references).

    Inside a list or an object, brackets in strings are written as JSON escapes (the
    same value to every reader): the merge script finds where such a value ends with
    one balanced match in C, which brackets inside strings would throw off.
    """
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if isinstance(value, list | dict) and '"' in text:
        text = _JSON_STRING.sub(_escape_brackets, text)
    return text


def _dump_object(members: list[tuple[str, str]]) -> str:
    """The JSON object of (key as JSON, value as JSON) members."""
    return "{" + ",".join(f"{raw_key}:{raw}" for raw_key, raw in members) + "}"


def _check_scalar(path: str, value: object) -> bool:
    """Whether `value` is a scalar (checked); False for a list or an object."""
    if value is None or isinstance(value, str | bool):
        return True
    if isinstance(value, int):
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return True
        raise InvalidValueError(
            f"{path} is outside the integers a JSON number keeps exact (|n| <= 2**53 - 1)"
        )
    if isinstance(value, float):
        if math.isfinite(value):
            return True
        raise InvalidValueError(f"{path} must be a finite number")
    if isinstance(value, list | dict):
        return False
    raise InvalidValueError(
        f"{path} has a forbidden type. Only strings, numbers, booleans, null, lists and "
        "objects (dicts with string keys) are allowed."
    )


def _check_value(key: str, value: object) -> None:
    """One value of `d`, at any depth: iterative, so no value can exhaust the stack,
    and bounded by MAX_DATA_DEPTH (`d` itself is level 1), so a cycle is refused too."""
    pending: list[tuple[str, object, int]] = [(f"d.{key}", value, 2)]
    while pending:
        path, item, depth = pending.pop()
        if _check_scalar(path, item):
            continue
        if depth > MAX_DATA_DEPTH:
            raise InvalidValueError(f"{path} nests deeper than {MAX_DATA_DEPTH} levels")
        if isinstance(item, list):
            pending.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(item))
            continue
        assert isinstance(item, dict)
        for name, child in item.items():
            if not isinstance(name, str):
                raise InvalidValueError(
                    f"{path} has a key of type {type(name).__name__}; object keys must be "
                    "strings (JSON would turn it into one)"
                )
            pending.append((f"{path}.{name}", child, depth + 1))


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidValueError(f"d keys must be strings, got {type(key).__name__}")
    if key == "":
        raise InvalidValueError("d keys must not be empty")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidValueError(f"d key {key!r} is not valid Unicode") from None
    return key


def validate_data_item(key: object, value: object) -> None:
    """The rule for one key of `d`, for code that builds `d` one key at a time."""
    key = _check_key(key)
    _check_value(key, value)
    if isinstance(value, str | list | dict):
        _check_size(_dump_object([(dump_value(key), dump_value(value))]))


def _checked_items(d: object) -> list[tuple[str, Any]]:
    if d is None:
        raise MissingParameterError("No d supplied")
    if not isinstance(d, Mapping):
        raise InvalidValueError("d must be an object")
    if len(d) == 0:
        raise InvalidValueError("d must contain at least one key")
    if len(d) > MAX_DATA_KEYS:
        raise InvalidValueError(f"d has {len(d)} keys; at most {MAX_DATA_KEYS} are allowed")
    items = list(d.items())
    for key, value in items:
        _check_value(_check_key(key), value)
    return items


def _check_size(encoded: str) -> None:
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidValueError(
            "d holds text that is not valid Unicode (a lone surrogate)"
        ) from None
    if size > MAX_DATA_BYTES:
        raise InvalidValueError(f"d is {size} bytes as JSON; at most {MAX_DATA_BYTES} are allowed")


def encode_create_data(d: object) -> str:
    """The JSON stored for a new session's `d`, or "" when nothing remains.

    Keys given as None are dropped, as redis-sessions does on create.
    """
    if d is None:
        return ""
    kept = {key: value for key, value in _checked_items(d) if value is not None}
    if not kept:
        return ""
    encoded = _dump_object([(dump_value(key), dump_value(value)) for key, value in kept.items()])
    _check_size(encoded)
    return encoded


def encode_data_patch(d: object) -> DataPatch:
    """The changes a `set` applies, as JSON fragments the merge script splices in.

    Values are encoded here, not in Lua, because Lua's cjson keeps only 14 significant
    digits and would silently change large integers and precise floats.
    """
    patch: DataPatch = [
        (key, dump_value(key), "" if value is None else dump_value(value))
        for key, value in _checked_items(d)
    ]
    # Measured as the object the patch alone would store; the merged result is
    # checked again in the script, where the stored keys are known.
    _check_size(_dump_object([(raw_key, raw) for _, raw_key, raw in patch if raw]))
    return patch
