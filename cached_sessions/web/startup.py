"""Starting the store with the app, by the failure policy.

By default an app whose Redis cannot be reached at start-up starts anyway: the store
keeps trying in the background (one warning says so), requests that need a session
get 503 with Retry-After meanwhile, and the app recovers by itself once Redis answers.
With `fail_fast=True` start-up stops instead, with one line that says why, for a
deployment that would rather restart the process (a crash-looping pod).
"""

from __future__ import annotations

from cached_sessions import RedisSessions
from cached_sessions.errors import UnreachableSinceStartError
from cached_sessions.store import UNREACHABLE

__all__ = ["logged_at_start", "start_store"]


async def start_store(store: RedisSessions, *, fail_fast: bool) -> str | None:
    """Start `store` as its app starts; None to go on serving, else why to stop.

    With `fail_fast`, the reason is one line, and the store is closed already.
    """
    if not fail_fast:
        await store.start_or_keep_trying()
        return None
    try:
        await store.start()
    except UNREACHABLE as error:
        await store.aclose()
        return f"session store {store.server} unreachable at start-up ({error}); fail_fast=True"
    return None


def logged_at_start(error: BaseException) -> bool:
    """Whether this outage is the one the store logged at start-up, so a 503 for it
    needs no log line of its own (one per request would bury that line)."""
    return isinstance(error, UnreachableSinceStartError) or isinstance(
        error.__cause__, UnreachableSinceStartError
    )
