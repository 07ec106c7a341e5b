"""Auto-pipelining: the script calls of one turn of the loop go out as one pipeline.

Seen from the server: INFO stats counts the reads its event loop processed, one per
batch of bytes a client sent, so a turn's calls sent as one pipeline cost it one read
where direct calls cost one each. Each caller gets its own reply or error; a cancelled
caller, a deadline, NOSCRIPT and the connection bound behave as with direct calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cached_sessions import RedisSessions
from cached_sessions.errors import ConfigurationError, StoredDataError
from cached_sessions.pipelining import AutoPipeline
from tests.servers import ServerProcess
from tests.test_connections import connections_named, named
from tests.test_sentinel import store as sentinel_store
from tests.topology import LocalCluster, LocalSentinel

APP = "pipe"
IP = "127.0.0.1"
CALLERS = 50
PAUSE_MS = 300


def pipeliner(store: RedisSessions) -> AutoPipeline:
    """The store's pipeliner, for its counters."""
    auto = store._scripts.auto if store._scripts is not None else None
    assert auto is not None, "this store does not auto-pipeline"
    return auto


async def sessions(store: RedisSessions, count: int) -> list[str]:
    """`count` sessions, the i-th holding {"i": i}."""
    made = [await store.create(app=APP, id=f"u{i}", ip=IP, d={"i": i}) for i in range(count)]
    return [found["token"] for found in made]


def own_data(found: list[Any]) -> list[Any]:
    """What each caller got, next to what it should have: the i-th its {"i": i}."""
    return [session["d"] if isinstance(session, dict) else session for session in found]


def expected(count: int) -> list[dict[str, int]]:
    return [{"i": i} for i in range(count)]


def named_store(server: ServerProcess, namespace: str, bound: int) -> tuple[RedisSessions, str]:
    """A store whose connections carry a name, to count them in CLIENT LIST."""
    name = f"pipe-{namespace}"
    url = named(server.url, name)
    return RedisSessions(url=url, namespace=namespace, wipe=0, max_connections=bound), name


async def get_all(store: RedisSessions, tokens: list[str]) -> list[Any]:
    """Every token read at once: the calls start in one turn."""
    return await asyncio.gather(*(store.get(app=APP, token=token) for token in tokens))


