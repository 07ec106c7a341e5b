"""`python -m asgi_ext.demo` as its users run it: uvicorn, two workers, the embedded
Valkey it starts itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.servers import free_port
from tests.test_demo import ROOT, call, check_devices, log_in, post


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("demo") / "demo.log").open("wb")
    environment = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "asgi_ext.demo", "--port", str(port)],
        cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # two workers start; a loaded host is slow
        while True:
            assert process.poll() is None, "the demo exited at start"
            try:
                if call(base, "/api/me")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the demo did not answer"
            time.sleep(0.1)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()


def test_log_in_see_the_page_and_log_out_everywhere(demo: str) -> None:
    cookie = log_in(demo, "ada")
    assert cookie.startswith("sid=")
    status, _, page = call(demo, "/", cookie=cookie)
    assert status == 200 and b'id="user-id">ada<' in page and b'id="visits">1<' in page
    assert json.loads(call(demo, "/api/me", cookie=cookie)[2])["user"] == "ada"
    assert call(demo, "/logout-everywhere", cookie=cookie, form={})[0] == 403  # no token
    assert post(demo, "/logout-everywhere", cookie=cookie)[0] == 303
    assert json.loads(call(demo, "/api/me", cookie=cookie)[2])["user"] is None


def test_a_name_too_long_gets_a_400_page_in_the_forms_words(demo: str) -> None:
    status, _, page = post(demo, "/login", user="x" * 200)
    assert status == 400 and b"Name is 200 characters long; it can be at most 128." in page
    assert b'id="current-session"' in call(demo, "/", cookie=log_in(demo, "eve"))[2]


def test_one_device_logs_out_another_then_all_the_others(demo: str) -> None:
    check_devices(demo)
