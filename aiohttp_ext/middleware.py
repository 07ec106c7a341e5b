"""Sessions for aiohttp: `setup_sessions(app, store, ...)` and `get_session(request)`.

A thin adapter over `cached_sessions.web`: it reads what the session layer needs off
the request, and puts what it owes on the response. The token travels in a cookie
(optionally signed) or, for API clients, in an `Authorization: Bearer` header; a
request that authenticated with a bearer token is never sent a session cookie. The
session is loaded on the first `get_session(request)`; its changes are written once,
before the response headers go out, for every kind of response: returned, streamed,
a file, a WebSocket, or an `HTTPException` raised by the handler (a redirect after
login).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, Literal

from aiohttp import hdrs, web
from aiohttp.http_writer import StreamWriter
from aiohttp.typedefs import Middleware

from cached_sessions import RedisSessions
from cached_sessions.errors import UsageError
from cached_sessions.store import DEFAULT_ANONYMOUS_TTL
from cached_sessions.web import csrf
from cached_sessions.web.commit import commit, deliver_events
from cached_sessions.web.errors import (
    RETRY_AFTER_SECONDS,
    UNAVAILABLE_ERRORS,
    UNAVAILABLE_MESSAGE,
    SessionStoreUnavailable,
)
from cached_sessions.web.exchange import Exchange
from cached_sessions.web.load import load_session, maybe_await
from cached_sessions.web.options import SessionOptions, make_options
from cached_sessions.web.secure_trap import warn_if_dropped
from cached_sessions.web.session import Session
from cached_sessions.web.startup import logged_at_start, start_store

from .events import SessionEvents

__all__ = [
    "SessionConfig",
    "SessionStoreUnavailable",
    "get_session",
    "get_store",
    "setup_sessions",
]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AppName = str | Callable[[web.Request], str]
Ttl = int | Callable[[web.Request], int]
ValidHook = Callable[[web.Request, Session], bool | Awaitable[bool]]
BeforeSaveHook = Callable[[web.Request, Session], Awaitable[None] | None]
ErrorHandler = Callable[
    [web.Request, Exception], web.StreamResponse | Awaitable[web.StreamResponse]
]
OnUnavailable = Literal["error", "anonymous"] | ErrorHandler

SessionConfig = SessionOptions[web.Request]
"""The app's checked options (`app[CONFIG_KEY]`)."""

CONFIG_KEY: Final = web.AppKey("cached_sessions.config", SessionOptions)


class RequestState:
    """What one request holds of its session: the request owns its state
    (`request[STATE_KEY]`), the state its Session and Exchange, the Session its
    Exchange; nothing links back to the request, so nothing here is a cycle."""

    __slots__ = ("committed", "compressed", "exchange", "options", "session")

    def __init__(self, options: SessionConfig) -> None:
        self.options = options
        self.exchange: Exchange | None = None
        self.session: Session | None = None
        self.committed = False
        self.compressed: str | None = None  # a prepared response's failed coding

    def owes_commit(self) -> bool:
        session, exchange = self.session, self.exchange
        return session is not None and exchange is not None and exchange.owes_commit(session)


STATE_KEY: Final = web.RequestKey("cached_sessions.request_state", RequestState)


async def get_session(request: web.Request) -> Session:
    """The request's session, loaded from Redis on the first call."""
    state: RequestState | None = request.get(STATE_KEY)
    if state is None:
        raise UsageError("no session middleware: call setup_sessions(app, store, ...) first")
    session: Session | None = state.session
    if session is not None:
        return session
    options = state.options
    headers = request.headers
    exchange = Exchange(
        options,  # type: ignore[arg-type]
        app=options.app_for(request),
        client_ip=request.remote or "unknown",
        ttl=options.ttl_for(request),
        cookie_header=headers.get(hdrs.COOKIE),
        user_agent=headers.get(hdrs.USER_AGENT),
    )
    state.exchange = exchange
    loaded = load_session(options, request, exchange, headers.get(hdrs.AUTHORIZATION))
    # A cache hit comes back as the Session itself: no coroutine to await.
    session = loaded if isinstance(loaded, Session) else await loaded
    state.session = session
    if exchange.events:
        await deliver_events(options, request, exchange)
    return session


