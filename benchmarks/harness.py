"""What every benchmark module shares: sizes, progress, percentiles, the machine, the
server, and filling a server or a cluster with sessions fast.

Nothing here measures anything; the sections do, each in its own module. The HTTP
sections share their worker fleet and load generators in load.py.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import hiredis
from redis.asyncio import Redis
from redis.crc import key_slot

from cached_sessions import EmbeddedServer, KeyLayout
from cached_sessions.keys import ClusterLayout, Layout
from cached_sessions.scripts import Scripts
from cached_sessions.slots import ConnectionSlots
from cached_sessions.validation import encode_create_data

T = TypeVar("T")

APP = "bench"
IP = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    """How much each section does; `full()`, `quick()`, then `scaled()` for tiny runs."""

    mode: str
    # 1. HTTP throughput
    http_seconds: float
    http_warmup: float
    connections: int
    http_sessions: int  # distinct sessions (cookies) the load rotates through
    worker_counts: tuple[int, ...]
    # Each row runs this many times, the configurations interleaved; the run of the
    # median throughput is reported (one 8 s run of a row varies by 10-30% on a
    # shared 2-core machine, more than some of the differences measured).
    http_rounds: int
    # 2. store operations
    store_calls: int
    # 3. invalidation
    invalidation_rounds: int
    invalidation_workers: int
    # 4. cost curve and wipe
    curve_sizes: tuple[int, ...]
    curve_samples: int
    memory_entries: int
    wipe_sessions: int
    # 5. mixed load
    mixed_workers: int
    mixed_users: int
    mixed_seconds: float
    # 6. Redis Cluster against one server (cluster.py)
    cluster_seconds: float  # per load run
    cluster_clients: tuple[int, ...]  # concurrent calls in one process
    cluster_processes: int  # above 1: also that many processes at the most clients
    cluster_repeats: int  # each load run, killall and wipe, this many times
    cluster_users: int  # the balance over the primaries
    cluster_listed: int  # the soapp app, and the sessions the loads go round
    cluster_bulk: int  # sessions one killall kills, one wipe removes
    cluster_calls: int  # samples of each app-wide call
    cluster_memory: int  # sessions for the memory per session
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            mode="full",
            http_seconds=8.0,
            http_warmup=2.0,
            connections=32,
            http_sessions=1000,
            worker_counts=(1, 2),
            http_rounds=3,
            store_calls=3000,
            invalidation_rounds=1000,
            invalidation_workers=4,
            curve_sizes=(1_000, 10_000, 100_000, 1_000_000),
            curve_samples=2000,
            memory_entries=5000,
            wipe_sessions=100_000,
            mixed_workers=2,
            mixed_users=2000,
            mixed_seconds=10.0,
            cluster_seconds=1.5,
            cluster_clients=(1, 8, 32),
            cluster_processes=2,
            cluster_repeats=3,
            cluster_users=30_000,
            cluster_listed=1_000,
            cluster_bulk=10_000,
            cluster_calls=30,
            cluster_memory=150_000,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            mode="quick",
            http_seconds=1.0,
            http_warmup=0.3,
            connections=32,
            http_sessions=200,
            worker_counts=(1, 2),
            http_rounds=1,
            store_calls=300,
            invalidation_rounds=200,
            invalidation_workers=4,
            curve_sizes=(1_000, 10_000),
            curve_samples=300,
            memory_entries=1000,
            wipe_sessions=5_000,
            mixed_workers=2,
            mixed_users=300,
            mixed_seconds=2.0,
            cluster_seconds=0.5,
            cluster_clients=(1, 16),
            cluster_processes=1,
            cluster_repeats=1,
            cluster_users=3_000,
            cluster_listed=300,
            cluster_bulk=2_000,
            cluster_calls=10,
            cluster_memory=6_000,
        )

    def scaled(self, factor: float) -> Sizes:
        """Every count and duration times `factor` (with floors), for a smoke run."""
        if factor == 1:
            return self

        def count(value: int, floor: int) -> int:
            return max(floor, int(value * factor))

        def seconds(value: float, floor: float) -> float:
            return max(floor, round(value * factor, 2))

        return replace(
            self,
            mode=f"{self.mode} x{factor:g}",
            http_seconds=seconds(self.http_seconds, 0.3),
            http_warmup=seconds(self.http_warmup, 0.2),
            connections=count(self.connections, 4),
            http_sessions=count(self.http_sessions, 10),
            http_rounds=1,
            store_calls=count(self.store_calls, 20),
            invalidation_rounds=count(self.invalidation_rounds, 10),
            curve_sizes=tuple(count(n, 500) for n in self.curve_sizes),
            curve_samples=count(self.curve_samples, 20),
            memory_entries=count(self.memory_entries, 50),
            wipe_sessions=count(self.wipe_sessions, 100),
            mixed_users=count(self.mixed_users, 20),
            mixed_seconds=seconds(self.mixed_seconds, 0.5),
            cluster_seconds=seconds(self.cluster_seconds, 0.25),
            cluster_users=count(self.cluster_users, 300),
            cluster_listed=count(self.cluster_listed, 100),
            cluster_bulk=count(self.cluster_bulk, 200),
            cluster_calls=count(self.cluster_calls, 5),
            cluster_memory=count(self.cluster_memory, 600),
        )


async def bounded(work: Awaitable[T], seconds: float, name: str) -> T:
    """`work`, or a RuntimeError after `seconds`, with every task's stack on stderr."""
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError:
        print(f"{name} took more than {seconds:.0f} s; the tasks were at:", file=sys.stderr)
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)
        raise RuntimeError(f"{name} took more than {seconds:.0f} s") from None


