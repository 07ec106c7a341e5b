"""Session tokens: 64 characters of [A-Za-z0-9] from the operating system's CSPRNG.

62**64 is about 2**381 possible tokens, so guessing one is hopeless and a collision
between two creates never happens in practice (create still refuses to overwrite).
"""

from __future__ import annotations

import secrets
import string
from typing import Final

__all__ = ["ALPHABET", "TOKEN_LENGTH", "new_token"]

TOKEN_LENGTH: Final = 64
ALPHABET: Final = string.ascii_letters + string.digits


def new_token() -> str:
    # Bytes >= 248 are dropped so that `b % 62` stays uniform (248 = 4 * 62).
    chars: list[str] = []
    while len(chars) < TOKEN_LENGTH:
        chars += [ALPHABET[b % 62] for b in secrets.token_bytes(96) if b < 248]
    return "".join(chars[:TOKEN_LENGTH])
