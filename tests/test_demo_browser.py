"""The demo in a real browser: two devices, one user, two workers, one "log out everywhere".

Each device is its own headless Chromium with its own profile (cookie jar), driven by
Selenium through Debian's chromedriver; nothing is downloaded at run time.

A browser keeps its connection to the demo alive (aiohttp keeps idle connections for
75 s), and the kernel picks a worker per connection, so plain reloads meet the same
worker again and again. To meet the other worker the test does what a person would do
in Chromium: "Close idle sockets" on chrome://net-internals/#sockets (in a second tab),
then reload. Conversely, without that, the next load reuses the connection and so the
worker: the test uses this to know which worker serves a device's next load.

`CACHED_SESSIONS_SCREENSHOT=docs/demo.png` saves a screenshot of a logged-in page (a
relative path is taken from the repository root); without it the tree is left alone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ServerProcess, free_port

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import selenium_manager
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
USER = "ada"  # no other test logs in as ada: the page lists exactly her sessions
WINDOW = (1000, 700)  # the page's size, as in the screenshot
MAX_RELOADS = 30  # per device; each reload meets a worker at random, 1 in 2
NET_INTERNALS = "chrome://net-internals/#sockets"
CLOSE_IDLE_SOCKETS = "sockets-view-close-idle-button"

pytestmark = pytest.mark.skipif(
    webdriver is None or not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="Debian's chromium and chromium-driver and pip's selenium are needed; "
    ".ci/run installs them",
)


def _api_me(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/api/me", timeout=2) as response:
        result: dict[str, Any] = json.load(response)
        return result


def _living_members(pgid: int) -> list[int]:
    """The processes of a process group that are not zombies (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _stop(process: subprocess.Popen[bytes]) -> bool:
    """SIGTERM the demo, SIGKILL its whole process group if needed; True if it stopped cleanly."""
    clean = True
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            clean = False
    # The demo runs in its own session and process group: whatever still lives in it is
    # a worker (or helper) the demo failed to stop.
    deadline = time.monotonic() + 5
    while _living_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _living_members(process.pid):
        clean = False
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)
    return clean


