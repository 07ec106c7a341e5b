"""The demo, as its users run it: two worker processes on one port, one Redis or a cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def call(
    base: str, path: str, *, cookie: str = "", form: dict[str, str] | None = None
) -> tuple[int, Message, bytes]:
    """Status, headers (any case; `get_all` for repeated ones) and body of one request."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(
        base + path, data=data, headers={"Cookie": cookie} if cookie else {}
    )
    try:
        with OPENER.open(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def form_token(base: str, cookie: str = "") -> tuple[str, str]:
    """The CSRF token of the page's forms, and the Cookie header to send it with (an
    anonymous visitor's token is bound to the CSRF cookie the page sets)."""
    _, headers, page = call(base, "/", cookie=cookie)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.decode())
    assert match, "every form of the demo carries a CSRF token"
    fresh = [
        value.split(";")[0]
        for value in headers.get_all("Set-Cookie", [])
        if value.startswith("csrf=")
    ]
    return match.group(1), "; ".join(part for part in (cookie, *fresh) if part)


def post(
    base: str, path: str, cookie: str = "", **fields: str
) -> tuple[int, dict[str, str], bytes]:
    """A form of the page, submitted as a browser does: with its CSRF token."""
    token, cookies = form_token(base, cookie)
    return call(base, path, cookie=cookies, form={**fields, "csrf_token": token})


def log_in(base: str, user: str) -> str:
    """The session cookie of a fresh login as `user`."""
    status, headers, body = post(base, "/login", user=user)
    assert status == 303, body
    cookies = [v.split(";")[0] for v in headers.get_all("Set-Cookie", []) if v.startswith("sid=")]
    assert len(cookies) == 1
    return cookies[0]


@pytest.fixture(scope="module", params=["single", "cluster"])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo on one server, and on a cluster through its URL form."""
    if request.param == "cluster":
        host, cluster_port = request.getfixturevalue("cluster").startup_nodes[0]
        url = f"redis+cluster://{host}:{cluster_port}"
    else:
        url = request.getfixturevalue("server").url
    port = free_port()
    log_path = tmp_path_factory.mktemp("demo") / "demo.log"
    log = log_path.open("wb")  # a file, not a pipe: nothing would drain a pipe
    process = subprocess.Popen(
        [sys.executable, "-m", "aiohttp_ext.demo", "--workers", "2", "--port", str(port),
         "--redis-url", url],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        seen: set[int] = set()
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            try:
                seen.add(json.loads(call(base, "/api/me")[2])["worker"])
            except (OSError, ValueError):
                time.sleep(0.1)
        assert seen == {1, 2}, "both demo workers should answer"
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and its workers
            process.wait(5)
        log.close()
        assert process.returncode == 0, log_path.read_text(errors="replace")


def me(base: str, cookie: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(call(base, "/api/me", cookie=cookie)[2])
    return result


def test_logging_out_everywhere_in_one_worker_logs_out_in_all(demo: str) -> None:
    cookie = log_in(demo, "alice")
    workers: dict[int, object] = {}
    for _ in range(200):  # each request is a new connection: the kernel picks a worker
        answer = me(demo, cookie)
        workers[int(answer["worker"])] = answer["user"]  # type: ignore[call-overload]
        if len(workers) == 2:
            break
    assert workers == {1: "alice", 2: "alice"}
    status, _, _ = post(demo, "/logout-everywhere", cookie=cookie)
    assert status == 303
    refused: set[int] = set()
    for _ in range(200):
        answer = me(demo, cookie)
        assert answer["user"] is None, f"worker {answer['worker']} still accepts the token"
        refused.add(int(answer["worker"]))  # type: ignore[call-overload]
        if len(refused) == 2:
            break
    assert refused == {1, 2}


def test_the_page_shows_worker_user_counter_and_sessions(demo: str) -> None:
    cookie = log_in(demo, "bob <b>")
    first = call(demo, "/", cookie=cookie)[2].decode()
    second = call(demo, "/", cookie=cookie)[2].decode()
    assert "Served by worker" in first
    assert "bob &lt;b&gt;" in first and "<b>" not in first.split("Logged in as")[1][:60]
    assert 'id="visits">1<' in first and 'id="visits">2<' in second
    assert 'id="sessions"' in first


def test_bad_input_gets_a_clear_page_in_the_forms_words_not_a_500(demo: str) -> None:
    status, _, body = post(demo, "/login", user="x" * 500)
    assert status == 400
    assert b"Name is 500 characters long; it can be at most 128." in body
    status, _, body = post(demo, "/login", user="   ")
    assert status == 400 and b"Please enter a name." in body
    status, _, _ = call(demo, "/", cookie="sid=" + "%" * 70)
    assert status == 200


def test_a_post_without_its_csrf_token_is_refused(demo: str) -> None:
    status, _, _ = call(demo, "/login", form={"user": "mallory"})
    assert status == 403
    cookie = log_in(demo, "carol")
    status, _, _ = call(demo, "/logout-everywhere", cookie=cookie, form={})
    assert status == 403
    assert me(demo, cookie)["user"] == "carol"  # still logged in
    status, _, _ = call(demo, "/logout", cookie=cookie, form={"csrf_token": "forged.token"})
    assert status == 403 and me(demo, cookie)["user"] == "carol"


def test_your_sessions_marks_this_one(demo: str) -> None:
    first, second = log_in(demo, "dora"), log_in(demo, "dora")
    page = call(demo, "/", cookie=second)[2].decode()
    table = page.split('id="sessions"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr") == 3  # the header and dora's two sessions
    assert table.count('id="current-session"') == 1 and "this browser" in table
    rows = table.split("<tr")[1:]
    assert "this browser" not in rows[0]  # the header
    assert first != second


def handles(base: str, cookie: str) -> list[str]:
    """The handles of the other devices listed on this session's page."""
    return re.findall(
        r'name="handle" value="([0-9a-f]+)"', call(base, "/", cookie=cookie)[2].decode()
    )