def get_store(request: web.Request) -> RedisSessions:
    """The app's store, to manage other users' sessions."""
    return request.config_dict[CONFIG_KEY].store


async def _commit(state: RequestState, request: web.Request, response: web.StreamResponse) -> None:
    """Save the changes and set the cookies, once, before the headers are sent."""
    state.committed = True
    session, exchange = state.session, state.exchange
    if session is None or exchange is None:
        return
    for header in await commit(state.options, request, exchange, session):
        response.headers.add(hdrs.SET_COOKIE, header)
    if exchange.sets_cookie():
        warn_if_dropped(state.options.cookie.secure, request.scheme, request.host)


async def _unavailable(request: web.Request, error: Exception) -> web.StreamResponse:
    handler = request.config_dict[CONFIG_KEY].on_unavailable
    if callable(handler):
        response = await maybe_await(handler(request, error))
        assert isinstance(response, web.StreamResponse), "on_unavailable must return a response"
        return response
    if not logged_at_start(error):
        log.warning("session store unavailable: %s", error)
    response = web.Response(
        status=503,
        text=UNAVAILABLE_MESSAGE,
        headers={hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)},
    )
    state = request.get(STATE_KEY)
    if state is not None and state.compressed is not None:
        _compress_like_the_failed_response(response, state.compressed)
    return response


def _compress_like_the_failed_response(response: web.Response, coding: str) -> None:
    """A prepared response turned compression on for the connection, and aiohttp has
    no public way to turn it off: the 503 is compressed the same way (and chunked,
    so that the connection's compressor, not the response's own, encodes it)."""
    response.enable_chunked_encoding()
    response.enable_compression(web.ContentCoding(coding))


async def _csrf_refusal(state: RequestState, request: web.Request) -> web.StreamResponse | None:
    """None if this unsafe request may go on, else the answer that refuses it."""
    session = await get_session(request)
    assert state.exchange is not None
    if state.exchange.bearer_session:
        return None  # authenticated by a header that a cross-site page cannot send
    headers = request.headers
    why = csrf.cross_origin(
        headers.get("Origin"),
        headers.get("Sec-Fetch-Site"),
        request.host,
        request.scheme,
        state.options.trusted_origins,
    )
    if why is not None:
        return web.Response(status=403, text=csrf.cross_site_refusal(why))
    token: object = headers.get(csrf.HEADER)
    if token is None and request.content_type in csrf.FORM_TYPES:
        try:
            token = (await request.post()).get(csrf.FORM_FIELD)
        except web.HTTPException:
            raise  # too large (413): aiohttp's own answer
        except Exception as error:  # the client's body, as aiohttp parses it: bad input
            return web.Response(status=400, text=csrf.unreadable_form(error))
    if await session.verify_csrf(token):
        return None
    return web.Response(status=403, text=csrf.MISSING_TOKEN)


