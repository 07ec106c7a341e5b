"""HTTP load on a fleet of worker processes: the harness of the HTTP, mixed and profile runs.

`Fleet` starts `benchmarks/worker.py` processes sharing one port, waits until each one
listens, asks them for their counters (SIGUSR1) and stops them (SIGTERM), keeping the
counters each prints on the way out. The first worker may run under a profiler.

`generate()` sends the load: `wrk` when installed, else a small aiohttp client in this
process (the fallback, so a run never needs wrk). A scenario says what to send:

* `{"kind": "read", "cookie": NAME, "tokens": [...]}`: `GET /` with one session
  cookie after another, round robin;
* `{"kind": "mixed", "cookie": NAME, "users": [[user, token], ...], "update": share,
  "logout": share}`: users take turns; one with no session logs in (`POST /login`),
  one with a session sends `POST /update` or `POST /logout` with the given shares,
  else `GET /`. The server echoes `X-User`, so each `Set-Cookie` goes to its user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from .harness import Server, child_env, free_port, python_command

SEED = 7
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
TICKS = os.sysconf("SC_CLK_TCK")
PYTHON = "python (aiohttp client, in the benchmark's process)"


class Fleet:
    """`workers` processes of one framework's configuration, on one port."""

    def __init__(
        self, framework: str, config: str, workers: int, url: str, namespace: str,
        *, wrapper: list[str] | None = None, pyinstrument_to: str | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.port = free_port()
        self.commands = []
        for n in range(workers):
            command = python_command("worker", framework, config, self.port, url, namespace)
            if n == 0 and pyinstrument_to is not None:
                command += ["--pyinstrument", pyinstrument_to]
            self.commands.append((wrapper or []) + command if n == 0 else command)
        self.processes: list[asyncio.subprocess.Process] = []
        self.pids: list[int] = []  # the workers' own pids (not a wrapper's)

    async def __aenter__(self) -> Fleet:
        for command in self.commands:
            self.processes.append(await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=child_env(),
            ))  # fmt: skip
        try:
            ready = self.replies("ready ")
            lines = await asyncio.wait_for(ready, START_TIMEOUT)
        except BaseException:
            await self.__aexit__()
            raise
        self.pids = [int(line.split()[1]) for line in lines]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.pids:
            self._signal(signal.SIGTERM)
        for process in self.processes:
            if not self.pids and process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        self.processes, self.pids = [], []

    def _signal(self, signum: int) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the workers have used so far, from /proc."""
        total = 0.0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += (int(fields[11]) + int(fields[12])) / TICKS
        return total

    async def counters(self) -> list[dict[str, Any]]:
        """Each worker's counters now: requests by kind, and its cache's."""
        self._signal(signal.SIGUSR1)
        lines = await asyncio.wait_for(self.replies("stats "), 10)
        return [json.loads(line[len("stats ") :]) for line in lines]

    async def stats(self) -> dict[str, Any]:
        """The workers' counters now, added up."""
        requests: Counter[str] = Counter()
        cache: Counter[str] = Counter()
        for worker in await self.counters():
            requests.update(worker["requests"])
            cache.update({k: v for k, v in worker["cache"].items() if type(v) is int})
        return {"requests": requests, "cache": cache}

    async def replies(self, prefix: str) -> list[str]:
        return list(await asyncio.gather(*(self._expect(p, prefix) for p in self.processes)))

    async def _expect(self, process: asyncio.subprocess.Process, prefix: str) -> str:
        assert process.stdout is not None and process.stderr is not None
        while line := (await process.stdout.readline()).decode(errors="replace"):
            if line.startswith(prefix):
                return line.rstrip("\n")
        err = (await process.stderr.read()).decode(errors="replace")
        raise RuntimeError(f"worker {self.config} exited before {prefix.strip()!r}:\n{err[-3000:]}")


def hit_rate(cache: dict[str, int]) -> float | None:
    """Hits over all reads the cache saw (hits, misses, joined misses and bypasses)."""
    reads = sum(cache.get(k, 0) for k in ("hits", "misses", "coalesced", "bypassed"))
    return round(cache.get("hits", 0) / reads, 4) if reads else None


