"""CSRF tokens bound to a session.

A token is `<salt>.<HMAC-SHA256(key, salt)>`. For a logged-in session the key is the
session's own token, so a CSRF token works for that session only and dies with it (a
logout or a login issues a new session token). An anonymous visitor (a login form) gets
a random key in its own HttpOnly cookie instead, signed when the app has `secrets`
(a signed double-submit cookie), so a subdomain cannot plant one of its choosing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["FORM_FIELD", "HEADER", "UNSAFE_METHODS", "csrf_token", "new_key", "verify_csrf"]

HEADER = "X-CSRF-Token"
FORM_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def _mac(key: str, salt: str) -> str:
    digest = hmac.new(key.encode("utf-8"), salt.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_key() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(key: str) -> str:
    salt = secrets.token_urlsafe(12)
    return f"{salt}.{_mac(key, salt)}"


def verify_csrf(key: str | None, token: object) -> bool:
    if key is None or not isinstance(token, str) or not token.isascii():
        return False
    salt, dot, mac = token.partition(".")
    if not dot or not salt:
        return False
    return hmac.compare_digest(_mac(key, salt), mac)
