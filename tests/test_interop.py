"""Interop with the real Node package redis-sessions 4.0.0 on the same server.

Each test runs `tests/node/driver.js` (the npm package, installed once per test run)
next to a Python store in the same namespace, and checks that what one side writes the
other reads back exactly: the same fields, the same values, the same JSON types.

Sessions live for an hour and nothing sleeps for expiry, so the real wall clock is
safe. Both sides compute `idle` (and a no_resave session's remaining `ttl`) from whole
seconds of that clock, so each comparison allows as many seconds of difference as
actually ticked by while it ran; usually none, and then the values must be equal.

The last tests share invalidations between the two caches: a Node driver started with
a `cachetime` subscribes to `<namespace>:cache` (before it answers anything) and
publishes its writes there, as a Python store does. Only the test of a Node writer
without a cachetime sleeps, for its short-lived Python cache entries to age out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from cached_sessions import ANONYMOUS_ID, InvalidFormatError, RedisSessions, SessionDict
from tests.conftest import ManualClock
from tests.servers import ServerProcess

pytestmark = pytest.mark.interop

PACKAGE = "redis-sessions@4.0.0"
DRIVER = Path(__file__).parent / "node" / "driver.js"
INSTALL_TIMEOUT = 180.0
IO_TIMEOUT = 10.0
APP = "interop"
TTL = 3600
NODE_TOKEN = re.compile(r"[A-Za-z0-9]{64}")  # redis-sessions' own token rule
# Cache lifetime on both sides in the invalidation tests: far longer than a test, so
# an entry that goes away was dropped by a message, never by age.
CACHETIME = 30
INVALIDATION_BOUND = 2.0  # seconds a published write may take to empty a cache
POLL_STEP = 0.002

# Flat data with every kind of value both sides allow.
NODE_DATA: dict[str, Any] = {
    "name": "Zoë 😀",
    "quote": 'say "hi"\\ and \n a newline, a tab\t, a slash / and \u2028',
    "empty": "",
    "count": 42,
    "negative": -7,
    "zero": 0,
    "largest": 2**53 - 1,
    "ratio": 0.1 + 0.2,
    "tiny": 1.5e-7,
    "huge": 1e21,
    "pi": -3.14159,
    "yes": True,
    "no": False,
}


class NodeError(Exception):
    """An error that redis-sessions (or the driver) reported for one command."""

    def __init__(self, op: str, name: str, message: str) -> None:
        super().__init__(f"node {op}: {name}: {message}")
        self.op = op
        self.name = name
        self.message = message


# Fixtures


@pytest.fixture(scope="session")
def node_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An npm prefix holding redis-sessions 4.0.0 and its dependencies."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(
            "node and npm are needed to drive the real redis-sessions package; "
            ".ci/run installs them"
        )
    prefix = tmp_path_factory.mktemp("redis-sessions-npm")
    command = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), PACKAGE]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired as error:
        output = f"{error.stdout or ''}{error.stderr or ''}"
        pytest.fail(f"`{' '.join(command)}` took more than {INSTALL_TIMEOUT:.0f} s:\n{output}")
    if done.returncode != 0:
        pytest.fail(
            f"`{' '.join(command)}` failed with exit code {done.returncode}:\n"
            f"{done.stdout}{done.stderr}"
        )
    manifest = prefix / "node_modules" / "redis-sessions" / "package.json"
    version = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    assert version == "4.0.0", f"npm installed redis-sessions {version}, not 4.0.0"
    return prefix


class NodeDriver:
    """One driver process: `await node("get", app=..., token=...)` runs one command."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.process = process
        self.stderr = stderr

    def _stderr(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    async def __call__(self, op: str, **args: Any) -> Any:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps({"op": op, "args": args}).encode("utf-8") + b"\n")
        try:
            await asyncio.wait_for(stdin.drain(), IO_TIMEOUT)
            line = await asyncio.wait_for(stdout.readline(), IO_TIMEOUT)
        except TimeoutError:
            pytest.fail(f"node {op} gave no answer within {IO_TIMEOUT:.0f} s:\n{self._stderr()}")
        if not line:
            await asyncio.wait_for(self.process.wait(), IO_TIMEOUT)
            pytest.fail(
                f"the node driver exited ({self.process.returncode}) during {op}:\n{self._stderr()}"
            )
        reply = json.loads(line)
        if "error" in reply:
            raise NodeError(op, reply["error"]["name"], reply["error"]["message"])
        return reply["ok"]

    async def close(self) -> None:
        """End stdin so the driver quits Redis and exits; kill it if it hangs."""
        process = self.process
        if process.stdin is not None:
            process.stdin.close()
        try:
            code = await asyncio.wait_for(process.wait(), IO_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"the node driver did not exit after stdin closed:\n{self._stderr()}")
        assert code == 0, f"the node driver exited with {code}:\n{self._stderr()}"


@contextlib.asynccontextmanager
async def running_node(
    node_package: Path,
    server: ServerProcess,
    namespace: str,
    stderr_path: Path,
    cachetime: float = 0,
) -> AsyncIterator[NodeDriver]:
    """A driver process, wiper off; with `cachetime`, subscribed before it answers."""
    extra = [str(cachetime)] if cachetime else []
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            str(DRIVER),
            str(node_package),
            str(server.port),
            namespace,
            *extra,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            limit=16 * 1024 * 1024,
        )
    driver = NodeDriver(process, stderr_path)
    try:
        assert await driver("ping") == "PONG"
        yield driver
    finally:
        if process.returncode is None:
            await driver.close()


@pytest.fixture
async def node(
    node_package: Path, server: ServerProcess, namespace: str, tmp_path: Path
) -> AsyncIterator[NodeDriver]:
    """redis-sessions on the test server, in the test's namespace (wiper and cache off)."""
    async with running_node(node_package, server, namespace, tmp_path / "driver.stderr") as driver:
        assert await driver("driver") == {"cachetime": 0, "cache": False, "subscribed": False}
        yield driver


