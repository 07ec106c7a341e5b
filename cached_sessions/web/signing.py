"""Signed session cookies: `<token>.<HMAC-SHA256 of the token>`.

A list of secrets allows rotation: the first signs, every one verifies, and a cookie
signed with an older secret is re-signed with the first. Verification is constant-time,
and a cookie that fails it never reaches Redis. Secrets are checked when the signer is
made: a short, constant or patterned one is refused with a way to make a good one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

from cached_sessions.errors import ConfigurationError

__all__ = ["TokenSigner", "mac"]

MIN_SECRET_BYTES = 32
MIN_SECRET_BITS = 64  # a random 32-character hex string shows 85 or more
MAX_PATTERN = 64  # the longest repeated pattern looked for (bytes)
HOW_TO_MAKE_ONE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def mac(key: bytes, message: str) -> str:
    """HMAC-SHA256 of `message` under `key`, URL-safe base64 without padding: the one
    MAC of signed cookies and CSRF tokens."""
    digest = hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _spread_bits(key: bytes) -> float:
    """The key's length times the entropy of its byte frequencies: a constant key has
    0, and a random one of 32 bytes about 140. Low means few distinct bytes."""
    counts = Counter(key)
    return -sum(count * math.log2(count / len(key)) for count in counts.values())


def _weakness(key: bytes) -> str | None:
    """What makes a secret obviously guessable, or None. Length alone is not enough:
    32 equal bytes are 32 bytes long."""
    if _spread_bits(key) < MIN_SECRET_BITS:
        return "it uses too few different bytes"
    periods = range(1, min(len(key) // 2, MAX_PATTERN) + 1)
    if any(key[period:] == key[:-period] for period in periods):
        return "it repeats a shorter pattern"
    steps = Counter((b - a) % 256 for a, b in pairwise(key))
    if 4 * steps.most_common(1)[0][1] >= 3 * (len(key) - 1):
        return "it is mostly a run of consecutive bytes"
    return None


def _key(secret: str | bytes, number: int) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"each secret must be at least {MIN_SECRET_BYTES} bytes long (secret "
            f"#{number}); make one with {HOW_TO_MAKE_ONE}"
        )
    weakness = _weakness(key)
    if weakness is not None:
        raise ConfigurationError(
            f"secret #{number} is guessable ({weakness}); use a random one, such as "
            f"the output of {HOW_TO_MAKE_ONE}"
        )
    return key


class TokenSigner:
    """Signs and verifies tokens; `secrets` is never shown in a repr or a log."""

    __slots__ = ("_keys",)

    def __init__(self, secrets: Sequence[str | bytes]) -> None:
        if isinstance(secrets, str | bytes) or not secrets:
            raise ConfigurationError(
                "secrets must be a non-empty list of keys (the first one signs)"
            )
        self._keys = tuple(_key(secret, n) for n, secret in enumerate(secrets, 1))

    def __repr__(self) -> str:
        return f"TokenSigner(<{len(self._keys)} secrets>)"

    def sign(self, token: str) -> str:
        return f"{token}.{mac(self._keys[0], token)}"

    def verify(self, value: str) -> tuple[str, bool] | None:
        """`(token, signed_with_the_current_key)`, or None when the signature is wrong."""
        token, dot, signature = value.partition(".")
        if not dot or not token.isascii() or not signature.isascii():
            return None
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(mac(key, token), signature):
                return token, index == 0
        return None
