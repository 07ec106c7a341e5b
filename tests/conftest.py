"""Fixtures: one real server per test session, a fresh namespace per test.

`CACHED_SESSIONS_TEST_SERVER` picks the server binary: `valkey` (default, the embedded
Valkey from pip) or `redis` (Debian's redis-server). Every test uses its own key
namespace, so tests share the servers without seeing each other's data.

The store, cache and middleware suites run twice through the `deployment` fixture: on
one server, and on a local Redis Cluster of three primaries with a replica each
(tests/topology.py), started once for the session. A test
whose subject is one server (its connections, its channel, what Node reads there) is
marked `single_server`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import settings
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cached_sessions import RedisSessions
from tests.servers import ServerProcess
from tests.topology import LocalCluster, cluster, healed_cluster, healed_sentinel, sentinel

__all__ = ["cluster", "healed_cluster", "healed_sentinel", "sentinel"]

# The suites whose tests take the `deployment` fixture on a cluster too.
CLUSTER_SUITES = frozenset(
    {
        "test_store", "test_cache", "test_middleware", "test_anonymous", "test_devices",
        "test_json_values", "test_lifetime",
    }
)  # fmt: skip

# The same examples on every run, so that a red build is reproducible; explore with
# `--hypothesis-seed=random` when hunting for new cases.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")


class ManualClock:
    """A wall clock that moves only when a test says so (expiry without sleeping)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Deployment:
    """Where a test's store runs: `single` (one server) or `cluster`."""

    kind: str
    url: str

    def client(self) -> Redis | RedisCluster:
        """A raw client, for tests that look at Redis directly."""
        if self.kind == "cluster":
            return RedisCluster.from_url(self.url.replace("+cluster", ""), decode_responses=True)
        return Redis.from_url(self.url, decode_responses=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "deployment" not in metafunc.fixturenames:
        return
    kinds = ["single"]
    suite = metafunc.module.__name__.rpartition(".")[2]
    single_only = metafunc.definition.get_closest_marker("single_server") is not None
    if suite in CLUSTER_SUITES and not single_only:
        kinds.append("cluster")
    metafunc.parametrize("deployment", kinds, indirect=True)


@pytest.fixture
def deployment(request: pytest.FixtureRequest) -> Deployment:
    if request.param == "cluster":
        local: LocalCluster = request.getfixturevalue("cluster")
        host, port = local.startup_nodes[0]
        return Deployment("cluster", f"redis+cluster://{host}:{port}")
    process: ServerProcess = request.getfixturevalue("server")
    return Deployment("single", process.url)


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(os.environ.get("CACHED_SESSIONS_TEST_SERVER", "valkey"))
    process.start()
    yield process
    process.cleanup()


def pytest_report_header(config: pytest.Config) -> str:
    return f"test server: {os.environ.get('CACHED_SESSIONS_TEST_SERVER', 'valkey')}"


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def redis(deployment: Deployment) -> AsyncIterator[Redis]:
    client = deployment.client()
    yield client  # type: ignore[misc]
    await client.aclose()


@pytest.fixture
async def rs(
    deployment: Deployment, namespace: str, clock: ManualClock
) -> AsyncIterator[RedisSessions]:
    store = RedisSessions(url=deployment.url, namespace=namespace, wipe=0, clock=clock)
    async with store:
        yield store


@pytest.fixture
async def live_rs(server: ServerProcess, namespace: str) -> AsyncIterator[RedisSessions]:
    """A store on the real wall clock, for tests that share sessions with Node."""
    store = RedisSessions(url=server.url, namespace=namespace, wipe=0)
    async with store:
        yield store
