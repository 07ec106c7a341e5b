"""What the tests read from responses: the cookies a response sets."""

from __future__ import annotations

from http.cookies import Morsel, SimpleCookie
from typing import Any


def set_cookies(response: Any) -> dict[str, Morsel[str]]:
    """The Set-Cookie headers of a response (anything with `.headers`), by cookie name."""
    found: dict[str, Morsel[str]] = {}
    for header in response.headers.getall("Set-Cookie", []):
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        found.update(parsed)
    return found
