"""Key, member and channel names: the only code that knows a Redis layout.

Two layouts share one interface:

* `KeyLayout`, the redis-sessions 4.x layout for one Redis (or a Sentinel-managed
  primary): one bucket, no hash tags, `PUBLISH` on one channel. Node can share it.
* `ClusterLayout`, for Redis Cluster: every app spreads over a fixed number of
  buckets, each bucket one hash slot. A user's bucket is a stable hash of the id; a
  token carries its bucket in its first two characters. Every key of a bucket, and
  its invalidation channel, carry the bucket's hash tag, so each per-token or per-user
  call runs one script on one slot, and app-wide calls fan out over the buckets.

The scripts take every key they can know before they run as KEYS. Keys that depend on
data a script reads first (the id stored in a session, the app and token named by a
member of the expiry index, a reference value in its data) are built inside the script
from the templates below, with the placeholders `<tag>`, `<app>`, `<token>`, `<id>`,
`<field>` and `<value>`; `<tag>` is the hash tag of the script's first key, so every
key a script builds lives in the slot of the keys it declared.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import ClassVar, Final

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from .errors import ConfigurationError
from .tokens import ALPHABET, new_token
from .validation import is_int

__all__ = ["DEFAULT_BUCKETS", "ClusterLayout", "KeyLayout", "Layout"]

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BASE = len(ALPHABET)
_DIGIT: Final = {char: index for index, char in enumerate(ALPHABET)}
DEFAULT_BUCKETS: Final = 64
MAX_BUCKETS: Final = 1024  # two token characters hold 62**2 = 3844; slots, 16384

# The order in which every script receives the templates, as its first ARGV.
TEMPLATE_ORDER: Final = (
    "session",
    "app_sessions",
    "app_users",
    "user_tokens",
    "expiry_index",
    "app_member",
    "global_member",
    "channel",
    "message",
    "reference",
)


def check_buckets(buckets: object) -> None:
    """Checked on every store, not only a cluster's: a bad number is a mistake the
    day the same settings meet a cluster."""
    if not is_int(buckets):
        raise ConfigurationError("buckets must be an integer")
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ConfigurationError(f"buckets must be from 1 to {MAX_BUCKETS}, got {buckets}")


def _check_namespace(namespace: object) -> None:
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            f"namespace must be 1 to 64 characters of [A-Za-z0-9_.-], got {namespace!r}"
        )


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The redis-sessions 4.x layout under one namespace (default `rs`): one bucket."""

    namespace: str = "rs"
    cluster: ClassVar[bool] = False
    buckets: ClassVar[int] = 1
    publish: ClassVar[str] = "PUBLISH"
    strict: ClassVar[bool] = False  # scripts may write keys they did not declare

    def __post_init__(self) -> None:
        _check_namespace(self.namespace)

    def bucket_of_id(self, id: str) -> int:
        return 0

    def bucket_of_token(self, token: str) -> int:
        return 0

    def new_token(self, bucket: int) -> str:
        return new_token()

    def token_keys(self, app: str, token: str) -> list[str]:
        """The keys a call about one token declares: the session alone. Scripts build
        the others from templates, which is cheaper to send and always in place here."""
        return [self.session(app, token)]

    # Keys known before a script runs.
    def session(self, app: str, token: str) -> str:
        return f"{self.namespace}:{app}:{token}"

    def app_sessions(self, app: str, bucket: int = 0) -> str:
        return f"{self.namespace}:{app}:_sessions"

    def app_users(self, app: str, bucket: int = 0) -> str:
        return f"{self.namespace}:{app}:_users"

    def user_tokens(self, app: str, id: str) -> str:
        return f"{self.namespace}:{app}:us:{id}"

    def expiry_index(self, bucket: int = 0) -> str:
        return f"{self.namespace}:SESSIONS"

    def reference(self, app: str, field: str, value: str, bucket: int = 0) -> str:
        """The set of tokens whose data holds `field` = `value` (its JSON text)."""
        return f"{self.namespace}:{app}:ref:{field}:{value}"

    def wipe_lock(self) -> str:
        # A dash never occurs in a token, so no app's session key can be this name.
        return f"{self.namespace}:SESSIONS:wipe-lock"

    def durable_marker(self, bucket: int = 0) -> str:
        """A key durable kills write, so that WAIT has a write of theirs to wait for."""
        return f"{self.namespace}:SESSIONS:durable-mark"

    def channel(self, bucket: int = 0) -> str:
        return f"{self.namespace}:cache"

    def channels(self) -> list[str]:
        """Every channel a subscriber must listen to."""
        return [self.channel()]

    def message(self, app: str, token: str) -> str:
        """What a channel carries to drop one session from every cache."""
        return f"{app}:{token}"

    def templates(self) -> tuple[str, ...]:
        """The templates, in `TEMPLATE_ORDER`, that scripts fill for derived keys."""
        return _templates(self.namespace, self.expiry_index(), self.channel())


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """The layout for Redis Cluster: `buckets` hash slots per namespace, shared by its
    apps, so that every app (and every tenant of an app-per-tenant service) spreads
    over every shard, and one subscriber listens to a fixed set of channels.

    Each bucket's hash tag is chosen so that the buckets' slots lie evenly over the
    slot space: a cluster whose shards own equal slot ranges (as clusters are made)
    holds equal shares of the buckets, within one. Every process of a namespace must
    use the same bucket count: it decides where every user and token lives.
    """

    namespace: str = "rs"
    buckets: int = DEFAULT_BUCKETS
    cluster: ClassVar[bool] = True
    publish: ClassVar[str] = "SPUBLISH"
    strict: ClassVar[bool] = True  # scripts write only keys they declared
    _tags: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_namespace(self.namespace)
        buckets = self.buckets
        check_buckets(buckets)
        object.__setattr__(self, "_tags", tuple(_spread_tag(b, buckets) for b in range(buckets)))

    def tag(self, bucket: int) -> str:
        return self._tags[bucket]

    def slot(self, bucket: int) -> int:
        return key_slot(self._tags[bucket].encode())

    def bucket_of_id(self, id: str) -> int:
        return zlib.crc32(id.encode("utf-8")) % self.buckets

    def bucket_of_token(self, token: str) -> int:
        # Any well-formed token names some bucket; one this layout did not mint
        # simply misses there.
        return (_DIGIT[token[0]] * _BASE + _DIGIT[token[1]]) % self.buckets

    def new_token(self, bucket: int) -> str:
        return ALPHABET[bucket // _BASE] + ALPHABET[bucket % _BASE] + new_token()[2:]

    def token_keys(self, app: str, token: str) -> list[str]:
        """The keys a call about one token declares: the session and its bucket's
        indexes. On a cluster every key a script writes is declared, so that while its
        slot migrates the server checks them all before the script runs (see _lib.lua)."""
        bucket = self.bucket_of_token(token)
        return [
            self.session(app, token),
            self.app_sessions(app, bucket),
            self.app_users(app, bucket),
            self.expiry_index(bucket),
        ]

    def _prefix(self, bucket: int) -> str:
        return f"{self.namespace}:{{{self._tags[bucket]}}}"

    def session(self, app: str, token: str) -> str:
        return f"{self._prefix(self.bucket_of_token(token))}:{app}:{token}"

    def app_sessions(self, app: str, bucket: int = 0) -> str:
        return f"{self._prefix(bucket)}:{app}:_sessions"

    def app_users(self, app: str, bucket: int = 0) -> str:
        return f"{self._prefix(bucket)}:{app}:_users"

    def user_tokens(self, app: str, id: str) -> str:
        return f"{self._prefix(self.bucket_of_id(id))}:{app}:us:{id}"

    def expiry_index(self, bucket: int = 0) -> str:
        return f"{self._prefix(bucket)}:SESSIONS"

    def reference(self, app: str, field: str, value: str, bucket: int = 0) -> str:
        return f"{self._prefix(bucket)}:{app}:ref:{field}:{value}"

    def wipe_lock(self) -> str:
        return f"{self.namespace}:SESSIONS:wipe-lock"

    def durable_marker(self, bucket: int = 0) -> str:
        return f"{self._prefix(bucket)}:SESSIONS:durable-mark"

    def channel(self, bucket: int = 0) -> str:
        return f"{self._prefix(bucket)}:cache"

    def channels(self) -> list[str]:
        return [self.channel(bucket) for bucket in range(self.buckets)]

    def message(self, app: str, token: str) -> str:
        return f"{app}:{token}"

    def templates(self) -> tuple[str, ...]:
        prefix = f"{self.namespace}:{{<tag>}}"
        return _templates(prefix, f"{prefix}:SESSIONS", f"{prefix}:cache")


Layout = KeyLayout | ClusterLayout


def touched_keys(layout: Layout, app: str, token: str, bucket: int) -> list[str]:
    """The session and the three indexes an access moves (last access, user, expiry),
    in the order the scripts that touch them declare them."""
    return [
        layout.session(app, token),
        layout.app_sessions(app, bucket),
        layout.app_users(app, bucket),
        layout.expiry_index(bucket),
    ]


def _templates(prefix: str, expiry_index: str, channel: str) -> tuple[str, ...]:
    by_name = {
        "session": f"{prefix}:<app>:<token>",
        "app_sessions": f"{prefix}:<app>:_sessions",
        "app_users": f"{prefix}:<app>:_users",
        "user_tokens": f"{prefix}:<app>:us:<id>",
        "expiry_index": expiry_index,
        "app_member": "<token>:<id>",
        "global_member": "<app>:<token>:<id>",
        "channel": channel,
        "message": "<app>:<token>",
        "reference": f"{prefix}:<app>:ref:<field>:<value>",
    }
    return tuple(by_name[name] for name in TEMPLATE_ORDER)


def _spread_tag(bucket: int, buckets: int) -> str:
    """The first tag `<bucket>-<n>` whose slot lies in the bucket's share of the slots.

    About `buckets` tries per bucket, once per layout: cheap, and the same in every
    process, so every process agrees on where each bucket lives.
    """
    low = bucket * REDIS_CLUSTER_HASH_SLOTS // buckets
    high = (bucket + 1) * REDIS_CLUSTER_HASH_SLOTS // buckets
    for n in range(1_000_000):
        tag = f"{bucket}-{n}"
        if low <= key_slot(tag.encode()) < high:
            return tag
    raise AssertionError("unreachable: CRC16 covers every slot range")  # pragma: no cover
