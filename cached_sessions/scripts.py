"""One server-side Lua script per operation, loaded once per client.

Each script is the shared prelude (`lua/_lib.lua`) followed by the operation's body.
redis-py's `AsyncScript` sends EVALSHA and loads the script again after a NOSCRIPT
reply (a restarted or flushed server), so callers never see that error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from .keys import KeyLayout

__all__ = ["OPERATIONS", "Scripts", "script_source"]

OPERATIONS = (
    "create", "get", "set", "kill", "killall", "killsoid", "soid", "soapp", "wipe", "touch",
    "kill_by",
)  # fmt: skip


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

    templates: tuple[str, ...]  # the layout's templates, then the reference fields
    _scripts: dict[str, AsyncScript]

    @classmethod
    def bind(cls, client: Redis, layout: KeyLayout, references: Sequence[str] = ()) -> Scripts:
        """`references`: the data keys whose values the scripts index (kill_by)."""
        scripts = {op: client.register_script(script_source(op)) for op in OPERATIONS}
        fixed = (*layout.templates(), json.dumps(list(references)))
        return cls(templates=fixed, _scripts=scripts)

    async def run(self, operation: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts[operation]
        return await script(keys=list(keys), args=[*self.templates, *args])

    def queue(
        self, pipe: Pipeline, operation: str, keys: Sequence[str], args: Sequence[Any]
    ) -> None:
        """Add one call to a pipeline as a bare EVALSHA (no per-batch SCRIPT EXISTS)."""
        sha = self._scripts[operation].sha
        pipe.evalsha(sha, len(keys), *keys, *self.templates, *args)

    async def load(self, client: Redis, operation: str) -> None:
        """Load a script after NOSCRIPT, for pipelines (run() does this by itself)."""
        await client.script_load(self._scripts[operation].script)
