"""The per-process session cache: bounded, aged, and never ahead of what Redis knows.

No I/O happens here. The store asks `hit()` first; on a miss it calls `fill()` with
the coroutine that reads Redis. The subscriber (invalidation.py) reports what it
hears: `invalidate()` for a message, `lost()` when the subscription may have missed
messages, `confirmed()` when it is subscribed again.

Entries and fills are keyed by `(app, token)`: with one app per tenant, a lookup of
the same token under another app is another session, and must never take the place
of a fill in flight, nor absorb an invalidation meant for it.

When an entry may be served (invariant 1 of the design brief):
* the subscription was confirmed before its fetch started (no fill is even tracked
  while it is not), and no invalidation for its token, nor a flush, arrived after the
  fetch started: either marks the in-flight fill stale, and a stale fill's result is
  returned to its callers but not kept;
* it is younger than `cachetime` (its `fresh_until`); at most `cachemax` entries are
  kept, the least recently used going first;
* the expiry that Redis knows (`deadline`) is more than `guard` seconds away, where
  `guard` covers the touch interval. A session near its end is read from Redis, whose
  read also slides it, so a session in active use never expires because it was served
  from here, and an expired one is never served. With an absolute lifetime (the
  store's `max_lifetime`) the deadline never passes the session's end (`end`), which
  no touch moves.

Hits are activity: each one is counted on its entry and listed in `dirty`, which the
touch flusher (touch.py) drains in batches.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .model import Fetched, SessionDict

__all__ = ["CachedEntry", "SessionCache"]

log = logging.getLogger(__name__)

Fetch = Callable[[], Awaitable[Fetched]]
Key = tuple[str, str]  # (app, token)
NO_END: Final = math.inf  # an entry's `end` when the store has no max_lifetime


class CachedEntry:
    """One cached session: its fields, the hits not yet written, and its deadline."""

    __slots__ = (
        "app", "data", "deadline", "end", "fresh_until", "id", "ip", "last_access", "nested",
        "no_resave", "pending", "r", "token", "ttl", "w",
    )  # fmt: skip

    def __init__(
        self, app: str, token: str, session: SessionDict, started: float, cachetime: float = 0
    ) -> None:
        self.app = app
        self.token = token
        self.id = session["id"]
        self.r = session["r"] + 1  # the fetch itself was a read
        self.w = session["w"]
        self.ip = session["ip"]
        self.ttl = session["ttl"]  # remaining for no_resave, full otherwise
        self.no_resave = session.get("no_resave", False)
        self.data: dict[str, Any] | None = session.get("d")
        # A list or an object in `d` is copied deeply on each hit; flat data, shallowly.
        self.nested = self.data is not None and any(
            isinstance(value, list | dict) for value in self.data.values()
        )
        self.last_access = started
        # The absolute end (max_lifetime), which no touch moves; inf without one.
        ends_in = session.get("ends_in")
        self.end = NO_END if ends_in is None else started + ends_in
        # The fetch's own read moved Redis' expiry to (at least) this point.
        self.deadline = min(started + self.ttl, self.end)
        # Served until then at most (`cachetime` after its fetch started).
        self.fresh_until = started + cachetime
        self.pending = 0

    def view(self, now: float) -> SessionDict:
        """The dict a hit returns: a copy, so a caller's change never reaches the cache."""
        session: SessionDict = {
            "id": self.id,
            "r": self.r,
            "w": self.w,
            "ttl": int(self.deadline - now) if self.no_resave else self.ttl,
            "idle": int(now - self.last_access),
            "ip": self.ip,
        }
        if self.data is not None:
            # Scalars are immutable: a shallow copy suffices unless a value nests.
            session["d"] = copy.deepcopy(self.data) if self.nested else self.data.copy()
        if self.no_resave:
            session["no_resave"] = True
        if self.end != NO_END:
            session["ends_in"] = int(self.end - now)
        return session


class _Fill:
    """A fetch in flight; `stale` once its token was invalidated after it started."""

    __slots__ = ("app", "stale", "started", "task")

    def __init__(self, app: str, started: float) -> None:
        self.app = app
        self.started = started
        self.stale = False
        self.task: asyncio.Task[Fetched] | None = None