@pytest.fixture
async def cached_node(
    node_package: Path, server: ServerProcess, namespace: str, tmp_path: Path
) -> AsyncIterator[NodeDriver]:
    """redis-sessions with `cachetime=CACHETIME`: it caches `get`, listens on
    `<namespace>:cache` (subscribed before the first answer) and publishes its writes."""
    stderr_path = tmp_path / "cached-driver.stderr"
    async with running_node(
        node_package, server, namespace, stderr_path, cachetime=CACHETIME
    ) as driver:
        info = await driver("driver")
        assert info == {"cachetime": CACHETIME, "cache": True, "subscribed": True}
        yield driver


@pytest.fixture
async def cached_rs(server: ServerProcess, namespace: str) -> AsyncIterator[RedisSessions]:
    """A Python store with a cache of `CACHETIME` s, subscribed (start() waits for it)."""
    store = RedisSessions(url=server.url, namespace=namespace, wipe=0, cachetime=CACHETIME)
    async with store:
        assert store.cache_stats()["subscribed"] is True
        yield store


# Helpers


async def early_in_second() -> None:
    """Sleep (at most 0.3 s) so the next steps start early in a wall-clock second.

    Then the few milliseconds a comparison takes rarely cross a second boundary, and
    `idle` and a no_resave `ttl` are compared exactly.
    """
    fraction = time.time() % 1
    if fraction > 0.7:
        await asyncio.sleep(1.02 - fraction)


class Clock:
    """Counts the whole wall-clock seconds that tick by during a test."""

    def __init__(self) -> None:
        self.start = int(time.time())

    @property
    def ticks(self) -> int:
        return int(time.time()) - self.start


def typed(value: Any) -> Any:
    """`value` with every scalar tagged by its type: True == 1 and 2.0 == 2 in Python,
    but a bool that became an int, or a float that became an int, is a difference."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


def assert_same_session(
    later: dict[str, Any] | None,
    earlier: dict[str, Any] | None,
    *,
    reads_between: int,
    ticks: int,
) -> None:
    """`later` is the same session as `earlier`, read `reads_between` gets later.

    Everything must match exactly (types included) except `r`, which grows by one per
    get, and `idle` and a no_resave `ttl`, which may differ by the seconds that ticked.
    """
    assert later is not None and earlier is not None
    assert sorted(later) == sorted(earlier), "the two sides return different fields"
    for field in ("r", "w", "ttl", "idle"):
        assert type(later[field]) is int, f"{field} of {later!r} is not an int"
        assert type(earlier[field]) is int, f"{field} of {earlier!r} is not an int"
    assert later["r"] == earlier["r"] + reads_between
    fixed = [key for key in earlier if key not in ("r", "idle", "ttl")]
    assert typed({key: later[key] for key in fixed}) == typed({key: earlier[key] for key in fixed})
    if ticks == 0:
        assert later["idle"] == earlier["idle"]
        assert later["ttl"] == earlier["ttl"]
    else:
        assert abs(later["idle"] - earlier["idle"]) <= ticks
        if earlier.get("no_resave"):
            assert abs(later["ttl"] - earlier["ttl"]) <= ticks
        else:
            assert later["ttl"] == earlier["ttl"]


def label_order(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sessions sorted by their `d.label`, which every test session carries."""
    return sorted(sessions, key=lambda session: session["d"]["label"])


def labels(sessions: list[dict[str, Any]]) -> list[str]:
    return [session["d"]["label"] for session in sessions]


async def keys_in(redis: Redis, namespace: str) -> list[str]:
    return sorted([key async for key in redis.scan_iter(match=f"{namespace}:*")])


async def subscribers(redis: Redis, namespace: str) -> int:
    """How many connections listen on the channel that both libraries invalidate on."""
    channel = f"{namespace}:cache"
    [(name, count)] = await redis.pubsub_numsub(channel)
    assert name == channel
    return int(count)


async def waited(
    done: Callable[[], bool | Awaitable[bool]],
    *,
    since: float,
    what: str,
    bound: float = INVALIDATION_BOUND,
) -> float:
    """Seconds from `since` (a perf_counter value) until a check of `done()` held; fails
    after `bound` s. `done` is checked at once, then every POLL_STEP.

    An upper bound: when the first check already holds, the change happened at some
    point before that check answered (for Node, a round trip through the driver).
    """
    while True:
        result = done()
        if inspect.isawaitable(result):
            result = await result
        elapsed = time.perf_counter() - since
        if result:
            return elapsed
        if elapsed > bound:
            pytest.fail(f"{what}: still not done after {bound} s")
        await asyncio.sleep(POLL_STEP)


class Delays:
    """Invalidation delays measured by a test, reported in its output and junit XML."""

    def __init__(self, record_property: Callable[[str, object], None]) -> None:
        self.record_property = record_property
        self.seen: dict[str, float] = {}

    def add(self, what: str, seconds: float, *, heard: float | None = None) -> None:
        """`seconds`: from the write's return until a check saw the entry gone (an upper
        bound, see `waited`); `heard`: from the write's return until Node's subscriber
        got the message (negative when it got it first)."""
        self.seen[what] = seconds
        self.record_property(f"delay_ms {what}", round(seconds * 1000, 3))
        line = f"invalidation delay: {what}: gone at a check {seconds * 1000:.2f} ms after"
        if heard is not None:
            self.record_property(f"heard_ms {what}", round(heard * 1000, 3))
            line += f"; Node heard it {heard * 1000:+.2f} ms after"
        print(line + " the write returned")


@pytest.fixture
def delays(record_property: Callable[[str, object], None]) -> Delays:
    return Delays(record_property)


