"""Signed session cookies: `<token>.<HMAC-SHA256 of the token>`.

A list of secrets allows rotation: the first signs, every one verifies, and a cookie
signed with an older secret is re-signed with the first. Verification is constant-time,
and a cookie that fails it never reaches Redis.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["TokenSigner"]

MIN_SECRET_BYTES = 32


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"each secret must be at least {MIN_SECRET_BYTES} bytes long")
    return key


class TokenSigner:
    """Signs and verifies tokens; `secrets` is never shown in a repr or a log."""

    __slots__ = ("_keys",)

    def __init__(self, secrets: Sequence[str | bytes]) -> None:
        if isinstance(secrets, str | bytes) or not secrets:
            raise ValueError("secrets must be a non-empty list of keys (the first one signs)")
        self._keys = tuple(_key(secret) for secret in secrets)

    def __repr__(self) -> str:
        return f"TokenSigner(<{len(self._keys)} secrets>)"

    def _mac(self, key: bytes, token: str) -> str:
        digest = hmac.new(key, token.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, token: str) -> str:
        return f"{token}.{self._mac(self._keys[0], token)}"

    def verify(self, value: str) -> tuple[str, bool] | None:
        """`(token, signed_with_the_current_key)`, or None when the signature is wrong."""
        token, dot, mac = value.partition(".")
        if not dot or not token.isascii() or not mac.isascii():
            return None
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(self._mac(key, token), mac):
                return token, index == 0
        return None
