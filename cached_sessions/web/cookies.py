"""The session cookie: its name, what it carries, its attributes.

The value is the token, optionally followed by `~<issue time>` (when `renew` needs to
know the cookie's age), the whole optionally signed (`.<HMAC>`, see signing.py). Both
forms are always read, so turning `renew` or `secrets` on logs nobody out... except
that with `secrets`, unsigned cookies are refused, which is the point of signing.

Names default to the `__Host-` prefix where the attributes allow it (a cookie no other
subdomain can set).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from http.cookies import Morsel
from typing import NamedTuple

from cached_sessions.errors import ConfigurationError
from cached_sessions.validation import is_token

from .cookie_header import COOKIE_NAME
from .signing import TokenSigner

__all__ = [
    "CookiePolicy",
    "PresentedToken",
    "check_cookie_name",
    "default_cookie_names",
    "is_cookie_name",
]

EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"
_ISSUED = re.compile(r"[0-9a-f]{1,12}")


_COOKIE_NAME = re.compile(COOKIE_NAME)


def is_cookie_name(name: object) -> bool:
    """Whether `name` is a cookie name browsers accept (an RFC 6265 token)."""
    return isinstance(name, str) and _COOKIE_NAME.fullmatch(name) is not None


def default_cookie_names(secure: bool, domain: str | None, path: str) -> tuple[str, str]:
    """The session and CSRF cookie names when the app names neither.

    `__Host-` when the cookie may carry it (Secure, no Domain, Path=/): browsers then
    refuse the name from anyone but this host over HTTPS, so a sibling subdomain (or a
    plain-HTTP page of this host) cannot plant or overwrite it. `__Secure-` with a
    Domain or another path: no plain-HTTP page can set it, though every subdomain of
    that domain can. Plain names without `secure` (local development over HTTP).
    """
    if not secure:
        return "sid", "csrf"
    prefix = "__Host-" if domain is None and path == "/" else "__Secure-"
    return f"{prefix}sid", f"{prefix}csrf"


def check_cookie_name(what: str, name: object, secure: bool, domain: str | None, path: str) -> str:
    """`name`, or a ValueError saying why a browser would not keep the cookie.

    Browsers drop a cookie whose prefix its attributes contradict, silently: the app
    would then seem to log nobody in. Prefixes are matched ignoring case, as browsers do.
    """
    if not is_cookie_name(name):
        raise ConfigurationError(f"{what} must be a cookie name (letters, digits, !#$%&'*+-.^_`|~)")
    assert isinstance(name, str)
    lowered = name.lower()
    if lowered.startswith(("__host-", "__secure-")) and not secure:
        raise ConfigurationError(
            f"{what}={name!r} needs secure=True: browsers keep a {name.split('-')[0]}- "
            "cookie only when it is Secure (set over HTTPS); drop the prefix for plain HTTP"
        )
    if lowered.startswith("__host-") and (domain is not None or path != "/"):
        raise ConfigurationError(
            f"{what}={name!r} needs domain=None and path='/' (got domain={domain!r}, "
            f"path={path!r}): browsers keep a __Host- cookie only for its own host and "
            "the whole site; use a __Secure- name for a domain-wide or narrower cookie"
        )
    return name


class PresentedToken(NamedTuple):
    token: str
    current_signature: bool  # False: signed with an older secret, re-sign it
    issued: int | None  # unix seconds the cookie was set, when it says


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    name: str
    secure: bool
    httponly: bool
    samesite: str | None
    domain: str | None
    path: str
    max_age: int | None
    signer: TokenSigner | None
    renew: bool

    def value(self, token: str, now: float) -> str:
        payload = f"{token}~{int(now):x}" if self.renew else token
        return self.signer.sign(payload) if self.signer else payload

    def read(self, value: str) -> PresentedToken | None:
        """The token a cookie or bearer value carries, or None if forged or malformed."""
        current = True
        if self.signer is not None:
            verified = self.signer.verify(value)
            if verified is None:
                return None
            value, current = verified
        token, tilde, issued = value.partition("~")
        if not is_token(token) or (tilde and _ISSUED.fullmatch(issued) is None):
            return None
        return PresentedToken(token, current, int(issued, 16) if tilde else None)

    def needs_renewal(self, presented: PresentedToken) -> bool:
        """`renew`: less than half of the cookie's age remains."""
        if not self.renew or self.max_age is None:
            return False
        if presented.issued is None:
            return True
        return presented.issued + self.max_age - time.time() < self.max_age / 2

    def header(self, value: str | None, name: str | None = None, max_age: int | None = None) -> str:
        """A Set-Cookie header: `value` None clears the cookie. `name` and `max_age`
        (for the CSRF cookie) replace the policy's own."""
        max_age = self.max_age if max_age is None else max_age
        morsel: Morsel[str] = Morsel()
        morsel.set(name or self.name, value or "", value or "")
        morsel["path"] = self.path
        if self.domain:
            morsel["domain"] = self.domain
        if self.secure:
            morsel["secure"] = True
        if self.httponly:
            morsel["httponly"] = True
        if self.samesite:
            morsel["samesite"] = self.samesite
        if value is None:
            morsel["max-age"] = "0"
            morsel["expires"] = EPOCH
        elif max_age is not None:
            morsel["max-age"] = str(max_age)
            morsel["expires"] = formatdate(time.time() + max_age, usegmt=True)
        return morsel.OutputString()