async def cache_in_python(rs: RedisSessions, token: str) -> SessionDict:
    """Reads the session twice through Python's cache; proves the second was a hit."""
    first = await rs.get(app=APP, token=token)
    assert first is not None
    hits = rs.cache_stats()["hits"]
    second = await rs.get(app=APP, token=token)
    assert rs.cache_stats()["hits"] == hits + 1, "the second Python get was not a hit"
    assert rs.is_cached(token)
    assert second is not None and second["r"] == first["r"] + 1
    assert typed(second["d"]) == typed(first["d"])
    return second


async def cache_in_node(node: NodeDriver, token: str) -> dict[str, Any]:
    """Reads the session twice through Node's cache; the second answer is the very
    object Node cached (same r and idle), so it came from the cache, not from Redis."""
    first: dict[str, Any] = await node("get", app=APP, token=token)
    assert first is not None
    assert await node("cached", app=APP, token=token) is True
    second = await node("get", app=APP, token=token)
    assert second == first
    return first


async def python_drops(rs: RedisSessions, tokens: list[str], what: str, since: float) -> float:
    return await waited(
        lambda: not any(rs.is_cached(token) for token in tokens),
        since=since,
        what=f"Python's cache to drop the session(s) after {what}",
    )


async def node_drops(node: NodeDriver, tokens: list[str], what: str, since: float) -> float:
    async def dropped() -> bool:
        for token in tokens:
            if await node("cached", app=APP, token=token):
                return False
        return True

    return await waited(
        dropped, since=since, what=f"Node's cache to drop the session(s) after {what}"
    )


async def node_heard(node: NodeDriver, tokens: list[str], since_wall: float) -> float:
    """Seconds from `since_wall` (unix time) until Node's subscriber had heard about
    every one of `tokens`; both processes read the same wall clock."""
    times: list[float | None] = [await node("heard", app=APP, token=token) for token in tokens]
    assert None not in times, "Node's subscriber never heard of some session"
    return max(t for t in times if t is not None) / 1000 - since_wall


# Tests


async def test_node_creates_python_reads_sets_and_kills(
    live_rs: RedisSessions, node: NodeDriver, redis: Redis, namespace: str
) -> None:
    await early_in_second()
    clock = Clock()
    created = await node("create", app=APP, id="user1", ip="10.0.0.1", ttl=TTL, d=NODE_DATA)
    token = created["token"]
    assert NODE_TOKEN.fullmatch(token)

    from_node = await node("get", app=APP, token=token)
    from_python = await live_rs.get(app=APP, token=token)
    assert from_node is not None
    assert from_node["r"] == 1 and from_node["w"] == 1 and from_node["ttl"] == TTL
    assert typed(from_node["d"]) == typed(NODE_DATA)
    assert_same_session(from_python, from_node, reads_between=1, ticks=clock.ticks)

    # Add a key, remove a key, change a key's type.
    updated = await live_rs.set(
        app=APP, token=token, d={"added": "new", "count": None, "yes": "now a string"}
    )
    merged = {key: value for key, value in NODE_DATA.items() if key != "count"}
    merged.update(added="new", yes="now a string")
    assert updated is not None
    assert typed(updated["d"]) == typed(merged)
    assert updated["w"] == 2

    seen_by_node = await node("get", app=APP, token=token)
    assert typed(seen_by_node["d"]) == typed(merged)
    assert seen_by_node["w"] == updated["w"]
    assert_same_session(seen_by_node, updated, reads_between=0, ticks=clock.ticks)

    assert await live_rs.kill(app=APP, token=token) == {"kill": 1}
    assert await node("get", app=APP, token=token) is None
    assert await node("soid", app=APP, id="user1") == {"sessions": []}
    assert await node("activity", app=APP, deltaTime=600) == {"activity": 0}
    assert await keys_in(redis, namespace) == []


async def test_python_creates_node_reads_sets_and_kills(
    live_rs: RedisSessions, node: NodeDriver, redis: Redis, namespace: str
) -> None:
    await early_in_second()
    clock = Clock()
    data = {"label": "py", "lang": "Python ✓", "visits": 3, "score": 0.5, "admin": False}
    created = await live_rs.create(app=APP, id="user2", ip="2001:db8::1", ttl=TTL, d=data)
    token = created["token"]

    from_python = await live_rs.get(app=APP, token=token)
    from_node = await node("get", app=APP, token=token)
    assert from_python is not None
    assert from_python["r"] == 1 and from_python["w"] == 1 and from_python["ttl"] == TTL
    assert typed(from_python["d"]) == typed(data)
    assert_same_session(from_node, from_python, reads_between=1, ticks=clock.ticks)

    set_by_node = await node(
        "set", app=APP, token=token, d={"theme": "dark", "visits": None, "admin": True}
    )
    merged = {"label": "py", "lang": "Python ✓", "score": 0.5, "admin": True, "theme": "dark"}
    assert typed(set_by_node["d"]) == typed(merged)
    assert set_by_node["w"] == 2

    seen_by_python = await live_rs.get(app=APP, token=token)
    assert seen_by_python is not None
    assert typed(seen_by_python["d"]) == typed(merged)
    assert seen_by_python["w"] == set_by_node["w"]
    assert_same_session(seen_by_python, set_by_node, reads_between=0, ticks=clock.ticks)

    assert await node("kill", app=APP, token=token) == {"kill": 1}
    assert await live_rs.get(app=APP, token=token) is None
    assert await live_rs.soid(app=APP, id="user2") == {"sessions": []}
    assert await live_rs.activity(app=APP, delta_time=600) == {"activity": 0}
    assert await keys_in(redis, namespace) == []