def check_devices(base: str) -> None:
    """Log out one other device, then every other device, from the page's buttons."""
    a, b, c = (log_in(base, "erin") for _ in range(3))
    page = call(base, "/", cookie=a)[2].decode()
    others = handles(base, a)
    assert len(others) == 2 and page.count('id="current-session"') == 1
    for cookie in (a, b, c):  # a row carries a handle, never a token
        assert cookie.split("=", 1)[1] not in page

    # Frank cannot log out Erin's devices with handles he has seen.
    frank = log_in(base, "frank")
    for handle in others:
        assert post(base, "/devices/revoke", frank, handle=handle)[0] == 303
    assert me(base, b)["user"] == "erin" and me(base, c)["user"] == "erin"

    # A hand-made form: a page that says so, not a 500.
    status, _, _ = post(base, "/devices/revoke", a, handle="not-a-handle")
    assert status == 303 and "not one of your devices" in call(base, "/", cookie=a)[2].decode()

    b_handle = next(h for h in others if h not in handles(base, b))  # b's page omits its own
    assert post(base, "/devices/revoke", a, handle=b_handle)[0] == 303
    assert me(base, b)["user"] is None and me(base, a)["user"] == "erin"
    assert "That device is logged out." in call(base, "/", cookie=a)[2].decode()

    assert post(base, "/logout-others", a)[0] == 303
    assert me(base, c)["user"] is None and me(base, a)["user"] == "erin"
    page = call(base, "/", cookie=a)[2].decode()
    assert "Logged out 1 other device." in page and handles(base, a) == []


def test_one_device_logs_out_another_then_all_the_others(demo: str) -> None:
    check_devices(demo)


def test_metrics_are_in_the_prometheus_text_format(demo: str) -> None:
    status, headers, body = call(demo, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    lines = body.decode().splitlines()
    assert any(line.startswith("cached_sessions_cache_hits{worker=") for line in lines)
    assert "# TYPE cached_sessions_cache_hits counter" in lines
    for line in lines:
        if not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            assert int(value) >= 0 and "{" in name_labels


def test_demo_refuses_a_port_that_is_already_served() -> None:
    """aiohttp's reuse_port would let a second demo share the port and split the
    requests; the launcher refuses instead, in one line."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "aiohttp_ext.demo", "--port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"demo: http://127.0.0.1:{port}/ is already served (another demo?): stop it, or pass --port"
    )


def test_demo_says_in_one_line_when_its_redis_is_unreachable() -> None:
    url = f"redis://:secret-password@127.0.0.1:{free_port()}/0"  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "aiohttp_ext.demo", "--port", str(free_port()), "--redis-url", url],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip()
    assert len(output.splitlines()) == 1, output
    assert "is unreachable" in output and "redis://***@127.0.0.1" in output
    assert "secret-password" not in output and "Traceback" not in output


def test_demo_refuses_a_bad_worker_count() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiohttp_ext.demo", "--workers", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 2 and "--workers must be at least 1" in result.stderr
