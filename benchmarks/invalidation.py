"""3. Invalidation propagation: from a write's return to every other cache dropping it.

`invalidation_workers` processes (benchmarks/invalidation_worker.py) each hold one
session in their cache; this process, which caches nothing, writes it (`set`) or
kills it (`kill`), in turn, `invalidation_rounds` times. For each round and worker:
the time from the write returning here to that worker dropping its copy, on the one
system-wide monotonic clock. A drop may even come first (the script publishes before
it replies): such delays count as 0 and are reported apart. A worker that has not
dropped its copy after `TIMEOUT` seconds counts as missed. `since_call` times the same
drops from just before the write was sent: an upper bound that includes the write's
own round trip.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cached_sessions import RedisSessions

from .common import APP, IP, Progress, Server, Sizes, child_env, namespace, percentiles
from .common import python_command as command

TIMEOUT = 2.0


class Holder:
    """One worker process and its line protocol."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, url: str, ns: str) -> Holder:
        process = await asyncio.create_subprocess_exec(
            *command("invalidation_worker", url, ns),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=child_env(),
        )  # fmt: skip
        holder = cls(process)
        await holder.expect("ready")
        return holder

    async def expect(self, prefix: str) -> str:
        assert self.process.stdout is not None
        while True:
            line = (await self.process.stdout.readline()).decode()
            if not line:
                assert self.process.stderr is not None
                err = (await self.process.stderr.read()).decode(errors="replace")
                raise RuntimeError(f"an invalidation worker exited:\n{err[-3000:]}")
            if line.startswith(prefix):
                return line.strip()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def hold(self, token: str) -> None:
        for _ in range(5):
            self.send(f"cache {token}")
            if await self.expect("cached ") == "cached 1":
                return
        raise RuntimeError("a worker could not cache the session (is its subscription up?)")

    async def dropped(self, token: str) -> float:
        while True:
            _, seen, at = (await self.expect("dropped ")).split()
            if seen == token:
                return float(at)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.send("quit")
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def measure(server: Server, sizes: Sizes, progress: Progress) -> dict[str, Any]:
    ns = namespace("inv")
    rounds = sizes.invalidation_rounds
    holders = await asyncio.gather(
        *(Holder.start(server.url, ns) for _ in range(sizes.invalidation_workers))
    )
    delays: dict[str, list[float]] = {"set": [], "kill": []}
    since_call: list[float] = []  # from just before the write was sent: an upper bound
    early = missed = 0
    try:
        async with RedisSessions(url=server.url, namespace=ns, wipe=0) as writer:
            token = ""
            for n in range(rounds):
                operation = "kill" if n % 2 else "set"
                if not token:
                    token = (await writer.create(app=APP, id="u", ip=IP, d={"n": 0}))["token"]
                await asyncio.gather(*(h.hold(token) for h in holders))
                waits = [asyncio.ensure_future(h.dropped(token)) for h in holders]
                called = time.monotonic()
                if operation == "set":
                    await writer.set(app=APP, token=token, d={"n": n})
                else:
                    await writer.kill(app=APP, token=token)
                returned = time.monotonic()
                done, pending = await asyncio.wait(waits, timeout=TIMEOUT)
                for wait in pending:
                    wait.cancel()
                missed += len(pending)
                for wait in done:
                    since_call.append(wait.result() - called)
                    delay = wait.result() - returned
                    early += delay < 0
                    delays[operation].append(max(delay, 0.0))
                if pending:
                    raise RuntimeError(f"{len(pending)} workers kept a stale copy {TIMEOUT} s")
                if operation == "kill":
                    token = ""
                if (n + 1) % max(1, rounds // 4) == 0:
                    progress(f"invalidation: {n + 1}/{rounds} writes")
            await writer.killall(app=APP)
    finally:
        await asyncio.gather(*(h.stop() for h in holders))
    both = delays["set"] + delays["kill"]
    return {
        "workers": sizes.invalidation_workers,
        "writes": rounds,
        "all": percentiles(both),
        "set": percentiles(delays["set"]),
        "kill": percentiles(delays["kill"]),
        "since_call": percentiles(since_call),
        "dropped_before_return": early,
        "missed": missed,
    }