async def test_node_accepts_python_tokens(live_rs: RedisSessions, node: NodeDriver) -> None:
    tokens = []
    for n in range(20):
        created = await live_rs.create(app=APP, id=f"t{n}", ip="10.0.0.3", ttl=TTL)
        tokens.append(created["token"])
    assert len(set(tokens)) == len(tokens)
    for n, token in enumerate(tokens):
        assert NODE_TOKEN.fullmatch(token), token
        session = await node("get", app=APP, token=token)
        assert session is not None and session["id"] == f"t{n}"
        assert "d" not in session
    # The other token-taking calls of Node accept them too.
    assert (await node("set", app=APP, token=tokens[0], d={"k": 1}))["d"] == {"k": 1}
    assert await node("kill", app=APP, token=tokens[1]) == {"kill": 1}
    assert await live_rs.get(app=APP, token=tokens[1]) is None
    # A token one character short is refused by both, with the same error.
    with pytest.raises(NodeError) as from_node:
        await node("get", app=APP, token=tokens[0][:63])
    with pytest.raises(InvalidFormatError) as from_python:
        await live_rs.get(app=APP, token=tokens[0][:63])
    assert from_node.value.name == from_python.value.name == "invalidFormat"
    assert from_node.value.message == str(from_python.value) == "Invalid token format"


async def test_listings_agree_over_sessions_of_both_sides(
    live_rs: RedisSessions, node: NodeDriver, redis: Redis, namespace: str
) -> None:
    async def by_node(id: str, label: str, ip: str) -> str:
        created = await node("create", app=APP, id=id, ip=ip, ttl=TTL, d={"label": label})
        return str(created["token"])

    async def by_python(id: str, label: str, ip: str) -> str:
        created = await live_rs.create(app=APP, id=id, ip=ip, ttl=TTL, d={"label": label})
        return created["token"]

    await early_in_second()
    clock = Clock()
    await by_node("alice", "alice-node-1", "10.0.0.1")
    await by_node("alice", "alice-node-2", "10.0.0.2")
    bob = await by_node("bob", "bob-node", "10.0.0.3")
    await by_python("alice", "alice-py", "10.0.1.1")
    await by_python("carol", "carol-py-1", "10.0.1.2")
    await by_python("carol", "carol-py-2", "10.0.1.3")
    # Make bob look active 1000 s ago, in the indexes both libraries filter on.
    long_ago = int(time.time()) - 1000
    await redis.zadd(f"{namespace}:{APP}:_sessions", {f"{bob}:bob": long_ago})
    await redis.zadd(f"{namespace}:{APP}:_users", {"bob": long_ago})

    expected_ids = {
        "alice": ["alice-node-1", "alice-node-2", "alice-py"],
        "bob": ["bob-node"],
        "carol": ["carol-py-1", "carol-py-2"],
        "nobody": [],
    }
    for id, expected in expected_ids.items():
        py = label_order((await live_rs.soid(app=APP, id=id))["sessions"])
        nd = label_order((await node("soid", app=APP, id=id))["sessions"])
        assert labels(py) == labels(nd) == expected
        for p, n in zip(py, nd, strict=True):
            assert p["id"] == id
            assert_same_session(p, n, reads_between=0, ticks=clock.ticks)

    for delta, expected_labels in (
        (600, ["alice-node-1", "alice-node-2", "alice-py", "carol-py-1", "carol-py-2"]),
        (
            3600,
            ["alice-node-1", "alice-node-2", "alice-py", "bob-node", "carol-py-1", "carol-py-2"],
        ),
    ):
        py = (await live_rs.soapp(app=APP, delta_time=delta))["sessions"]
        nd = (await node("soapp", app=APP, deltaTime=delta))["sessions"]
        # The same query on the same sorted set: the same order, ties included.
        assert labels(py) == labels(nd)
        assert sorted(labels(py)) == expected_labels
        if delta == 3600:
            assert labels(py)[-1] == "bob-node", "the oldest session must come last"
        for p, n in zip(py, nd, strict=True):
            assert_same_session(p, n, reads_between=0, ticks=clock.ticks)

    for delta, expected_count in ((600, 2), (3600, 3)):
        py_activity = await live_rs.activity(app=APP, delta_time=delta)
        node_activity = await node("activity", app=APP, deltaTime=delta)
        assert py_activity == node_activity == {"activity": expected_count}

    # Neither side's listings count as reads.
    everything = (await live_rs.soapp(app=APP, delta_time=3600))["sessions"]
    assert [session["r"] for session in everything] == [1] * 6


async def test_python_killsoid_and_node_killall(
    live_rs: RedisSessions, node: NodeDriver, redis: Redis, namespace: str
) -> None:
    for n in range(2):
        await node("create", app=APP, id="dave", ip="10.0.0.4", ttl=TTL, d={"label": f"dave{n}"})
    await node("create", app=APP, id="erin", ip="10.0.0.5", ttl=TTL, d={"label": "erin"})
    await live_rs.create(app=APP, id="dave", ip="10.0.0.4", ttl=TTL, d={"label": "dave-py"})

    dave = (await node("soid", app=APP, id="dave"))["sessions"]
    assert sorted(labels(dave)) == ["dave-py", "dave0", "dave1"]
    assert await live_rs.killsoid(app=APP, id="dave") == {"kill": 3}
    assert await node("soid", app=APP, id="dave") == {"sessions": []}
    assert labels((await node("soid", app=APP, id="erin"))["sessions"]) == ["erin"]
    assert await node("activity", app=APP, deltaTime=600) == {"activity": 1}
    assert labels((await node("soapp", app=APP, deltaTime=600))["sessions"]) == ["erin"]
    assert not await redis.exists(f"{namespace}:{APP}:us:dave")
    assert await redis.zscore(f"{namespace}:{APP}:_users", "dave") is None

    tokens = [
        (await live_rs.create(app=APP, id=id, ip="10.0.1.4", ttl=TTL, d={"label": id}))["token"]
        for id in ("frank", "frank", "grace")
    ]
    assert await live_rs.activity(app=APP, delta_time=600) == {"activity": 3}
    assert await node("killall", app=APP) == {"kill": 4}
    for token in tokens:
        assert await live_rs.get(app=APP, token=token) is None
    for id in ("dave", "erin", "frank", "grace"):
        assert await live_rs.soid(app=APP, id=id) == {"sessions": []}
    assert await live_rs.activity(app=APP, delta_time=3600) == {"activity": 0}
    assert await live_rs.soapp(app=APP, delta_time=3600) == {"sessions": []}
    assert await node("activity", app=APP, deltaTime=3600) == {"activity": 0}
    assert await keys_in(redis, namespace) == []


