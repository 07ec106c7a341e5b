"""Sessions for aiohttp: `setup_sessions(app, store, ...)` and `get_session(request)`.

The token travels in a cookie (optionally signed) or, for API clients, in an
`Authorization: Bearer` header. The session is loaded on the first
`get_session(request)`; its changes are written once, before the response headers go
out, for every kind of response: returned, streamed, a file, a WebSocket, or an
`HTTPException` raised by the handler (a redirect after login). Tokens the store did
not issue, or can no longer find, give an anonymous session and clear the cookie.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http.cookies import Morsel
from typing import Final, Literal

from aiohttp import hdrs, web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cached_sessions import RedisSessions, SessionsError
from cached_sessions.validation import validate_app, validate_token

from .session import Session
from .signing import TokenSigner

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
OnUnavailable = Literal["error", "anonymous"]

UNAVAILABLE_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
RETRY_AFTER_SECONDS = 1


class SessionStoreUnavailable(Exception):
    """Redis could not be reached; the middleware answers 503 with Retry-After."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    store: RedisSessions
    app_name: AppName
    cookie_name: str
    secure: bool
    httponly: bool
    samesite: str | None
    domain: str | None
    path: str
    max_age: int | None
    signer: TokenSigner | None
    bearer: bool
    on_unavailable: OnUnavailable
    ttl: int


CONFIG_KEY: Final = web.AppKey("cached_sessions.config", SessionConfig)


class RequestState:
    """What one request knows about its session and owes its cookie."""

    __slots__ = ("_app", "_cookie", "committed", "config", "presented", "request", "session")

    def __init__(self, config: SessionConfig, request: web.Request) -> None:
        self.config = config
        self.request = request
        self.session: Session | None = None
        self.presented = False  # the request carried a session cookie
        self.committed = False
        self._app: str | None = None
        # None: leave the cookie alone; "": clear it; else: the value to set.
        self._cookie: str | None = None

    @property
    def store(self) -> RedisSessions:
        return self.config.store

    @property
    def app(self) -> str:
        if self._app is None:
            name = self.config.app_name
            self._app = validate_app(name(self.request) if callable(name) else name)
        return self._app

    def client_ip(self) -> str:
        remote = self.request.remote or "unknown"
        return remote[:39]

    def set_cookie(self, token: str) -> None:
        signer = self.config.signer
        self._cookie = signer.sign(token) if signer else token

    def clear_cookie(self) -> None:
        self._cookie = "" if self.presented or self._cookie else None

    def cookie_header(self) -> str | None:
        if self._cookie is None:
            return None
        config = self.config
        morsel: Morsel[str] = Morsel()
        morsel.set(config.cookie_name, self._cookie, self._cookie)
        morsel["path"] = config.path
        if config.domain:
            morsel["domain"] = config.domain
        if config.secure:
            morsel["secure"] = True
        if config.httponly:
            morsel["httponly"] = True
        if config.samesite:
            morsel["samesite"] = config.samesite
        if self._cookie == "":
            morsel["max-age"] = "0"
            morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
        elif config.max_age is not None:
            morsel["max-age"] = str(config.max_age)
            morsel["expires"] = formatdate(time.time() + config.max_age, usegmt=True)
        return morsel.OutputString()


STATE_KEY: Final = web.RequestKey("cached_sessions.request_state", RequestState)


def _presented_token(state: RequestState) -> tuple[str, bool] | None:
    """The token the request carries and whether its signature is current, or None."""
    config, request = state.config, state.request
    value: str | None = None
    if config.bearer:
        scheme, _, credentials = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            value = credentials.strip()
    if value is None:
        value = request.cookies.get(config.cookie_name)
        state.presented = value is not None
    if not value:
        return None
    current = True
    if config.signer is not None:
        verified = config.signer.verify(value)
        if verified is None:
            return None
        value, current = verified
    try:
        return validate_token(value), current
    except SessionsError:
        return None


