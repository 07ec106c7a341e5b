"""Sessions for aiohttp: `setup_sessions(app, store, ...)` and `get_session(request)`.

The token travels in a cookie (optionally signed) or, for API clients, in an
`Authorization: Bearer` header; a request that authenticated with a bearer token is
never sent a session cookie. The session is loaded on the first
`get_session(request)`; its changes are written once, before the response headers go
out, for every kind of response: returned, streamed, a file, a WebSocket, or an
`HTTPException` raised by the handler (a redirect after login). Tokens the store did
not issue, or can no longer find, give an anonymous session and clear the cookie. A
Cookie header that carries the session cookie twice (a copy planted by a sibling
subdomain, say) or holds more than MAX_COOKIE_PAIRS pairs gives an anonymous session
too, without clearing anything: neither copy can be trusted, and clearing would delete
the one this site set while the planted one stays.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import hdrs, web
from aiohttp.http_writer import StreamWriter
from aiohttp.typedefs import Middleware
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cached_sessions import RedisSessions, SessionDict
from cached_sessions.model import FOUND
from cached_sessions.validation import validate_app, validate_ttl

from . import csrf
from .cookies import (
    MAX_COOKIE_PAIRS,
    CookiePolicy,
    TooManyCookies,
    check_cookie_name,
    cookie_values,
    default_cookie_names,
)
from .csrf import Origin
from .csrf import trusted_origins as checked_origins
from .errors import SessionStoreUnavailable
from .events import SessionEvent, SessionEvents, hint
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
Ttl = int | Callable[[web.Request], int]
ValidHook = Callable[[web.Request, Session], bool | Awaitable[bool]]
BeforeSaveHook = Callable[[web.Request, Session], Awaitable[None] | None]
ErrorHandler = Callable[
    [web.Request, Exception], web.StreamResponse | Awaitable[web.StreamResponse]
]
OnUnavailable = Literal["error", "anonymous"] | ErrorHandler

UNAVAILABLE_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
RETRY_AFTER_SECONDS = 1
RETRY_PAUSE = 0.1


@dataclass(frozen=True, slots=True)
class SessionConfig:
    store: RedisSessions
    app_name: AppName
    cookie: CookiePolicy
    bearer: bool
    on_unavailable: OnUnavailable
    unavailable_wait: float
    ttl: Ttl
    rolling: bool
    csrf: bool
    csrf_cookie_name: str
    trusted_origins: frozenset[Origin]
    valid: ValidHook | None
    before_save: BeforeSaveHook | None
    events: SessionEvents


CONFIG_KEY: Final = web.AppKey("cached_sessions.config", SessionConfig)


async def _maybe_await(value: object) -> object:
    return await value if inspect.isawaitable(value) else value


class RequestState:
    """What one request knows about its session and owes its cookies.

    The request owns its state (`request[STATE_KEY]`), and the state owns its Session;
    the links back (state to request, Session to state) are weak. Strong links both
    ways would make every request a reference cycle, freed only by the cyclic GC, whose
    full collections stalled the event loop under load (p99 13.7 ms against 3.9 ms).
    """

    __slots__ = (
        "__weakref__", "_app", "_cookie", "_csrf_key", "_csrf_key_new", "_request",
        "bearer_session", "committed", "config", "presented", "session", "via_bearer",
    )  # fmt: skip

    def __init__(self, config: SessionConfig, request: web.Request) -> None:
        self.config = config
        self._request = weakref.ref(request)
        self.session: Session | None = None
        self.presented = False  # the request carried a session cookie
        self.via_bearer = False  # the request carried an Authorization: Bearer token
        self.bearer_session = False  # ... and it was valid and found a live session
        self.committed = False
        self._app: str | None = None
        # None: leave the cookie alone; "": clear it; else: the token to set it to.
        self._cookie: str | None = None
        self._csrf_key: str | None = None
        self._csrf_key_new = False

    @property
    def request(self) -> web.Request:
        request = self._request()
        if request is None:
            raise RuntimeError("the request of this session has ended")
        return request

    @property
    def store(self) -> RedisSessions:
        return self.config.store

    @property
    def app(self) -> str:
        if self._app is None:
            name = self.config.app_name
            # A fixed name was validated once, by setup_sessions; a callable's each time.
            self._app = name if isinstance(name, str) else validate_app(name(self.request))
        return self._app

    def ttl(self) -> int:
        ttl = self.config.ttl
        return validate_ttl(ttl(self.request) if callable(ttl) else ttl)

    def client_ip(self) -> str:
        return (self.request.remote or "unknown")[:39]

    def set_cookie(self, token: str) -> None:
        # A bearer client keeps its token itself: a cookie would turn a credential that
        # is sent only on purpose into one the browser sends on every request.
        if not self.bearer_session:
            self._cookie = token

    def clear_cookie(self) -> None:
        self._cookie = "" if self.presented or self._cookie else None

    async def emit(
        self, kind: str, reason: str, token: str | None, user_id: str | None = None
    ) -> None:
        event = SessionEvent(kind, reason, user_id, hint(token))
        await self.config.events.emit(self.request, event)

    # CSRF

    def csrf_key(self, *, create: bool) -> str | None:
        """The key CSRF tokens of this request's session are made with (see csrf.py)."""
        session = self.session
        if session is not None and session.token is not None:
            return f"session:{session.token}"
        if self._csrf_key is None:
            self._csrf_key = self._presented_csrf_key()
        if self._csrf_key is None and create:
            self._csrf_key, self._csrf_key_new = csrf.new_key(), True
        return None if self._csrf_key is None else f"anonymous:{self._csrf_key}"

    def _presented_csrf_key(self) -> str | None:
        """The anonymous key of the CSRF cookie, if there is exactly one, verified and
        not expired (two copies: one was planted, and which is unknowable)."""
        header = self.request.headers.get(hdrs.COOKIE)
        try:
            values = cookie_values(header, self.config.csrf_cookie_name)
        except TooManyCookies:
            return None
        if len(values) != 1:
            return None
        payload: str | None = values[0]
        signer = self.config.cookie.signer
        if signer is not None:
            verified = signer.verify(values[0])
            payload = verified[0] if verified else None
        return csrf.anonymous_key(payload, time.time()) if payload else None

    def owes_commit(self) -> bool:
        """Whether the response must carry a save or a cookie (most reads owe none)."""
        session = self.session
        return (
            self._cookie is not None
            or self._csrf_key_new
            or (session is not None and session.wants_save())
        )

    def cookie_headers(self) -> list[str]:
        policy = self.config.cookie
        headers = []
        if self._cookie is not None:
            value = policy.value(self._cookie, time.time()) if self._cookie else None
            headers.append(policy.header(value))
        if self._csrf_key_new and self._csrf_key is not None:
            payload = csrf.anonymous_key_cookie(self._csrf_key, time.time())
            value = policy.signer.sign(payload) if policy.signer else payload
            name, lifetime = self.config.csrf_cookie_name, csrf.ANONYMOUS_KEY_LIFETIME
            headers.append(policy.header(value, name, max_age=lifetime))
        return headers


