"""The session cookie: its name, what it carries, its attributes, how it is read.

The value is the token, optionally followed by `~<issue time>` (when `renew` needs to
know the cookie's age), the whole optionally signed (`.<HMAC>`, see signing.py). Both
forms are always read, so turning `renew` or `secrets` on logs nobody out... except
that with `secrets`, unsigned cookies are refused, which is the point of signing.

Names default to the `__Host-` prefix where the attributes allow it (a cookie no other
subdomain can set). The Cookie header is read for one name, every copy of it, in one
pass, as aiohttp's parser reads it, and not at all past MAX_COOKIE_PAIRS pairs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from http.cookies import Morsel
from typing import NamedTuple

from aiohttp import hdrs, web

from cached_sessions import SessionsError
from cached_sessions.validation import validate_token

from .signing import TokenSigner

__all__ = [
    "MAX_COOKIE_PAIRS",
    "CookiePolicy",
    "CookieScanner",
    "PresentedToken",
    "TooManyCookies",
    "check_cookie_name",
    "cookie_values",
    "default_cookie_names",
    "request_cookie",
]

EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"
_ISSUED = re.compile(r"[0-9a-f]{1,12}")

MAX_COOKIE_PAIRS = 200
"""Pairs read from one Cookie header before giving up. Browsers keep at most about 180
cookies per site (Chromium and Firefox: 180), and aiohttp refuses a header over 8 KiB;
past this bound the header is not a browser's, and the request is served anonymous."""

# A Cookie header of plain `name=value` pairs joined by `;`: the shape browsers send.
# On such a header, splitting at `;` and the first `=` reads exactly what aiohttp's
# parser reads; anything else (quotes, escapes, commas, bare names, other spacing)
# goes to the scanner below. The name is an RFC 6265 token; the value holds only
# characters aiohttp reads as a plain value, less `,` (which starts its date forms).
_NAME = r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+"
_VALUE = r"[A-Za-z0-9_!#%&'~`><@:/$*+\-.^|)(?}{=\[\]]*"
_PLAIN_HEADER = re.compile(rf"[ \t]*{_NAME}={_VALUE}(?:[ \t]*;[ \t]*{_NAME}={_VALUE})*[ \t]*")

# The pieces aiohttp's parser reads (aiohttp/_cookie_helpers.py), for the scanner:
# ASCII blanks, a name, a plain value (a name's characters and `=`), a quoted string,
# a quote left open (up to the next quote or `;`), and the two date forms it reads as
# one value although they hold a `,` and blanks (RFC 1123 and its kin, and asctime).
_BLANKS = re.compile(r"[ \t\n\r\x0b\x0c]*")
_BLANK_CHARS = " \t\n\r\x0b\x0c"
_KEY = re.compile(r"[A-Za-z0-9_!#%&'~`><@,:/$*+\-.^|)(?}{\[\]]*")
_PLAIN = re.compile(r"[A-Za-z0-9_!#%&'~`><@,:/$*+\-.^|)(?}{=\[\]]*")
_QUOTED = re.compile(r'"(?:[^\\"]|\\.)*"')
_OPEN_QUOTE = re.compile(r'"[^";]*')
_DATE = re.compile(
    r"(?:(?:\w{3,6}day|\w{3}),\s[\w\s-]{9,11}\s[\d:]{8}\s(?:GMT|[+-]\d{4})"
    r"|\w{3}\s+\w{3}\s+[\s\d]\d\s+\d{2}:\d{2}:\d{2}\s+\d{4})(?=[\s;]|\Z)",
    re.ASCII,
)
_ESCAPE = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))")


class TooManyCookies(ValueError):
    """The Cookie header holds more than MAX_COOKIE_PAIRS pairs."""


def request_cookie(request: web.BaseRequest, name: str) -> str | None:
    """The value of cookie `name` (the last one when repeated), as `request.cookies`
    would give it, without building a Morsel for every cookie: under load, aiohttp's
    full parse costs more than the rest of a cache hit. Raises TooManyCookies."""
    values = cookie_values(request.headers.get(hdrs.COOKIE), name)
    return values[-1] if values else None


def cookie_values(header: str | None, name: str) -> list[str]:
    """Every value of cookie `name` (an RFC 6265 token) in `header`, in order, as
    aiohttp's parser reads them (`request.cookies` keeps the last one).

    Linear in the header's length; past MAX_COOKIE_PAIRS pairs it raises
    TooManyCookies, so a hostile header costs a bounded amount of work.
    """
    if header is None or name not in header:
        return []
    if _PLAIN_HEADER.fullmatch(header) is None:
        return CookieScanner(header, name).values()
    if header.count(";") >= MAX_COOKIE_PAIRS:
        raise TooManyCookies(f"more than {MAX_COOKIE_PAIRS} cookies")
    found = []
    for pair in header.split(";"):
        key, _, value = pair.partition("=")
        if key.strip(" \t") == name:
            found.append(value.strip(" \t"))
    return found