@pytest.fixture(scope="module")
def demo(server: ServerProcess) -> Iterator[str]:
    """The demo on two workers, as `python -m aiohttp_ext.demo` runs; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "aiohttp_ext.demo", "--workers", "2", "--port", str(port),
             "--redis-url", server.url],
            cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

        def log() -> str:
            output.seek(0)
            return output.read().decode(errors="replace")[-4000:]

        try:
            # Each urllib call is a new connection, so the kernel spreads them over the
            # workers: wait until both answer.
            seen: set[int] = set()
            deadline = time.monotonic() + 20
            while seen != {1, 2} and time.monotonic() < deadline:
                if process.poll() is not None:
                    pytest.fail(f"the demo exited at start:\n{log()}")
                try:
                    seen.add(_api_me(base)["worker"])
                except (OSError, ValueError):
                    time.sleep(0.1)
            assert seen == {1, 2}, f"both demo workers should answer within 20 s:\n{log()}"
            yield base
        finally:
            stopped_cleanly = _stop(process)
            assert stopped_cleanly and process.returncode == 0, (
                f"the demo should stop on SIGTERM with its workers, exit 0:\n{log()}"
            )


class Device:
    """One browser on its own profile: tab 0 shows the demo, tab 1 is for tools."""

    def __init__(self, base: str, profile: str) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--user-data-dir={profile}",
            # Belt and braces: no name but loopback resolves, so nothing leaves the machine.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ):  # fmt: skip
            options.add_argument(argument)
        # The driver's path is given, so Selenium Manager (which may download) is skipped.
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.base = base
        # --window-size counts the (invisible) browser frame: size the page itself.
        inner = self.driver.execute_script("return [window.innerWidth, window.innerHeight]")
        if inner != list(WINDOW):
            self.driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])
        self.page = self.driver.current_window_handle
        self.driver.switch_to.new_window("tab")
        self.tools = self.driver.current_window_handle
        self.driver.switch_to.window(self.page)

    def quit(self) -> None:
        self.driver.quit()

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(By.ID, element_id).text)

    def worker(self) -> int:
        match = re.fullmatch(r"Served by worker (\d+) \(pid \d+\)", self.text("worker"))
        assert match, self.text("worker")
        return int(match.group(1))

    def visits(self) -> int:
        return int(self.text("visits"))

    def _click_and_wait(self, element_id: str) -> None:
        self._click_and_wait_on(self.driver.find_element(By.ID, element_id))

    def _click_and_wait_on(self, button: WebElement) -> None:
        """Click a form's button and wait for the page the form leads to (after its 303)."""
        self.driver.execute_script("window.beforeClick = true")
        button.click()
        # A new document has a new window object. While it replaces the old one, Chrome
        # may answer with errors other than "stale element": ignore them until it is done.
        WebDriverWait(self.driver, 10, ignored_exceptions=(WebDriverException,)).until(
            lambda driver: driver.execute_script(
                "return window.beforeClick === undefined && document.readyState === 'complete'"
            )
        )

    def open(self) -> None:
        self.driver.get(self.base + "/")

    def log_in(self, user: str) -> None:
        self.driver.find_element(By.ID, "user").send_keys(user)
        self._click_and_wait("login")

    def log_out_everywhere(self) -> None:
        self._click_and_wait("logout-everywhere")

    def log_out_others(self) -> None:
        self._click_and_wait("logout-others")

    def log_out_other_device(self) -> None:
        """The button of the one row in "Your sessions" that is not this browser."""
        table = self.driver.find_element(By.ID, "sessions")
        buttons = table.find_elements(By.CSS_SELECTOR, "tr:not(#current-session) button.revoke")
        assert len(buttons) == 1, f"one other device expected, {len(buttons)} buttons"
        self._click_and_wait_on(buttons[0])

    def reload(self) -> None:
        """Reload on the same connection, so normally the same worker answers."""
        self.driver.refresh()

    def reload_on_new_connection(self) -> None:
        """Close the browser's idle connections first: the kernel then picks the worker."""
        self.driver.switch_to.window(self.tools)
        if self.driver.current_url != NET_INTERNALS:
            self.driver.get(NET_INTERNALS)
        self.driver.find_element(By.ID, CLOSE_IDLE_SOCKETS).click()
        self.driver.switch_to.window(self.page)
        self.driver.refresh()

    def fetch_in_tools_tab(self, path: str) -> str:
        """Open `path` in the tools tab (same connection) and return the text shown."""
        self.driver.switch_to.window(self.tools)
        self.driver.get(self.base + path)
        text = str(self.driver.find_element(By.TAG_NAME, "body").text)
        self.driver.switch_to.window(self.page)
        return text

    def cache_hits(self, worker: int) -> int:
        metrics = self.fetch_in_tools_tab("/metrics")
        match = re.search(r'^cached_sessions_cache_hits\{worker="(\d+)"\} (\d+)$', metrics, re.M)
        assert match, metrics
        assert int(match.group(1)) == worker, f"/metrics came from another worker:\n{metrics}"
        return int(match.group(2))

    def session_rows(self) -> int:
        table = self.driver.find_element(By.ID, "sessions")
        return len(table.find_elements(By.TAG_NAME, "tr")) - 1  # minus the header row


def assert_logged_in(device: Device, visits: int, user: str = USER) -> None:
    assert device.text("user-id") == user
    assert device.text("who").startswith(f"Logged in as {user}.")
    assert device.visits() == visits, "the counter kept in the session should count every view"


def assert_logged_out(device: Device) -> None:
    assert device.text("who") == "Not logged in."
    assert device.driver.find_elements(By.ID, "user"), "the login form should be shown"
    assert device.driver.find_elements(By.ID, "login")
    assert not device.driver.find_elements(By.ID, "user-id")
    assert device.driver.get_cookie("sid") is None, "the demo should clear the cookie"


@pytest.fixture
def devices(demo: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Device, Device]]:
    """Two devices; Selenium Manager, which could reach the network, must not run."""

    def no_selenium_manager(*args: object, **kwargs: object) -> None:
        raise AssertionError("Selenium Manager was called; pass the driver's path instead")

    monkeypatch.setattr(selenium_manager.SeleniumManager, "binary_paths", no_selenium_manager)
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    with (
        tempfile.TemporaryDirectory(prefix="cs-chromium-a-") as profile_a,
        tempfile.TemporaryDirectory(prefix="cs-chromium-b-") as profile_b,
    ):
        a = Device(demo, profile_a)
        try:
            b = Device(demo, profile_b)
            try:
                yield a, b
            finally:
                b.quit()
        finally:
            a.quit()


