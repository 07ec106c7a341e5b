"""Where a worker's time goes under load: a sampling profile of one HTTP worker.

`python -m benchmarks --profile` runs each configuration once more with one worker,
that worker under `py-spy record` (raw collapsed stacks, idle time left out), or under
pyinstrument when py-spy is not installed. The stacks are summed up into:

* the share of samples per layer, by the file the sampled frame was running in
  (aiohttp, asyncio, redis-py, this project's store, its middleware, ...);
* the inclusive share of the functions of this project and of redis-py: how much of
  the worker's time was spent in them or in what they called.

The raw profiles are kept next to the results (`profile-<config>.txt`).
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from cached_sessions import RedisSessions

from . import http_load
from .harness import APP, ROOT, Progress, Server, Sizes, drop_keys, namespace
from .worker import CONFIGS

FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")
LAYERS = (
    ("aiohttp_ext/", "cached-sessions middleware (aiohttp_ext)"),
    ("cached_sessions/", "cached-sessions store (cached_sessions)"),
    ("aiohttp_session/", "aiohttp-session"),
    ("redis/", "redis-py"),
    ("aiohttp/", "aiohttp"),
    ("multidict/", "aiohttp (multidict, yarl)"),
    ("yarl/", "aiohttp (multidict, yarl)"),
    ("asyncio/", "asyncio"),
    ("benchmarks/", "the benchmark's handler"),
)
OURS = ("aiohttp_ext/", "cached_sessions/", "redis/", "aiohttp_session/")
# A request's session layer, as the profile sees it: the middleware and all under it
# (the handler and its response included: the floor's middleware holds the same), and
# every other stack running this project's code (the prepare hook, the touch flusher,
# the subscriber), but for reads that missed. The floor's middleware is the benchmark's
# `cookie`.
MIDDLEWARES = ("_session_middleware.<locals>.session_middleware", "aiohttp_app.<locals>.cookie")
LAYER_FILES = ("aiohttp_ext/", "cached_sessions/")
# Reads that missed: the warm-up's, inside the profile but not the measured window.
MISSES = ("SessionCache._fill", "SessionCache.fill", "RedisSessions._read")


def pyspy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # a venv's, when it is not on PATH
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def _short(path: str) -> str:
    """py-spy names files relative to sys.path already; shorten absolute ones alike."""
    for anchor in ("site-packages/", f"{ROOT}/"):
        if anchor in path:
            return path.split(anchor, 1)[1]
    return path


def _layer(path: str) -> str:
    for marker, name in LAYERS:
        if marker in path:
            return name
    return "Python (stdlib, interpreter)" if path else "native"


def parse(path: Path) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]], int, int]:
    """(inclusive, self, total) samples per (short path, function) of py-spy raw output,
    and the samples of the session layer (MIDDLEWARES)."""
    inclusive: Counter[tuple[str, str]] = Counter()
    own: Counter[tuple[str, str]] = Counter()
    total = layer = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if "importlib._bootstrap" in stack:
            continue  # start-up, not serving
        total += count
        frames = []
        for raw in stack.split(";"):
            match = FRAME.match(raw)
            frames.append((match["path"], match["function"]) if match else ("", raw))
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
        if any(f in MIDDLEWARES or any(m in p for m in LAYER_FILES) for p, f in frames) and not any(
            f in MISSES for _, f in frames
        ):
            layer += count
    return inclusive, own, total, layer


def summarize(path: Path, cpu_us: float | None, top: int = 15) -> dict[str, Any]:
    """Shares of the samples; with `cpu_us` (CPU per request), microseconds per request."""
    inclusive, own, total, layer = parse(path)
    if not total:
        return {"samples": 0}
    layers: Counter[str] = Counter()
    for (file, _), count in own.items():
        layers[_layer(file)] += count

    def share(count: int) -> float:
        return round(count / total, 4)

    def per_request(count: int) -> float | None:
        return None if cpu_us is None else round(count / total * cpu_us, 1)

    def listed(counts: Counter[tuple[str, str]], kind: str, ours: bool) -> list[dict[str, Any]]:
        return [
            {"function": f"{_short(file)}:{function}", kind: share(count),
             "us_per_request": per_request(count)}
            for (file, function), count in counts.most_common()
            if not ours or any(marker in file for marker in OURS)
        ][:top]  # fmt: skip

    return {
        "samples": total,
        "cpu_us_per_request": cpu_us,
        "layers": {name: share(count) for name, count in layers.most_common()},
        "session_layer_us": per_request(layer),
        "session_layer_inclusive": listed(inclusive, "inclusive", ours=True),
        "session_layer_self": listed(own, "self", ours=True),
        "hottest_self": listed(own, "self", ours=False),
    }


async def measure(
    server: Server, sizes: Sizes, generator: str, progress: Progress, folder: Path
) -> dict[str, Any]:
    tool = "py-spy" if pyspy() else "pyinstrument"
    out: dict[str, Any] = {"tool": tool, "profiles": {}}
    ns = namespace("prof")
    framework = http_load.AIOHTTP
    missing = http_load.missing(framework)
    async with RedisSessions(url=server.url, namespace=ns, wipe=0) as store:
        ours = await http_load.create_sessions(store, sizes.http_sessions, {"n": 1})
        try:
            theirs = [] if missing else await http_load.rival_sessions(
                framework, server, ns, sizes.http_sessions)  # fmt: skip
            for config in CONFIGS["aiohttp"]:
                if config == framework.rival and missing:
                    continue
                target = folder / f"profile-{config}.txt"
                target.unlink(missing_ok=True)
                options: dict[str, Any] = {"pyinstrument_to": str(target)}
                if tool == "py-spy":
                    options = {"wrapper": [
                        str(pyspy()), "record", "--format", "raw", "--nolineno",
                        "--rate", "250", "--output", str(target), "--",
                    ]}  # fmt: skip
                scenario = http_load.scenario_for(framework, config, ns, ours, theirs)
                row = await http_load.run_one(
                    framework, config, 1, server, ns, scenario, sizes, generator, **options
                )
                entry: dict[str, Any] = {
                    "rps_while_profiled": row["rps"], "file": target.name,
                    "worker_cpu_us": row["worker_cpu_us"], "redis_cpu_us": row["redis_cpu_us"],
                }  # fmt: skip
                if tool == "py-spy" and target.exists():
                    entry.update(summarize(target, row["worker_cpu_us"]))
                out["profiles"][config] = entry
                progress(f"profile {config}: {row['rps']:.0f} req/s under {tool}, "
                         f"kept in {target.name}")  # fmt: skip
        finally:
            await store.killall(app=APP)
            client = server.client()
            try:
                await drop_keys(client, http_load.rival_keys(framework, ns))
            finally:
                await client.aclose()
    return out


def _us(figure: dict[str, Any]) -> str:
    value = figure.get("us_per_request")
    return "" if value is None else f" ({value:.1f} µs)"


def resummarize(profiling: dict[str, Any], folder: Path) -> None:
    """Sum up the raw profiles kept in `folder` again (after this module changed)."""
    for entry in profiling.get("profiles", {}).values():
        raw = folder / entry["file"]
        if profiling.get("tool") == "py-spy" and raw.exists():
            entry.update(summarize(raw, entry.get("worker_cpu_us")))


def markdown(profiling: dict[str, Any]) -> str:
    lines = [f"**Profiles** ({profiling['tool']}, one worker, idle time left out)", ""]
    for config, p in profiling["profiles"].items():
        if not p.get("samples"):
            lines.append(f"- {config}: see `{p['file']}`")
            continue
        layers = ", ".join(f"{name} {share:.0%}" for name, share in p["layers"].items()
                           if share >= 0.01)  # fmt: skip
        lines.append(f"- **{config}** ({p['samples']:,} samples): {layers}")
        cpu = p.get("cpu_us_per_request")
        if cpu:
            lines[-1] += f"; {cpu:.0f} µs of worker CPU per request"
        if p["session_layer_inclusive"]:
            entry = p["session_layer_inclusive"][0]
            lines.append(
                f"  - session layer from `{entry['function']}` down: {entry['inclusive']:.0%}"
                + _us(entry)
            )
        if config in ("middleware", "cache-on") and p.get("session_layer_us") is not None:
            lines.append(
                f"  - the session layer as a whole (middleware and all under it, the prepare "
                f"hook, touches; warm-up misses left out): {p['session_layer_us']:.1f} µs"
            )
        if p.get("session_layer_self"):
            hot = "; ".join(
                f"`{f['function']}` {f['self']:.1%}{_us(f)}" for f in p["session_layer_self"][:8]
            )
            lines.append(f"  - its hottest own code (self time): {hot}")
    return "\n".join(lines) + "\n"
