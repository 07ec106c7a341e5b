"""Sessions for ASGI: `SessionMiddleware(app, store, *, app_name, ...)`, `get_session`.

A pure ASGI middleware over `cached_sessions.web`, with the keyword options of
aiohttp's `setup_sessions`: `app.add_middleware(SessionMiddleware, store=store,
app_name="shop")` in Starlette and FastAPI, or `SessionMiddleware(app, store, ...)`
around any ASGI app. `await get_session(request)` works in handlers and, as is, as a
FastAPI dependency. The changes are committed before `http.response.start` goes out
(plain, streamed and file responses alike); an exception the app does not turn into a
response still commits, and the 500 carries the cookies. A WebSocket reads its
session, and its cookies go out with the `websocket.accept`. The store starts and
closes with the app's lifespan.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, Literal

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cached_sessions import RedisSessions
from cached_sessions.errors import UsageError
from cached_sessions.store import DEFAULT_ANONYMOUS_TTL
from cached_sessions.web import csrf
from cached_sessions.web.commit import commit, deliver_events
from cached_sessions.web.errors import (
    RETRY_AFTER_SECONDS,
    UNAVAILABLE_ERRORS,
    UNAVAILABLE_MESSAGE,
)
from cached_sessions.web.exchange import Exchange
from cached_sessions.web.load import load_session, maybe_await
from cached_sessions.web.options import SessionOptions, make_options
from cached_sessions.web.secure_trap import warn_if_dropped
from cached_sessions.web.session import Session
from cached_sessions.web.startup import logged_at_start, start_store

from .events import SessionEvents

__all__ = ["SessionMiddleware", "get_session", "get_store"]

log = logging.getLogger(__name__)

STATE: Final = "cached_sessions"  # the scope key of the request's RequestState
MAX_FORM_BYTES: Final = 1024**2  # a form read for its CSRF token (aiohttp's default)

AppName = str | Callable[[HTTPConnection], str]
Ttl = int | Callable[[HTTPConnection], int]
ValidHook = Callable[[HTTPConnection, Session], bool | Awaitable[bool]]
BeforeSaveHook = Callable[[HTTPConnection, Session], Awaitable[None] | None]
ErrorHandler = Callable[[HTTPConnection, Exception], Response | Awaitable[Response]]
OnUnavailable = Literal["error", "anonymous"] | ErrorHandler
Options = SessionOptions[HTTPConnection]


class RequestState:
    """What one request holds of its session: the scope owns its state, the state its
    Session and Exchange; nothing links back to the scope."""

    __slots__ = ("committed", "exchange", "options", "session")

    def __init__(self, options: Options) -> None:
        self.options = options
        self.exchange: Exchange | None = None
        self.session: Session | None = None
        self.committed = False

    def owes(self) -> bool:
        session, exchange = self.session, self.exchange
        if session is None or exchange is None:
            return False
        return bool(exchange.events) or exchange.owes_commit(session)


async def get_session(request: HTTPConnection) -> Session:
    """The request's session, loaded from Redis on the first call (a FastAPI
    dependency as is: `session: Session = Depends(get_session)`)."""
    state: RequestState | None = request.scope.get(STATE)
    if state is None:
        raise UsageError("no session middleware: add SessionMiddleware(app, store, ...)")
    session = state.session
    if session is None:
        loaded = _load(state, request)
        # A cache hit comes back as the Session itself: no coroutine to await.
        session = loaded if isinstance(loaded, Session) else await loaded
        state.session = session
        exchange = state.exchange
        if exchange is not None and exchange.events:
            await deliver_events(state.options, request, exchange)
    return session


def get_store(request: HTTPConnection) -> RedisSessions:
    """The app's store, to manage other users' sessions."""
    state: RequestState | None = request.scope.get(STATE)
    if state is None:
        raise UsageError("no session middleware: add SessionMiddleware(app, store, ...)")
    return state.options.store


def _load(state: RequestState, request: HTTPConnection) -> Session | Awaitable[Session]:
    options = state.options
    scope = request.scope
    cookie_header, user_agent, authorization = _session_headers(scope["headers"])
    client = scope.get("client")
    exchange = Exchange(
        options,  # type: ignore[arg-type]
        app=options.app_for(request),
        client_ip=client[0] if client else "unknown",
        ttl=options.ttl_for(request),
        cookie_header=cookie_header,
        user_agent=user_agent,
    )
    state.exchange = exchange
    return load_session(options, request, exchange, authorization)


def _session_headers(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[str | None, str | None, str | None]:
    """The Cookie headers (joined), User-Agent and Authorization of a request, read in
    one pass over the scope's raw headers, whose names ASGI gives in lower case
    (Starlette's `Headers.get` scans the list once per name, raising inside for each
    one missing: several µs of a cache hit). The first of a repeated single header
    wins, as with `Headers.get`."""
    cookies: list[str] = []
    user_agent = authorization = None
    for name, value in headers:
        if name == b"cookie":
            cookies.append(value.decode("latin-1"))
        elif name == b"user-agent" and user_agent is None:
            user_agent = value.decode("latin-1")
        elif name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
    return ("; ".join(cookies) if cookies else None), user_agent, authorization


def _with_cookies(message: Message, cookies: list[str]) -> Message:
    extra = [(b"set-cookie", value.encode("latin-1")) for value in cookies]
    return {**message, "headers": [*message.get("headers", []), *extra]}


class SessionMiddleware:
    """See the module docstring; the keyword options are those of `setup_sessions`."""

    def __init__(
        self,
        app: ASGIApp,
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
        events: SessionEvents | None = None,
        fail_fast: bool = False,
    ) -> None:
        self.app = app
        self.events = events if events is not None else SessionEvents()
        self.options: Options = make_options(
            store,
            self.events.emit,
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind in ("http", "websocket"):
            await _Request(self.app, self.options, scope, receive, send).run()
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The store starts before the app's own start-up and closes after its
        shutdown. A fail-fast refusal answers `lifespan.startup.failed` before the app
        starts at all, and the server reports its one line and exits."""
        store = self.options.store
        first: Message | None = await receive()  # handed to the app in its turn
        if first is not None and first["type"] == "lifespan.startup":
            failure = await start_store(store, fail_fast=self.options.fail_fast)
            if failure is not None:
                await send({"type": "lifespan.startup.failed", "message": failure})
                return

        async def starting() -> Message:
            nonlocal first
            if first is None:
                return await receive()
            message, first = first, None
            return message

        async def closing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await store.aclose()
            await send(message)

        await self.app(scope, starting, closing)