STATE_KEY: Final = web.RequestKey("cached_sessions.request_state", RequestState)


def _credential(state: RequestState) -> tuple[str | None, str | None]:
    """The credential the request carries (a bearer token first, else the session
    cookie), or why its Cookie header cannot be trusted to name one."""
    config, request = state.config, state.request
    if config.bearer:
        scheme, _, credentials = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            state.via_bearer = True
            return credentials.strip(), None
    try:
        values = cookie_values(request.headers.get(hdrs.COOKIE), config.cookie.name)
    except TooManyCookies:
        return None, f"Cookie header with more than {MAX_COOKIE_PAIRS} pairs"
    if len(values) > 1:
        return None, f"session cookie sent {len(values)} times (a planted copy?)"
    state.presented = bool(values)
    return (values[0] if values else None), None


async def _lookup(state: RequestState, token: str) -> tuple[SessionDict | None, str]:
    """The stored session and why not: waits up to `unavailable_wait` for Redis."""
    deadline = time.monotonic() + state.config.unavailable_wait
    while True:
        try:
            stored, status = await state.store.lookup(app=state.app, token=token)
        except UNAVAILABLE_ERRORS:
            if time.monotonic() + RETRY_PAUSE > deadline:
                raise
            await asyncio.sleep(RETRY_PAUSE)
            continue
        return stored, status


