"""Auto-pipelining: the script calls that one turn of the event loop makes go out together.

Under load many requests miss the cache in the same turn of the loop: their handlers
start together because their bytes arrived together. Sent one by one, each call pays
a round trip, a connection, and a read and a write of the server's event loop; sent as
one pipeline they share all of these, and Redis answers them in order.

A call made while the store has no other call under way goes out directly, at once, as
it would without this module: a lone call pays for a few comparisons. A call made while
others are under way (a busy store) leads a batch, or joins the one open: the leader
yields once, so that the calls the rest of the turn makes can join it. Alone after all,
it goes out directly too. (Sending the first call of every turn directly would split a
busy store's callers in two groups that come back in different turns, one round trip
and one write and read on each side per group: with 16 callers at once, a get cost the
worker about 1.5 times the CPU, benchmarks/store_ops.py.) With company, the batch goes
out as one pipeline in a task of its own, which holds one connection slot and a
deadline like any call (slots.py), so the connection bound holds. The pipeline reads every reply
(`raise_on_error=False`) and hands each caller its own reply or error: one failing call
fails only its caller, and a caller that retries (NOSCRIPT, scripts.py) does so alone.

A batch's deadline is its first caller's: the others joined it later in the same turn,
so it comes no later than theirs, and they wait on it without a timer of their own (a
caller retried alone keeps its own deadline, scripts.py). A batch whose deadline
passes is cancelled mid-read, redis-py drops that connection, and every caller gets
the timeout. A caller that is cancelled stops waiting; the batch runs on in its task,
reads every reply so that the connection stays in step, and the others get theirs.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable
from typing import Any, Final

from redis.asyncio import Redis

from .slots import ConnectionSlots

__all__ = ["ALONE", "AutoPipeline"]

ALONE: Final = object()  # what a lone call gets back: go out directly


class _Batch:
    """The commands of one turn, the futures of all callers but the leader, and the
    deadline of them all (the loop's clock)."""

    __slots__ = ("commands", "deadline", "futures")

    def __init__(self, first: tuple[Any, ...], deadline: float) -> None:
        self.commands: list[tuple[Any, ...]] = [first]
        self.futures: list[asyncio.Future[Any]] = []
        self.deadline = deadline


class AutoPipeline:
    """Groups the commands of one turn into one pipeline on one connection.

    `batches` and `pipelined` count the pipelines sent and the calls they carried, for
    tests and benchmarks.
    """

    __slots__ = ("_client", "_open", "_slots", "_tasks", "batches", "pipelined")

    def __init__(self, client: Redis, slots: ConnectionSlots) -> None:
        self._client = client
        self._slots = slots
        self._open: _Batch | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.pipelined = 0

    async def aclose(self, grace: float) -> None:
        """Let the batches in flight finish (their callers are waiting for them), for
        `grace` seconds at most, then cancel the rest: no batch outlives the client
        it writes to."""
        tasks = set(self._tasks)
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=grace)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck)

    def direct(self) -> bool:
        """Whether a call may go out directly now: nothing else is under way (no call
        holds or awaits a connection slot, no batch is open or in flight). The caller
        starts its call at once, so the next one sees it under way."""
        return self._open is None and not self._tasks and not self._slots.busy

    def send(self, command: tuple[Any, ...]) -> Awaitable[Any]:
        """The command's reply (its error raised), or ALONE: then the caller sends it.

        Not itself a coroutine: a call that joins a batch only waits on a future.
        """
        batch = self._open
        if batch is None:
            return self._lead(command)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batch.commands.append(command)
        batch.futures.append(future)
        return future

    async def _lead(self, command: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        batch = self._open = _Batch(command, loop.time() + self._slots.timeout)
        try:
            await asyncio.sleep(0)  # the rest of this turn's calls join `batch`
        except asyncio.CancelledError:
            self._open = None
            batch.commands.pop(0)  # this caller's own command stays unsent
            if batch.futures:
                self._start(batch)
            raise
        self._open = None
        if not batch.futures:
            return ALONE
        own: asyncio.Future[Any] = loop.create_future()
        batch.futures.insert(0, own)
        self._start(batch)
        return await own

    def _start(self, batch: _Batch) -> None:
        # A task of its own: a cancelled caller must not cancel its neighbours' calls.
        task = asyncio.create_task(self._execute(batch), name="cached-sessions pipeline")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: _Batch) -> None:
        pipe = self._client.pipeline(transaction=False)
        for command in batch.commands:
            pipe.execute_command(*command)
        futures = batch.futures
        try:
            replies = await self._slots.call_by(batch.deadline, pipe.execute, raise_on_error=False)
        except asyncio.CancelledError:  # the loop is shutting down
            for future in futures:
                future.cancel()
            raise
        except Exception as error:  # the whole batch: unreachable, or its deadline
            for future in futures:
                if not future.done():
                    future.set_exception(copy.copy(error))
            return
        self.batches += 1
        self.pipelined += len(futures)
        for future, reply in zip(futures, replies, strict=True):
            if future.done():  # its caller was cancelled or ran out of time
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
