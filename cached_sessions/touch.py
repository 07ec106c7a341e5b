"""Writes the reads a cache served back to Redis, in pipelined batches.

A hit costs no I/O, yet it is activity: redis-sessions counts reads in `r` and slides
the expiry on each one. The flusher drains the cache's dirty entries every `interval`
seconds and sends one call of the touch function (FCALL, or EVALSHA) per session, all
of a batch in one round trip (on a cluster, one per node, the nodes at once). Nothing is
published: only counters and scores change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .cache import CachedEntry, SessionCache
from .invalidation import raise_if_cancelling
from .keys import Layout, touched_keys
from .scripts import Scripts, missing_code

__all__ = ["TouchFlusher"]

log = logging.getLogger(__name__)

BATCH = 1000

Touch = tuple[CachedEntry, int, float]


class TouchFlusher:
    """Owns the periodic flush; `flush()` may also be called directly (tests, close)."""

    def __init__(
        self,
        scripts: Scripts,
        layout: Layout,
        cache: SessionCache,
        *,
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        self._scripts = scripts
        self._layout = layout
        self._cache = cache
        self._interval = interval
        self._clock = clock

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                raise_if_cancelling()
                log.warning("could not write cached reads to Redis (%s); will retry", error)

    async def flush(self) -> int:
        """Write every pending touch; returns how many sessions were touched.

        If Redis cannot be reached, the reads go back to the cache's dirty list for
        the next flush (at least once: `r` may count a read twice after a failure).
        """
        touches = self._cache.take_dirty()
        written = 0
        for start in range(0, len(touches), BATCH):
            try:
                written += await self._write(touches[start : start + BATCH])
            except BaseException:
                for entry, reads, _ in touches[start:]:
                    self._cache.untouched(entry, reads)
                self._cache.touch_errors += 1
                raise
        return written

    async def _write(self, batch: list[Touch]) -> int:
        # Timer values become wall-clock seconds once per batch (one fixed "now").
        timer_now, wall_now = self._cache.timer(), self._clock()
        calls = [(entry, reads, int(wall_now - (timer_now - last))) for entry, reads, last in batch]
        results = await self._send(calls)
        missing = [i for i, result in enumerate(results) if missing_code(result)]
        if missing:
            await self._scripts.load("touch")
            again = await self._send([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        written = 0
        for (entry, reads, last), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                log.warning("touch of one session failed: %s", result)
                self._cache.untouched(entry, reads)
                self._cache.touch_errors += 1
            else:
                self._cache.touched(entry, last)
                written += 1
        self._cache.touches_flushed += written
        return written

    async def _send(self, calls: list[tuple[CachedEntry, int, int]]) -> list[object]:
        layout = self._layout
        pipe = self._scripts.pipeline()
        for entry, reads, at in calls:
            app, token = entry.app, entry.token
            keys = touched_keys(layout, app, token, layout.bucket_of_token(token))
            self._scripts.queue(pipe, "touch", keys, [app, token, entry.id, reads, at])
        return list(await self._scripts.slots.call(pipe.execute, raise_on_error=False))