class _Request:
    """One HTTP or WebSocket request through the middleware."""

    def __init__(
        self, app: ASGIApp, options: Options, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.app = app
        self.options = options
        self.scope = scope
        self.receive = receive
        self.send = send
        self.state = RequestState(options)
        self.replaced = False  # the app's response was replaced by a 503
        scope[STATE] = self.state

    async def run(self) -> None:
        state, scope = self.state, self.scope
        try:
            if (
                self.options.csrf
                and scope["type"] == "http"
                and scope["method"] not in csrf.SAFE_METHODS
            ):
                refusal = await self._csrf_refusal()
                if refusal is not None:
                    await refusal(scope, self.receive, self._send)
                    return
            await self.app(scope, self.receive, self._send)
        except UNAVAILABLE_ERRORS as error:
            if state.committed:
                raise
            await self._unavailable(error)
        except Exception:
            if state.committed:
                raise
            await PlainTextResponse("Internal Server Error", 500)(scope, self.receive, self._send)
            raise
        finally:
            exchange = state.exchange
            if exchange is not None and exchange.events:
                await deliver_events(self.options, HTTPConnection(scope), exchange)

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("http.response.start", "websocket.accept") and not self.state.committed:
            self.state.committed = True
            if self.state.owes():
                try:
                    message = _with_cookies(message, await self._commit())
                except UNAVAILABLE_ERRORS as error:
                    await self._unavailable(error)
                    return
        elif self.replaced and kind.startswith(("http.response", "websocket.")):
            return  # the body of a response the 503 replaced, or of a refused socket
        await self.send(message)

    async def _commit(self) -> list[str]:
        state, scope = self.state, self.scope
        assert state.session is not None and state.exchange is not None
        connection = HTTPConnection(scope)
        cookies = await commit(self.options, connection, state.exchange, state.session)
        if state.exchange.sets_cookie():
            host = connection.headers.get("host", "")
            warn_if_dropped(self.options.cookie.secure, scope.get("scheme", "http"), host)
        return cookies

    async def _unavailable(self, error: Exception) -> None:
        self.replaced = self.state.committed = True
        if self.scope["type"] == "websocket":
            await self.send({"type": "websocket.close", "code": 1013})  # try again later
            return
        handler = self.options.on_unavailable
        if callable(handler):
            response = await maybe_await(handler(HTTPConnection(self.scope), error))
            assert isinstance(response, Response), "on_unavailable must return a response"
        else:
            if not logged_at_start(error):
                log.warning("session store unavailable: %s", error)
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            response = PlainTextResponse(UNAVAILABLE_MESSAGE, 503, headers=headers)
        await response(self.scope, self.receive, self.send)

    async def _csrf_refusal(self) -> Response | None:
        """None if this unsafe request may go on, else the answer that refuses it."""
        request = Request(self.scope, self.receive)
        session = await get_session(request)
        assert self.state.exchange is not None
        if self.state.exchange.bearer_session:
            return None  # authenticated by a header that a cross-site page cannot send
        headers = request.headers
        why = csrf.cross_origin(
            headers.get("origin"),
            headers.get("sec-fetch-site"),
            headers.get("host", ""),
            self.scope.get("scheme", "http"),
            self.options.trusted_origins,
        )
        if why is not None:
            return PlainTextResponse(csrf.cross_site_refusal(why), 403)
        token: object = headers.get(csrf.HEADER)
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if token is None and content_type in csrf.FORM_TYPES:
            token, refusal = await self._form_token()
            if refusal is not None:
                return refusal
        if await session.verify_csrf(token):
            return None
        return PlainTextResponse(csrf.MISSING_TOKEN, 403)

    async def _form_token(self) -> tuple[object, Response | None]:
        """The CSRF field of a form body, read once and replayed to the app."""
        body = b""
        while True:
            message = await self.receive()
            body += message.get("body", b"")
            if len(body) > MAX_FORM_BYTES:
                return None, PlainTextResponse("Request Entity Too Large", 413)
            if not message.get("more_body", False):
                break
        original, self.receive = self.receive, _replay(body, self.receive)
        try:
            form = await Request(self.scope, _replay(body, original)).form()
        except Exception as error:  # the client's body, as multipart parses it: bad input
            return None, PlainTextResponse(csrf.unreadable_form(error), 400)
        return form.get(csrf.FORM_FIELD), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` first, then what `receive` gives (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
