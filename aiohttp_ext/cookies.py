"""The session cookie of an aiohttp request, read without parsing every cookie."""

from __future__ import annotations

from aiohttp import hdrs, web

from cached_sessions.web.cookie_header import cookie_values

__all__ = ["request_cookie"]


def request_cookie(request: web.BaseRequest, name: str) -> str | None:
    """The value of cookie `name` (the last one when repeated), as `request.cookies`
    would give it, without building a Morsel for every cookie: under load, aiohttp's
    full parse costs more than the rest of a cache hit. Raises TooManyCookies."""
    values = cookie_values(request.headers.get(hdrs.COOKIE), name)
    return values[-1] if values else None
