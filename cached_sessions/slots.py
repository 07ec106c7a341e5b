"""Every Redis call of a store: at most `size` in flight, each with one deadline.

redis-py can do both by itself, at a price paid on every call: its
BlockingConnectionPool takes an asyncio.Condition and arms a timeout even when
connections are free (about 15 µs of CPU per call more than a plain pool, measured
here), and `socket_timeout` arms a timer for each read and runs each write through
`asyncio.wait_for`, a new task each time. Here a semaphore, which costs nothing until
it is full, bounds the calls, and one deadline covers the whole call, the wait for a
slot included. The pool under it is unbounded and its sockets have no timeout of their
own: every call of the store goes through `call()`, so the store never opens more
connections than there are slots, and no call waits longer than `timeout`.
Cancelling a call is safe: redis-py drops a connection whose reply was not read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import ParamSpec, TypeVar

from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ConfigurationError
from .validation import is_int

__all__ = ["ConnectionSlots"]

P = ParamSpec("P")
T = TypeVar("T")


class ConnectionSlots:
    """`await slots.call(client.method, *args)` for each Redis call (command, script, pipeline).

    `busy`: the calls under way (waiting for a slot or holding one), so that the
    auto-pipeline can tell an idle store from a busy one.
    """

    __slots__ = ("_semaphore", "busy", "size", "timeout")

    def __init__(self, size: int, timeout: float) -> None:
        if not is_int(size) or size < 1:
            raise ConfigurationError("max_connections must be a positive integer")
        self.size = size
        self.timeout = timeout
        self.busy = 0
        self._semaphore = asyncio.Semaphore(size)

    def call(
        self, command: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[object, object, T]:
        """The call, under a deadline of `timeout` seconds from now (`call_by`).

        One deadline for the wait and the call. Slots are handed out first come, first
        served, and every holder's deadline comes before a later waiter's, so a call
        that waited still gets its slot in time unless the server is slow.
        """
        deadline = asyncio.get_running_loop().time() + self.timeout
        return self.call_by(deadline, command, *args, **kwargs)

    async def call_by(
        self,
        deadline: float,
        command: Callable[P, Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`call` with a deadline fixed earlier (the loop's clock), for a call that
        began before it reached here: a batch of the auto-pipeline, by its first
        caller's start, or a caller's retry after its batch."""
        self.busy += 1
        try:
            async with asyncio.timeout_at(deadline), self._semaphore:
                return await command(*args, **kwargs)
        except TimeoutError:
            raise self.expired() from None
        finally:
            self.busy -= 1

    def expired(self) -> RedisTimeoutError:
        """What a call whose deadline passed raises."""
        return RedisTimeoutError(
            f"Redis did not answer within {self.timeout} s (the wait for one of the "
            f"{self.size} connections included)"
        )
