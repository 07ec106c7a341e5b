"""Loading a request's session: the credential, the cache, Redis, the `valid` hook.

A cache hit takes no await at all: no coroutine is even made for it. A miss waits up
to `unavailable_wait` for Redis. Tokens the store did not issue, or can no longer
find, give an anonymous session and clear the cookie. A Cookie header that carries
the session cookie twice (a copy planted by a sibling subdomain, say) or holds more
than MAX_COOKIE_PAIRS pairs gives an anonymous session too, without clearing
anything: neither copy can be trusted, and clearing would delete the one this site
set while the planted one stays.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from cached_sessions import SessionDict
from cached_sessions.model import FOUND

from .cookie_header import MAX_COOKIE_PAIRS, TooManyCookies, cookie_values
from .cookies import PresentedToken
from .errors import REDIS_AWAY, SessionStoreUnavailable
from .exchange import Exchange
from .options import SessionOptions
from .session import Session

__all__ = ["RETRY_PAUSE", "load_session", "maybe_await"]

log = logging.getLogger(__name__)

R = TypeVar("R")

RETRY_PAUSE = 0.1


async def maybe_await(value: object) -> object:
    """A hook's result, awaited when the hook was async."""
    return await value if inspect.isawaitable(value) else value


def _bearer(options: SessionOptions[R], authorization: str | None) -> str | None:
    """The bearer token of an `Authorization` header, when the app takes them."""
    if options.bearer and authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


def _cookie(exchange: Exchange) -> tuple[str | None, str | None]:
    """The session cookie's value, or why the Cookie header cannot be trusted to name
    one. Marks the exchange `presented` when the cookie is there."""
    try:
        values = cookie_values(exchange.cookie_header, exchange.options.cookie.name)
    except TooManyCookies:
        return None, f"Cookie header with more than {MAX_COOKIE_PAIRS} pairs"
    if len(values) > 1:
        return None, f"session cookie sent {len(values)} times (a planted copy?)"
    exchange.presented = bool(values)
    return (values[0] if values else None), None


async def _lookup(exchange: Exchange, token: str) -> tuple[SessionDict | None, str]:
    """The stored session and why not: waits up to `unavailable_wait` for Redis."""
    deadline = time.monotonic() + exchange.options.unavailable_wait
    while True:
        try:
            return await exchange.store.lookup(app=exchange.app, token=token)
        except REDIS_AWAY:
            if time.monotonic() + RETRY_PAUSE > deadline:
                raise
            await asyncio.sleep(RETRY_PAUSE)


def load_session(
    options: SessionOptions[R], request: R, exchange: Exchange, authorization: str | None
) -> Session | Awaitable[Session]:
    """The request's session, or an awaitable of it. `authorization` is its
    Authorization header.

    A cache hit with no `valid` hook to run is answered at once, without a coroutine
    (the adapter awaits only what is not a Session); everything else is left to
    `_load`. Events are left in `exchange.events` for the adapter to deliver; Redis
    away raises SessionStoreUnavailable, or gives an anonymous session marked
    `unavailable` when the app chose `on_unavailable="anonymous"`.
    """
    value, distrust = _bearer(options, authorization), None
    via_bearer = value is not None
    if value is None:
        value, distrust = _cookie(exchange)
    if distrust is not None:
        exchange.note("invalid", distrust, None)
        return Session(exchange, None, None)
    if not value:
        return Session(exchange, None, None)
    presented = options.cookie.read(value)
    if presented is None:
        # Forged, tampered or malformed: no Redis call is spent on it.
        exchange.clear_cookie()
        exchange.note("invalid", "bad format or signature", None)
        return Session(exchange, None, None)
    stored = exchange.store.cached(app=exchange.app, token=presented.token)
    if stored is None or options.valid is not None:
        return _load(options, request, exchange, presented, via_bearer, stored)
    session = Session(exchange, stored, presented.token)
    return _found(options, exchange, presented, via_bearer, session)


async def _load(
    options: SessionOptions[R],
    request: R,
    exchange: Exchange,
    presented: PresentedToken,
    via_bearer: bool,
    stored: SessionDict | None,
) -> Session:
    """The rest of `load_session`: Redis on a miss, then the `valid` hook."""
    token, status = presented.token, FOUND
    if stored is None:
        try:
            stored, status = await _lookup(exchange, token)
        except REDIS_AWAY as error:
            if options.on_unavailable != "anonymous":
                raise SessionStoreUnavailable(str(error)) from error
            log.warning("session store unavailable (%s); going on anonymous", error)
            anonymous = Session(exchange, None, None)
            anonymous.unavailable = True
            return anonymous
    if stored is None:
        exchange.clear_cookie()
        kind = "expired" if status == "expired" else "missed"
        exchange.note(kind, f"token {status}", token)
        return Session(exchange, None, None)
    session = Session(exchange, stored, token)
    valid = options.valid
    if valid is not None and not await maybe_await(valid(request, session)):
        exchange.clear_cookie()
        exchange.note("invalid", "refused by the valid() hook", token, session.user_id)
        return Session(exchange, None, None)
    return _found(options, exchange, presented, via_bearer, session)


def _found(
    options: SessionOptions[R],
    exchange: Exchange,
    presented: PresentedToken,
    via_bearer: bool,
    session: Session,
) -> Session:
    """A session found for the request: the cookie it owes, if any."""
    exchange.bearer_session = via_bearer
    cookie = options.cookie
    if options.rolling or not presented.current_signature or cookie.needs_renewal(presented):
        exchange.set_cookie(presented.token)
    return session
