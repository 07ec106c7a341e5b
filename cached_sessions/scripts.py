"""One server-side Lua script per operation, loaded once per client.

Each script is a header with the layout's key templates and the indexed reference
fields (so that no call has to send them), the shared prelude (`lua/_lib.lua`), then
the operation's body.
redis-py's `AsyncScript` sends EVALSHA and loads the script again after a NOSCRIPT
reply (a restarted or flushed server), so callers never see that error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from .keys import TEMPLATE_ORDER, KeyLayout
from .slots import ConnectionSlots

__all__ = ["OPERATIONS", "Scripts", "script_source"]

OPERATIONS = (
    "create", "get", "set", "kill", "killall", "killsoid", "soid", "soapp", "wipe", "touch",
    "kill_by",
)  # fmt: skip


@cache
def _lua_file(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:<> ")


def _lua_string(text: str) -> str:
    """A Lua string literal for any text: bytes outside a plain set become \\ddd."""
    return '"' + "".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in text.encode()) + '"'


def layout_header(layout: KeyLayout, references: Sequence[str] = ()) -> str:
    fields = ", ".join(
        f"{name} = {_lua_string(t)}"
        for name, t in zip(TEMPLATE_ORDER, layout.templates(), strict=True)
    )
    indexed = ", ".join(f"[{_lua_string(field)}] = true" for field in references)
    return f"local L = {{{fields}, references = {{{indexed}}}}}\n"


def script_source(operation: str, header: str) -> str:
    """The full Lua text of one operation (header + prelude + body)."""
    return f"{header}{_lua_file('_lib')}\n{_lua_file(operation)}"


@dataclass(slots=True)
class Scripts:
    """The operation scripts bound to one client, for one layout."""

    _client: Redis
    _scripts: dict[str, AsyncScript]
    slots: ConnectionSlots

    @classmethod
    def bind(
        cls,
        client: Redis,
        layout: KeyLayout,
        slots: ConnectionSlots,
        references: Sequence[str] = (),
    ) -> Scripts:
        """`references`: the data keys whose values the scripts index (kill_by)."""
        header = layout_header(layout, references)
        scripts = {op: client.register_script(script_source(op, header)) for op in OPERATIONS}
        return cls(_client=client, _scripts=scripts, slots=slots)

    async def preload(self, client: Redis) -> None:
        """Load every script in one round trip, so no first call meets NOSCRIPT."""
        pipe = client.pipeline(transaction=False)
        for script in self._scripts.values():
            pipe.script_load(script.script)
        await self.slots.call(pipe.execute)

    def run(self, operation: str, keys: Sequence[str], args: Sequence[Any]) -> Awaitable[Any]:
        """One script call, to await. Not itself a coroutine: one frame less per call."""
        # EVALSHA straight away: redis-py's script wrapper costs a few µs a call.
        return self.slots.call(self._evalsha, self._scripts[operation], keys, args)

    async def _evalsha(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # the server was restarted or flushed its scripts
            await self._client.script_load(script.script)
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)

    def queue(
        self, pipe: Pipeline, operation: str, keys: Sequence[str], args: Sequence[Any]
    ) -> None:
        """Add one call to a pipeline as a bare EVALSHA (no per-batch SCRIPT EXISTS)."""
        sha = self._scripts[operation].sha
        pipe.evalsha(sha, len(keys), *keys, *args)

    async def load(self, client: Redis, operation: str) -> None:
        """Load a script after NOSCRIPT, for pipelines (run() does this by itself)."""
        await self.slots.call(client.script_load, self._scripts[operation].script)
