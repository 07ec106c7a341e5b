"""Every complete program in README.md and docs/*.md runs, as written, as a reader runs it.

A fenced Python block marked `<!-- program: NAME -->` on the line above is a complete
program: the test saves it as NAME in a fresh folder and runs it the way the text says
(`python example.py`, `uvicorn app:app`, ...), a real process with the embedded Valkey
it starts itself, then talks to it over HTTP. Every other Python block must be marked
`<!-- fragment -->`, so that no program goes untested by being left unmarked.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.test_demo import NoRedirect

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- (program: [\w.]+|fragment) -->\n)?```python\n(.*?)```", re.S)
START_TIMEOUT = 60.0  # an embedded server and an app start; a loaded host is slow

OPENER = urllib.request.build_opener(NoRedirect)


def programs() -> dict[str, str]:
    """Each marked program's source by its file name; fails on an unmarked block."""
    found: dict[str, str] = {}
    for document in DOCUMENTS:
        for marker, source in BLOCK.findall(document.read_text()):
            where = document.relative_to(ROOT)
            assert marker, f"{where}: mark each Python block as a program or a fragment"
            if marker.startswith("program: "):
                name = marker.removeprefix("program: ")
                assert name not in found, f"{where}: two programs named {name}"
                found[name] = source
    return found


def request(base: str, path: str, method: str = "GET", cookie: str = "") -> tuple[int, str, str]:
    """Status, body and the session cookie set (if any) of one request."""
    headers = {"Cookie": cookie} if cookie else {}
    call = urllib.request.Request(base + path, method=method, headers=headers)
    try:
        response = OPENER.open(call, timeout=10)
    except urllib.error.HTTPError as error:
        response = error
    with response:
        cookies = response.headers.get_all("Set-Cookie") or []
        sid = next((c.split(";")[0] for c in cookies if c.startswith("sid=")), "")
        return response.status, response.read().decode(), sid


@contextmanager
def running(command: list[str], folder: Path, port: int) -> Iterator[str]:
    """The program as a process of its own, until it answers HTTP on `port`."""
    environment = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    environment.update(PYTHONPATH=str(ROOT), PORT=str(port))  # this checkout's packages
    log = (folder / "output.log").open("wb")
    process = subprocess.Popen(
        command, cwd=folder, env=environment, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            output = (folder / "output.log").read_text(errors="replace")
            assert process.poll() is None, f"the program exited:\n{output}"
            try:
                request(base, "/")
                break
            except OSError:
                assert time.monotonic() < deadline, f"no answer on {port}:\n{output}"
                time.sleep(0.1)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()
    output = (folder / "output.log").read_text(errors="replace")
    assert "Traceback" not in output, output


def run_example_py(folder: Path) -> None:
    """README: `python example.py`, then the curl calls it shows."""
    with running([sys.executable, "example.py"], folder, free_port()) as base:
        assert request(base, "/") == (200, "please log in", "")
        status, _, cookie = request(base, "/login", method="POST")
        assert status == 303 and cookie
        assert request(base, "/", cookie=cookie)[1] == "alice: 1"
        assert request(base, "/", cookie=cookie)[1] == "alice: 2"


def run_app_py(folder: Path) -> None:
    """README: `uvicorn app:app` (on a free port here)."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)]
    with running(command, folder, port) as base:
        assert request(base, "/")[1] == '{"user":null,"visits":0}'
        status, _, cookie = request(base, "/login?user=ada", method="POST")
        assert status == 303 and cookie
        assert request(base, "/", cookie=cookie)[1] == '{"user":"ada","visits":1}'


def run_store_tour_py(folder: Path) -> None:
    """docs/api.md: `python store_tour.py` and what it prints."""
    environment = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    environment["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "store_tour.py"], cwd=folder, env=environment,
        capture_output=True, text=True, timeout=START_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["user42 1", "{'cart': 3}", "{'kill': 1}"]


RUNS: dict[str, Callable[[Path], None]] = {
    "example.py": run_example_py,
    "app.py": run_app_py,
    "store_tour.py": run_store_tour_py,
}


def test_every_program_has_a_run_and_every_run_a_program() -> None:
    assert set(programs()) == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_program_runs_as_written(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_text(programs()[name])
    RUNS[name](tmp_path)
