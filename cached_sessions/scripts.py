"""One server-side Lua function per operation, loaded once per server.

The Lua is a header with the layout's key templates and the indexed reference fields
(so that no call has to send them), the shared prelude (`lua/_lib.lua`, and the parts
of it only some operations need), then each operation's body. On Redis 7+ and Valkey
7.2+ it goes to the server as one function library (FUNCTION LOAD), whose prelude runs
once at load, and each call is an FCALL that runs only its operation's body: defining
the prelude on every call was most of a script's cost to the server. The library's
name and its functions' names carry a hash of its text, so stores of different
layouts, references or versions share a server. A server without Functions (Redis
6), or whose ACL forbids FUNCTION or FCALL, gets one script per operation (header,
the prelude that operation uses, body) as EVALSHA, found out once at start. After a
"Function not found" or NOSCRIPT reply (a restarted, flushed or newly promoted
server) the library or script is loaded again and the call repeated, so callers
never see that error.

A cluster client keeps EVALSHA: FCALL's keys are "movable" in the server's command
table, and redis-py's cluster client then asks a node where each FCALL goes (COMMAND
GETKEYS, twice per FCALL with redis-py 8.1 on the test cluster): round trips more per
call, and per command of a pipeline.

With auto-pipelining (pipelining.py, off a cluster), the `run` calls of one turn of the
loop go out as one pipeline; a call whose try there fails goes again alone, under its
own deadline. Pipelines of their own (`run_many`) and durable kills, whose WAIT counts
the writes of its own connection, never join one.

On a cluster, redis-py routes each call by its first key and follows MOVED, ASK and
TRYAGAIN; a pipeline goes out as one batch per node, the nodes at once. A script there
writes only keys it declared, so that while a slot migrates the server checks every one
of them before it runs: a call that finds it needs keys it did not declare (the keys of
a user or a reference, known only once a session is read) writes nothing and names
them (`UNDECLARED`), and is sent again with them. What a migration makes a call meet
for a moment (TRYAGAIN, a read of a key that has moved) is retried the same way, within
the call's deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import NotDurableError
from .keys import TEMPLATE_ORDER, Layout
from .pipelining import ALONE, AutoPipeline
from .slots import ConnectionSlots
from .validation import ANONYMOUS_ID

__all__ = ["OPERATIONS", "Client", "Durability", "Library", "Scripts", "library", "script_source"]

log = logging.getLogger(__name__)

Client = Redis | RedisCluster
Call = tuple[Sequence[str], Sequence[Any]]  # keys, args

MIGRATION_PAUSE = 0.02  # between tries of a call that met a slot on the move
MAX_DECLARE_ROUNDS = 8  # a call whose needs change faster than this is retried later
MAX_TRIES = 10_000
# Scripts about one session that ask (`need`) for every key but the session's own
# before they write. While a slot migrates, a call whose declared keys are split, or
# missing on both sides (an unknown token), gets TRYAGAIN until the move ends; with the
# session key alone it is sent on by ASK, and a session that is gone is answered at
# once. One that exists then asks for the rest, and waits only if they are split.
NARROWABLE = frozenset({"get", "set", "kill"})


def undeclared_keys(error: BaseException) -> list[str] | None:
    """The keys a script asked to have declared, or None for any other error."""
    if not isinstance(error, ResponseError):
        return None
    text = str(error)
    if not text.startswith("UNDECLARED "):
        return None
    keys: list[str] = json.loads(text[len("UNDECLARED ") :])
    return keys


def _in_migration(error: BaseException) -> bool:
    """A call that met a slot on the move: nothing was written, try again shortly.

    TRYAGAIN, a read of a key that moved, or redis-py giving up after its own round of
    redirections (ClusterError "TTL exhausted").
    """
    if isinstance(error, TryAgainError):
        return True
    if isinstance(error, ClusterError):
        return "TTL exhausted" in str(error)
    return isinstance(error, ResponseError) and "non local key" in str(error)


OPERATIONS = (
    "create", "get", "set", "kill", "killall", "killsoid", "soid", "soapp", "wipe", "touch",
    "kill_by", "upgrade", "devices",
)  # fmt: skip


@cache
def _lua_file(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:<> ")


def _lua_string(text: str) -> str:
    """A Lua string literal for any text: bytes outside a plain set become \\ddd."""
    return '"' + "".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in text.encode()) + '"'


def layout_header(layout: Layout, references: Sequence[str] = (), max_lifetime: int = 0) -> str:
    fields = ", ".join(
        f"{name} = {_lua_string(t)}"
        for name, t in zip(TEMPLATE_ORDER, layout.templates(), strict=True)
    )
    indexed = ", ".join(f"[{_lua_string(field)}] = true" for field in references)
    publish = _lua_string(layout.publish)
    strict = "true" if layout.strict else "false"
    return (
        f"local L = {{{fields}, publish = {publish}, strict = {strict}, "
        f"references = {{{indexed}}}, reference_count = {len(references)}, "
        f"anonymous = {_lua_string(ANONYMOUS_ID)}, "
        f"max_lifetime = {int(max_lifetime)}}}\n"
    )


# The parts of the prelude an operation needs besides _lib.lua: each script runs its
# whole prelude on every call, so a script carries only what it uses.
PRELUDE_PARTS: dict[str, tuple[str, ...]] = {
    "create": ("_data",),
    "set": ("_data",),
    "upgrade": ("_data",),
    "kill_by": ("_data",),
    "killsoid": ("_devices",),
    "devices": ("_devices",),
}


def script_source(operation: str, header: str) -> str:
    """The full Lua text of one operation as a script for EVAL (header + prelude +
    body); its KEYS and ARGV are globals there."""
    return header + prelude(operation) + "\nbegin(KEYS)\n" + _lua_file(operation)


# Functions that only read: a server may run them where it refuses writes.
READ_ONLY = frozenset({"soid", "soapp", "devices"})
PROBE = "probe"  # a function that does nothing, called once at start: may we FCALL?


@dataclass(frozen=True, slots=True)
class Library:
    """A function library: its name, its Lua text, and each operation's function name."""

    name: str
    code: str
    functions: dict[str, str]


