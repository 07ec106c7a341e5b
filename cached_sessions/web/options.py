"""The options of a session middleware, checked once, when the app is set up.

Both adapters take the same keyword options (aiohttp's `setup_sessions`, the ASGI
`SessionMiddleware`) and hand them to `make_options`, which refuses a bad one with a
message that says how to fix it. `R` is the adapter's request type: the callables
among the options (`app_name`, `ttl`, the hooks) receive it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from cached_sessions import RedisSessions
from cached_sessions.errors import ConfigurationError
from cached_sessions.store import DEFAULT_ANONYMOUS_TTL
from cached_sessions.validation import is_int, validate_app, validate_ttl

from .cookies import CookiePolicy, check_cookie_name, default_cookie_names
from .csrf import Origin
from .csrf import trusted_origins as checked_origins
from .events import Emit
from .session import Session
from .signing import TokenSigner

__all__ = ["SessionOptions", "make_options"]

R = TypeVar("R")

AppName = str | Callable[[R], str]
Ttl = int | Callable[[R], int]
ValidHook = Callable[[R, Session], bool | Awaitable[bool]]
BeforeSaveHook = Callable[[R, Session], Awaitable[None] | None]
OnUnavailable = Literal["error", "anonymous"] | Callable[[R, Exception], Any]


@dataclass(frozen=True, slots=True)
class SessionOptions(Generic[R]):
    store: RedisSessions
    app_name: AppName[R]
    cookie: CookiePolicy
    bearer: bool
    on_unavailable: OnUnavailable[R]
    unavailable_wait: float
    ttl: Ttl[R]
    rolling: bool
    csrf: bool
    csrf_cookie_name: str
    trusted_origins: frozenset[Origin]
    valid: ValidHook[R] | None
    before_save: BeforeSaveHook[R] | None
    emit: Emit[R]
    anonymous_data: bool
    anonymous_ttl: int
    fail_fast: bool = False  # stop start-up when Redis is unreachable (startup.py)

    def app_for(self, request: R) -> str:
        """The app name of this request (a fixed name was checked at setup)."""
        name = self.app_name
        return name if isinstance(name, str) else validate_app(name(request))

    def ttl_for(self, request: R) -> int:
        ttl = self.ttl
        return validate_ttl(ttl(request)) if callable(ttl) else ttl  # an int: checked at setup


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
        raise ConfigurationError(
            f"cookie_name and csrf_cookie_name are both {session!r}: give them different "
            "names (each would overwrite the other)"
        )
    return session, anti_forgery


def _check_cookie_attributes(
    samesite: str | None, secure: bool, path: str, domain: str | None
) -> None:
    if samesite not in ("Strict", "Lax", "None", None):
        raise ConfigurationError('samesite must be "Strict", "Lax", "None" or None')
    if samesite == "None" and not secure:
        raise ConfigurationError('samesite="None" needs secure=True: browsers refuse it otherwise')
    for what, attribute in (("path", path), ("domain", domain)):
        if attribute is not None and (";" in attribute or not attribute.isprintable()):
            raise ConfigurationError(
                f"{what} must not hold ';' or control characters: {attribute!r}"
            )


def _check_lifetimes(max_age: object, renew: bool, ttl: object, unavailable_wait: float) -> None:
    if max_age is not None and (not is_int(max_age) or max_age < 0):
        raise ConfigurationError("max_age must be None (a browser-session cookie) or seconds >= 0")
    if renew and max_age is None:
        raise ConfigurationError("renew=True needs max_age: a browser-session cookie has no age")
    if not callable(ttl):
        validate_ttl(ttl)
    if unavailable_wait < 0:
        raise ConfigurationError("unavailable_wait must be seconds >= 0")


def _check_anonymous(anonymous_data: object, anonymous_ttl: object) -> None:
    if not isinstance(anonymous_data, bool):
        raise ConfigurationError("anonymous_data must be True or False")
    validate_ttl(anonymous_ttl, "anonymous_ttl")


def make_options(
    store: RedisSessions,
    emit: Emit[R],
    *,
    app_name: AppName[R],
    cookie_name: str | None = None,
    secure: bool = True,
    httponly: bool = True,
    samesite: str | None = "Lax",
    domain: str | None = None,
    path: str = "/",
    max_age: int | None = None,
    secrets: Sequence[str | bytes] | None = None,
    bearer: bool = True,
    on_unavailable: OnUnavailable[R] = "error",
    unavailable_wait: float = 0,
    ttl: Ttl[R] = 7200,
    rolling: bool = False,
    renew: bool = False,
    csrf: bool = False,
    csrf_cookie_name: str | None = None,
    trusted_origins: Sequence[str] = (),
    valid: ValidHook[R] | None = None,
    before_save: BeforeSaveHook[R] | None = None,
    references: Sequence[str] = (),
    anonymous_data: bool = True,
    anonymous_ttl: int = DEFAULT_ANONYMOUS_TTL,
    fail_fast: bool = False,
) -> SessionOptions[R]:
    """Check every option (a ValueError or TypeError names the first bad one) and index
    the `references` in the store. The keywords are those of the adapters."""
    if isinstance(app_name, str):
        validate_app(app_name)
    elif not callable(app_name):
        raise ConfigurationError("app_name must be an app name or a callable of the request")
    if on_unavailable not in ("error", "anonymous") and not callable(on_unavailable):
        raise ConfigurationError('on_unavailable must be "error", "anonymous" or a callable')
    _check_cookie_attributes(samesite, secure, path, domain)
    domain = domain or None  # "" sets no Domain attribute either
    cookie_name, csrf_cookie_name = _cookie_names(
        cookie_name, csrf_cookie_name, secure=secure, domain=domain, path=path
    )
    if trusted_origins and not csrf:
        raise ConfigurationError(
            "trusted_origins is used only with csrf=True: turn csrf on or drop it"
        )
    origins = checked_origins(trusted_origins)
    _check_lifetimes(max_age, renew, ttl, unavailable_wait)
    _check_anonymous(anonymous_data, anonymous_ttl)
    store.index_references(references)
    return SessionOptions(
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
        emit=emit,
        anonymous_data=anonymous_data,
        anonymous_ttl=anonymous_ttl,
        fail_fast=bool(fail_fast),
    )