async def paused(redis: Redis, ms: int, work: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
    """What `work()` returns while the server holds every command for `ms`."""
    await redis.client_pause(ms, all=True)
    try:
        return await asyncio.wait_for(work(), 10)
    finally:
        await redis.client_unpause()


async def reads_processed(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_reads_processed"])


async def until(condition: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("auto", [True, False])
async def test_the_calls_of_one_turn_go_out_together_and_reach_their_callers(
    server: ServerProcess, redis: Redis, namespace: str, auto: bool
) -> None:
    async with RedisSessions(
        url=server.url, namespace=namespace, wipe=0, auto_pipeline=auto
    ) as store:
        tokens = await sessions(store, CALLERS)
        before = await reads_processed(redis)
        found = await get_all(store, tokens)
        reads = await reads_processed(redis) - before
    assert own_data(found) == expected(CALLERS)
    if auto:
        # One direct call and one pipeline, plus this test's INFO call and the
        # handshake of a connection opened for the pipeline (HELLO, CLIENT SETINFO).
        assert reads <= 10, f"{CALLERS} calls in one turn cost the server {reads} reads"
    else:
        assert reads >= CALLERS


async def test_a_lone_call_goes_out_directly(server: ServerProcess, namespace: str) -> None:
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0) as store:
        (token,) = await sessions(store, 1)
        for _ in range(5):
            assert await store.get(app=APP, token=token) is not None
        assert pipeliner(store).batches == 0
        # The first of an idle store goes out directly; the two after it, together.
        await asyncio.gather(*(store.get(app=APP, token=token) for _ in range(3)))
        assert (pipeliner(store).batches, pipeliner(store).pipelined) == (1, 2)


async def test_calls_made_while_another_is_under_way_go_out_together(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    # Break: sending the first call of each turn directly (the rule before) sends the
    # later turn's first call alone, and its second alone after it: no batch.
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0) as store:
        tokens = await sessions(store, 3)

        async def staggered() -> list[Any]:
            first = asyncio.create_task(store.get(app=APP, token=tokens[0]))
            await asyncio.sleep(0.05)  # later turns; the server holds the first call
            rest = await asyncio.gather(*(store.get(app=APP, token=t) for t in tokens[1:]))
            return [await first, *rest]

        found = await paused(redis, PAUSE_MS, staggered)
        assert (pipeliner(store).batches, pipeliner(store).pipelined) == (1, 2)
    assert own_data(found) == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_a_failing_call_fails_only_its_caller(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0) as store:
        tokens = await sessions(store, 10)
        # A key of the wrong type makes the script fail (WRONGTYPE)...
        await redis.delete(store.layout.session(APP, tokens[3]))
        await redis.set(store.layout.session(APP, tokens[3]), "not a hash")
        # ...and stored data that is not JSON is refused by a merge.
        await redis.hset(store.layout.session(APP, tokens[6]), "d", '{"i": 6')
        calls: list[Awaitable[Any]] = [store.get(app=APP, token=t) for t in tokens[:6]]
        calls.append(store.set(app=APP, token=tokens[6], d={"j": 6}))
        calls += [store.get(app=APP, token=t) for t in tokens[7:]]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert pipeliner(store).batches == 1
    assert isinstance(outcomes[3], ResponseError) and "WRONGTYPE" in str(outcomes[3])
    assert isinstance(outcomes[6], StoredDataError)
    for i, outcome in enumerate(outcomes):
        if i not in (3, 6):
            assert isinstance(outcome, dict) and outcome["d"] == {"i": i}, (i, outcome)


async def test_a_flushed_library_is_reloaded_for_every_caller(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0) as store:
        tokens = await sessions(store, 20)
        await redis.function_flush()
        # The first call of the turn goes out directly, the gets as one batch; each
        # that meets "Function not found" has the library loaded again (once is enough,
        # the others find it there) and goes again alone.
        listed, *found = await asyncio.gather(
            store.soid(app=APP, id="u0"), *(store.get(app=APP, token=t) for t in tokens)
        )
        assert pipeliner(store).batches == 1
    assert [session["id"] for session in listed["sessions"]] == ["u0"]
    assert own_data(found) == expected(20)


async def test_a_caller_cancelled_in_flight_leaves_its_batch_and_connection_sound(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    store, name = named_store(server, namespace, 1)
    async with store:
        tokens = await sessions(store, 10)
        calls: list[asyncio.Task[Any]] = []

        async def cancel_two() -> list[Any]:
            calls.extend(asyncio.create_task(store.get(app=APP, token=t)) for t in tokens)
            await asyncio.sleep(0.05)  # the batch is sent, its replies held by the pause
            calls[0].cancel()  # the direct call, whose connection is dropped
            calls[1].cancel()  # the batch's leader, whose command went out first
            calls[4].cancel()
            return await asyncio.gather(*calls, return_exceptions=True)

        found = await paused(redis, PAUSE_MS, cancel_two)
        assert all(calls[i].cancelled() for i in (0, 1, 4))
        for i, session in enumerate(found):
            if i not in (0, 1, 4):
                assert isinstance(session, dict) and session["d"] == {"i": i}
        # The connection stayed in step: the next calls read their own replies.
        again = await get_all(store, tokens)
        assert own_data(again) == expected(10)
        assert await connections_named(redis, name) == 1


async def test_a_leader_cancelled_before_it_sends_still_sends_the_others(
    server: ServerProcess, namespace: str
) -> None:
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0) as store:
        tokens = await sessions(store, 4)
        calls = [asyncio.create_task(store.get(app=APP, token=token)) for token in tokens]
        # The tasks start in the next turn: the first goes out directly, the second
        # leads and yields, the others join, then this test runs again, while the
        # leader waits for the turn to end.
        await asyncio.sleep(0)
        calls[1].cancel()
        found = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert calls[1].cancelled()
        assert own_data([found[0], *found[2:]]) == [{"i": 0}, {"i": 2}, {"i": 3}]
        assert (pipeliner(store).batches, pipeliner(store).pipelined) == (1, 2)


async def test_a_deadline_fails_each_waiting_caller_with_redis_timeout(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    store = RedisSessions(url=server.url, namespace=namespace, wipe=0, redis_timeout=0.3)
    async with store:
        tokens = await sessions(store, 10)
        calls = [store.get(app=APP, token=token) for token in tokens]
        outcomes = await paused(
            redis, PAUSE_MS * 4, lambda: asyncio.gather(*calls, return_exceptions=True)
        )
        assert all(isinstance(outcome, RedisTimeoutError) for outcome in outcomes), outcomes
        assert "within 0.3 s" in str(outcomes[0])
        found = await get_all(store, tokens)
        assert own_data(found) == expected(10)


async def test_batches_of_many_turns_hold_at_most_max_connections(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    store, name = named_store(server, namespace, 2)
    async with store:
        tokens = await sessions(store, 5)

        async def eight_turns() -> list[Any]:
            calls = []
            for _ in range(8):  # eight turns of five calls: one direct, four in a batch
                calls += [asyncio.create_task(store.get(app=APP, token=t)) for t in tokens]
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            return await asyncio.gather(*calls)

        found = await paused(redis, PAUSE_MS, eight_turns)
        assert all(session is not None for session in found)
        assert pipeliner(store).batches == 8
        assert await connections_named(redis, name) <= 2


async def test_sentinel_calls_of_one_turn_go_out_together(
    sentinel: LocalSentinel, namespace: str
) -> None:
    async with sentinel_store(sentinel, namespace) as store:
        tokens = await sessions(store, 10)
        found = await get_all(store, tokens)
        assert own_data(found) == expected(10)
        assert (pipeliner(store).batches, pipeliner(store).pipelined) == (1, 9)


async def test_a_cluster_store_keeps_direct_calls(cluster: LocalCluster, namespace: str) -> None:
    host, port = cluster.startup_nodes[0]
    url = f"redis+cluster://{host}:{port}"
    async with RedisSessions(url=url, namespace=namespace, wipe=0) as store:
        assert store._scripts is not None and store._scripts.auto is None
        tokens = await sessions(store, 10)
        assert own_data(await get_all(store, tokens)) == expected(10)


def test_auto_pipeline_must_be_a_bool() -> None:
    for wrong in (1, 0, "yes", None):
        with pytest.raises(ConfigurationError, match="auto_pipeline must be True or False"):
            RedisSessions(url="redis://127.0.0.1:1", auto_pipeline=wrong)  # type: ignore[arg-type]


async def test_a_batch_in_flight_when_the_store_closes_still_answers_its_callers(
    server: ServerProcess, redis: Redis, namespace: str
) -> None:
    store = RedisSessions(url=server.url, namespace=namespace, wipe=0)
    await store.start()
    tokens = await sessions(store, 10)
    auto = pipeliner(store)

    async def close_during_batch() -> list[Any]:
        calls = asyncio.gather(
            *(store.get(app=APP, token=t) for t in tokens), return_exceptions=True
        )
        await until(lambda: bool(auto._tasks))  # a batch is on its way to the paused server
        await store.aclose()
        assert not [
            task for task in asyncio.all_tasks()
            if task.get_name() == "cached-sessions pipeline" and not task.done()
        ], "a batch outlived the store"  # fmt: skip
        return await calls

    outcomes = await paused(redis, PAUSE_MS, close_during_batch)
    assert own_data(outcomes) == expected(10)