class Progress:
    """Prints what is running and how long the run has taken, as it goes."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", flush=True)


def percentiles(samples: list[float], unit: float = 1e6, suffix: str = "us") -> dict[str, Any]:
    """p50, p99 and max of `samples` (seconds), in microseconds unless told."""
    if not samples:
        return {f"p50_{suffix}": None, f"p99_{suffix}": None, f"max_{suffix}": None, "n": 0}
    ordered = sorted(samples)
    rank99 = max(0, math.ceil(len(ordered) * 0.99) - 1)
    return {
        f"p50_{suffix}": round(statistics.median(ordered) * unit, 2),
        f"p99_{suffix}": round(ordered[rank99] * unit, 2),
        f"max_{suffix}": round(ordered[-1] * unit, 2),
        "n": len(ordered),
    }


def namespace(section: str) -> str:
    """A key namespace no other run (nor a test sharing the server) uses."""
    return f"bench-{section}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python_command(module: str, *args: object) -> list[str]:
    """The command that runs one of the benchmark's own process modules."""
    return [sys.executable, "-m", f"benchmarks.{module}", *(str(arg) for arg in args)]


def child_env() -> dict[str, str]:
    """The environment for child processes: the project importable from anywhere."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# The machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def busy_processes(limit: int = 5) -> list[str]:
    """Other processes that used much CPU (ps: average over their life), not this run."""
    if shutil.which("ps") is None:
        return []
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid=,pcpu=,comm=", "--sort=-pcpu"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    busy = []
    for line in out.splitlines():
        fields = line.split(None, 2)
        if len(fields) < 3 or fields[0] == str(os.getpid()) or fields[2] == "ps":
            continue
        try:
            if float(fields[1]) >= 5.0:
                busy.append(f"{fields[2]} {fields[1]}%")
        except ValueError:
            continue
    return busy[:limit]


def library_version() -> str:
    """The commit the library was measured at, and whether its code had local changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "cached_sessions",
             "aiohttp_ext"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" with local changes" if changed else "")


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_average_at_start": load_average(),
        "library_commit": library_version(),
    }


# The server


async def server_version(url: str) -> str:
    """`Valkey x.y.z` or `Redis x.y.z`, as the server at `url` says."""
    client = Redis.from_url(url, decode_responses=True)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info['redis_version']}"


class Server:
    """The Redis-compatible server the run measures against: given by URL or embedded."""

    def __init__(self, url: str | None) -> None:
        self._given = url
        self._embedded: EmbeddedServer | None = None
        self.url = url or ""
        self.version = "unknown"

    @property
    def owned(self) -> bool:
        """True when this run started the server (so it may be filled and discarded)."""
        return self._embedded is not None

    async def start(self) -> Server:
        if self._given is None:
            # A port of the OS's choosing: other runs' embedded servers take 16379 up.
            self._embedded = EmbeddedServer(port=free_port())
            self.url = await asyncio.to_thread(self._embedded.start)
        self.version = await server_version(self.url)
        return self

    async def cpu_seconds(self) -> float:
        """CPU time (user + system) the server has used, from INFO cpu."""
        client = self.client()
        try:
            info = await client.info("cpu")
        finally:
            await client.aclose()
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def client(self) -> Redis:
        return Redis.from_url(self.url, decode_responses=True)

    def stop(self) -> None:
        embedded, self._embedded = self._embedded, None
        if embedded is not None:
            embedded.stop()


