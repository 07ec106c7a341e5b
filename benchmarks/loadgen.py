"""Load generators, each in a process of its own: `wrk` when present, else a Python client.

A scenario says what to send:

* `{"kind": "read", "cookie": NAME, "tokens": [...]}`: `GET /` with one session cookie
  after another, round robin;
* `{"kind": "mixed", "cookie": NAME, "users": [[user, token], ...], "update": share,
  "logout": share}`: users take turns; a user with no session logs in (`POST /login`),
  one with a session sends `POST /update` or `POST /logout` with the given shares, else
  `GET /`. The server echoes `X-User`, so each response's `Set-Cookie` goes to its user.

Both generators report requests per second, latency percentiles (milliseconds) and
errors in the same shape. `python -m benchmarks.loadgen` is the Python generator
(an aiohttp client with one task per connection) used when wrk is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .harness import child_env, python_command

SEED = 7
PYTHON = "python (aiohttp client, 1 process)"


def wrk_version() -> str | None:
    path = shutil.which("wrk")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    words = first[0].split() if first else []
    return " ".join(words[:2]) if words else "wrk"


def choose(preference: str) -> tuple[str, str]:
    """(generator, its description): `wrk` if asked or found, else `python`."""
    version = wrk_version()
    if preference == "python" or version is None:
        if preference == "wrk":
            raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install wrk)")
        reason = "" if preference == "python" else "; wrk not installed"
        return "python", PYTHON + reason
    return "wrk", f"{version}, 1 thread"


async def generate(
    generator: str, port: int, scenario: dict[str, Any], *, connections: int, seconds: float
) -> dict[str, Any]:
    if generator == "wrk":
        result = await _wrk(port, scenario, connections, seconds)
    else:
        result = await _python(port, scenario, connections, seconds)
    result["rps"] = round(result["requests"] / result["seconds"], 1) if result["seconds"] else 0
    return result


# wrk


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"max_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

_READ = """
local cookies = {%(cookies)s}
local prepared = {}
local i = 0
init = function(args)
  for k, cookie in ipairs(cookies) do
    prepared[k] = wrk.format("GET", "/", {["Cookie"] = cookie})
  end
end
request = function()
  i = i %% #prepared + 1
  return prepared[i]
end
"""

_MIXED = """
local users = {%(users)s}
local by_name = {}
for _, user in ipairs(users) do by_name[user[1]] = user end
local update, logout = %(update)r, %(logout)r
local cookie = %(cookie)s
local i = 0
math.randomseed(%(seed)d)
request = function()
  i = i %% #users + 1
  local user = users[i]
  local headers = {["X-User"] = user[1]}
  if user[2] == "" then
    return wrk.format("POST", "/login", headers, "")
  end
  headers["Cookie"] = cookie .. "=" .. user[2]
  local r = math.random()
  if r < update then return wrk.format("POST", "/update", headers, "") end
  if r < update + logout then return wrk.format("POST", "/logout", headers, "") end
  return wrk.format("GET", "/", headers)
end
response = function(status, headers, body)
  local user = by_name[headers["X-User"] or ""]
  local set = headers["Set-Cookie"]
  if user and set then
    user[2] = string.match(set, "^" .. cookie .. "=([^;]*)") or ""
  end
