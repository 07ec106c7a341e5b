"""One server-side Lua script per operation, loaded once per client.

Each script is the shared prelude (`lua/_lib.lua`) followed by the operation's body.
redis-py's `AsyncScript` sends EVALSHA and loads the script again after a NOSCRIPT
reply (a restarted or flushed server), so callers never see that error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .keys import KeyLayout

__all__ = ["OPERATIONS", "Scripts", "script_source"]

OPERATIONS = ("create", "get", "set", "kill", "killall", "killsoid", "soid", "soapp", "wipe")


@cache
def script_source(operation: str) -> str:
    """The full Lua text of one operation (prelude + body)."""
    folder = resources.files(__package__).joinpath("lua")
    prelude = folder.joinpath("_lib.lua").read_text(encoding="utf-8")
    body = folder.joinpath(f"{operation}.lua").read_text(encoding="utf-8")
    return f"{prelude}\n{body}"


@dataclass(slots=True)
class Scripts:
    """The operation scripts bound to one client, with the layout's templates."""

    templates: tuple[str, ...]
    _scripts: dict[str, AsyncScript]

    @classmethod
    def bind(cls, client: Redis, layout: KeyLayout) -> Scripts:
        scripts = {op: client.register_script(script_source(op)) for op in OPERATIONS}
        return cls(templates=layout.templates(), _scripts=scripts)

    async def run(self, operation: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts[operation]
        return await script(keys=list(keys), args=[*self.templates, *args])