async def _load(state: RequestState) -> Session:
    value, distrust = _credential(state)
    if distrust is not None:
        await state.emit("invalid", distrust, None)
        return Session(state, None, None)
    if not value:
        return Session(state, None, None)
    presented = state.config.cookie.read(value)
    if presented is None:
        # Forged, tampered or malformed: no Redis call is spent on it.
        state.clear_cookie()
        await state.emit("invalid", "bad format or signature", None)
        return Session(state, None, None)
    token = presented.token
    # A cache hit needs no await; only a miss pays for the coroutines below.
    stored, status = state.store.cached(app=state.app, token=token), FOUND
    if stored is None:
        try:
            stored, status = await _lookup(state, token)
        except UNAVAILABLE_ERRORS as error:
            if state.config.on_unavailable != "anonymous":
                raise SessionStoreUnavailable(str(error)) from error
            log.warning("session store unavailable (%s); going on anonymous", error)
            anonymous = Session(state, None, None)
            anonymous.unavailable = True
            return anonymous
    if stored is None:
        state.clear_cookie()
        kind = "expired" if status == "expired" else "missed"
        await state.emit(kind, f"token {status}", token)
        return Session(state, None, None)
    session = Session(state, stored, token)
    config = state.config
    valid = config.valid
    if valid is not None and not await _maybe_await(valid(state.request, session)):
        state.clear_cookie()
        await state.emit("invalid", "refused by the valid() hook", token, session.user_id)
        return Session(state, None, None)
    state.bearer_session = state.via_bearer
    if config.rolling or not presented.current_signature or config.cookie.needs_renewal(presented):
        state.set_cookie(token)
    return session


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
    return request.config_dict[CONFIG_KEY].store


async def _commit(state: RequestState, response: web.StreamResponse) -> None:
    """Save the changes and set the cookies, once, before the headers are sent."""
    state.committed = True
    session = state.session
    if session is not None and session.wants_save():
        before_save = state.config.before_save
        if before_save is not None:
            await _maybe_await(before_save(state.request, session))
        await session.save()
    for header in state.cookie_headers():
        response.headers.add(hdrs.SET_COOKIE, header)


async def _unavailable(request: web.Request, error: Exception) -> web.StreamResponse:
    handler = request.config_dict[CONFIG_KEY].on_unavailable
    if callable(handler):
        response = await _maybe_await(handler(request, error))
        assert isinstance(response, web.StreamResponse), "on_unavailable must return a response"
        return response
    log.warning("session store unavailable: %s", error)
    return web.Response(
        status=503,
        text="The session store is unavailable. Please retry in a moment.\n",
        headers={hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)},
    )


async def _csrf_refusal(state: RequestState) -> web.StreamResponse | None:
    """None if this unsafe request may go on, else the answer that refuses it."""
    request = state.request
    session = await get_session(request)
    if state.bearer_session:
        return None  # authenticated by a header that a cross-site page cannot send
    why = csrf.cross_origin(request, state.config.trusted_origins)
    if why is not None:
        return web.Response(status=403, text=f"Cross-site request refused: {why}.\n")
    token: object = request.headers.get(csrf.HEADER)
    if token is None and request.content_type in csrf.FORM_TYPES:
        try:
            token = (await request.post()).get(csrf.FORM_FIELD)
        except web.HTTPException:
            raise  # too large (413): aiohttp's own answer
        except Exception as error:  # the client's body, as aiohttp parses it: bad input
            return web.Response(
                status=400,
                text=f"The form body could not be read ({type(error).__name__}: "
                f"{str(error)[:100]}); send a well-formed form, or the CSRF token in the "
                f"{csrf.HEADER} header.\n",
            )
    if await session.verify_csrf(token):
        return None
    return web.Response(
        status=403,
        text=f"CSRF token missing or invalid: send it in the {csrf.HEADER} header "
        f"or the {csrf.FORM_FIELD} form field.\n",
    )


def _session_middleware(config: SessionConfig) -> Middleware:
    # The config is bound here rather than looked up per request (config_dict builds
    # a chain of the app's parents each time): a cache hit is a few µs in all.
    checks_csrf = config.csrf

    @web.middleware
    async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        state = RequestState(config, request)
        request[STATE_KEY] = state
        try:
            refusal = None
            if checks_csrf and request.method not in csrf.SAFE_METHODS:
                refusal = await _csrf_refusal(state)
            response = refusal if refusal is not None else await handler(request)
            if not state.committed and not response.prepared:
                if state.owes_commit():
                    await _commit(state, response)
                state.committed = True  # the prepare hook has nothing left to do
            return response
        except web.HTTPException as exc:
            try:
                if not state.committed:
                    await _commit(state, exc)
            except (SessionStoreUnavailable, *UNAVAILABLE_ERRORS) as error:
                return await _unavailable(request, error)
            raise
        except (SessionStoreUnavailable, *UNAVAILABLE_ERRORS) as error:
            return await _unavailable(request, error)

    return session_middleware


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # Streamed responses, files and WebSockets are prepared inside the handler.
    state = request.get(STATE_KEY)
    if state is None or state.committed:
        return
    try:
        await _commit(state, response)
    except (SessionStoreUnavailable, *UNAVAILABLE_ERRORS):
        # Nothing has been sent yet, and the middleware answers 503 instead; but this
        # response already set the connection's writer up for its own body (chunked
        # framing, compression), which the 503 must not inherit.
        writer = request.writer
        if isinstance(writer, StreamWriter):
            writer.chunked = False
            writer._compress = None
        raise