async def test_no_resave_sessions_agree(
    live_rs: RedisSessions, node: NodeDriver, redis: Redis, namespace: str
) -> None:
    await early_in_second()
    clock = Clock()
    created = await node(
        "create", app=APP, id="nr", ip="10.0.0.6", ttl=TTL, no_resave=True, d={"label": "node"}
    )
    token = created["token"]
    assert await redis.hget(f"{namespace}:{APP}:{token}", "no_resave") == "1"

    from_node = await node("get", app=APP, token=token)
    from_python = await live_rs.get(app=APP, token=token)
    assert from_node["no_resave"] is True
    assert from_python is not None and from_python["no_resave"] is True
    assert_same_session(from_python, from_node, reads_between=1, ticks=clock.ticks)
    if clock.ticks == 0:
        assert from_python["ttl"] == from_node["ttl"] == TTL

    # The other way round: a no_resave session that Python created.
    created = await live_rs.create(
        app=APP, id="nr", ip="10.0.0.7", ttl=TTL, no_resave=True, d={"label": "python"}
    )
    token = created["token"]
    from_python = await live_rs.get(app=APP, token=token)
    from_node = await node("get", app=APP, token=token)
    assert from_python is not None and from_python["no_resave"] is True
    assert from_node["no_resave"] is True
    assert_same_session(from_node, from_python, reads_between=1, ticks=clock.ticks)

    py = label_order((await live_rs.soid(app=APP, id="nr"))["sessions"])
    nd = label_order((await node("soid", app=APP, id="nr"))["sessions"])
    assert labels(py) == ["node", "python"]
    for p, n in zip(py, nd, strict=True):
        assert p["no_resave"] is True
        assert_same_session(p, n, reads_between=0, ticks=clock.ticks)


async def test_idle_and_expiry_agree_on_sessions_last_seen_long_ago(
    live_rs: RedisSessions, node: NodeDriver, redis: Redis, namespace: str
) -> None:
    """Both sides derive idle, the remaining ttl and expiry from `la` the same way."""
    await early_in_second()
    clock = Clock()
    tokens = {}
    for label, no_resave in (("normal", False), ("no-resave", True), ("expired", False)):
        created = await node(
            "create", app=APP, id="old", ip="10.0.0.8", ttl=TTL, no_resave=no_resave,
            d={"label": label},
        )  # fmt: skip
        tokens[label] = created["token"]
    now = int(time.time())
    # Last seen 100 s ago, and (the third) longer ago than its ttl.
    await redis.hset(f"{namespace}:{APP}:{tokens['normal']}", "la", now - 100)
    await redis.hset(f"{namespace}:{APP}:{tokens['no-resave']}", "la", now - 100)
    await redis.hset(f"{namespace}:{APP}:{tokens['expired']}", "la", now - TTL - 400)

    py = label_order((await live_rs.soid(app=APP, id="old"))["sessions"])
    nd = label_order((await node("soid", app=APP, id="old"))["sessions"])
    assert labels(py) == labels(nd) == ["no-resave", "normal"]
    for p, n in zip(py, nd, strict=True):
        assert_same_session(p, n, reads_between=0, ticks=clock.ticks)
        assert 100 <= p["idle"] <= 100 + clock.ticks
    no_resave, normal = py
    assert TTL - 100 - clock.ticks <= no_resave["ttl"] <= TTL - 100
    assert normal["ttl"] == TTL
    py_app = (await live_rs.soapp(app=APP, delta_time=600))["sessions"]
    node_app = (await node("soapp", app=APP, deltaTime=600))["sessions"]
    assert sorted(labels(py_app)) == sorted(labels(node_app)) == ["no-resave", "normal"]

    # A Python read of the no_resave session keeps its expiry; Node then agrees on it.
    expiry_key = f"{namespace}:SESSIONS"
    member = f"{APP}:{tokens['no-resave']}:old"
    from_python = await live_rs.get(app=APP, token=tokens["no-resave"])
    assert from_python is not None
    score = await redis.zscore(expiry_key, member)
    from_node = await node("get", app=APP, token=tokens["no-resave"])
    assert from_node["no_resave"] is True and from_node["r"] == from_python["r"] + 1
    assert from_node["idle"] <= clock.ticks
    if clock.ticks == 0:
        assert from_node["ttl"] == from_python["ttl"] == TTL - 100
        assert score == now + TTL - 100
        assert await redis.zscore(expiry_key, member) == score

    # A Node read of the normal session resets idle for Python too.
    from_node = await node("get", app=APP, token=tokens["normal"])
    from_python = await live_rs.get(app=APP, token=tokens["normal"])
    assert from_node["idle"] >= 100
    assert from_python is not None and from_python["idle"] <= clock.ticks
    assert from_python["ttl"] == from_node["ttl"] == TTL

    # The expired session is gone for both, and killing it counts for neither.
    assert await node("get", app=APP, token=tokens["expired"]) is None
    assert await live_rs.get(app=APP, token=tokens["expired"]) is None
    assert await node("kill", app=APP, token=tokens["expired"]) == {"kill": 0}
    assert await live_rs.kill(app=APP, token=tokens["expired"]) == {"kill": 0}
    assert not await redis.exists(f"{namespace}:{APP}:{tokens['expired']}")
    assert await redis.smembers(f"{namespace}:{APP}:us:old") == {
        tokens["normal"],
        tokens["no-resave"],
    }


