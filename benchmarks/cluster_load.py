"""Concurrent store calls through the library, in this process or in a worker process.

`N` clients (asyncio tasks) share one `RedisSessions`, as the requests of one web worker
do, and each calls one operation in a loop until the time is up or it has made
`MAX_CALLS`, timing every call. The operations:

* `get-off`: `get` from a store with no cache (one script call to Redis each);
* `get-on`: `get` from a store with its cache on and warm (hits; no I/O);
* `set`: a one-key data update;
* `create+kill`: a login and a logout, timed together as one pair.

`python -m benchmarks.cluster_load` is the worker process: it reads its job (JSON) on
stdin, opens and warms its stores, prints `ready`, waits for `go` on stdin, runs, and
prints its result (JSON) on one line. Two of them measure two client processes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from cached_sessions import RedisSessions

from .harness import APP, IP, child_env, python_command

OPERATIONS = ("get-off", "get-on", "set", "create+kill")
MAX_CALLS = 500_000  # per client and run: a bound on the loop whatever the clock says
YIELD_EVERY = 64  # a loop of cache hits never awaits I/O: let the other tasks run
KEEP_SAMPLES = 20_000  # latencies a worker process sends back (a random subset)
WORKER_TIMEOUT = 60.0  # for a worker to get ready, and again to finish
RESULT_LIMIT = 1 << 26  # bytes of a worker's result line (its latencies)


@dataclass(frozen=True)
class Job:
    url: str
    namespace: str
    buckets: int
    tokens: list[str]  # the sessions the reads and writes go to, in turn
    clients: int
    seconds: float
    worker: int = 0  # distinct ids for the sessions each process creates


class Stores:
    """A store without a cache and one with a warm cache, on the same sessions."""

    def __init__(self, job: Job) -> None:
        common: dict[str, Any] = {"namespace": job.namespace, "wipe": 0, "buckets": job.buckets}
        self.job = job
        self.plain = RedisSessions(url=job.url, **common)
        self.cached = RedisSessions(
            url=job.url, cachetime=600, cachemax=len(job.tokens) + 100, **common
        )

    async def __aenter__(self) -> Stores:
        await self.plain.start()
        await self.cached.start()
        await self.warm()
        await asyncio.gather(*(self.plain.get(app=APP, token=t) for t in self.job.tokens[:64]))
        return self

    async def warm(self) -> None:
        """Every session in the cache: the writes of other runs dropped them, as they must."""
        for token in self.job.tokens:
            await self.cached.get(app=APP, token=token)

    async def __aexit__(self, *_: object) -> None:
        await self.cached.aclose()
        await self.plain.aclose()

    def call(self, operation: str, client: int) -> Callable[[int], Awaitable[Any]]:
        """The call one client makes for its `i`-th iteration."""
        tokens, count = self.job.tokens, len(self.job.tokens)
        plain, cached = self.plain, self.cached
        offset = client * 7919  # clients start at different sessions
        if operation == "get-off":
            return lambda i: plain.get(app=APP, token=tokens[(offset + i) % count])
        if operation == "get-on":
            return lambda i: cached.get(app=APP, token=tokens[(offset + i) % count])
        if operation == "set":
            return lambda i: plain.set(app=APP, token=tokens[(offset + i) % count], d={"n": i})
        if operation == "create+kill":
            prefix = f"w{self.job.worker}-c{client}-"

            async def login_logout(i: int) -> None:
                token = (await plain.create(app=APP, id=f"{prefix}{i}", ip=IP))["token"]
                await plain.kill(app=APP, token=token)

            return login_logout
        raise ValueError(f"unknown operation {operation!r}")

    def misses(self) -> int:
        return int(self.cached.cache_stats()["misses"])


@dataclass
class Result:
    calls: int
    seconds: float
    cpu_seconds: float  # this process's CPU time during the run
    samples: list[float]  # seconds per call


async def _client(call: Callable[[int], Awaitable[Any]], deadline: float) -> list[float]:
    clock, samples = time.perf_counter, []
    for i in range(MAX_CALLS):
        started = clock()
        if started >= deadline:
            break
        await call(i)
        samples.append(clock() - started)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    return samples


async def run(stores: Stores, operation: str, clients: int | None = None) -> Result:
    """`clients` (else the job's) call `operation` for the job's seconds; all timed."""
    job = stores.job
    if operation == "get-on":
        await stores.warm()
    misses = stores.misses()
    cpu, started = time.process_time(), time.perf_counter()
    deadline = started + job.seconds
    per_client = await asyncio.gather(
        *(_client(stores.call(operation, n), deadline) for n in range(clients or job.clients))
    )
    elapsed = time.perf_counter() - started
    samples = [sample for client in per_client for sample in client]
    if operation == "get-on" and stores.misses() - misses > len(samples) // 100:
        raise RuntimeError("more than 1% of a run of cache hits went to Redis")
    return Result(len(samples), elapsed, time.process_time() - cpu, samples)


# Worker processes


async def run_processes(job: Job, operation: str, count: int) -> Result:
    """`count` worker processes run `operation` at once; their calls add up.

    Each opens and warms its own stores first; all start together once every one is
    ready, so the run measures only the calls.
    """
    workers = []
    try:
        for n in range(count):
            process = await asyncio.create_subprocess_exec(
                *python_command("cluster_load"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=child_env(),
                limit=RESULT_LIMIT,
            )
            workers.append(process)
            request = {**asdict(job), "worker": n + 1, "operation": operation}
            assert process.stdin is not None
            process.stdin.write(json.dumps(request).encode() + b"\n")
        for process in workers:
            await asyncio.wait_for(_line(process), WORKER_TIMEOUT)  # "ready"
        for process in workers:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
        lines = await asyncio.wait_for(
            asyncio.gather(*(_line(process) for process in workers)), job.seconds + WORKER_TIMEOUT
        )
    finally:
        for process in workers:
            if process.returncode is None:
                process.kill()
            await process.wait()
    return merge([Result(**json.loads(line)) for line in lines])


async def _line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = (await process.stdout.readline()).decode()
    if not line:
        raise RuntimeError(f"a load worker exited with {await process.wait()}")
    return line


def merge(results: list[Result]) -> Result:
    """The processes' results as one: calls and CPU add up, the run lasts as long as the
    longest, and the latency subsets are cut to one sampling rate so none weighs more."""
    rate = min(len(r.samples) / r.calls for r in results if r.calls) if results else 0
    draw = random.Random(0)
    samples = [
        sample
        for r in results
        for sample in draw.sample(r.samples, min(len(r.samples), round(r.calls * rate)))
    ]
    return Result(
        calls=sum(r.calls for r in results),
        seconds=max(r.seconds for r in results),
        cpu_seconds=sum(r.cpu_seconds for r in results),
        samples=samples,
    )


# The worker process


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _worker() -> None:
    loop = asyncio.get_running_loop()
    request = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    operation = request.pop("operation")
    async with Stores(Job(**request)) as stores:
        _say("ready")
        if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "go":
            return
        result = await run(stores, operation)
    if len(result.samples) > KEEP_SAMPLES:
        result.samples = random.Random(0).sample(result.samples, KEEP_SAMPLES)
    result.samples = [round(sample, 7) for sample in result.samples]  # 0.1 µs is plenty
    _say(json.dumps(asdict(result)))


if __name__ == "__main__":
    asyncio.run(_worker())