@cache
def library(header: str) -> Library:
    """Every operation as one function library, under names that hash its content.

    The prelude is whole here: it runs once, at load. Each body becomes a callback
    that gets the call's KEYS and ARGV as parameters (a library has no such globals).
    """
    prelude_text = "".join(_lua_file(name) for name in ("_lib", "_data", "_devices"))
    bodies = {op: _lua_file(op) for op in OPERATIONS}
    digest = hashlib.sha1(
        "\0".join((header, prelude_text, *bodies.values())).encode(), usedforsecurity=False
    ).hexdigest()[:16]
    functions = {op: f"cs_{digest}_{op}" for op in (*OPERATIONS, PROBE)}
    parts = [f"#!lua name=cached_sessions_{digest}\n", header, prelude_text]
    for op, body in bodies.items():
        flags = ", flags = {'no-writes'}" if op in READ_ONLY else ""
        parts.append(
            f"\nredis.register_function{{function_name = '{functions[op]}'{flags}, "
            f"callback = function(KEYS, ARGV)\nbegin(KEYS)\n{body}\nend}}\n"
        )
    parts.append(
        f"redis.register_function{{function_name = '{functions[PROBE]}', "
        "flags = {'no-writes'}, callback = function() return 1 end}\n"
    )
    return Library(f"cached_sessions_{digest}", "".join(parts), functions)


def missing_code(error: object) -> bool:
    """Whether a call failed because the server lacks its script or function."""
    if isinstance(error, NoScriptError):
        return True
    return isinstance(error, ResponseError) and str(error).startswith("Function not found")


_FUNCTION = re.compile(r"local function (\w+)\(")
_NAME = re.compile(r"(?<![.:\w])[A-Za-z_]\w*")  # not a field: L.publish is no call
_COMMENT = re.compile(r"--[^\n]*")


def _names(code: str) -> set[str]:
    """The identifiers in Lua code, comments left out (the prelude's strings hold no
    `--`; tests/test_scripts.py checks that every function a script calls is defined)."""
    return set(_NAME.findall(_COMMENT.sub("", code)))


def _chunks(text: str) -> list[tuple[str | None, str]]:
    """A prelude file cut into its top-level functions (name, text) and the code
    between them (None, text). A function ends at the first `end` in column 0."""
    chunks: list[tuple[str | None, str]] = []
    lines: list[str] = []
    name: str | None = None
    for line in text.splitlines(keepends=True):
        match = _FUNCTION.match(line)
        if match and name is None:
            if lines:
                chunks.append((None, "".join(lines)))
            lines, name = [line], match.group(1)
            continue
        lines.append(line)
        if name is not None and line.rstrip() == "end":
            chunks.append((name, "".join(lines)))
            lines, name = [], None
    if lines:
        chunks.append((name, "".join(lines)))
    return chunks