async def test_integral_floats_from_python_become_ints_once_node_rewrites_d(
    live_rs: RedisSessions, node: NodeDriver
) -> None:
    """A known limit of sharing `d` with JavaScript, which has one number type.

    Python stores 2.0 as `2.0` and reads it back as a float, also after Python's own
    `set` (the merge keeps each value's text). Node reads it as the number 2 and, on
    any `set`, writes the whole `d` again with JSON.stringify: `2`. From then on Python
    reads an int. Values stay equal under == (2 == 2.0, 0 == -0.0); the types, and the
    sign of a negative zero, do not survive.
    """
    data = {"whole": 2.0, "big": 1e16, "negative_zero": -0.0, "half": 0.5}
    token = (await live_rs.create(app=APP, id="floats", ip="10.0.0.9", ttl=TTL, d=data))["token"]
    await live_rs.set(app=APP, token=token, d={"by": "python"})
    before = await live_rs.get(app=APP, token=token)
    assert before is not None
    assert typed(before["d"]) == typed({**data, "by": "python"})

    as_node_sees_it = {"whole": 2, "big": 10**16, "negative_zero": 0, "half": 0.5, "by": "python"}
    assert typed((await node("get", app=APP, token=token))["d"]) == typed(as_node_sees_it)

    await node("set", app=APP, token=token, d={"by": "node"})
    after = await live_rs.get(app=APP, token=token)
    assert after is not None
    assert typed(after["d"]) == typed({**as_node_sees_it, "by": "node"})
    assert after["d"] == {**data, "by": "node"}  # equal values, different types


# Cache invalidation between the two libraries


async def test_node_writes_invalidate_python_cache(
    cached_rs: RedisSessions,
    cached_node: NodeDriver,
    redis: Redis,
    namespace: str,
    delays: Delays,
) -> None:
    """With its own cache on, Node publishes `<app>:<token>` on `<namespace>:cache` in
    set, kill, killsoid and killall; Python's cache drops every session so named."""
    rs, node = cached_rs, cached_node
    assert rs.layout.channel() == f"{namespace}:cache"
    assert await subscribers(redis, namespace) == 2  # Python's and Node's

    async def by_node(id: str, label: str) -> str:
        data = {"label": label, "v": 1}
        created = await node("create", app=APP, id=id, ip="10.0.2.1", ttl=TTL, d=data)
        return str(created["token"])

    invalidations = rs.cache_stats()["invalidations"]

    # set: Python reads Node's new data.
    token = await by_node("nina", "set")
    await cache_in_python(rs, token)
    updated = await node("set", app=APP, token=token, d={"v": 2, "by": "node"})
    written = time.perf_counter()
    delays.add("node set -> python", await python_drops(rs, [token], "node set", written))
    assert rs.cache_stats()["invalidations"] == invalidations + 1
    misses = rs.cache_stats()["misses"]
    seen = await rs.get(app=APP, token=token)
    assert rs.cache_stats()["misses"] == misses + 1, "Python did not go back to Redis"
    assert seen is not None
    assert typed(seen["d"]) == typed({"label": "set", "v": 2, "by": "node"})
    assert seen["w"] == updated["w"] == 2

    # kill: Python reads None.
    await cache_in_python(rs, token)
    assert await node("kill", app=APP, token=token) == {"kill": 1}
    written = time.perf_counter()
    delays.add("node kill -> python", await python_drops(rs, [token], "node kill", written))
    assert await rs.get(app=APP, token=token) is None

    # killsoid: one message per session of the id.
    tokens = [await by_node("olga", f"olga{n}") for n in range(2)]
    for token in tokens:
        await cache_in_python(rs, token)
    assert await node("killsoid", app=APP, id="olga") == {"kill": 2}
    written = time.perf_counter()
    delays.add("node killsoid -> python", await python_drops(rs, tokens, "killsoid", written))
    for token in tokens:
        assert await rs.get(app=APP, token=token) is None

    # killall: one message per session of the app.
    tokens = [await by_node(id, id) for id in ("pia", "quinn")]
    for token in tokens:
        await cache_in_python(rs, token)
    assert await node("killall", app=APP) == {"kill": 2}
    written = time.perf_counter()
    delays.add("node killall -> python", await python_drops(rs, tokens, "killall", written))
    for token in tokens:
        assert await rs.get(app=APP, token=token) is None

    assert rs.cache_stats()["invalidations"] == invalidations + 6
    await rs.flush_touches()  # the hits' touches find the sessions gone and write nothing
    assert await keys_in(redis, namespace) == []


