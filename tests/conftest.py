"""Fixtures: one real server per test session, a fresh namespace per test.

`CACHED_SESSIONS_TEST_SERVER` picks the server: `valkey` (default, the embedded
Valkey from pip) or `redis` (Debian's redis-server). Every test uses its own key
namespace, so tests share the server without seeing each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings
from redis.asyncio import Redis

from cached_sessions import RedisSessions
from tests.servers import ServerProcess

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
async def redis(server: ServerProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def rs(
    server: ServerProcess, namespace: str, clock: ManualClock
) -> AsyncIterator[RedisSessions]:
    store = RedisSessions(url=server.url, namespace=namespace, wipe=0, clock=clock)
    async with store:
        yield store


@pytest.fixture
async def live_rs(server: ServerProcess, namespace: str) -> AsyncIterator[RedisSessions]:
    """A store on the real wall clock, for tests that share sessions with Node."""
    store = RedisSessions(url=server.url, namespace=namespace, wipe=0)
    async with store:
        yield store
