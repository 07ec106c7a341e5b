"""What goes out with a response: the session's changes, its cookies, its events.

The adapter calls `commit` once, before the response headers are sent, and puts the
Set-Cookie values it returns on the response; `deliver_events` hands the events the
request's operations left in its Exchange to the app's callbacks.
"""

from __future__ import annotations

from typing import TypeVar

from .exchange import Exchange
from .load import maybe_await
from .options import SessionOptions
from .session import Session

__all__ = ["commit", "deliver_events"]

R = TypeVar("R")


async def deliver_events(options: SessionOptions[R], request: R, exchange: Exchange) -> None:
    for event in exchange.take_events():
        await options.emit(request, event)


async def commit(
    options: SessionOptions[R], request: R, exchange: Exchange, session: Session
) -> list[str]:
    """Deliver the events, run `before_save`, write the changes; the Set-Cookie values.

    Raises what the store raises when Redis is away: the adapter answers 503 then,
    and no cookie goes out (a login that was not saved hands out no token).
    """
    await deliver_events(options, request, exchange)
    if session.wants_save():
        before_save = options.before_save
        if before_save is not None:
            await maybe_await(before_save(request, session))
        await session.save()
    return exchange.cookie_headers()