async def test_python_writes_invalidate_node_cache(
    live_rs: RedisSessions,
    cached_node: NodeDriver,
    redis: Redis,
    namespace: str,
    delays: Delays,
) -> None:
    """Every Python write publishes from inside its script, whether or not Python itself
    caches: this store has no cache (Node is the only subscriber), and Node's cache still
    drops what Python sets or kills."""
    rs, node = live_rs, cached_node
    assert await subscribers(redis, namespace) == 1  # Node's only

    async def by_python(id: str, label: str) -> str:
        data = {"label": label, "v": 1}
        return (await rs.create(app=APP, id=id, ip="10.0.3.1", ttl=TTL, d=data))["token"]

    # set, after proving that Node answers from its cache.
    token = await by_python("rita", "set")
    cached = await cache_in_node(node, token)
    key = f"{namespace}:{APP}:{token}"
    # A write behind both libraries' backs: it publishes nothing.
    await redis.hset(key, "d", json.dumps({"label": "raw", "v": 1}, separators=(",", ":")))
    assert await node("get", app=APP, token=token) == cached, "Node read Redis, not its cache"
    # A Node cache hit is not written back either: r in Redis counts the first get only.
    assert await redis.hget(key, "r") == str(cached["r"] + 1)
    updated = await rs.set(app=APP, token=token, d={"v": 2, "by": "python"})
    written, written_wall = time.perf_counter(), time.time()
    assert updated is not None
    assert typed(updated["d"]) == typed({"label": "raw", "v": 2, "by": "python"})
    polled = await node_drops(node, [token], "python set", written)
    heard = await node_heard(node, [token], written_wall)
    delays.add("python set -> node", polled, heard=heard)
    seen = await node("get", app=APP, token=token)
    assert typed(seen["d"]) == typed(updated["d"])
    assert seen["w"] == updated["w"] == 2

    # kill: Node reads null.
    await cache_in_node(node, token)
    assert await rs.kill(app=APP, token=token) == {"kill": 1}
    written, written_wall = time.perf_counter(), time.time()
    polled = await node_drops(node, [token], "python kill", written)
    heard = await node_heard(node, [token], written_wall)
    delays.add("python kill -> node", polled, heard=heard)
    assert await node("get", app=APP, token=token) is None

    # killsoid
    tokens = [await by_python("sam", f"sam{n}") for n in range(2)]
    for token in tokens:
        await cache_in_node(node, token)
    assert await rs.killsoid(app=APP, id="sam") == {"kill": 2}
    written, written_wall = time.perf_counter(), time.time()
    polled = await node_drops(node, tokens, "killsoid", written)
    heard = await node_heard(node, tokens, written_wall)
    delays.add("python killsoid -> node", polled, heard=heard)
    for token in tokens:
        assert await node("get", app=APP, token=token) is None

    # killall
    tokens = [await by_python(id, id) for id in ("tara", "uma")]
    for token in tokens:
        await cache_in_node(node, token)
    assert await rs.killall(app=APP) == {"kill": 2}
    written, written_wall = time.perf_counter(), time.time()
    polled = await node_drops(node, tokens, "killall", written)
    heard = await node_heard(node, tokens, written_wall)
    delays.add("python killall -> node", polled, heard=heard)
    for token in tokens:
        assert await node("get", app=APP, token=token) is None

    assert await keys_in(redis, namespace) == []


STALE_CACHETIME = 1.5


async def test_node_without_cachetime_leaves_python_cache_stale(
    node: NodeDriver, server: ServerProcess, namespace: str, redis: Redis, delays: Delays
) -> None:
    """A property of redis-sessions 4.0.0, not of this port: Node subscribes to and
    publishes on `<namespace>:cache` only when its own cache is on (`cachetime > 0`).

    A Node writer with cachetime 0 changes and kills sessions without a word, so a
    Python cache keeps serving its copy (even of a killed session) until the entry's
    `cachetime` runs out, or until this Python process writes the session itself. Hence
    the rule: Node writers must run with cachetime > 0 to invalidate Python caches.
    """
    async with RedisSessions(
        url=server.url, namespace=namespace, wipe=0, cachetime=STALE_CACHETIME
    ) as rs:
        assert await subscribers(redis, namespace) == 1  # Python's only
        data = {"v": 1}
        token = (await node("create", app=APP, id="vera", ip="10.0.4.1", ttl=TTL, d=data))["token"]
        key = f"{namespace}:{APP}:{token}"

        # A Node set goes unnoticed until the entry ages out.
        before = time.perf_counter()
        await cache_in_python(rs, token)
        cached = time.perf_counter()  # the entry was stored between `before` and here
        await node("set", app=APP, token=token, d={"v": 2})
        written = time.perf_counter()
        await asyncio.sleep(0.3)
        stale = await rs.get(app=APP, token=token)
        assert stale is not None and stale["d"] == {"v": 1}, "Python saw Node's write"
        assert rs.cache_stats()["invalidations"] == 0
        aged = await waited(
            lambda: not rs.is_cached(token),
            since=before,
            what="the entry to age out",
            bound=STALE_CACHETIME + 1,
        )
        assert STALE_CACHETIME - 0.01 <= aged <= cached - before + STALE_CACHETIME + 0.2
        delays.add("node set, node cachetime 0: python stale for", before + aged - written)
        fresh = await rs.get(app=APP, token=token)
        assert fresh is not None and fresh["d"] == {"v": 2}

        # ... or until this process writes the session: its own write drops the entry,
        # and the merge runs in Redis, on top of Node's unnoticed write.
        await cache_in_python(rs, token)
        await node("set", app=APP, token=token, d={"by": "node"})
        stale = await rs.get(app=APP, token=token)
        assert stale is not None and stale["d"] == {"v": 2}
        merged = await rs.set(app=APP, token=token, d={"py": True})
        assert merged is not None and merged["d"] == {"v": 2, "by": "node", "py": True}
        assert not rs.is_cached(token)
        # Python also hears the message of its own set; wait for it, so that it cannot
        # drop the entry that the reads below cache.
        await waited(
            lambda: rs.cache_stats()["invalidations"] == 1,
            since=time.perf_counter(),
            what="Python to hear its own set",
        )
        seen = await rs.get(app=APP, token=token)
        assert seen is not None and seen["d"] == merged["d"]

        # A Node kill: the killed session is still served until the entry ages out.
        await cache_in_python(rs, token)
        assert await node("kill", app=APP, token=token) == {"kill": 1}
        killed = time.perf_counter()
        assert not await redis.exists(key)
        ghost = await rs.get(app=APP, token=token)
        assert ghost is not None and ghost["d"] == merged["d"], "Python saw Node's kill"
        gone = await waited(
            lambda: not rs.is_cached(token),
            since=killed,
            what="the killed session's entry to age out",
            bound=STALE_CACHETIME + 1,
        )
        delays.add("node kill, node cachetime 0: python stale for", gone)
        assert await rs.get(app=APP, token=token) is None
        assert rs.cache_stats()["invalidations"] == 1  # its own set's: Node's kill is silent
        await rs.flush_touches()  # the reads of the ghost do not bring it back
        assert await keys_in(redis, namespace) == []


# JSON values, anonymous sessions, devices: what Node does with them


