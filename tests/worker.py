"""A session-store worker process for the multi-process cache tests, and its client.

Run as a program, it opens one `RedisSessions` with the cache on and serves commands:

    python -m tests.worker --url URL --namespace NS --cachetime 30 [--ping-interval 0.2]

One JSON object per line on stdin, one JSON reply per line on stdout. Commands:
get, set, create, kill, killsoid, stats, is_cached, watch (poll until a token leaves
the cache, reply with the time it did), wait_subscribed, and batch (several commands
back to back in one task). Each command runs as its own task, so a long `watch` does
not hold up the commands after it; a reply carries its command's `seq`. Every reply
has `started` and `now`: the `time.monotonic()` when the command began and when it
finished. CLOCK_MONOTONIC is system-wide on Linux, so these times compare with the
test's own and other workers'. An exception becomes `{"error": ..., "type": ...}`,
never a crash. At the end of stdin the worker closes the store and exits with 0.

`Worker` and `WorkerPool` below are the test side: they start workers with
`asyncio.create_subprocess_exec`, send commands with a timeout, and stop them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import itertools
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from cached_sessions import RedisSessions

ROOT = Path(__file__).resolve().parent.parent
POLL = 0.0005
MAX_WAIT = 30.0
CLOSE_TIMEOUT = 5.0


# The worker program


def _monotonic_deadline(seconds: Any) -> float:
    wait = float(seconds)
    if not 0 <= wait <= MAX_WAIT:
        raise ValueError(f"timeout must be within 0..{MAX_WAIT} s")
    return time.monotonic() + wait


async def _watch(rs: RedisSessions, message: dict[str, Any]) -> dict[str, Any]:
    """Poll until the token leaves the cache; report the monotonic time it did."""
    token = message["token"]
    deadline = _monotonic_deadline(message.get("timeout", 5.0))
    was_cached = rs.is_cached(token)
    while rs.is_cached(token):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{token} still cached after {message.get('timeout', 5.0)} s")
        await asyncio.sleep(POLL)
    return {"was_cached": was_cached, "at": time.monotonic()}


async def _wait_subscribed(rs: RedisSessions, message: dict[str, Any]) -> dict[str, Any]:
    """Poll `cache_stats()["subscribed"]` until it equals `value` (default True)."""
    wanted = bool(message.get("value", True))
    deadline = _monotonic_deadline(message.get("timeout", 5.0))
    while rs.cache_stats().get("subscribed") is not wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"subscribed did not become {wanted}")
        await asyncio.sleep(POLL * 4)
    return {"subscribed": wanted, "at": time.monotonic()}


async def _run(rs: RedisSessions, message: dict[str, Any]) -> dict[str, Any]:
    op = message.get("op")
    if op == "get":
        return {"session": await rs.get(app=message["app"], token=message["token"])}
    if op == "set":
        session = await rs.set(app=message["app"], token=message["token"], d=message["d"])
        return {"session": session}
    if op == "create":
        options = {key: message[key] for key in ("ttl", "d", "no_resave") if key in message}
        created = await rs.create(app=message["app"], id=message["id"], ip=message["ip"], **options)
        return {"token": created["token"]}
    if op == "kill":
        return {"result": await rs.kill(app=message["app"], token=message["token"])}
    if op == "killsoid":
        return {"result": await rs.killsoid(app=message["app"], id=message["id"])}
    if op == "stats":
        return {"stats": rs.cache_stats()}
    if op == "is_cached":
        return {"cached": rs.is_cached(message["token"])}
    if op == "watch":
        return await _watch(rs, message)
    if op == "wait_subscribed":
        return await _wait_subscribed(rs, message)
    if op == "batch":
        return await _batch(rs, message)
    raise ValueError(f"unknown op {op!r}")


async def _batch(rs: RedisSessions, message: dict[str, Any]) -> dict[str, Any]:
    """Run commands one after the other in one task, nothing in between.

    `{"op": "batch", "commands": [...]}`: the second command starts the moment the
    first returns (a request that writes, then reads), which a round trip through the
    test could not do. Each reply is timed; an error stops the batch.
    """
    commands = message["commands"]
    if not isinstance(commands, list) or not 1 <= len(commands) <= 100:
        raise ValueError("commands must be a list of 1 to 100 commands")
    replies: list[dict[str, Any]] = []
    for command in commands:
        if not isinstance(command, dict) or command.get("op") == "batch":
            raise ValueError("a batch holds plain commands")
        started = time.monotonic()
        try:
            reply = await _run(rs, command)
        except Exception as error:
            reply = {"error": str(error) or repr(error), "type": type(error).__name__}
        reply.update(started=started, now=time.monotonic())
        replies.append(reply)
        if "error" in reply:
            break
    return {"replies": replies}


def _dump_tasks() -> None:
    """On SIGUSR1: where every task of the worker waits (the client asks before a kill)."""
    for task in asyncio.all_tasks():
        print(f"-- task {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


def _reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def _handle(rs: RedisSessions, line: bytes) -> None:
    started = time.monotonic()
    ident: Any = None
    try:
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("a command is a JSON object")
        ident = message.get("seq")
        reply = await _run(rs, message)
    except Exception as error:
        reply = {"error": str(error) or repr(error), "type": type(error).__name__}
    reply.update(seq=ident, started=started, now=time.monotonic())
    _reply(reply)


async def serve(options: argparse.Namespace) -> int:
    rs = RedisSessions(
        url=options.url,
        namespace=options.namespace,
        wipe=0,
        cachetime=options.cachetime,
        ping_interval=options.ping_interval,
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()
    try:
        await rs.start(subscribe_timeout=options.subscribe_timeout)
        stats = rs.cache_stats()
        module = sys.modules[RedisSessions.__module__].__file__
        _reply({"ready": True, "subscribed": stats.get("subscribed"), "module": module})
        while line := await reader.readline():
            if not line.strip():
                continue
            task = asyncio.create_task(_handle(rs, line))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            for task in pending:
                task.cancel()
    finally:
        await rs.aclose()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.worker")
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--cachetime", type=float, default=30.0)
    parser.add_argument("--ping-interval", type=float, default=1.0)
    parser.add_argument("--subscribe-timeout", type=float, default=5.0)
    return asyncio.run(serve(parser.parse_args()))


# The test side


class WorkerError(Exception):
    """A worker answered a command with an error (or stopped answering)."""

    def __init__(self, message: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reply = reply or {}

    @property
    def kind(self) -> str:
        return str(self.reply.get("type", ""))


class Worker:
    """One worker process: `call()` sends a command and waits for its reply."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.stderr: deque[str] = deque(maxlen=500)
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._readers = [
            asyncio.create_task(self._read_replies(), name=f"{name} stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{name} stderr"),
        ]

    @classmethod
    async def start(
        cls,
        name: str,
        *,
        url: str,
        namespace: str,
        cachetime: float = 30.0,
        ping_interval: float | None = None,
        ready_within: float = 20.0,
        root: Path = ROOT,
    ) -> Worker:
        arguments = ["--url", url, "--namespace", namespace, "--cachetime", str(cachetime)]
        if ping_interval is not None:
            arguments += ["--ping-interval", str(ping_interval)]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.worker",
            *arguments,
            cwd=root,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        worker = cls(name, process)
        try:
            hello = await asyncio.wait_for(asyncio.shield(worker.ready), ready_within)
        except BaseException:
            await worker.close(grace=2.0)
            raise
        if not hello.get("subscribed"):
            await worker.close(grace=2.0)
            raise WorkerError(f"{name} started without a confirmed subscription", hello)
        return worker

    async def _read_replies(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while line := await stream.readline():
            try:
                reply = json.loads(line)
            except ValueError:
                self.stderr.append(f"(stdout) {line!r}")
                continue
            if reply.get("ready") and not self.ready.done():
                self.ready.set_result(reply)
                continue
            waiter = self._waiting.pop(reply.get("seq"), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)
        gone = WorkerError(f"{self.name} closed its stdout; stderr:\n{self.log()}")
        for waiter in [self.ready, *self._waiting.values()]:
            if not waiter.done():
                waiter.set_exception(gone)
        self._waiting.clear()

    async def _read_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        while line := await stream.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())

    def log(self) -> str:
        return "\n".join(self.stderr)

    def send(self, op: str, **arguments: Any) -> asyncio.Future[dict[str, Any]]:
        """Send one command; the future resolves with its reply (error replies too)."""
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            raise WorkerError(f"{self.name} is closed")
        ident = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = waiter
        stdin.write(json.dumps({**arguments, "op": op, "seq": ident}).encode() + b"\n")
        return waiter

    async def call(
        self, op: str, *, within: float = 10.0, check: bool = True, **arguments: Any
    ) -> dict[str, Any]:
        """Send a command and wait at most `within` s; an error reply raises if `check`.

        The other keyword arguments are the command's (`timeout` too, for `watch`).
        """
        return await self.wait(self.send(op, **arguments), within=within, check=check)

    async def wait(
        self, waiter: Awaitable[dict[str, Any]], *, within: float = 10.0, check: bool = True
    ) -> dict[str, Any]:
        try:
            reply = await asyncio.wait_for(waiter, within)
        except TimeoutError:
            raise WorkerError(
                f"{self.name}: no reply in {within} s; stderr:\n{self.log()}"
            ) from None
        if check and "error" in reply:
            raise WorkerError(f"{self.name}: {reply['type']}: {reply['error']}", reply)
        return reply

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self.call("stats"))["stats"]
        return stats

    async def close(self, grace: float = 10.0) -> int | None:
        """Close stdin, wait for a clean exit; kill the process if it does not come.

        Before a kill the worker is asked where it hangs (thread and task stacks);
        the answer stays in `log()`.
        """
        process = self.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            code: int | None = await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            code = None
            for sign in (signal.SIGUSR2, signal.SIGUSR1):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sign)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 1.0)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.wait_for(process.wait(), 5.0)
        for reader in self._readers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 1.0)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        return code


class WorkerPool:
    """Starts workers for one test and stops them all at the end."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.workers: list[Worker] = []

    async def spawn(self, count: int, **options: Any) -> list[Worker]:
        first = len(self.workers)
        names = [f"worker{first + i}" for i in range(count)]
        started = await asyncio.gather(
            *(
                Worker.start(name, url=self.url, namespace=self.namespace, **options)
                for name in names
            ),
            return_exceptions=True,
        )
        made = [worker for worker in started if isinstance(worker, Worker)]
        self.workers.extend(made)
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        return made

    async def aclose(self) -> list[int | None]:
        """Stop every worker; returns their exit codes (None: had to be killed)."""
        workers, self.workers = self.workers, []
        codes = list(await asyncio.gather(*(worker.close() for worker in workers)))
        for worker, code in zip(workers, codes, strict=True):
            if code != 0:
                print(f"{worker.name} exited with {code}; its stderr:\n{worker.log()}")
        return codes


if __name__ == "__main__":
    sys.exit(main())
