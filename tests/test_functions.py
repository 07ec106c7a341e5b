"""The store's Lua as a function library (FUNCTION LOAD, FCALL), and its fallbacks.

Seen from the server: INFO commandstats counts the FCALLs and EVALSHAs a store sends,
FUNCTION LIST names the libraries loaded. A server that forgets the library (FUNCTION
FLUSH, a restart) gets it again on the next call; a server whose ACL forbids
Functions gets EVALSHA; two stores of different configurations keep their own
libraries side by side.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cached_sessions import RedisSessions
from tests.servers import ServerProcess
from tests.topology import LocalCluster

APP = "fnapp"
IP = "127.0.0.1"
SCRIPT_COMMANDS = ("fcall", "evalsha", "eval")


async def script_commands(redis: Redis | RedisCluster) -> dict[str, int]:
    """Calls so far of each command that runs Lua (on a cluster, summed over nodes)."""
    if isinstance(redis, RedisCluster):
        answers = await redis.info("commandstats", target_nodes=RedisCluster.ALL_NODES)
        per_node = list(answers.values())
    else:
        per_node = [await redis.info("commandstats")]
    return {
        name: sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for stats in per_node)
        for name in SCRIPT_COMMANDS
    }


async def sent(redis: Redis | RedisCluster, before: dict[str, int]) -> dict[str, int]:
    after = await script_commands(redis)
    return {name: after[name] - before[name] for name in SCRIPT_COMMANDS}


async def libraries(redis: Redis) -> set[str]:
    """The names of the libraries loaded (RESP2 lists each as a flat name, value list)."""
    return {
        dict(zip(e[::2], e[1::2], strict=True))["library_name"] for e in await redis.function_list()
    }


async def exercise(rs: RedisSessions) -> None:
    """Every kind of call: a direct call, a pipeline of calls (run_many), a write."""
    token = (await rs.create(app=APP, id="u1", ip=IP, d={"a": 1}))["token"]
    assert (await rs.get(app=APP, token=token) or {}).get("d") == {"a": 1}
    assert (await rs.set(app=APP, token=token, d={"b": 2}) or {}).get("d") == {"a": 1, "b": 2}
    assert len((await rs.soapp(app=APP, delta_time=60))["sessions"]) == 1
    assert await rs.kill(app=APP, token=token) == {"kill": 1}


async def test_the_store_calls_functions_and_no_script(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    before = await script_commands(redis)
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0) as rs:
        await exercise(rs)
    calls = await sent(redis, before)
    assert calls["fcall"] >= 5 and calls["evalsha"] == 0 and calls["eval"] == 0


async def test_every_call_works_after_the_server_forgets_the_functions(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    # Break: without the reload on "Function not found" (scripts.missing_code), each
    # call here fails with that error.
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0, cachetime=30) as rs:
        token = (await rs.create(app=APP, id="u1", ip=IP))["token"]
        await redis.function_flush()
        assert await rs.get(app=APP, token=token) is not None  # a miss: a direct call
        assert await rs.get(app=APP, token=token) is not None  # a hit, for the touch below
        await redis.function_flush()
        assert await rs.flush_touches() == 1  # the touch batch
        await redis.function_flush()
        assert await rs.set(app=APP, token=token, d={"a": 1}) is not None
        await redis.function_flush()
        assert len((await rs.soapp(app=APP, delta_time=60))["sessions"]) == 1  # run_many
        await redis.function_flush()
        assert await rs.kill(app=APP, token=token) == {"kill": 1}


async def test_stores_of_different_references_keep_their_own_libraries(
    server: ServerProcess, redis: Redis
) -> None:
    # Break: a library name that leaves the header (references, layout) out of its
    # hash gives both stores one library, the first one's: the second's kill_by then
    # looks up an index that its sessions were never written to, and kills nothing.
    first, second = f"t{uuid.uuid4().hex[:12]}", f"t{uuid.uuid4().hex[:12]}"
    loaded = await libraries(redis)
    async with (
        RedisSessions(url=server.url, namespace=first, wipe=0, references=["org"]) as by_org,
        RedisSessions(url=server.url, namespace=second, wipe=0, references=["team"]) as by_team,
    ):
        new = await libraries(redis) - loaded
        assert len(new) == 2
        await by_org.create(app=APP, id="u1", ip=IP, d={"org": 7, "team": 3})
        await by_team.create(app=APP, id="u1", ip=IP, d={"org": 7, "team": 3})
        assert await by_org.kill_by(app=APP, field="org", value=7) == {"kill": 1}
        assert await by_team.kill_by(app=APP, field="team", value=3) == {"kill": 1}


@pytest.fixture
async def forbidden_user(redis: Redis) -> AsyncIterator[str]:
    """A user name; the test gives it its rights, and it is deleted after."""
    name = f"nofn{uuid.uuid4().hex[:8]}"
    yield name
    await redis.acl_deluser(name)


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


@pytest.mark.parametrize("denied", [["-function", "-fcall"], ["-fcall"]])
async def test_a_server_that_forbids_functions_gets_scripts(
    server: ServerProcess,
    redis: Redis,
    namespace: str,
    forbidden_user: str,
    denied: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Breaks: a preload that does not fall back fails the store's start; one that
    # does not probe FCALL (only -fcall denied: FUNCTION LOAD succeeds) leaves every
    # call failing with NOPERM.
    password = uuid.uuid4().hex
    await redis.acl_setuser(
        forbidden_user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
        commands=["+@all", *denied],
    )  # fmt: skip
    url = as_user(server.url, forbidden_user, password)
    before = await script_commands(redis)
    with caplog.at_level(logging.INFO, logger="cached_sessions.scripts"):
        async with RedisSessions(url=url, namespace=namespace, wipe=0) as rs:
            await exercise(rs)
    calls = await sent(redis, before)
    assert calls["evalsha"] >= 5 and calls["fcall"] == 0
    fallbacks = [r for r in caplog.records if "EVALSHA" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.INFO


async def test_a_cluster_store_calls_scripts(cluster: LocalCluster, namespace: str) -> None:
    # On a cluster, redis-py would ask a node where each FCALL goes (COMMAND GETKEYS):
    # the store keeps EVALSHA there, and loads no library.
    host, port = cluster.startup_nodes[0]
    client = RedisCluster(host=host, port=port, decode_responses=True)
    try:
        before = await script_commands(client)
        url = f"redis+cluster://{host}:{port}"
        async with RedisSessions(url=url, namespace=namespace, wipe=0) as rs:
            await exercise(rs)
        calls = await sent(client, before)
        assert calls["evalsha"] >= 5 and calls["fcall"] == 0
    finally:
        await client.aclose()