class SessionCache:
    """A bounded LRU cache of aged sessions, guarded by the subscription state.

    The entries live in an OrderedDict, whose LRU bookkeeping (`move_to_end`,
    `popitem`) runs in C: a hit is one lookup, one clock read and a few comparisons.
    Each entry carries its own `fresh_until`; one found past it is dropped then, and
    one never asked for again leaves with the least recently used (cachetools'
    TTLCache, used before, spent about 2.7 µs of Python per hit on its timer and
    expiry links, more than the rest of the hit).
    """

    def __init__(
        self,
        *,
        maxsize: int,
        ttl: float,
        guard: float,
        timer: Callable[[], float],
    ) -> None:
        self._entries: OrderedDict[Key, CachedEntry] = OrderedDict()
        self._maxsize: Final = maxsize
        self._ttl: Final = ttl
        self._guard: Final = guard
        self.timer: Final = timer
        self._fills: dict[Key, _Fill] = {}
        # Every fetch task still running, also those a flush stopped tracking by token.
        self._running: set[asyncio.Task[Fetched]] = set()
        # False while the subscription is not confirmed: the cache is bypassed.
        self._subscribed = False
        self.dirty: dict[Key, CachedEntry] = {}
        self.hits = 0
        self.misses = 0
        self.bypassed = 0
        self.coalesced = 0
        self.fills = 0
        self.fills_refused = 0
        self.invalidations = 0
        self.invalidation_drops = 0
        # time.monotonic() of the last entry a message dropped: one clock for every
        # process of the machine, so another process can time the propagation.
        self.last_invalidation_drop: float | None = None
        self.local_drops = 0
        self.touches_flushed = 0
        self.touch_errors = 0
        self.flushes: Counter[str] = Counter()

    def __len__(self) -> int:
        """The entries still fresh (those past it are dropped here: a rare call)."""
        now = self.timer()
        for key in [key for key, entry in self._entries.items() if now >= entry.fresh_until]:
            del self._entries[key]
        return len(self._entries)

    def _fresh(self, key: Key) -> CachedEntry | None:
        """The entry while it is fresh; counts no hit and keeps the LRU order."""
        entry = self._entries.get(key)
        return entry if entry is not None and self.timer() < entry.fresh_until else None

    def holds(self, app: str, token: str) -> bool:
        """Whether the session is cached; counts no hit and keeps the LRU order."""
        return self._fresh((app, token)) is not None

    def known_id(self, app: str, token: str) -> str | None:
        """The user id of a cached session, for a caller that can use it as a hint
        (it may be stale: the session may have been killed since)."""
        entry = self._fresh((app, token))
        return None if entry is None else entry.id

    def holds_token(self, token: str) -> bool:
        """Whether any app's session of this token is cached (for tests and tools)."""
        return any(key[1] == token and self.holds(*key) for key in list(self._entries))

    # The hot path

    def hit(self, app: str, token: str) -> SessionDict | None:
        """The cached session, or None to go to Redis. No I/O, no await."""
        if not self._subscribed or type(token) is not str:
            return None
        key = (app, token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self.timer()
        if now >= entry.fresh_until:
            del self._entries[key]  # aged out: the fill that follows replaces it
            return None
        if now + self._guard >= entry.deadline:
            return None
        self._entries.move_to_end(key)
        entry.pending += 1
        session = entry.view(now)
        entry.r += 1
        entry.last_access = now
        self.dirty[key] = entry
        self.hits += 1
        return session

    # Misses

    async def fill(self, app: str, token: str, fetch: Fetch) -> Fetched:
        """Read through: one fetch per token at a time, kept only if still valid."""
        if not self._subscribed:
            self.bypassed += 1
            return await fetch()
        key = (app, token)
        fill = self._fills.get(key)
        if fill is not None:
            self.coalesced += 1
            session = await asyncio.shield(self._task(fill))
            if isinstance(session, dict):
                self._count_joined_read(key, session)
            return _copy(session)
        self.misses += 1
        fill = _Fill(app, self.timer())
        fill.task = asyncio.create_task(self._fill(fill, key, fetch), name="cached-sessions fill")
        self._running.add(fill.task)
        fill.task.add_done_callback(self._running.discard)
        self._fills[key] = fill
        return _copy(await asyncio.shield(fill.task))

    async def _fill(self, fill: _Fill, key: Key, fetch: Fetch) -> Fetched:
        try:
            session = await fetch()
        finally:
            if self._fills.get(key) is fill:
                del self._fills[key]
        if not isinstance(session, dict):
            return session  # unknown, killed or expired: nothing to keep
        if fill.stale:
            self.fills_refused += 1
            return session
        self._keep(key, CachedEntry(fill.app, key[1], session, fill.started, self._ttl))
        self.fills += 1
        return session

    def _keep(self, key: Key, entry: CachedEntry) -> None:
        entries = self._entries
        entries[key] = entry
        entries.move_to_end(key)  # a key kept again is the most recent one
        while len(entries) > self._maxsize:
            entries.popitem(last=False)

    def _count_joined_read(self, key: Key, session: SessionDict) -> None:
        # A read that shared another's fetch is still a read: count it like a hit.
        entry = self._entries.get(key)
        if entry is not None:
            entry.r += 1
        else:
            entry = self.dirty.get(key) or CachedEntry(*key, session, self.timer())
        entry.pending += 1
        self.dirty[key] = entry

    @staticmethod
    def _task(fill: _Fill) -> asyncio.Task[Fetched]:
        assert fill.task is not None
        return fill.task

    # What the subscriber and the writers report

    def invalidate(self, app: str, token: str) -> None:
        """Another process (or this one) changed or removed the session."""
        self.invalidations += 1
        if self._forget((app, token)):
            self.invalidation_drops += 1
            self.last_invalidation_drop = time.monotonic()

    def drop(self, app: str, token: str) -> None:
        """This process wrote the session: read-your-writes from here on."""
        self.local_drops += 1
        self._forget((app, token))

    def drop_where(
        self,
        app: str,
        id: str | None = None,
        *,
        field: str | None = None,
        value: Any = None,
        spare: str | None = None,
    ) -> None:
        """This process killed every session of an app, of one id, or of one reference
        (all but the one of token `spare`)."""
        doomed = [
            key
            for key, entry in self._entries.items()
            if entry.app == app
            and key[1] != spare
            and (id is None or entry.id == id)
            and (field is None or (entry.data or {}).get(field) == value)
        ]
        for key in doomed:
            self.drop(*key)
        # The id of a session still in flight is unknown: refuse every fill of the app.
        for key in [key for key, fill in self._fills.items() if fill.app == app]:
            self._fills.pop(key).stale = True

    def _forget(self, key: Key) -> bool:
        """Drop the entry and make its fill stale; whether an entry was held."""
        entry = self._entries.pop(key, None)
        held = entry is not None and self.timer() < entry.fresh_until
        fill = self._fills.pop(key, None)
        if fill is not None:
            fill.stale = True
        return held

    def lost(self, reason: str) -> None:
        """The subscription may have missed messages: forget everything, bypass."""
        self.flush(reason)
        self._subscribed = False

    def confirmed(self) -> None:
        """Subscribed (again): fills from now on may be kept."""
        # lost() already emptied the cache and made every fill in flight stale, and
        # nothing is kept while bypassed: whatever is cached from now on is fresh.
        self._subscribed = True

    async def aclose(self) -> None:
        """Cancel the fetches still in flight and wait for them: the store is closing."""
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def flush(self, reason: str) -> None:
        self.flushes[reason] += 1
        self._entries.clear()
        for fill in self._fills.values():
            fill.stale = True
        self._fills.clear()
        log.info("session cache flushed (%s)", reason)

    # Touches

    def take_dirty(self) -> list[tuple[CachedEntry, int, float]]:
        """The hits to write: (entry, reads, timer value of the last read)."""
        batch = [(entry, entry.pending, entry.last_access) for entry in self.dirty.values()]
        self.dirty = {}
        for entry, _, _ in batch:
            entry.pending = 0
        return batch

    def touched(self, entry: CachedEntry, last_access: float) -> None:
        """Redis now knows of reads up to `last_access`: the deadline moves."""
        if not entry.no_resave:
            entry.deadline = min(max(entry.deadline, last_access + entry.ttl), entry.end)

    def untouched(self, entry: CachedEntry, reads: int) -> None:
        """A touch could not be written: keep its reads for the next batch."""
        entry.pending += reads
        self.dirty.setdefault((entry.app, entry.token), entry)

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "subscribed": self._subscribed,
            "entries": len(self),
            "hits": self.hits,
            "misses": self.misses,
            "bypassed": self.bypassed,
            "coalesced": self.coalesced,
            "fills": self.fills,
            "fills_refused": self.fills_refused,
            "invalidations": self.invalidations,
            "invalidation_drops": self.invalidation_drops,
            "last_invalidation_drop": self.last_invalidation_drop,
            "local_drops": self.local_drops,
            "flushes": sum(self.flushes.values()),
            "flush_reasons": dict(self.flushes),
            "touches_pending": len(self.dirty),
            "touches_flushed": self.touches_flushed,
            "touch_errors": self.touch_errors,
        }


def _copy(session: Fetched) -> Fetched:
    if not isinstance(session, dict):
        return session
    copied = session.copy()
    if "d" in session:
        data = session["d"]
        nested = any(isinstance(value, list | dict) for value in data.values())
        copied["d"] = copy.deepcopy(data) if nested else data.copy()
    return copied
