"""Filling a standalone server or a cluster fast, and counting what landed where.

One `create` call per session through the cluster client costs a few hundred µs of
Python (about 5,000 sessions/s on the benchmark machine), which would make the cluster
section wait on its own set-up. Here the very EVALSHA that `RedisSessions.create` sends
(populate.py asks the library for its shape) is encoded once per session and written
in large batches on a plain connection to the primary that owns the session's slot,
each primary's connection at once.

A `Target` names where keys live: one server for the standalone layout, or the slot
map of a cluster (read once; the benchmark never moves slots).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.crc import key_slot

from cached_sessions import KeyLayout
from cached_sessions.keys import ClusterLayout, Layout
from cached_sessions.scripts import Scripts
from cached_sessions.slots import ConnectionSlots
from cached_sessions.validation import encode_create_data

from .harness import APP, IP
from .populate import _bulk, _create_call

BATCH = 5000
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Target:
    """Where a layout's keys live: `ranges` is (first slot, last slot, port) per range.

    A standalone server is one range covering every slot.
    """

    ranges: tuple[tuple[int, int, int], ...]
    cluster: bool

    @classmethod
    def standalone(cls, port: int) -> Target:
        return cls(((0, 16383, port),), cluster=False)

    @classmethod
    async def of_cluster(cls, port: int) -> Target:
        """The slot map as the node on `port` serves it (CLUSTER SLOTS)."""
        client = Redis(host=HOST, port=port, decode_responses=True)
        try:
            rows = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()
        ranges = sorted((int(row[0]), int(row[1]), int(row[2][1])) for row in rows)
        return cls(tuple(ranges), cluster=True)

    @property
    def ports(self) -> list[int]:
        """The primaries, in slot order."""
        return list(dict.fromkeys(port for _, _, port in self.ranges))

    def port_of_slot(self, slot: int) -> int:
        for first, last, port in self.ranges:
            if first <= slot <= last:
                return port
        raise LookupError(f"no primary serves slot {slot}")

    def port_of_key(self, key: str) -> int:
        return self.port_of_slot(key_slot(key.encode()) if self.cluster else 0)

    def layout(self, namespace: str, buckets: int) -> Layout:
        return ClusterLayout(namespace, buckets) if self.cluster else KeyLayout(namespace)

    def url(self, port: int | None = None) -> str:
        """A URL the library takes: the cluster's (any primary), or the server's."""
        port = port or self.ports[0]
        return f"redis+cluster://{HOST}:{port}" if self.cluster else f"redis://{HOST}:{port}/0"


async def _load_create(target: Target, layout: Layout) -> tuple[str, list[str]]:
    """Load the create script on every primary; its SHA and the library's extra args."""
    scripts: Scripts | None = None
    for port in target.ports:
        client = Redis(host=HOST, port=port, decode_responses=True)
        try:
            scripts = Scripts.bind(client, layout, ConnectionSlots(1, 10.0))
            await scripts.load("create")
        finally:
            await client.aclose()
    assert scripts is not None
    return _create_call(scripts, layout)  # type: ignore[arg-type]


def _command(sha: str, keys: list[str], constant: list[str], args: list[Any]) -> bytes:
    parts = ["EVALSHA", sha, len(keys), *keys, *constant, *args]
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(part) for part in parts)


async def _send(port: int, commands: list[bytes]) -> None:
    """Write the commands in batches while reading the previous batch's replies."""
    reader, writer = await asyncio.open_connection(HOST, port)
    parser = hiredis.Reader()

    async def replies(count: int) -> None:
        while count:
            reply = parser.gets()
            if reply is False:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise ConnectionError(f"{port} closed the connection")
                parser.feed(chunk)
                continue
            if reply != 1:
                raise RuntimeError(f"a pipelined create on {port} answered {reply!r}")
            count -= 1

    try:
        in_flight = 0
        for first in range(0, len(commands), BATCH):
            batch = commands[first : first + BATCH]
            writer.write(b"".join(batch))
            await writer.drain()
            await replies(in_flight)
            in_flight = len(batch)
        await replies(in_flight)
    finally:
        writer.close()
        await writer.wait_closed()


async def fill(
    target: Target,
    layout: Layout,
    ids: Iterable[str],
    *,
    last_access: int,
    ttl: int,
    d: dict[str, Any] | None = None,
    app: str = APP,
) -> list[str]:
    """One session per id, created by the library's script with `la` = `last_access`.

    Returns the tokens, in the order of `ids`.
    """
    sha, constant = await _load_create(target, layout)
    data = encode_create_data(d)
    by_port: dict[int, list[bytes]] = defaultdict(list)
    tokens = []
    for id in ids:
        bucket = layout.bucket_of_id(id)
        token = layout.new_token(bucket)
        keys = [
            layout.session(app, token),
            layout.app_sessions(app, bucket),
            layout.app_users(app, bucket),
            layout.user_tokens(app, id),
            layout.expiry_index(bucket),
        ]
        args = [last_access, app, token, id, IP, ttl, data, ""]
        by_port[target.port_of_key(keys[0])].append(_command(sha, keys, constant, args))
        tokens.append(token)
    await asyncio.gather(*(_send(port, commands) for port, commands in by_port.items()))
    return tokens


async def sessions_per_primary(target: Target, namespace: str) -> dict[int, int]:
    """Session hashes of `namespace` on each primary, counted by the primary (SCAN)."""
    counts: Counter[int] = Counter()
    for port in target.ports:
        client = Redis(host=HOST, port=port, decode_responses=True)
        try:
            async for _ in client.scan_iter(match=f"{namespace}:*", count=5000, _type="hash"):
                counts[port] += 1
        finally:
            await client.aclose()
    return {port: counts[port] for port in target.ports}