@cache
def prelude(operation: str) -> str:
    """The prelude functions the operation calls, directly or through each other, and
    the code between them. Every call runs its script's whole prelude, and defining a
    function costs the server on each call (the get script, defining its own 8 of the
    24, took 22.1 instead of 24.8 µs of server time per read in an A/B run): so a
    script defines only what it uses. A local function can call only functions
    defined above it, so one pass from the bottom up finds them all; comments and
    field names (`L.publish`) are not read as calls."""
    files = ("_lib", *PRELUDE_PARTS.get(operation, ()))
    chunks = [chunk for name in files for chunk in _chunks(_lua_file(name))]
    wanted = _names(_lua_file(operation)) | {"begin"}
    for name, text in chunks:
        if name is None:
            wanted |= _names(text)
    kept: set[str] = set()
    for name, text in reversed(chunks):
        if name is not None and name in wanted:
            kept.add(name)
            wanted |= _names(text)
    return "".join(text for name, text in chunks if name is None or name in kept)


@dataclass(slots=True)
class _Attempt:
    """One call's keys so far, how often a script asked for more, and whether it may
    go again with its first key alone (see NARROWABLE)."""

    declared: list[str]
    narrowable: bool = False
    rounds: int = 0


@dataclass(frozen=True, slots=True)
class Durability:
    """Kills return once `replicas` replicas have them, or fail after `wait` seconds."""

    replicas: int
    wait: float