class ServerTime:
    """Microseconds the server spent per call of some commands (INFO commandstats deltas);
    by default the store's script calls (FCALL, or EVALSHA without Functions).

    Read-only, so safe on any server; other clients running the same command at the
    same time would count too.
    """

    def __init__(self, client: Redis, *commands: str) -> None:
        self.client = client
        self.keys = [f"cmdstat_{command}" for command in commands or ("fcall", "evalsha")]
        self.calls = 0
        self.usec = 0.0

    async def _read(self) -> tuple[int, float]:
        info = await self.client.info("commandstats")
        rows = [info.get(key, {}) for key in self.keys]
        return sum(int(r.get("calls", 0)) for r in rows), sum(float(r.get("usec", 0)) for r in rows)

    async def __aenter__(self) -> ServerTime:
        self.calls, self.usec = await self._read()
        return self

    async def __aexit__(self, *_: object) -> None:
        calls, usec = await self._read()
        self.calls, self.usec = calls - self.calls, usec - self.usec

    @property
    def per_call(self) -> float | None:
        return round(self.usec / self.calls, 1) if self.calls else None


async def drop_keys(client: Redis, pattern: str) -> int:
    """Delete every key matching `pattern` (SCAN + UNLINK), for cleaning up after a section."""
    removed = 0
    batch: list[str] = []
    async for key in client.scan_iter(match=pattern, count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            removed += await client.unlink(*batch)
            batch = []
    if batch:
        removed += await client.unlink(*batch)
    return removed


# Filling a server or a cluster fast
#
# One `create` call per session through the client costs a round trip and redis-py's
# encoding (about 5,000 sessions/s), which would make a million sessions take minutes.
# Here the very EVALSHA that `RedisSessions.create` sends (asked of the library's
# `Scripts.queue`) is encoded once per session and written in large batches on a plain
# connection to the server, or to the primary that owns the session's slot, while the
# previous batch's replies are read.

HOST = "127.0.0.1"
BATCH = 5000
SMALL_D = {"n": 1, "lang": "en"}


@dataclass(frozen=True)
class Target:
    """Where a layout's keys live: `ranges` is (first slot, last slot, URL) per range.

    A standalone server is one range covering every slot.
    """

    ranges: tuple[tuple[int, int, str], ...]
    cluster: bool

    @classmethod
    def standalone(cls, url: str) -> Target:
        return cls(((0, 16383, url),), cluster=False)

    @classmethod
    async def of_cluster(cls, port: int) -> Target:
        """The slot map as the node on `port` serves it (CLUSTER SLOTS)."""
        client = Redis(host=HOST, port=port, decode_responses=True)
        try:
            rows = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()
        ranges = sorted((int(r[0]), int(r[1]), f"redis://{HOST}:{int(r[2][1])}") for r in rows)
        return cls(tuple(ranges), cluster=True)

    @property
    def urls(self) -> list[str]:
        """The primaries, in slot order."""
        return list(dict.fromkeys(url for _, _, url in self.ranges))

    @property
    def ports(self) -> list[int]:
        return [urlsplit(url).port or 6379 for url in self.urls]

    def url_of_slot(self, slot: int) -> str:
        for first, last, url in self.ranges:
            if first <= slot <= last:
                return url
        raise LookupError(f"no primary serves slot {slot}")

    def port_of_slot(self, slot: int) -> int:
        return urlsplit(self.url_of_slot(slot)).port or 6379

    def url_of_key(self, key: str) -> str:
        return self.url_of_slot(key_slot(key.encode()) if self.cluster else 0)

    def layout(self, namespace: str, buckets: int) -> Layout:
        return ClusterLayout(namespace, buckets) if self.cluster else KeyLayout(namespace)

    def url(self) -> str:
        """A URL the library takes: the cluster's (any primary), or the server's."""
        first = self.urls[0]
        return first.replace("redis://", "redis+cluster://", 1) if self.cluster else first


class _Recorder:
    """Stands in for a pipeline to capture the command `Scripts.queue` would send."""

    def __init__(self) -> None:
        self.command: tuple[Any, ...] = ()

    def execute_command(self, *args: Any) -> None:
        self.command = args


def encode(parts: Iterable[Any]) -> bytes:
    """One command in RESP."""
    data = [part if isinstance(part, bytes) else str(part).encode() for part in parts]
    return b"*%d\r\n" % len(data) + b"".join(b"$%d\r\n%s\r\n" % (len(d), d) for d in data)


async def scripts_on(target: Target, layout: Layout, operation: str) -> Scripts:
    """The library's scripts for `layout`, with `operation` loaded on every primary."""
    scripts: Scripts | None = None
    for url in target.urls:
        client = Redis.from_url(url, decode_responses=True)
        try:
            scripts = Scripts.bind(client, layout, ConnectionSlots(1, 10.0))
            await scripts.load(operation)
        finally:
            await client.aclose()
    assert scripts is not None
    return scripts


def script_call(scripts: Scripts, operation: str, keys: list[str], args: list[Any]) -> bytes:
    """The store's very call of `operation`, encoded."""
    recorder = _Recorder()
    scripts.queue(recorder, operation, keys, args)  # type: ignore[arg-type]
    return encode(recorder.command)


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare RESP connection, authenticated and on the URL's database."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        reader, writer = await asyncio.open_unix_connection(parts.path)
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        db = query.get("db", "0")
    else:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 6379)
        db = parts.path.strip("/") or "0"
    setup = []
    if parts.password is not None:
        user = [unquote(parts.username)] if parts.username else []
        setup.append(encode(["AUTH", *user, unquote(parts.password)]))
    if db != "0":
        setup.append(encode(["SELECT", db]))
    if setup:
        await pipelined(reader, writer, [b"".join(setup)], [len(setup)], lambda r: r == "OK")
    return reader, writer