async def _load(state: RequestState) -> Session:
    presented = _presented_token(state)
    if presented is None:
        if state.presented:
            state.clear_cookie()  # forged, tampered or malformed: no Redis call spent
        return Session(state, None, None)
    token, current = presented
    try:
        stored = await state.store.get(app=state.app, token=token)
    except UNAVAILABLE_ERRORS as error:
        if state.config.on_unavailable == "anonymous":
            log.warning("session store unavailable (%s); going on anonymous", error)
            session = Session(state, None, None)
            session.unavailable = True
            return session
        raise SessionStoreUnavailable(str(error)) from error
    if stored is None:
        state.clear_cookie()  # unknown, expired or killed
        return Session(state, None, None)
    if not current:
        state.set_cookie(token)  # signed with an older secret: sign it with the first
    return Session(state, stored, token)


async def get_session(request: web.Request) -> Session:
    """The request's session, loaded from Redis on the first call."""
    state = request.get(STATE_KEY)
    if state is None:
        raise RuntimeError("no session middleware: call setup_sessions(app, store, ...) first")
    if state.session is None:
        state.session = await _load(state)
    session: Session = state.session
    return session


def get_store(request: web.Request) -> RedisSessions:
    """The app's store, to manage other users' sessions."""
    config: SessionConfig = request.config_dict[CONFIG_KEY]
    return config.store


async def _commit(state: RequestState, response: web.StreamResponse) -> None:
    """Save the changes and set the cookie, once, before the headers are sent."""
    if state.committed:
        return
    state.committed = True
    session = state.session
    if session is not None and session.changed:
        await session.save()
    header = state.cookie_header()
    if header is not None:
        response.headers.add(hdrs.SET_COOKIE, header)


def _unavailable(error: BaseException) -> web.Response:
    log.warning("session store unavailable: %s", error)
    return web.Response(
        status=503,
        text="The session store is unavailable. Please retry in a moment.\n",
        headers={hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)},
    )


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = RequestState(request.config_dict[CONFIG_KEY], request)
    request[STATE_KEY] = state
    try:
        response = await handler(request)
        if not response.prepared:
            await _commit(state, response)
        return response
    except web.HTTPException as exc:
        try:
            await _commit(state, exc)
        except (SessionStoreUnavailable, *UNAVAILABLE_ERRORS) as error:
            return _unavailable(error)
        raise
    except (SessionStoreUnavailable, *UNAVAILABLE_ERRORS) as error:
        return _unavailable(error)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # Streamed responses, files and WebSockets are prepared inside the handler.
    state = request.get(STATE_KEY)
    if state is not None:
        await _commit(state, response)


def setup_sessions(
    app: web.Application,
    store: RedisSessions,
    *,
    app_name: AppName,
    cookie_name: str = "sid",
    secure: bool = True,
    httponly: bool = True,
    samesite: str | None = "Lax",
    domain: str | None = None,
    path: str = "/",
    max_age: int | None = None,
    secrets: Sequence[str | bytes] | None = None,
    bearer: bool = True,
    on_unavailable: OnUnavailable = "error",
    ttl: int = 7200,
) -> None:
    """Install the session middleware and tie the store's lifetime to the app's."""
    if isinstance(app_name, str):
        validate_app(app_name)
    elif not callable(app_name):
        raise TypeError("app_name must be an app name or a callable of the request")
    if on_unavailable not in ("error", "anonymous"):
        raise ValueError('on_unavailable must be "error" or "anonymous"')
    if samesite not in ("Strict", "Lax", "None", None):
        raise ValueError('samesite must be "Strict", "Lax", "None" or None')
    if samesite == "None" and not secure:
        raise ValueError('samesite="None" needs secure=True: browsers refuse it otherwise')
    if max_age is not None and (not isinstance(max_age, int) or max_age < 0):
        raise ValueError("max_age must be None (a browser-session cookie) or seconds >= 0")
    app[CONFIG_KEY] = SessionConfig(
        store=store,
        app_name=app_name,
        cookie_name=cookie_name,
        secure=secure,
        httponly=httponly,
        samesite=samesite,
        domain=domain,
        path=path,
        max_age=max_age,
        signer=TokenSigner(secrets) if secrets is not None else None,
        bearer=bearer,
        on_unavailable=on_unavailable,
        ttl=ttl,
    )
    app.middlewares.append(session_middleware)
    app.on_response_prepare.append(_on_prepare)

    async def store_lifetime(_: web.Application) -> AsyncIterator[None]:
        await store.start()
        yield
        await store.aclose()

    app.cleanup_ctx.append(store_lifetime)
