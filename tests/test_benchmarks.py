"""The benchmark keeps working: `--quick` at a tenth of its sizes runs end to end.

Only the shape of what it writes is checked, never a timing. Without aiohttp-session,
wrk or matplotlib (the `bench` extra and Debian's wrk) the run must still pass: the
aiohttp-session rows say why they were skipped, the load comes from the Python
generator, and no chart is drawn.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.profiling import parse
from benchmarks.worker import CONFIGS
from tests.servers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(170)


def test_quick_benchmark_runs_and_writes_its_figures(server: ServerProcess, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "benchmarks", "--quick", "--scale", "0.1",
        "--url", server.url, "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=160)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "[" in result.stdout and "http bare x1" in result.stdout  # progress as it runs

    report = json.loads((tmp_path / "benchmarks-quick.json").read_text())
    assert {"date", "cpu", "cores", "python"} <= report["machine"].keys()
    assert report["server"].split()[0] in ("Valkey", "Redis")
    assert report["load_generator"]

    rows = report["http"]["rows"]
    expected = {(c, w) for c in CONFIGS["aiohttp"] for w in (1, 2)}
    assert {(r["config"], r["workers"]) for r in rows} == expected
    for row in rows:
        if "skipped" in row:
            assert row["config"] == "aiohttp-session", row
            assert importlib.util.find_spec("aiohttp_session") is None
            continue
        assert {"rps", "p50_ms", "p99_ms", "x_bare", "worker_cpu_us", "redis_cpu_us"} <= row.keys()
        assert row["requests"] > 0 and row["served"] > 0
        assert row["x_bare"] is not None
    assert all(r.get("hit_rate") is not None for r in rows if r["config"] == "cache-on")

    operations = report["store"]["operations"]
    assert set(operations) == {"get (cache hit)", "get (Redis)", "set", "create", "kill"}
    assert all({"p50_us", "p99_us", "n"} <= figures.keys() for figures in operations.values())

    invalidation = report["invalidation"]
    assert invalidation["workers"] == 4 and invalidation["missed"] == 0
    assert invalidation["all"]["n"] == invalidation["writes"] * 4

    curve = report["cost_curve"]["rows"]
    assert [row["sessions"] for row in curve] == [500, 1000]
    for row in curve:
        assert row["soapp_returned"] == 100 and row["activity_counted"] == 100
        assert row["get_hit_p50_us"] > 0 and row["cache_bytes_per_entry"] > 0

    assert report["wipe"]["sessions"] == 500
    assert [row["config"] for row in report["mixed"]["rows"]] == ["cache-off", "cache-on"]
    assert report["mixed"]["rows"][1]["hit_rate"] is not None

    targets = {t["target"] for t in report["targets"]}
    assert "invalidation p99" in targets
    assert {
        "cache on vs the floor (1 worker)",
        "cache off vs aiohttp-session (1 worker)",
        "Redis CPU per uncached read",
        "a cache hit's worker CPU above the floor",
        "mixed load: cache on vs cache off",
    } <= targets

    markdown = (tmp_path / "benchmarks-quick.md").read_text()
    assert "| configuration | workers | req/s |" in markdown
    assert "| `get (cache hit)` |" in markdown
    chart = tmp_path / "benchmarks-quick.png"
    if importlib.util.find_spec("matplotlib") is None:
        assert "chart_skipped" in report and not chart.exists()
    else:
        assert chart.read_bytes().startswith(b"\x89PNG")


def test_profiles_are_summed_by_function(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "run (asyncio/base_events.py);handle (aiohttp_ext/middleware.py);"
        "hit (cached_sessions/cache.py) 3\n"
        "run (asyncio/base_events.py);handle (aiohttp_ext/middleware.py) 1\n"
        "run (asyncio/base_events.py);SessionCache._fill (cached_sessions/cache.py) 2\n"
        "run (asyncio/base_events.py);select (selectors.py) 6\n"
        "<module> (x.py);_find_and_load (<frozen importlib._bootstrap>) 5\n"
    )
    inclusive, own, total, layer = parse(raw)
    assert total == 12  # start-up imports are left out
    assert inclusive[("aiohttp_ext/middleware.py", "handle")] == 4
    assert own[("cached_sessions/cache.py", "hit")] == 3
    # The session layer: this project's stacks, but for the reads that missed.
    assert layer == 4