class CpuMeter:
    """CPU time per request of the workers and of the Redis server, over a window."""

    def __init__(self, fleet: Fleet, server: Server) -> None:
        self.fleet, self.server = fleet, server
        self.workers: float | None = None
        self.redis = 0.0

    async def __aenter__(self) -> CpuMeter:
        self.workers = self.fleet.cpu_seconds()
        self.redis = await self.server.cpu_seconds()
        return self

    async def __aexit__(self, *_: object) -> None:
        workers = self.fleet.cpu_seconds()
        self.workers = None if workers is None or self.workers is None else workers - self.workers
        self.redis = await self.server.cpu_seconds() - self.redis

    def per_request(self, requests: int) -> dict[str, float | None]:
        def per(seconds: float | None) -> float | None:
            return None if seconds is None or not requests else round(seconds / requests * 1e6, 1)

        return {"worker_cpu_us": per(self.workers), "redis_cpu_us": per(self.redis)}


async def loaded(
    fleet: Fleet, server: Server, generator: str, scenario: dict[str, Any], *,
    connections: int, seconds: float,
) -> tuple[dict[str, Any], dict[str, Counter[str]], CpuMeter]:  # fmt: skip
    """One measured window: the generator's figures, what the workers counted in it
    (requests by kind, cache counters) and the CPU they and Redis spent."""
    before = await fleet.stats()
    async with CpuMeter(fleet, server) as cpu:
        result = await generate(
            generator, fleet.port, scenario, connections=connections, seconds=seconds
        )
    after = await fleet.stats()
    return result, {part: after[part] - before[part] for part in ("requests", "cache")}, cpu


# The load generators


def wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    words = (out.stdout or out.stderr).split()
    return " ".join(words[:2]) or "wrk"


def choose(preference: str) -> tuple[str, str]:
    """(generator, its description): `wrk` if asked or found, else `python`."""
    version = wrk_version()
    if preference == "wrk" and version is None:
        raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install wrk)")
    if preference == "python" or version is None:
        return "python", PYTHON + ("" if preference == "python" else "; wrk not installed")
    return "wrk", f"{version}, 1 thread"


async def generate(
    generator: str, port: int, scenario: dict[str, Any], *, connections: int, seconds: float
) -> dict[str, Any]:
    """Requests, seconds, requests per second, latency percentiles (ms) and errors."""
    if generator == "wrk":
        result = await _wrk(port, scenario, connections, seconds)
    else:
        result = await _python(port, scenario, connections, seconds)
    result["rps"] = round(result["requests"] / result["seconds"], 1) if result["seconds"] else 0
    return result


_WRK_READ = """
local cookies = {%(cookies)s}
local prepared, i = {}, 0
init = function(args)
  for k, cookie in ipairs(cookies) do prepared[k] = wrk.format("GET", "/", {Cookie = cookie}) end
end
request = function() i = i %% #prepared + 1 return prepared[i] end
"""
_WRK_MIXED = """
local users, by_name, i = {%(users)s}, {}, 0
for _, user in ipairs(users) do by_name[user[1]] = user end
local update, logout, cookie = %(update)r, %(logout)r, %(cookie)s
math.randomseed(%(seed)d)
request = function()
  i = i %% #users + 1
  local user = users[i]
  local headers = {["X-User"] = user[1]}
  if user[2] == "" then return wrk.format("POST", "/login", headers, "") end
  headers["Cookie"] = cookie .. "=" .. user[2]
  local r = math.random()
  if r < update then return wrk.format("POST", "/update", headers, "") end
  if r < update + logout then return wrk.format("POST", "/logout", headers, "") end
  return wrk.format("GET", "/", headers)
end
response = function(status, headers, body)
  local user, set = by_name[headers["X-User"] or ""], headers["Set-Cookie"]
  if user and set then user[2] = string.match(set, "^" .. cookie .. "=([^;]*)") or "" end
end
"""
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, '
    .. '"p90_us": %d, "p99_us": %d, "max_us": %d, "errors": {"connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d}}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _wrk_script(scenario: dict[str, Any]) -> str:
    quote = json.dumps  # a JSON string of ASCII is a valid Lua string literal
    cookie = scenario["cookie"]
    if scenario["kind"] == "read":
        cookies = ", ".join(quote(f"{cookie}={token}") for token in scenario["tokens"])
        return _WRK_READ % {"cookies": cookies} + _WRK_DONE
    users = ", ".join(f"{{{quote(n)}, {quote(t or '')}}}" for n, t in scenario["users"])
    return _WRK_MIXED % {
        "users": users, "update": float(scenario["update"]), "seed": SEED,
        "logout": float(scenario["logout"]), "cookie": quote(cookie),
    } + _WRK_DONE  # fmt: skip


