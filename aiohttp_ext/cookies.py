"""The session cookie: what it carries and the attributes it is sent with.

The value is the token, optionally followed by `~<issue time>` (when `renew` needs to
know the cookie's age), the whole optionally signed (`.<HMAC>`, see signing.py). Both
forms are always read, so turning `renew` or `secrets` on logs nobody out... except
that with `secrets`, unsigned cookies are refused, which is the point of signing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from http.cookies import Morsel
from typing import NamedTuple

from aiohttp import hdrs, web

from cached_sessions import SessionsError
from cached_sessions.validation import validate_token

from .signing import TokenSigner

__all__ = ["CookiePolicy", "PresentedToken", "request_cookie"]

EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"
_ISSUED = re.compile(r"[0-9a-f]{1,12}")

# A Cookie header of plain `name=value` pairs joined by `;`: the shape browsers send.
# On such a header, splitting at `;` and the first `=` reads exactly what aiohttp's
# parser reads; anything else (quotes, escapes, commas, bare names, other spacing)
# goes to aiohttp's parser. The name is an RFC 6265 token; the value holds only
# characters aiohttp reads as a plain value, less `,` (which starts its date forms).
_NAME = r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+"
_VALUE = r"[A-Za-z0-9_!#%&'~`><@:/$*+\-.^|)(?}{=\[\]]*"
_PLAIN_HEADER = re.compile(rf"[ \t]*{_NAME}={_VALUE}(?:[ \t]*;[ \t]*{_NAME}={_VALUE})*[ \t]*")


def request_cookie(request: web.BaseRequest, name: str) -> str | None:
    """The value of cookie `name` (the last one when repeated), as `request.cookies`
    would give it, without building a Morsel for every cookie: under load, aiohttp's
    full parse costs more than the rest of a cache hit."""
    header = request.headers.get(hdrs.COOKIE)
    if header is None or name not in header:
        return None
    if _PLAIN_HEADER.fullmatch(header) is None:
        return request.cookies.get(name)
    found = None
    for pair in header.split(";"):
        key, _, value = pair.partition("=")
        if key.strip(" \t") == name:
            found = value.strip(" \t")
    return found


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
        if tilde and _ISSUED.fullmatch(issued) is None:
            return None
        try:
            token = validate_token(token)
        except SessionsError:
            return None
        return PresentedToken(token, current, int(issued, 16) if tilde else None)

    def needs_renewal(self, presented: PresentedToken) -> bool:
        """`renew`: less than half of the cookie's age remains."""
        if not self.renew or self.max_age is None:
            return False
        if presented.issued is None:
            return True
        return presented.issued + self.max_age - time.time() < self.max_age / 2

    def header(self, value: str | None, name: str | None = None) -> str:
        """A Set-Cookie header: `value` None clears the cookie."""
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
        elif self.max_age is not None:
            morsel["max-age"] = str(self.max_age)
            morsel["expires"] = formatdate(time.time() + self.max_age, usegmt=True)
        return morsel.OutputString()
