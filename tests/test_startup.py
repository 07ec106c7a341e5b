"""Start-up without Redis, by the failure policy: the app starts, answers 503 with
Retry-After, logs one warning that names the server, the error and the retry, and
recovers by itself once a server answers on that port; `fail_fast=True` stops start-up
instead with one line. On aiohttp and on ASGI (Starlette on uvicorn), real servers."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ServerProcess, free_port
from tests.web_apps import MakeClient

pytest_plugins = ("tests.web_apps",)  # the `framework` fixture: aiohttp, then ASGI

ROOT = Path(__file__).resolve().parent.parent
WAIT = 15.0  # the bound on every wait for something to happen


@pytest.fixture
def absent_server() -> Iterator[ServerProcess]:
    """A server on a port where nothing listens yet; the test starts it."""
    server = ServerProcess(os.environ.get("CACHED_SESSIONS_TEST_SERVER", "valkey"))
    try:
        yield server
    finally:
        server.cleanup()


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and "unreachable" in record.getMessage()
    ]


async def test_the_app_starts_without_redis_answers_503_and_recovers_by_itself(
    make_client: MakeClient, absent_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await make_client(url=absent_server.url)  # the app is up: start-up did not fail
    cookie = {"Cookie": "sid=" + "a" * 64}  # a token to look up: Redis is needed
    for _ in range(3):
        response = await client.get("/me", headers=cookie)
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert "unavailable" in await response.text()
    assert (await client.post("/login")).status == 503  # a login is not claimed done
    lines = _outage_lines(caplog)
    assert len(lines) == 1, lines  # one line at start-up, none per request
    assert absent_server.url in lines[0] and "retrying every 1 s" in lines[0]
    assert "111" in lines[0] or "refused" in lines[0].lower()  # the error itself

    absent_server.start()  # the same port: no restart, no new URL for the app
    deadline = time.monotonic() + WAIT
    while (response := await client.get("/me", headers=cookie)).status != 200:
        assert time.monotonic() < deadline, "the app did not recover"
        await asyncio.sleep(0.1)
    assert (await response.json())["user"] is None  # an unknown token: anonymous
    assert (await client.post("/login")).status == 200
    assert any("reachable after" in record.getMessage() for record in caplog.records)


async def test_the_stores_own_calls_fail_at_once_while_it_retries(
    absent_server: ServerProcess,
) -> None:
    from cached_sessions import RedisSessions
    from cached_sessions.errors import UnreachableSinceStartError

    async with asyncio.timeout(WAIT):
        store = RedisSessions(url=absent_server.url, wipe=0)
        try:
            assert await store.start_or_keep_trying() is False
            with pytest.raises(UnreachableSinceStartError, match="unreachable since start-up"):
                await store.get(app="shop", token="a" * 64)
            absent_server.start()
            while True:
                try:
                    assert await store.get(app="shop", token="a" * 64) is None
                    break
                except UnreachableSinceStartError:
                    await asyncio.sleep(0.1)
        finally:
            await store.aclose()


AIOHTTP_APP = """
    from aiohttp import web
    from aiohttp_ext import setup_sessions
    from cached_sessions import RedisSessions

    app = web.Application()
    setup_sessions(app, RedisSessions(url="{url}"), app_name="shop", fail_fast=True)
    web.run_app(app, host="127.0.0.1", port={port})
"""

ASGI_APP = """
    from starlette.applications import Starlette
    from asgi_ext import SessionMiddleware
    from cached_sessions import RedisSessions

    app = Starlette()
    app.add_middleware(
        SessionMiddleware, store=RedisSessions(url="{url}"), app_name="shop", fail_fast=True
    )
"""


def test_fail_fast_stops_start_up_with_one_line(framework: str, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://:hunter2hunter2@127.0.0.1:{port}/0"
    source = AIOHTTP_APP if framework == "aiohttp" else ASGI_APP
    (tmp_path / "app.py").write_text(textwrap.dedent(source.format(url=url, port=free_port())))
    command = [sys.executable, "app.py"]
    if framework == "asgi":
        command = [sys.executable, "-m", "uvicorn", "app:app", "--port", str(free_port())]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "hunter2" not in output
    lines = [line for line in output.splitlines() if "unreachable at start-up" in line]
    assert len(lines) == 1, output
    assert f"redis://***@127.0.0.1:{port}/0" in lines[0] and "fail_fast=True" in lines[0]
    if framework == "aiohttp":
        assert output.strip() == lines[0]  # nothing but that line