def test_two_devices_one_user_log_out_everywhere(devices: tuple[Device, Device]) -> None:
    a, b = devices

    # Both devices log in as the same user through the form.
    for device in (a, b):
        device.open()
        assert_logged_out(device)
        device.log_in(USER)
        assert_logged_in(device, visits=1)

    # The cookie as the browser holds it: HttpOnly (no script sees it), SameSite=Lax,
    # not Secure (plain HTTP demo), for the whole site, and a browser-session cookie.
    for device in (a, b):
        cookie = device.driver.get_cookie("sid")
        assert cookie is not None
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Lax"
        assert cookie["secure"] is False
        assert cookie["path"] == "/"
        assert "expiry" not in cookie
        assert "sid=" not in device.driver.execute_script("return document.cookie")
    assert a.driver.get_cookie("sid") != b.driver.get_cookie("sid"), "two devices, two sessions"

    # Each device reloads until both workers have served it; the counter in the session
    # goes up by one on every view, whichever worker reads and writes it.
    for device in (a, b):
        visits, seen = 1, {device.worker()}
        for _ in range(MAX_RELOADS):
            if seen == {1, 2}:
                break
            device.reload_on_new_connection()
            visits += 1
            assert_logged_in(device, visits)
            seen.add(device.worker())
        assert seen == {1, 2}, f"{MAX_RELOADS} reloads on new connections met only {seen}"
        assert device.session_rows() == 2, "the page lists the user's two sessions"
        # A plain reload keeps the connection, and so the worker.
        before = device.worker()
        device.reload()
        assert_logged_in(device, visits + 1)
        assert device.worker() == before

    screenshot = os.environ.get("CACHED_SESSIONS_SCREENSHOT")
    if screenshot:
        path = ROOT / screenshot
        path.parent.mkdir(parents=True, exist_ok=True)
        assert a.driver.save_screenshot(str(path)), f"could not write {path}"

    # Set the stage for the hard case: device B's next load goes to the worker that
    # does not handle the logout, and that worker holds B's session in its cache.
    worker_a = a.worker()  # A's connection: its logout will go there
    for _ in range(MAX_RELOADS):
        if b.worker() != worker_a:
            break
        b.reload_on_new_connection()
    worker_b = b.worker()
    assert worker_b != worker_a, f"{MAX_RELOADS} reloads of B all met worker {worker_a}"
    hits = b.cache_hits(worker_b)
    for _ in range(2):  # the first read fills the cache, the second is a hit
        me = json.loads(b.fetch_in_tools_tab("/api/me"))
        assert me == {"worker": worker_b, "pid": me["pid"], "user": USER}
    assert b.cache_hits(worker_b) > hits, f"worker {worker_b} should serve B from its cache"

    # "Log out everywhere" on device A...
    a.log_out_everywhere()
    assert_logged_out(a)
    assert a.worker() == worker_a, "A's logout and its next page share one connection"

    # ...and device B's very next page load, served by the other worker from its cache
    # until now, is logged out. No retry: Redis published the invalidation inside the
    # killsoid script, before the logout's response left worker A, and the README
    # promises it reaches the other workers well under a millisecond later; a reload
    # (by a person, or by this test after A's page has loaded) comes much later.
    b.reload()
    assert b.worker() == worker_b, "B's reload should reuse its connection to the other worker"
    assert_logged_out(b)


def test_a_device_logs_out_another_from_its_list_then_all_the_others(
    devices: tuple[Device, Device],
) -> None:
    a, b = devices
    user = "grace"  # her own user: the list shows exactly these two devices
    for device in (a, b):
        device.open()
        device.log_in(user)
        assert_logged_in(device, visits=1, user=user)
    a.reload()
    assert a.session_rows() == 2 and a.text("current-session").startswith("this browser")

    # "Log out this device" on B's row: A stays, B's next page asks for a login.
    a.log_out_other_device()
    assert_logged_in(a, visits=3, user=user)
    assert a.text("sessions").count("this browser") == 1 and a.session_rows() == 1
    assert "That device is logged out." in a.driver.page_source
    b.reload()
    assert_logged_out(b)

    # B logs in again; "Log out my other devices" on A ends B and keeps A.
    b.log_in(user)
    assert_logged_in(b, visits=1, user=user)
    a.reload()
    assert a.session_rows() == 2
    a.log_out_others()
    assert "Logged out 1 other device." in a.driver.page_source
    assert a.session_rows() == 1
    b.reload()
    assert_logged_out(b)