async def pipelined(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, batches: list[bytes],
    sizes: list[int], good: Callable[[Any], bool], deadline: float | None = None,
) -> int:  # fmt: skip
    """Write the batches (round and round until `deadline`, else once) while reading the
    previous batch's replies; the replies read. A reply not `good` raises."""
    parser = hiredis.Reader(encoding="utf-8", errors="replace")

    async def replies(count: int) -> None:
        while count:
            reply = parser.gets()
            if reply is False:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                parser.feed(chunk)
            elif not good(reply):
                raise RuntimeError(f"unexpected reply to a pipelined call: {reply!r}")
            else:
                count -= 1

    answered = in_flight = 0
    for n in range(len(batches) if deadline is None else 1 << 62):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        writer.write(batches[n % len(batches)])
        await writer.drain()
        await replies(in_flight)
        answered += in_flight
        in_flight = sizes[n % len(batches)]
    await replies(in_flight)
    return answered + in_flight


async def send(url: str, commands: list[bytes], good: Callable[[Any], bool],
               deadline: float | None = None, batch: int = BATCH) -> int:  # fmt: skip
    """`commands` on one new connection to `url`, in batches; see `pipelined`."""
    batches = [b"".join(commands[i : i + batch]) for i in range(0, len(commands), batch)]
    sizes = [min(batch, len(commands) - i) for i in range(0, len(commands), batch)]
    reader, writer = await _connect(url)
    try:
        return await pipelined(reader, writer, batches, sizes, good, deadline)
    finally:
        writer.close()
        await writer.wait_closed()


async def fill(
    target: Target,
    layout: Layout,
    ids: Iterable[str],
    *,
    last_access: float | tuple[float, float],
    ttl: int,
    d: dict[str, Any] | None = None,
    app: str = APP,
) -> list[str]:
    """One session per id, by the library's create script, with `la` = `last_access`
    (or drawn from the (earliest, latest) range given); the tokens, in the order of `ids`.
    """
    scripts = await scripts_on(target, layout, "create")
    data = encode_create_data(d)
    draw = random.Random(0)
    by_url: dict[str, list[bytes]] = defaultdict(list)
    tokens = []
    for id in ids:
        bucket = layout.bucket_of_id(id)
        token = layout.new_token(bucket)
        keys = [
            layout.session(app, token), layout.app_sessions(app, bucket),
            layout.app_users(app, bucket), layout.user_tokens(app, id),
            layout.expiry_index(bucket),
        ]  # fmt: skip
        la = last_access if isinstance(last_access, int | float) else draw.uniform(*last_access)
        args = [int(la), app, token, id, IP, ttl, data, ""]
        by_url[target.url_of_key(keys[0])].append(script_call(scripts, "create", keys, args))
        tokens.append(token)
    await asyncio.gather(*(send(url, calls, lambda r: r == 1) for url, calls in by_url.items()))
    return tokens


async def sessions_per_primary(target: Target, namespace: str) -> dict[str, int]:
    """Session hashes of `namespace` on each primary, counted by the primary (SCAN)."""
    counts: Counter[str] = Counter()
    for url in target.urls:
        client = Redis.from_url(url, decode_responses=True)
        try:
            async for _ in client.scan_iter(match=f"{namespace}:*", count=5000, _type="hash"):
                counts[url] += 1
        finally:
            await client.aclose()
    return {url: counts[url] for url in target.urls}


async def populate(
    url: str, ns: str, count: int, *, start: int = 0, **options: Any
) -> tuple[list[str], float]:
    """`count` sessions (ids `u<start>`...) in one server: their tokens, and the seconds
    the fill took. `options` are `fill`'s."""
    started = time.perf_counter()
    options.setdefault("d", SMALL_D)
    ids = (f"u{n}" for n in range(start, start + count))
    tokens = await fill(Target.standalone(url), KeyLayout(ns), ids, **options)
    return tokens, time.perf_counter() - started