def _cookie_names(
    session: str | None, anti_forgery: str | None, *, secure: bool, domain: str | None, path: str
) -> tuple[str, str]:
    """The two cookie names, defaulted and checked against what browsers accept."""
    default_session, default_csrf = default_cookie_names(secure, domain, path)
    session = default_session if session is None else session
    anti_forgery = default_csrf if anti_forgery is None else anti_forgery
    check_cookie_name("cookie_name", session, secure, domain, path)
    check_cookie_name("csrf_cookie_name", anti_forgery, secure, domain, path)
    if session == anti_forgery:
        raise ValueError(
            f"cookie_name and csrf_cookie_name are both {session!r}: give them different "
            "names (each would overwrite the other)"
        )
    return session, anti_forgery


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
) -> SessionEvents:
    """Install the middleware, tie the store's lifetime to the app's; returns its events.

    Cookie names default to `__Host-sid` and `__Host-csrf` (with `secure` and no
    `domain`), which no sibling subdomain can plant; see `default_cookie_names`.
    """
    if isinstance(app_name, str):
        validate_app(app_name)
    elif not callable(app_name):
        raise TypeError("app_name must be an app name or a callable of the request")
    if on_unavailable not in ("error", "anonymous") and not callable(on_unavailable):
        raise ValueError('on_unavailable must be "error", "anonymous" or a callable')
    if samesite not in ("Strict", "Lax", "None", None):
        raise ValueError('samesite must be "Strict", "Lax", "None" or None')
    if samesite == "None" and not secure:
        raise ValueError('samesite="None" needs secure=True: browsers refuse it otherwise')
    for what, attribute in (("path", path), ("domain", domain)):
        if attribute is not None and (";" in attribute or not attribute.isprintable()):
            raise ValueError(f"{what} must not hold ';' or control characters: {attribute!r}")
    domain = domain or None  # "" sets no Domain attribute either
    cookie_name, csrf_cookie_name = _cookie_names(
        cookie_name, csrf_cookie_name, secure=secure, domain=domain, path=path
    )
    if trusted_origins and not csrf:
        raise ValueError("trusted_origins is used only with csrf=True: turn csrf on or drop it")
    origins = checked_origins(trusted_origins)  # the argument `csrf` hides the module
    if max_age is not None and (not isinstance(max_age, int) or max_age < 0):
        raise ValueError("max_age must be None (a browser-session cookie) or seconds >= 0")
    if renew and max_age is None:
        raise ValueError("renew=True needs max_age: a browser-session cookie has no age")
    if not callable(ttl):
        validate_ttl(ttl)
    if unavailable_wait < 0:
        raise ValueError("unavailable_wait must be seconds >= 0")
    store.index_references(references)
    events = SessionEvents(app)
    app[CONFIG_KEY] = SessionConfig(
        store=store,
        app_name=app_name,
        cookie=CookiePolicy(
            name=cookie_name,
            secure=secure,
            httponly=httponly,
            samesite=samesite,
            domain=domain,
            path=path,
            max_age=max_age,
            signer=TokenSigner(secrets) if secrets is not None else None,
            renew=renew,
        ),
        bearer=bearer,
        on_unavailable=on_unavailable,
        unavailable_wait=float(unavailable_wait),
        ttl=ttl,
        rolling=rolling,
        csrf=csrf,
        csrf_cookie_name=csrf_cookie_name,
        trusted_origins=origins,
        valid=valid,
        before_save=before_save,
        events=events,
    )
    app.middlewares.append(_session_middleware(app[CONFIG_KEY]))
    app.on_response_prepare.append(_on_prepare)

    async def store_lifetime(_: web.Application) -> AsyncIterator[None]:
        events.freeze()
        await store.start()
        yield
        await store.aclose()

    app.cleanup_ctx.append(store_lifetime)
    return events
