"""The benchmark keeps working: `--quick` runs end to end. Timings are not checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.servers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_and_writes_its_figures(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--url", server.url, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["store"]["operations"]) == {
        "get (cache hit)", "get (Redis)", "set", "create", "kill",
    }  # fmt: skip
    assert report["wipe"]["sessions"] == 5_000
    assert report["invalidation"]["n"] == 100
    assert "| get (cache hit) |" in result.stdout