async def test_node_reads_json_values_python_wrote_and_its_set_refuses_them(
    live_rs: RedisSessions, node: NodeDriver
) -> None:
    data = {
        "cart": [{"sku": "a-1", "qty": 2, "price": 9.95}, {"sku": "b", "tags": []}],
        "oauth": {"state": "s", "scopes": ["r", "w"], "exact": 2**53 - 1},
        "n": 1,
    }
    token = (await live_rs.create(app=APP, id="u1", ip="10.0.0.1", ttl=TTL, d=data))["token"]
    from_node = await node("get", app=APP, token=token)
    assert typed(from_node["d"]) == typed(data)
    # Node's set takes scalars only: a list or an object is refused, nothing written.
    for value in ([1, 2], {"a": 1}):
        with pytest.raises(NodeError) as refused:
            await node("set", app=APP, token=token, d={"cart": value})
        assert refused.value.name == "invalidValue"
    # A scalar set by Node leaves the lists and objects in place (it rewrites `d`
    # from its parsed copy, with the same values).
    set_by_node = await node("set", app=APP, token=token, d={"n": 2})
    assert typed(set_by_node["d"]) == typed({**data, "n": 2})
    session = await live_rs.get(app=APP, token=token)
    assert session is not None and typed(session["d"]) == typed({**data, "n": 2})


async def test_node_reads_an_anonymous_session_and_python_keeps_it_no_users(
    live_rs: RedisSessions, node: NodeDriver, redis: Redis, namespace: str
) -> None:
    token = (await live_rs.create_anonymous(app=APP, ip="10.0.0.1", d={"next": "/pay"}))["token"]
    from_node = await node("get", app=APP, token=token)
    assert from_node["id"] == ANONYMOUS_ID and from_node["d"] == {"next": "/pay"}
    assert from_node["ttl"] == 1800
    # Node lists the id as a user when it reads the session: Python does not count it.
    assert await live_rs.activity(app=APP, delta_time=600) == {"activity": 0}
    assert await live_rs.soapp(app=APP, delta_time=600) == {"sessions": []}
    upgraded = await live_rs.upgrade(app=APP, token=token, id="u1", ip="10.0.0.1", ttl=TTL)
    assert (await node("get", app=APP, token=token)) is None
    from_node = await node("get", app=APP, token=upgraded["token"])
    assert from_node["id"] == "u1" and from_node["d"] == {"next": "/pay"}
    # The anonymous id left the users index with the session.
    assert await redis.zrange(f"{namespace}:{APP}:_users", 0, -1) == ["u1"]
    assert await live_rs.activity(app=APP, delta_time=600) == {"activity": 1}


async def test_sessions_node_created_are_devices_without_a_creation_time(
    live_rs: RedisSessions, node: NodeDriver
) -> None:
    from_node = (await node("create", app=APP, id="u1", ip="10.0.0.2", ttl=TTL))["token"]
    from_python = (
        await live_rs.create(app=APP, id="u1", ip="10.0.0.1", ttl=TTL, user_agent="curl/8")
    )["token"]
    devices = await live_rs.devices(app=APP, id="u1", current=from_python)
    assert [(d["created"] is None, d["user_agent"], d["current"]) for d in devices] == [
        (True, None, False),
        (False, "curl/8", True),
    ]
    assert await live_rs.kill_others(app=APP, id="u1", token=from_python) == {"kill": 1}
    assert (await node("get", app=APP, token=from_node)) is None


async def command_calls(redis: Redis) -> dict[str, int]:
    """Calls per command so far, those run inside scripts included."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


async def index_scores(redis: Redis, namespace: str, token: str, id: str) -> list[float | None]:
    return [
        await redis.zscore(f"{namespace}:{APP}:_sessions", f"{token}:{id}"),
        await redis.zscore(f"{namespace}:{APP}:_users", id),
        await redis.zscore(f"{namespace}:SESSIONS", f"{APP}:{token}:{id}"),
    ]


async def test_reads_within_one_second_write_only_the_read_count_and_node_agrees(
    live_rs: RedisSessions, node: NodeDriver, server: ServerProcess, redis: Redis, namespace: str
) -> None:
    """A read in the second of the last access moves nothing but `r`: the last access and
    the activity and expiry scores (all in whole seconds) already say that second. Node
    then reads the very session it would have read had every read written them."""
    created = await node("create", app=APP, id="quick", ip="10.0.0.9", ttl=TTL, d={"n": 1})
    token, key = created["token"], f"{namespace}:{APP}:{created['token']}"
    last_access = int(await redis.hget(key, "la") or 0)
    pinned = ManualClock(float(last_access) + 0.9)  # reads late in that same second
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0, clock=pinned) as rs:
        stored, scores = (
            await redis.hgetall(key),
            await index_scores(redis, namespace, token, "quick"),
        )
        before = await command_calls(redis)
        for _ in range(5):
            assert (await rs.get(app=APP, token=token) or {}).get("idle") == 0
        after = await command_calls(redis)
        for command in ("zadd", "hset", "hmset"):
            assert after.get(command, 0) == before.get(command, 0), command
        assert after["hincrby"] - before.get("hincrby", 0) == 5
        assert await redis.hgetall(key) == {**stored, "r": str(int(stored.get("r", 0)) + 5)}
        assert await index_scores(redis, namespace, token, "quick") == scores

    # Node reads the session Python kept: a read by either side agrees with the other.
    clock = Clock()
    from_python = await live_rs.get(app=APP, token=token)
    from_node = await node("get", app=APP, token=token)
    assert_same_session(from_node, from_python, reads_between=1, ticks=clock.ticks)

    # A read in a later second moves the last access and every score to it.
    later = ManualClock(time.time() + 1.0)
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0, clock=later) as rs:
        assert await rs.get(app=APP, token=token) is not None
    second = int(later())
    assert int(await redis.hget(key, "la") or 0) == second
    assert await index_scores(redis, namespace, token, "quick") == [second, second, second + TTL]