async def _wrk(
    port: int, scenario: dict[str, Any], connections: int, seconds: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        script = Path(folder) / "scenario.lua"
        script.write_text(_wrk_script(scenario))
        whole = max(1, math.ceil(seconds))  # wrk takes whole seconds
        process = await asyncio.create_subprocess_exec(
            "wrk", "-t1", f"-c{connections}", f"-d{whole}s", "--timeout", "10s",
            "-s", str(script), f"http://127.0.0.1:{port}/",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), whole + 30)
    lines = [s for s in out.decode(errors="replace").splitlines() if s.startswith("WRKJSON ")]
    if not lines:
        raise RuntimeError(f"wrk gave no summary: {out.decode()!r} {err.decode()!r}")
    raw = json.loads(lines[0][len("WRKJSON ") :])
    result = {f"{p}_ms": round(raw[f"{p}_us"] / 1000, 3) for p in ("p50", "p90", "p99", "max")}
    errors = {k: v for k, v in raw["errors"].items() if v}
    return {"requests": raw["requests"], "seconds": round(raw["duration_us"] / 1e6, 3),
            **result, "errors": errors}  # fmt: skip


async def _python(
    port: int, scenario: dict[str, Any], connections: int, seconds: float
) -> dict[str, Any]:
    """The fallback: one task per connection, each request timed; same result shape."""
    mixed = scenario["kind"] == "mixed"
    users = (
        [list(u) for u in scenario["users"]] if mixed else [[None, t] for t in scenario["tokens"]]
    )
    by_name = {user[0]: user for user in users}
    cookie, draw, turn = scenario["cookie"], random.Random(SEED), 0
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    def next_request() -> tuple[str, str, dict[str, str]]:
        nonlocal turn
        name, token = users[turn % len(users)]
        turn += 1
        headers = {} if name is None else {"X-User": name}
        if not token:
            return "POST", "/login", headers
        headers["Cookie"] = f"{cookie}={token}"
        r = draw.random() if mixed else 1.0
        if r < scenario.get("update", 0):
            return "POST", "/update", headers
        if r < scenario.get("update", 0) + scenario.get("logout", 0):
            return "POST", "/logout", headers
        return "GET", "/", headers

    async def connection(http: aiohttp.ClientSession, deadline: float) -> None:
        while (sent := time.perf_counter()) < deadline:
            method, path, headers = next_request()
            try:
                async with http.request(method, f"http://127.0.0.1:{port}{path}",
                                        headers=headers) as response:  # fmt: skip
                    await response.read()
                    errors["status"] += response.status >= 400
                    user = by_name.get(response.headers.get("X-User"))
                    morsel = response.cookies.get(cookie)
                    if user is not None and morsel is not None:
                        user[1] = morsel.value
            except (aiohttp.ClientError, TimeoutError):
                errors["read"] += 1
                continue
            latencies.append(time.perf_counter() - sent)

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:  # fmt: skip
        started = time.perf_counter()
        await asyncio.gather(*(connection(http, started + seconds) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]

    def ms(p: float) -> float:
        return round(ordered[max(0, math.ceil(len(ordered) * p) - 1)] * 1000, 3)

    return {"requests": len(latencies), "seconds": round(elapsed, 3), "p50_ms": ms(0.5),
            "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": ms(1.0),
            "errors": {k: v for k, v in errors.items() if v}}  # fmt: skip


async def warm(port: int, scenario: dict[str, Any], seconds: float, connections: int = 16) -> None:
    """Read every session at least twice, on fresh connections, for at least `seconds`.

    Fresh connections let SO_REUSEPORT spread the reads over all the workers, so each
    one's cache is warm before the measurement starts.
    """
    mixed = scenario["kind"] == "mixed"
    tokens = [t for _, t in scenario["users"] if t] if mixed else list(scenario["tokens"])
    headers = [{"Cookie": f"{scenario['cookie']}={token}"} for token in tokens]
    connector = aiohttp.TCPConnector(limit=connections, force_close=True)
    deadline = time.monotonic() + seconds

    async def one(http: aiohttp.ClientSession, header: dict[str, str]) -> None:
        async with http.get(f"http://127.0.0.1:{port}/", headers=header) as response:
            await response.read()

    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:  # fmt: skip
        for passes in range(50):
            if passes >= 2 and time.monotonic() >= deadline:
                break
            random.shuffle(headers)
            step = connections * 4
            for start in range(0, len(headers), step):
                await asyncio.gather(*(one(http, h) for h in headers[start : start + step]))
