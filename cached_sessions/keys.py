"""Key, member and channel names: the only code that knows the Redis layout.

The scripts take every key they can know before they run as KEYS. Keys that depend on
data a script reads first (the id stored in a session, the app and token named by a
member of the expiry index, a reference value in its data) are built inside the script
from the templates below, with the placeholders `<app>`, `<token>`, `<id>`, `<field>` and
`<value>`. A different layout, such as one with hash tags for Redis Cluster, is a
different `KeyLayout`; the scripts stay as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["KeyLayout"]

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# The order in which every script receives the templates, as its first ARGV.
TEMPLATE_ORDER: Final = (
    "session",
    "app_sessions",
    "app_users",
    "user_tokens",
    "expiry_index",
    "app_member",
    "global_member",
    "channel",
    "message",
    "reference",
)


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The redis-sessions 4.x layout under one namespace (default `rs`)."""

    namespace: str = "rs"

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not _NAMESPACE.fullmatch(self.namespace):
            raise ValueError(
                f"namespace must be 1 to 64 characters of [A-Za-z0-9_.-], got {self.namespace!r}"
            )

    # Keys known before a script runs.
    def session(self, app: str, token: str) -> str:
        return f"{self.namespace}:{app}:{token}"

    def app_sessions(self, app: str) -> str:
        return f"{self.namespace}:{app}:_sessions"

    def app_users(self, app: str) -> str:
        return f"{self.namespace}:{app}:_users"

    def user_tokens(self, app: str, id: str) -> str:
        return f"{self.namespace}:{app}:us:{id}"

    def expiry_index(self) -> str:
        return f"{self.namespace}:SESSIONS"

    def reference(self, app: str, field: str, value: str) -> str:
        """The set of tokens whose data holds `field` = `value` (its JSON text)."""
        return f"{self.namespace}:{app}:ref:{field}:{value}"

    def wipe_lock(self) -> str:
        # A dash never occurs in a token, so no app's session key can be this name.
        return f"{self.namespace}:SESSIONS:wipe-lock"

    def channel(self) -> str:
        return f"{self.namespace}:cache"

    def message(self, app: str, token: str) -> str:
        """What the channel carries to drop one session from every cache."""
        return f"{app}:{token}"

    def templates(self) -> tuple[str, ...]:
        """The templates, in `TEMPLATE_ORDER`, that scripts fill for derived keys."""
        ns = self.namespace
        by_name = {
            "session": f"{ns}:<app>:<token>",
            "app_sessions": f"{ns}:<app>:_sessions",
            "app_users": f"{ns}:<app>:_users",
            "user_tokens": f"{ns}:<app>:us:<id>",
            "expiry_index": self.expiry_index(),
            "app_member": "<token>:<id>",
            "global_member": "<app>:<token>:<id>",
            "channel": self.channel(),
            "message": "<app>:<token>",
            "reference": f"{ns}:<app>:ref:<field>:<value>",
        }
        return tuple(by_name[name] for name in TEMPLATE_ORDER)