@dataclass(slots=True)
class Scripts:
    """The operation scripts bound to one client, for one layout.

    `library`: the function library to use, None once the server turned it down (or on
    a cluster); `heads`: what each call starts with, FCALL and its function or EVALSHA
    and its script's SHA-1.
    """

    _client: Client
    _scripts: dict[str, AsyncScript]
    slots: ConnectionSlots
    library: Library | None
    heads: dict[str, tuple[str, str]]
    auto: AutoPipeline | None = None

    @classmethod
    def bind(
        cls,
        client: Client,
        layout: Layout,
        slots: ConnectionSlots,
        references: Sequence[str] = (),
        max_lifetime: int = 0,
        *,
        auto_pipeline: bool = False,
    ) -> Scripts:
        """`references`: the data keys whose values the scripts index (kill_by);
        `max_lifetime`: seconds after creation when every session ends (0: never).

        `auto_pipeline`: the `run` calls of one turn of the loop go out as one pipeline
        (pipelining.py); a cluster client keeps direct calls.
        """
        header = layout_header(layout, references, max_lifetime)
        scripts = {op: AsyncScript(client, script_source(op, header)) for op in OPERATIONS}
        auto, functions = None, None
        if not isinstance(client, RedisCluster):
            functions = library(header)
            if auto_pipeline:
                auto = AutoPipeline(client, slots)
        bound = cls(client, scripts, slots, functions, {}, auto)
        bound._use_heads()
        return bound

    def _use_heads(self) -> None:
        functions = self.library
        if functions is None:
            self.heads = {op: ("EVALSHA", script.sha) for op, script in self._scripts.items()}
        else:
            self.heads = {op: ("FCALL", functions.functions[op]) for op in OPERATIONS}

    async def preload(self) -> None:
        """Load the library, or every script, up front: no first call meets a server
        without them. A server that turns the library down gets the scripts."""
        if self.library is not None:
            try:
                await self.slots.call(self._load_library)
                probe = self.library.functions[PROBE]
                await self.slots.call(self._client.execute_command, "FCALL", probe, 0)
                return
            except ResponseError as error:  # no Functions (Redis 6), or an ACL says no
                log.info("Redis Functions not usable here (%s): scripts go as EVALSHA", error)
                self.library = None
                self._use_heads()
        client = self._client
        if isinstance(client, RedisCluster):
            # SCRIPT LOAD goes to every primary; a cluster pipeline refuses it.
            for script in self._scripts.values():
                await self.slots.call(client.script_load, script.script)
            return
        pipe = client.pipeline(transaction=False)
        for script in self._scripts.values():
            pipe.script_load(script.script)
        await self.slots.call(pipe.execute)

    def run(self, operation: str, keys: Sequence[str], args: Sequence[Any]) -> Awaitable[Any]:
        """One script call, to await. Not itself a coroutine: one frame less per call."""
        auto = self.auto
        if auto is None or auto.direct():
            return self.slots.call(self._call, operation, keys, args)
        return self._run_auto(auto, operation, keys, args)

    async def _run_auto(
        self, auto: AutoPipeline, operation: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """`run` through the auto-pipeline. The wait needs no deadline of its own: the
        batch's began in this turn, at its first caller's start (pipelining.py); a
        retry alone keeps this call's."""
        deadline = asyncio.get_running_loop().time() + self.slots.timeout
        try:
            reply = await auto.send((*self.heads[operation], len(keys), *keys, *args))
        except RedisError as error:  # this call's own: retried alone if it may be
            if isinstance(error, RedisTimeoutError):
                raise
            return await self.slots.call_by(deadline, self._call, operation, keys, args, error)
        if reply is not ALONE:
            return reply
        return await self.slots.call_by(deadline, self._call, operation, keys, args)

    async def _call(
        self,
        operation: str,
        keys: Sequence[str],
        args: Sequence[Any],
        failed: RedisError | None = None,
        narrowable: bool = True,
    ) -> Any:
        """The call, tried again while `_recover` says it may; `failed`: a first try's
        error, when that try went out in a pipeline; `narrowable`: False for a call that
        names more keys than it first did (see NARROWABLE)."""
        if failed is None:  # the first try builds nothing a retry would need
            try:
                return await self._client.execute_command(
                    *self.heads[operation], len(keys), *keys, *args
                )
            except RedisError as error:
                failed = error
        attempt = _Attempt(list(keys), narrowable and operation in NARROWABLE)
        if not await self._recover(operation, failed, attempt):
            raise failed
        # Bounded by the call's deadline (slots.py) as much as by this count.
        for _ in range(MAX_TRIES):
            declared = attempt.declared
            try:
                return await self._client.execute_command(
                    *self.heads[operation], len(declared), *declared, *args
                )
            except RedisError as error:
                if not await self._recover(operation, error, attempt):
                    raise
        raise ResponseError("a slot stayed on the move for the whole call")

    async def _recover(self, operation: str, error: RedisError, attempt: _Attempt) -> bool:
        """Whether a failed try may go again, once what it needs is done."""
        if missing_code(error):  # a server restarted, flushed or promoted
            await self._load(operation)
            return True
        wanted = undeclared_keys(error)
        if wanted is not None and attempt.rounds < MAX_DECLARE_ROUNDS:
            attempt.rounds += 1
            attempt.declared += [key for key in wanted if key not in attempt.declared]
            return True
        if wanted is None and _in_migration(error) and attempt.narrowable:
            attempt.narrowable = False  # once: a session that exists asks for the rest
            attempt.declared = attempt.declared[:1]
            return True
        if wanted is None and _in_migration(error):
            await asyncio.sleep(MIGRATION_PAUSE)
            return True
        return False

    def queue(
        self,
        pipe: Pipeline | ClusterPipeline,
        operation: str,
        keys: Sequence[str],
        args: Sequence[Any],
    ) -> None:
        """Add one call to a pipeline as a bare FCALL or EVALSHA (no SCRIPT EXISTS)."""
        # The generic form: redis-py's cluster pipeline blocks its `evalsha` method,
        # though it routes an EVALSHA by its keys like any keyed command.
        pipe.execute_command(*self.heads[operation], len(keys), *keys, *args)

    def pipeline(self) -> Pipeline | ClusterPipeline:
        return self._client.pipeline(transaction=False)

    async def load(self, operation: str) -> None:
        """Load the library or the script again after a reply that the server lacks it
        (`missing_code`), for pipelines (run() does this by itself)."""
        await self.slots.call(self._load, operation)

    async def _load(self, operation: str) -> None:
        if self.library is not None:
            await self._load_library()
        else:
            await self._client.script_load(self._scripts[operation].script)

    async def _load_library(self) -> None:
        """FUNCTION LOAD; a library of that name is ours already (its name hashes its text)."""
        assert self.library is not None
        try:
            await self._client.function_load(self.library.code)
        except ResponseError as error:
            if "already exists" not in str(error):
                raise

    async def run_many(self, operation: str, calls: Sequence[Call]) -> list[Any]:
        """Many calls of one script in one pipeline; each result or its exception."""
        results = await self._send(operation, calls)
        missing = [i for i, result in enumerate(results) if missing_code(result)]
        if missing:
            await self.load(operation)
            again = await self._send(operation, [calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        # Calls that need more keys, or met a slot on the move, go again one by one.
        retry = [
            i
            for i, result in enumerate(results)
            if isinstance(result, RedisError)
            and (undeclared_keys(result) is not None or _in_migration(result))
        ]
        if retry:
            again = await asyncio.gather(
                *(
                    self.slots.call(
                        self._call, operation, *self._with_wanted(calls[i], results[i]), None, False
                    )
                    for i in retry
                ),
                return_exceptions=True,
            )
            for i, result in zip(retry, again, strict=True):
                results[i] = result
        return results

    @staticmethod
    def _with_wanted(call: Call, error: BaseException) -> Call:
        keys, args = call
        wanted = undeclared_keys(error) or []
        return [*keys, *(key for key in wanted if key not in keys)], args

    async def _send(self, operation: str, calls: Sequence[Call]) -> list[Any]:
        pipe = self.pipeline()
        for keys, args in calls:
            self.queue(pipe, operation, keys, args)
        return list(await self.slots.call(pipe.execute, raise_on_error=False))

    async def run_durable(
        self,
        operation: str,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        marker: str,
        durability: Durability,
    ) -> Any:
        """One call that returns only once `durability.replicas` replicas have it (WAIT).

        WAIT counts the replicas that have every write of its own connection, so the
        call, a write to `marker` (in the call's slot: the call may have had nothing
        left to write, its work done by an earlier try whose acknowledgement was lost)
        and the WAIT go out in one pipeline, on one connection. Replication keeps the
        primary's order, so a replica that has the marker has the call too.
        """
        try:
            async with asyncio.timeout(self.slots.timeout):
                results = await self._durable_rounds(operation, keys, args, marker, durability)
        except TimeoutError:
            raise RedisTimeoutError(
                f"{operation}: no durable answer within {self.slots.timeout} s"
            ) from None
        for result in results:
            if isinstance(result, Exception):
                raise result
        acknowledged = int(results[2])
        if acknowledged < durability.replicas:
            raise NotDurableError(operation, acknowledged, durability.replicas, durability.wait)
        return results[0]

    async def _durable_rounds(
        self,
        operation: str,
        keys: Sequence[str],
        args: Sequence[Any],
        marker: str,
        durability: Durability,
    ) -> list[Any]:
        """Rounds until one ran whole on the slot's owner, all three on one connection.

        On a cluster, redirections are not followed inside the pipeline: redis-py would
        send a redirected call alone on another connection, and the WAIT left behind
        would count replicas of a connection that wrote nothing. A round that meets one
        goes again, after the slot map is brought up to date for a MOVED.
        """
        attempt = _Attempt(list(keys))
        for _ in range(MAX_TRIES):
            results, node = await self._durable_round(
                operation, attempt.declared, args, marker, durability
            )
            first = results[0]
            if isinstance(first, RedisError) and await self._recover(operation, first, attempt):
                continue
            if any(isinstance(result, MovedError) for result in results):
                await self.slots.call(self._client.exists, marker)  # follows MOVED, learns it
                continue
            if any(isinstance(result, AskError | TryAgainError) for result in results):
                await asyncio.sleep(MIGRATION_PAUSE)
                continue
            if node is None or node == self._owner(marker):
                return results  # done, and the slot did not move away during the call
        raise ResponseError("a slot stayed on the move for the whole call")

    async def _durable_round(
        self,
        operation: str,
        keys: Sequence[str],
        args: Sequence[Any],
        marker: str,
        durability: Durability,
    ) -> tuple[list[Any], Any]:
        pipe = self.pipeline()
        self.queue(pipe, operation, keys, args)
        pipe.set(marker, "1")
        wait = ("WAIT", durability.replicas, max(1, int(durability.wait * 1000)))
        node = self._owner(marker)
        if node is None:
            pipe.execute_command(*wait)
            return list(await self.slots.call(pipe.execute, raise_on_error=False)), node
        pipe.execute_command(*wait, target_nodes=node)
        assert isinstance(pipe, ClusterPipeline)  # a node: a cluster
        execute = pipe.execute
        results = await self.slots.call(execute, raise_on_error=False, allow_redirections=False)
        return list(results), node

    def _owner(self, key: str) -> Any:
        """The cluster node that serves `key` now, or None off a cluster."""
        client = self._client
        return client.get_node_from_key(key) if isinstance(client, RedisCluster) else None