end
"""


def _wrk_script(scenario: dict[str, Any]) -> str:
    cookie = scenario["cookie"]
    if scenario["kind"] == "read":
        cookies = ", ".join(_lua_string(f"{cookie}={token}") for token in scenario["tokens"])
        return _READ % {"cookies": cookies} + _DONE
    users = ", ".join(
        "{%s, %s}" % (_lua_string(name), _lua_string(token or ""))  # noqa: UP031
        for name, token in scenario["users"]
    )
    return (
        _MIXED
        % {
            "users": users,
            "update": float(scenario["update"]),
            "logout": float(scenario["logout"]),
            "cookie": _lua_string(cookie),
            "seed": SEED,
        }
        + _DONE
    )


async def _wrk(
    port: int, scenario: dict[str, Any], connections: int, seconds: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        script = Path(folder) / "scenario.lua"
        script.write_text(_wrk_script(scenario))
        whole = max(1, math.ceil(seconds))  # wrk takes whole seconds
        command = [
            "wrk", "-t1", f"-c{connections}", f"-d{whole}s", "--timeout", "10s",
            "-s", str(script), f"http://127.0.0.1:{port}/",
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), whole + 30)
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("WRKJSON "):
            raw = json.loads(line[len("WRKJSON ") :])
            break
    else:
        raise RuntimeError(f"wrk gave no summary: {out.decode()!r} {err.decode()!r}")
    errors = {k: v for k, v in raw["errors"].items() if v}
    return {
        "requests": raw["requests"],
        "seconds": round(raw["duration_us"] / 1e6, 3),
        "p50_ms": round(raw["p50_us"] / 1000, 3),
        "p90_ms": round(raw["p90_us"] / 1000, 3),
        "p99_ms": round(raw["p99_us"] / 1000, 3),
        "max_ms": round(raw["max_us"] / 1000, 3),
        "errors": errors,
    }


# The Python generator, in its own process


async def _python(
    port: int, scenario: dict[str, Any], connections: int, seconds: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
        path = Path(folder) / "scenario.json"
        path.write_text(json.dumps(scenario))
        command = python_command(
            "loadgen", "--port", port, "--connections", connections, "--seconds", seconds,
            "--scenario", path,
        )  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=child_env(),
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), seconds + 60)
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("LOADJSON "):
            result: dict[str, Any] = json.loads(line[len("LOADJSON ") :])
            return result
    raise RuntimeError(f"the load generator failed: {err.decode(errors='replace')[-2000:]}")


class Users:
    """The mixed scenario's users: who goes next, and what each one sends."""

    def __init__(self, scenario: dict[str, Any]) -> None:
        self.kind = scenario["kind"]
        self.cookie = scenario["cookie"]
        if self.kind == "read":
            self.users = [[None, token] for token in scenario["tokens"]]
        else:
            self.users = [[name, token or ""] for name, token in scenario["users"]]
        self.by_name = {user[0]: user for user in self.users}
        self.update = float(scenario.get("update", 0))
        self.logout = float(scenario.get("logout", 0))
        self.turn = 0
        self.random = random.Random(SEED)

    def next(self) -> tuple[str, str, dict[str, str]]:
        user = self.users[self.turn % len(self.users)]
        self.turn += 1
        name, token = user
        headers = {} if name is None else {"X-User": name}
        if not token:
            return "POST", "/login", headers
        headers["Cookie"] = f"{self.cookie}={token}"
        if self.kind == "read":
            return "GET", "/", headers
        r = self.random.random()
        if r < self.update:
            return "POST", "/update", headers
        if r < self.update + self.logout:
            return "POST", "/logout", headers
        return "GET", "/", headers

    def answered(self, headers: Any) -> None:
        if self.kind == "read":
            return
        user = self.by_name.get(headers.get("X-User"))
        if user is None:
            return
        for value in headers.getall("Set-Cookie", ()):
            name, _, rest = value.partition("=")
            if name == self.cookie:
                user[1] = rest.split(";", 1)[0]


async def _drive(
    port: int, scenario: dict[str, Any], connections: int, seconds: float
) -> dict[str, Any]:
    import aiohttp

    users = Users(scenario)
    base = f"http://127.0.0.1:{port}"
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    jar = aiohttp.DummyCookieJar()
    clock = time.perf_counter
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=jar) as http:
        started = clock()
        deadline = started + seconds

        async def connection() -> None:
            while clock() < deadline:
                method, path, headers = users.next()
                sent = clock()
                try:
                    async with http.request(method, base + path, headers=headers) as response:
                        await response.read()
                        if response.status >= 400:
                            errors["status"] += 1
                        users.answered(response.headers)
                except (aiohttp.ClientError, TimeoutError):
                    errors["read"] += 1
                    continue
                latencies.append(clock() - sent)

        await asyncio.gather(*(connection() for _ in range(connections)))
        elapsed = clock() - started
    ordered = sorted(latencies) or [0.0]

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(len(ordered) * p) - 1)] * 1000, 3)

    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "p50_ms": rank(0.50),
        "p90_ms": rank(0.90),
        "p99_ms": rank(0.99),
        "max_ms": round(ordered[-1] * 1000, 3),
        "errors": dict(errors),
    }


async def warm(port: int, scenario: dict[str, Any], seconds: float, connections: int = 16) -> int:
    """Read every session at least once, on fresh connections, for at least `seconds`.

    Fresh connections let SO_REUSEPORT spread the reads over all the workers, so each
    one's cache is warm before the measurement starts. Returns the requests made.
    """
    import aiohttp

    tokens = scenario["tokens"] if scenario["kind"] == "read" else [t for _, t in scenario["users"]]
    cookie = scenario["cookie"]
    base = f"http://127.0.0.1:{port}/"
    sent = 0
    connector = aiohttp.TCPConnector(limit=connections, force_close=True)
    jar = aiohttp.DummyCookieJar()
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as http:
        passes = 0
        while passes < 2 or time.monotonic() < deadline:
            order = [t for t in tokens if t]
            random.shuffle(order)
            for start in range(0, len(order), connections * 4):
                chunk = order[start : start + connections * 4]

                async def one(token: str) -> None:
                    async with http.get(base, headers={"Cookie": f"{cookie}={token}"}) as r:
                        await r.read()

                await asyncio.gather(*(one(token) for token in chunk))
                sent += len(chunk)
            passes += 1
            if passes >= 50:
                break
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--scenario", type=Path, required=True)
    arguments = parser.parse_args()
    scenario = json.loads(arguments.scenario.read_text())
    result = asyncio.run(_drive(arguments.port, scenario, arguments.connections, arguments.seconds))
    print("LOADJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
