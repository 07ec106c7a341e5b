"""Reading one cookie from a Cookie header: every copy of it, in one linear pass.

It reads as aiohttp's parser reads (the reference behaviour, checked by property tests),
whatever framework the header came through, and not at all past MAX_COOKIE_PAIRS pairs,
so a hostile header costs a bounded amount of work.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = ["COOKIE_NAME", "MAX_COOKIE_PAIRS", "CookieScanner", "TooManyCookies", "cookie_values"]

MAX_COOKIE_PAIRS = 200
"""Pairs read from one Cookie header before giving up. Browsers keep at most about 180
cookies per site (Chromium and Firefox: 180), and aiohttp refuses a header over 8 KiB;
past this bound the header is not a browser's, and the request is served anonymous."""

# A Cookie header of plain `name=value` pairs joined by `;`: the shape browsers send.
# On such a header, splitting at `;` and the first `=` reads exactly what aiohttp's
# parser reads; anything else (quotes, escapes, commas, bare names, other spacing)
# goes to the scanner below. The name is an RFC 6265 token; the value holds only
# characters aiohttp reads as a plain value, less `,` (which starts its date forms).
COOKIE_NAME = r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+"  # an RFC 6265 token: the one cookie-name rule
_VALUE = r"[A-Za-z0-9_!#%&'~`><@:/$*+\-.^|)(?}{=\[\]]*"
_PAIR = rf"{COOKIE_NAME}={_VALUE}"
_PLAIN_HEADER = re.compile(rf"[ \t]*{_PAIR}(?:[ \t]*;[ \t]*{_PAIR})*[ \t]*")

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