def _session_middleware(options: SessionConfig) -> Middleware:
    # The options are bound here rather than looked up per request (config_dict builds
    # a chain of the app's parents each time): a cache hit is a few µs in all.
    checks_csrf = options.csrf

    @web.middleware
    async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        state = RequestState(options)
        request[STATE_KEY] = state
        try:
            refusal = None
            if checks_csrf and request.method not in csrf.SAFE_METHODS:
                refusal = await _csrf_refusal(state, request)
            response = refusal if refusal is not None else await handler(request)
            if not state.committed and not response.prepared:
                if state.owes_commit():
                    await _commit(state, request, response)
                state.committed = True  # the prepare hook has nothing left to do
            return response
        except web.HTTPException as exc:
            try:
                if not state.committed:
                    await _commit(state, request, exc)
            except UNAVAILABLE_ERRORS as error:
                return await _unavailable(request, error)
            raise
        except UNAVAILABLE_ERRORS as error:
            return await _unavailable(request, error)
        finally:
            exchange = state.exchange
            if exchange is not None and exchange.events:
                await deliver_events(options, request, exchange)

    return session_middleware


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # Streamed responses, files and WebSockets are prepared inside the handler.
    state = request.get(STATE_KEY)
    if state is None or state.committed:
        return
    try:
        await _commit(state, request, response)
    except UNAVAILABLE_ERRORS:
        # Nothing has been sent yet, and the middleware answers 503 instead; but this
        # response already set the connection's writer up for its own body: `chunked`
        # (a public attribute) is undone here, compression by the 503 itself.
        writer = request.writer
        if isinstance(writer, StreamWriter):
            writer.chunked = False
        if response.compression:
            state.compressed = response.headers.get(hdrs.CONTENT_ENCODING)
        raise


def setup_sessions(
    app: web.Application,
    store: RedisSessions,
    *,
    app_name: AppName,
    cookie_name: str | None = None,
    secure: bool = True,
    httponly: bool = True,
    samesite: str | None = "Lax",
    domain: str | None = None,
    path: str = "/",
    max_age: int | None = None,
    secrets: Sequence[str | bytes] | None = None,
    bearer: bool = True,
    on_unavailable: OnUnavailable = "error",
    unavailable_wait: float = 0,
    ttl: Ttl = 7200,
    rolling: bool = False,
    renew: bool = False,
    csrf: bool = False,
    csrf_cookie_name: str | None = None,
    trusted_origins: Sequence[str] = (),
    valid: ValidHook | None = None,
    before_save: BeforeSaveHook | None = None,
    references: Sequence[str] = (),
    anonymous_data: bool = True,
    anonymous_ttl: int = DEFAULT_ANONYMOUS_TTL,
    fail_fast: bool = False,
) -> SessionEvents:
    """Install the middleware, tie the store's lifetime to the app's; returns its events.

    Cookie names default to `__Host-sid` and `__Host-csrf` (with `secure` and no
    `domain`), which no sibling subdomain can plant; see `default_cookie_names`.

    With `anonymous_data` (the default) a visitor's first write stores a session that
    belongs to no user, living `anonymous_ttl` seconds idle; without, writing to an
    anonymous session raises AnonymousSessionError. See docs/sessions.md.

    A Redis unreachable at start-up gives 503s until it answers; with `fail_fast`,
    start-up ends the process instead (SystemExit with a one-line message).
    """
    events = SessionEvents(app)
    options: SessionConfig = make_options(
        store,
        events.emit,
        app_name=app_name,
        cookie_name=cookie_name,
        secure=secure,
        httponly=httponly,
        samesite=samesite,
        domain=domain,
        path=path,
        max_age=max_age,
        secrets=secrets,
        bearer=bearer,
        on_unavailable=on_unavailable,
        unavailable_wait=unavailable_wait,
        ttl=ttl,
        rolling=rolling,
        renew=renew,
        csrf=csrf,
        csrf_cookie_name=csrf_cookie_name,
        trusted_origins=trusted_origins,
        valid=valid,
        before_save=before_save,
        references=references,
        anonymous_data=anonymous_data,
        anonymous_ttl=anonymous_ttl,
        fail_fast=fail_fast,
    )
    app[CONFIG_KEY] = options
    app.middlewares.append(_session_middleware(options))
    app.on_response_prepare.append(_on_prepare)

    async def store_lifetime(_: web.Application) -> AsyncIterator[None]:
        events.freeze()
        failure = await start_store(store, fail_fast=options.fail_fast)
        if failure is not None:
            raise SystemExit(failure)  # printed as one line, exit status 1: no traceback
        yield
        await store.aclose()

    app.cleanup_ctx.append(store_lifetime)
    return events
