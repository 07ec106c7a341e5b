"""`python -m benchmarks [--quick]`: this project against what a user would pick instead.

Runs, against one Redis-compatible server (an embedded Valkey unless --url):

1. HTTP throughput and latency, 1 then 2 worker processes: bare aiohttp,
   aiohttp-session's RedisStorage, this project with the cache off and on (http_load.py,
   the workers in worker.py and the load from load.py: wrk, else a Python client);
2. the HTTP rows again under uvicorn, 1 then 2 worker processes: bare Starlette,
   starsessions' RedisStore, this project's ASGI middleware with the cache off and on
   (http_load.py again; skipped when uvicorn, Starlette or starsessions is missing),
   right after the aiohttp rows, so both meet the server in the same state (the cost
   curve leaves a million sessions in an embedded server, and a read costs Redis about
   twice the CPU there);
3. store operations, µs per call (store_ops.py);
4. invalidation propagation across 4 worker processes (invalidation.py);
5. a mixed load of reads and writes with the cache off and on (mixed.py);
6. the wipe of many expired sessions (wipe.py) and the cost curve from 1k to 1M
   sessions (cost_curve.py);
7. a Redis Cluster of three primaries against one server of the same binary, both
   started by the section itself (cluster.py; skipped when no cluster can start).

Writes `<stem>.json`, `<stem>.md` and `<stem>.png` into benchmarks/results/ (the stem is
`benchmarks`; `benchmarks-<sections>` with --only; `benchmarks-quick` with --quick or
--scale), and for a full run the Markdown meant for README as `README-figures.md`; the
cluster section has a chart of its own (`<stem>-cluster.png`, or `<stem>.png` alone).
`--profile` adds a sampling profile of one worker per configuration (profiling.py). A
missing aiohttp-session, starsessions, wrk or matplotlib makes its part skipped or replaced, never
the run fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import (
    chart,
    cluster,
    cost_curve,
    http_load,
    invalidation,
    mixed,
    profiling,
    report,
    store_ops,
    wipe,
)
from .harness import Progress, Server, Sizes, bounded, busy_processes, machine
from .load import choose

RESULTS = Path(__file__).parent / "results"
SECTIONS = ("http", "asgi", "store", "invalidation", "mixed", "wipe", "curve", "cluster")
SECTION_LIMIT_FULL = 900.0  # seconds: a section that takes longer has hung
SECTION_LIMIT_QUICK = 180.0
SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "store": lambda r: (
        "store: " + ", ".join(f"{k} {v['p50_us']} us" for k, v in r["operations"].items())
    ),
    "invalidation": lambda r: (
        f"invalidation: p50 {r['all']['p50_us']} us, "
        f"p99 {r['all']['p99_us']} us, max {r['all']['max_us']} us"
    ),
    "wipe": lambda r: (
        f"wipe: {r['wipe_total_s']} s, longest script call {r['longest_script_call_ms']} ms"
    ),
    "cluster": lambda r: cluster.summary(r),
    "asgi": lambda r: http_load.summary(r),
}


async def run(arguments: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    sizes = (Sizes.quick() if arguments.quick else Sizes.full()).scaled(arguments.scale)
    if arguments.sizes:
        sizes = sizes.__class__(**{**sizes.__dict__, "curve_sizes": tuple(arguments.sizes)})
    wanted = set(arguments.only or SECTIONS)
    generator, described = choose(arguments.loadgen)
    report_: dict[str, Any] = {
        "machine": machine(),
        "busy_processes_at_start": busy_processes(),
        "mode": sizes.mode,
        "command": "python -m benchmarks " + shlex.join(sys.argv[1:]),
        "load_generator": described,
    }
    server = await Server(arguments.url).start()
    report_["server"] = server.version
    progress(f"{server.version} at {server.url}; load from {described}; {sizes.mode} mode")
    limit = arguments.section_limit or (
        SECTION_LIMIT_FULL if sizes.mode == "full" else SECTION_LIMIT_QUICK
    )
    sections: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
        ("http", "http", lambda: http_load.measure(
            http_load.AIOHTTP, server, sizes, generator, progress)),
        ("asgi", "asgi", lambda: http_load.measure(
            http_load.ASGI, server, sizes, generator, progress)),
        ("profile", "profiling", lambda: profiling.measure(
            server, sizes, generator, progress, arguments.out)),
        ("store", "store", lambda: store_ops.measure(server, sizes)),
        ("invalidation", "invalidation", lambda: invalidation.measure(server, sizes, progress)),
        ("mixed", "mixed", lambda: mixed.measure(server, sizes, generator, progress)),
        ("wipe", "wipe", lambda: wipe.measure(server, sizes, progress)),
        ("curve", "cost_curve", lambda: cost_curve.measure(server, sizes, progress)),
        ("cluster", "cluster", lambda: cluster.measure(sizes, progress)),
    ]  # fmt: skip
    try:
        for name, key, measure in sections:
            chosen = arguments.profile if name == "profile" else name in wanted
            if not chosen:
                continue
            if name == "store":
                progress("store operations ...")
            try:
                report_[key] = await bounded(measure(), limit, f"section {name}")
            except Exception as error:  # one failed section does not lose the others
                report_.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"
                progress(f"{name} FAILED: {type(error).__name__}: {error}")
                continue
            summary = SUMMARIES.get(name)
            if summary is not None:
                progress(summary(report_[key]))
    finally:
        await asyncio.to_thread(server.stop)
    return report_


def arguments_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--url", help="Redis URL (default: an embedded Valkey server)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto",
        help="HTTP load generator (auto: wrk when installed)",
    )  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply counts and durations (smoke runs)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="the cost curve's sizes (sessions in Redis)"
    )
    parser.add_argument(
        "--profile", action="store_true",
        help="also profile one worker per configuration (py-spy, else pyinstrument)",
    )  # fmt: skip
    parser.add_argument(
        "--section-limit", type=float, metavar="SECONDS",
        help="fail a section that runs longer (default 900 s, 180 s with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--render", type=Path, metavar="JSON",
        help="measure nothing: write the Markdown and chart of an earlier run's JSON again",
    )  # fmt: skip
    return parser


def write_outputs(result: dict[str, Any], out: Path, stem: str, progress: Progress) -> None:
    """The JSON, the Markdown, the chart and (for a full run) README-figures.md."""
    result["targets"] = report.targets(result)
    result.pop("chart", None)
    missing = chart.available()
    if missing is None and ("http" in result or "cost_curve" in result):
        chart.draw(result, out / f"{stem}.png")
        result["chart"] = f"{stem}.png"
        result.pop("chart_skipped", None)
    elif missing is not None:
        result["chart_skipped"] = missing
        progress(f"chart skipped: {missing}")
    result.pop("cluster_chart", None)
    if missing is None and "throughput" in result.get("cluster", {}):
        name = f"{stem}-cluster.png" if "chart" in result else f"{stem}.png"
        chart.draw_cluster(result, out / name)
        result["cluster_chart"] = name
    paths = report.write(result, out, stem)
    if stem == "benchmarks" and out.resolve() == RESULTS.resolve():
        readme = RESULTS / "README-figures.md"
        image = f"benchmarks/results/{result['chart']}" if "chart" in result else None
        text = report.markdown(result, image, folder="benchmarks/results/")
        readme.write_text("## Benchmarks\n\n" + text)
        paths["readme"] = readme
    print()
    print(report.markdown(result, None))
    for key in ("chart", "cluster_chart"):
        if key in result:
            paths[key] = out / result[key]
    progress("wrote " + ", ".join(str(p) for p in paths.values()))


def stem(arguments: argparse.Namespace) -> str:
    """`benchmarks` for a full run, `benchmarks-<sections>` for some sections at full
    size, `benchmarks-quick` for anything smaller."""
    if arguments.quick or arguments.scale != 1:
        return "benchmarks-quick"
    if arguments.only:
        return "benchmarks-" + "-".join(dict.fromkeys(arguments.only))
    return "benchmarks"


def main() -> None:
    # A stopped run (SIGTERM) unwinds like Ctrl-C, so the servers it started stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    arguments = arguments_parser().parse_args()
    progress = Progress()
    if arguments.render is not None:
        result = json.loads(arguments.render.read_text())
        folder = arguments.render.parent
        if "profiling" in result:
            profiling.resummarize(result["profiling"], folder)
        write_outputs(result, folder, arguments.render.stem, progress)
        return
    arguments.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = asyncio.run(run(arguments, progress))
    result["runtime_s"] = round(time.monotonic() - started, 1)
    write_outputs(result, arguments.out, stem(arguments), progress)
    progress(f"done in {result['runtime_s']:.0f} s")
    if result.get("errors"):
        sys.exit(f"failed sections: {', '.join(result['errors'])}")


if __name__ == "__main__":
    main()
