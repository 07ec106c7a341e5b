"""CSRF defence: where a request comes from, and tokens bound to a session.

With `csrf=True` an unsafe request (any method but GET, HEAD, OPTIONS and TRACE) must
come from this site's own origin, or from one the app trusts, and carry a token.

The origin is the browser's `Origin` header (or, without one, `Sec-Fetch-Site`). It
stops what a token cannot: a sibling subdomain that planted its own CSRF cookie and
token in the victim's browser (login CSRF) still submits from its own origin.

A token is `<salt>.<HMAC-SHA256(key, salt)>`. For a logged-in session the key is the
session's own token, so a CSRF token works for that session only and dies with it (a
logout or a login issues a new session token). An anonymous visitor (a login form) gets
a random key in its own HttpOnly cookie instead, with the time it was issued, signed
when the app has `secrets` (a signed double-submit cookie); the key is refused once
ANONYMOUS_KEY_LIFETIME has passed, and a form rendered later gets a new one.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterable

from cached_sessions.errors import ConfigurationError

from .signing import mac

__all__ = [
    "ANONYMOUS_KEY_LIFETIME",
    "FORM_FIELD",
    "FORM_TYPES",
    "HEADER",
    "MISSING_TOKEN",
    "SAFE_METHODS",
    "anonymous_key",
    "anonymous_key_cookie",
    "cross_origin",
    "cross_site_refusal",
    "csrf_token",
    "new_key",
    "trusted_origins",
    "unreadable_form",
    "verify_csrf",
]

HEADER = "X-CSRF-Token"
FORM_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})

ANONYMOUS_KEY_LIFETIME = 12 * 3600
"""Seconds an anonymous visitor's key is accepted: a login form left open for a working
day still works; a key copied or planted earlier does not."""
CLOCK_SKEW = 300  # seconds a key may seem to come from the future (workers' clocks)

_ISSUED = re.compile(r"[0-9a-f]{1,12}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# scheme://host[:port], as the Origin header carries it: a DNS name, IPv4, or [IPv6].
_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://([a-z0-9._~-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")
_HOST = re.compile(r"([a-z0-9._~-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")

Origin = tuple[str, str, int | None]  # scheme, host, port (None: unknown default)


def new_key() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(key: str) -> str:
    salt = secrets.token_urlsafe(12)
    return f"{salt}.{mac(key.encode('utf-8'), salt)}"


def verify_csrf(key: str | None, token: object) -> bool:
    if key is None or not isinstance(token, str) or not token.isascii():
        return False
    salt, dot, signature = token.partition(".")
    if not dot or not salt:
        return False
    return hmac.compare_digest(mac(key.encode("utf-8"), salt), signature)


# The anonymous key's cookie


def anonymous_key_cookie(key: str, now: float) -> str:
    """The payload of the anonymous CSRF cookie (before signing): `<key>~<issued>`."""
    return f"{key}~{int(now):x}"


def anonymous_key(payload: str, now: float) -> str | None:
    """The key a (verified) cookie payload carries, or None when it has expired, comes
    from the future or is malformed (older versions set the key without a time)."""
    key, tilde, issued = payload.partition("~")
    if not key or not tilde or _ISSUED.fullmatch(issued) is None:
        return None
    age = now - int(issued, 16)
    return key if -CLOCK_SKEW <= age <= ANONYMOUS_KEY_LIFETIME else None


# Origins


def _origin(text: str) -> Origin | None:
    match = _ORIGIN.fullmatch(text.lower())
    if match is None:
        return None
    scheme, host, port = match.groups()
    if port is not None and not 0 < int(port) < 65536:
        return None
    return scheme, host, int(port) if port else _DEFAULT_PORTS.get(scheme)


def trusted_origins(origins: Iterable[object]) -> frozenset[Origin]:
    """The origins an app trusts, checked: a ValueError names the first that is not one."""
    if isinstance(origins, str | bytes):
        raise ConfigurationError("trusted_origins must be a list of origins, not one string")
    checked = set()
    for text in origins:
        origin = _origin(text) if isinstance(text, str) else None
        if origin is None:
            raise ConfigurationError(
                f"trusted_origins: {text!r} is not an origin; write scheme://host or "
                "scheme://host:port as browsers send it in the Origin header (no path, "
                "no trailing slash, no wildcard), e.g. 'https://app.example.com'"
            )
        checked.add(origin)
    return frozenset(checked)


def _own_origins(host: str, scheme: str) -> set[Origin]:
    """This site's origin as the request names it (its Host header and the scheme it
    came over). `https` is always one: behind a proxy that ends TLS the request arrives
    as http, and only this site can answer for its host over https. An http page of the
    host is trusted only when the request itself came over http."""
    match = _HOST.fullmatch(host.lower())
    if match is None:
        return set()
    name, port = match.groups()
    return {
        (each, name, int(port) if port else _DEFAULT_PORTS.get(each)) for each in {scheme, "https"}
    }


def cross_origin(
    origin: str | None,
    fetch_site: str | None,
    host: str,
    scheme: str,
    trusted: frozenset[Origin],
) -> str | None:
    """Why the browser says this request comes from another site, or None.

    `origin` and `fetch_site` are the `Origin` and `Sec-Fetch-Site` headers. Without
    `Origin` (older browsers, and clients that are not browsers, which carry no ambient
    cookies to abuse) `Sec-Fetch-Site` decides; without either, the token check alone
    does. `same-site` is refused too: a sibling subdomain is another origin.
    """
    if origin is None:
        site = fetch_site
        if site is None or site in ("same-origin", "none"):
            return None
        return f"the browser says it comes from another site (Sec-Fetch-Site: {site})"
    parsed = _origin(origin)
    if parsed is not None and (parsed in trusted or parsed in _own_origins(host, scheme)):
        return None
    return f"it comes from {origin[:100]!r}, which is not this site nor in trusted_origins"


# The refusals, worded once for every adapter

MISSING_TOKEN = (
    f"CSRF token missing or invalid: send it in the {HEADER} header "
    f"or the {FORM_FIELD} form field.\n"
)


def cross_site_refusal(why: str) -> str:
    return f"Cross-site request refused: {why}.\n"


def unreadable_form(error: Exception) -> str:
    return (
        f"The form body could not be read ({type(error).__name__}: {str(error)[:100]}); "
        f"send a well-formed form, or the CSRF token in the {HEADER} header.\n"
    )
