"""Filling Redis with many sessions fast: the project's own create script, pipelined.

One `create` call per session costs a round trip and redis-py's command encoding,
which makes a million sessions take minutes. Here the very script `RedisSessions.create`
runs is sent as bare EVALSHA commands, encoded once into RESP from pre-encoded parts and
written in large batches on a plain socket while the previous batch's replies are read,
so the layout is exactly the library's and the server is never idle.

Each session gets its own id (one user, one session), a small `d`, and a last access
`la` drawn from a window given by the caller.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis

from cached_sessions import KeyLayout
from cached_sessions.scripts import Scripts
from cached_sessions.slots import ConnectionSlots
from cached_sessions.validation import encode_create_data

from .harness import APP, IP

BATCH = 5000
SMALL_D = {"n": 1, "lang": "en"}


def token() -> str:
    return secrets.token_hex(32)  # 64 characters of [0-9a-f]: a valid token


def _bulk(value: str | bytes | int) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class RawConnection:
    """A bare RESP connection: write many commands, then count their replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(parts.path)
            db = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("db", "0")
        else:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 6379)
            db = parts.path.strip("/") or "0"
        connection = cls(reader, writer)
        if parts.password is not None:
            user = [unquote(parts.username)] if parts.username else []
            await connection.call("AUTH", *user, unquote(parts.password))
        if db != "0":
            await connection.call("SELECT", db)
        return connection

    async def call(self, *args: str) -> None:
        self.send(b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args))
        await self.replies(1)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def replies(self, count: int) -> None:
        """Read `count` one-line replies (integers or errors); raise on an error."""
        await self.writer.drain()
        while count:
            while self.buffer.find(b"\r\n") < 0:
                chunk = await self.reader.read(1 << 16)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                self.buffer += chunk
            # Most replies are ':1\r\n'; take every complete line in the buffer at once.
            complete = self.buffer.rfind(b"\r\n") + 2
            lines = self.buffer[:complete].split(b"\r\n")[:-1]
            if len(lines) > count:
                lines = lines[:count]
                complete = sum(len(line) + 2 for line in lines)
            self.buffer = self.buffer[complete:]
            for line in lines:
                if not line.startswith(b":"):
                    raise RuntimeError(f"unexpected reply while populating: {line[:200]!r}")
                if line != b":1":
                    raise RuntimeError("a pipelined create found its token taken")
            count -= len(lines)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class _Recorder:
    """Stands in for a pipeline to see the exact EVALSHA the library would queue."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def execute_command(self, command: str, *args: Any) -> None:
        """The generic form `Scripts.queue` uses: `EVALSHA sha numkeys keys... args...`."""
        if command.upper() != "EVALSHA":
            raise RuntimeError(f"the library queued {command!r}, not EVALSHA")
        self.calls.append(args)


def _create_call(scripts: Scripts, layout: KeyLayout) -> tuple[str, list[str]]:
    """The create script's SHA, and what the library sends between its keys and arguments.

    Asked of the library itself (`Scripts.queue`), so that the pipelined creates stay
    the very calls `RedisSessions.create` makes whatever the library puts in them.
    """
    keys = ["k1", "k2", "k3", "k4", "k5"]
    arguments = ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"]
    recorder = _Recorder()
    scripts.queue(recorder, "create", keys, arguments)  # type: ignore[arg-type]
    sha, count, *rest = recorder.calls[0]
    if (
        int(count) != len(keys)
        or list(rest[: len(keys)]) != keys
        or (list(rest[len(rest) - len(arguments) :]) != arguments)
    ):
        raise RuntimeError(f"unexpected create call from the library: {recorder.calls[0]!r}")
    return str(sha), [str(part) for part in rest[len(keys) : len(rest) - len(arguments)]]


async def populate(
    url: str,
    ns: str,
    count: int,
    *,
    start: int = 0,
    last_access: tuple[float, float],
    ttl: int,
    d: dict[str, Any] | None = SMALL_D,
) -> list[str]:
    """Create `count` sessions (ids `u<start>`...); returns their tokens.

    `last_access` is the (earliest, latest) unix time the sessions' `la` is drawn from.
    """
    layout = KeyLayout(ns)
    client = Redis.from_url(url, decode_responses=True)
    try:
        scripts = Scripts.bind(client, layout, ConnectionSlots(1, 5.0))
        await scripts.load("create")
    finally:
        await client.aclose()
    sha, constant = _create_call(scripts, layout)
    # EVALSHA sha 5 KEYS... [what the library adds] ARGV...: 3 + 5 keys + constant + 8.
    head = b"*%d\r\n" % (3 + 5 + len(constant) + 8) + _bulk("EVALSHA") + _bulk(sha) + _bulk(5)
    session_prefix = layout.session(APP, "")
    tokens_prefix = layout.user_tokens(APP, "")
    app_keys = _bulk(layout.app_sessions(APP)) + _bulk(layout.app_users(APP))
    expiry = _bulk(layout.expiry_index())
    constant_args = b"".join(_bulk(part) for part in constant)
    tail = _bulk(IP) + _bulk(ttl) + _bulk(encode_create_data(d)) + _bulk("")
    app = _bulk(APP)
    earliest, latest = last_access
    draw = random.Random(start).uniform
    tokens = [token() for _ in range(count)]
    connection = await RawConnection.open(url)
    try:
        in_flight = 0
        for first in range(0, count, BATCH):
            parts = []
            for n in range(first, min(first + BATCH, count)):
                tok, id = tokens[n], f"u{start + n}"
                parts += [
                    head, _bulk(session_prefix + tok), app_keys, _bulk(tokens_prefix + id),
                    expiry, constant_args, _bulk(int(draw(earliest, latest))), app, _bulk(tok),
                    _bulk(id), tail,
                ]  # fmt: skip
            connection.send(b"".join(parts))
            if in_flight:
                await connection.replies(in_flight)
            in_flight = min(BATCH, count - first)
        await connection.replies(in_flight)
    finally:
        await connection.close()
    return tokens


async def timed_populate(url: str, ns: str, count: int, **options: Any) -> tuple[list[str], float]:
    started = time.perf_counter()
    tokens = await populate(url, ns, count, **options)
    return tokens, time.perf_counter() - started