def _unquote(value: str) -> str:
    """A quoted value's text: quotes off, `\\x` is x and `\\ooo` an octal code."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)) if m[1] else m[2], value[1:-1])


class CookieScanner:
    """aiohttp's reading of any Cookie header, for one name, in linear time.

    aiohttp matches one regular expression at each pair: blanks, a name, then maybe `=`
    and a value (a quoted string, a quote left open, a date, or a plain value), then a
    blank, a `;` or the end. When that fails it skips to the next `;`, keeping
    `name=value` if an `=` comes first. The scanner makes the same choices in the same
    order. Each piece it reads stops at the next `;` (a quoted string, the exception,
    never holds the start of another value), and the next `=` is searched for once per
    `=`, so the work grows with the header's length, and `pairs` counts the pairs read.
    """

    __slots__ = ("_equals", "_found", "_header", "_name", "_size", "pairs")

    def __init__(self, header: str, name: str) -> None:
        self._header = header
        self._name = name
        self._size = len(header)
        self._equals = -2  # the next `=` from where the scan is (-1: there is none)
        self._found: list[str] = []
        self.pairs = 0

    def values(self) -> list[str]:
        at = 0
        while at < self._size:
            self.pairs += 1
            if self.pairs > MAX_COOKIE_PAIRS:
                raise TooManyCookies(f"more than {MAX_COOKIE_PAIRS} cookies")
            end = self._pair(at)
            at = end if end is not None else self._skip(at)
        return self._found

    def _end(self, pattern: re.Pattern[str], at: int) -> int:
        match = pattern.match(self._header, at)
        return at if match is None else match.end()

    def _closes(self, at: int) -> int | None:
        """Where a pair whose text stops at `at` ends (past its blanks, then past one
        `;`), or None when something else follows at once."""
        after = self._end(_BLANKS, at)
        if after < self._size and self._header[after] == ";":
            return after + 1
        return after if after > at or after == self._size else None

    def _pair(self, at: int) -> int | None:
        """Read the pair at `at` as aiohttp's expression does: where it ends, or None."""
        start = self._end(_BLANKS, at)
        key_end = self._end(_KEY, start)
        if key_end == start:
            return None
        equals = self._end(_BLANKS, key_end)
        if equals < self._size and self._header[equals] == "=":
            value = self._value(equals + 1)
            if value is not None:
                self._keep(self._header[start:key_end], value[0])
                return value[1]
        end = self._closes(key_end)  # a name alone
        if end is not None:
            self._keep(self._header[start:key_end], "")
        return end

    def _value(self, after_equals: int) -> tuple[str, int] | None:
        """The value after `=` and where its pair ends, or None."""
        begin = self._end(_BLANKS, after_equals)
        for stop in self._value_stops(begin):
            end = self._closes(stop)
            if end is not None:
                return self._header[begin:stop], end
        if begin > after_equals:  # the last blank before the value ends an empty one
            return "", begin
        return None

    def _value_stops(self, begin: int) -> Iterator[int]:
        """Where the value starting at `begin` may stop, in the order aiohttp tries."""
        if begin < self._size and self._header[begin] == '"':
            quoted = _QUOTED.match(self._header, begin)
            if quoted is not None:
                yield quoted.end()
            stop = self._end(_OPEN_QUOTE, begin)
            yield stop
            blank = max(self._header.rfind(c, begin + 1, stop) for c in _BLANK_CHARS)
            if blank != -1:
                yield blank
            return
        date = _DATE.match(self._header, begin)
        if date is not None:
            yield date.end()
        yield self._end(_PLAIN, begin)

    def _skip(self, at: int) -> int:
        """aiohttp's way past a pair its expression did not match: to the next `;`."""
        header = self._header
        semicolon = header.find(";", at)
        end = self._size if semicolon == -1 else semicolon
        if -1 < self._equals < at or self._equals == -2:
            self._equals = header.find("=", at)
        if -1 < self._equals < end:
            key = header[at : self._equals].strip()
            self._keep(key, header[self._equals + 1 : end].strip())
        return end if semicolon == -1 else end + 1

    def _keep(self, key: str, value: str) -> None:
        if key == self._name:
            self._found.append(_unquote(value))


_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")  # an RFC 6265 cookie name


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
    if not isinstance(name, str) or _TOKEN.fullmatch(name) is None:
        raise ValueError(f"{what} must be a cookie name (letters, digits, !#$%&'*+-.^_`|~)")
    lowered = name.lower()
    if lowered.startswith(("__host-", "__secure-")) and not secure:
        raise ValueError(
            f"{what}={name!r} needs secure=True: browsers keep a {name.split('-')[0]}- "
            "cookie only when it is Secure (set over HTTPS); drop the prefix for plain HTTP"
        )
    if lowered.startswith("__host-") and (domain is not None or path != "/"):
        raise ValueError(
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
