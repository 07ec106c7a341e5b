"""A fleet of HTTP worker processes (benchmarks/worker.py, or asgi_worker.py under
uvicorn) sharing one port.

Starts them together, waits until each one listens, asks them for their counters
(SIGUSR1) and stops them (SIGTERM), collecting the counters each prints on the way out.
The first worker may run under a profiler: `wrapper` is the command put before it
(py-spy), or `--pyinstrument FILE` is passed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from types import TracebackType
from typing import Any

from .harness import child_env, free_port, python_command

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Fleet:
    def __init__(
        self,
        config: str,
        workers: int,
        url: str,
        namespace: str,
        *,
        wrapper: list[str] | None = None,
        pyinstrument_to: str | None = None,
        module: str = "worker",
    ) -> None:
        self.config = config
        self.module = module  # the worker's module in benchmarks/: same protocol, any server
        self.count = workers
        self.url = url
        self.namespace = namespace
        self.port = free_port()
        self.wrapper = wrapper or []
        self.pyinstrument_to = pyinstrument_to
        self.processes: list[asyncio.subprocess.Process] = []
        self.pids: list[int] = []  # the workers' own pids (not a wrapper's)
        self.final: list[dict[str, Any]] = []

    async def __aenter__(self) -> Fleet:
        for n in range(self.count):
            command = python_command(self.module, self.config, self.port, self.url, self.namespace)
            if n == 0 and self.pyinstrument_to is not None:
                command += ["--pyinstrument", self.pyinstrument_to]
            if n == 0:
                command = self.wrapper + command
            self.processes.append(
                await asyncio.create_subprocess_exec(
                    *command,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=child_env(),
                )
            )
        try:
            lines = await asyncio.wait_for(
                asyncio.gather(*(self._expect(p, "ready ") for p in self.processes)),
                START_TIMEOUT,
            )
        except BaseException:
            await self._stop()
            raise
        self.pids = [int(line.split()[1]) for line in lines]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.final = await self._stop()

    def _signal(self, signum: int) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the workers have used so far, from /proc; None elsewhere."""
        total = 0.0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += (int(fields[11]) + int(fields[12])) / TICKS
        return total

    async def stats(self) -> list[dict[str, Any]]:
        """Each worker's counters now."""
        self._signal(signal.SIGUSR1)
        replies = await asyncio.wait_for(
            asyncio.gather(*(self._expect(p, "stats ") for p in self.processes)), 10
        )
        return [json.loads(line[len("stats ") :]) for line in replies]

    async def _expect(self, process: asyncio.subprocess.Process, prefix: str) -> str:
        assert process.stdout is not None
        while True:
            line = (await process.stdout.readline()).decode(errors="replace")
            if not line:
                err = b""
                if process.stderr is not None:
                    err = await process.stderr.read()
                raise RuntimeError(
                    f"worker {self.config} exited before saying {prefix.strip()!r}:\n"
                    + err.decode(errors="replace")[-3000:]
                )
            if line.startswith(prefix):
                return line.rstrip("\n")

    async def _stop(self) -> list[dict[str, Any]]:
        final: list[dict[str, Any]] = []
        if self.pids:
            self._signal(signal.SIGTERM)
        else:  # not started yet: stop what was launched
            for process in self.processes:
                if process.returncode is None:
                    process.terminate()
        for process in self.processes:
            try:
                line = await asyncio.wait_for(self._expect(process, "stats "), STOP_TIMEOUT)
                final.append(json.loads(line[len("stats ") :]))
            except (TimeoutError, RuntimeError):
                pass
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT + 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        self.processes = []
        self.pids = []
        return final


def total(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' counters added up: requests by kind and the cache's counters."""
    requests: dict[str, int] = {}
    cache: dict[str, int] = {}
    for worker in stats:
        for name, value in worker["requests"].items():
            requests[name] = requests.get(name, 0) + value
        for name, value in worker["cache"].items():
            if isinstance(value, int) and not isinstance(value, bool):
                cache[name] = cache.get(name, 0) + value
    return {"requests": requests, "cache": cache}


def difference(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {
        part: {k: v - before[part].get(k, 0) for k, v in after[part].items()}
        for part in ("requests", "cache")
    }


def hit_rate(cache: dict[str, int]) -> float | None:
    """Hits over all reads the cache saw (hits, misses, joined misses and bypasses)."""
    reads = sum(cache.get(k, 0) for k in ("hits", "misses", "coalesced", "bypassed"))
    return round(cache.get("hits", 0) / reads, 4) if reads else None
