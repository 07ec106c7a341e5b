"""A hostile sibling subdomain against a real browser: Chromium, HTTPS, three hosts.

`app.example.test` runs the middleware with its defaults (`__Host-` cookie names) and
`legacy.example.test` with plain names; `evil.example.test` is the attacker's. All are
served over TLS (a certificate made here, which the browser is told to accept) from a
thread of their own, and Chromium resolves the three names to 127.0.0.1 and nothing
else. The attacker does what a review did by hand: fetch a login form of his own,
plant its CSRF cookie (and his own session cookie) for `.example.test`, and submit the
victim's browser into his account.
"""

from __future__ import annotations

import asyncio
import datetime
import html
import http.client
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from aiohttp import hdrs, web
from aiohttp._cookie_helpers import parse_cookie_header  # no public API reads every copy

from aiohttp_ext import get_session, setup_sessions
from cached_sessions import RedisSessions
from tests.servers import ServerProcess
from tests.test_demo_browser import CHROMEDRIVER, CHROMIUM, webdriver

if webdriver is not None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import selenium_manager
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.skipif(
    webdriver is None or not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="Debian's chromium and chromium-driver and pip's selenium are needed",
)

SECRET = "Rf5hJ2nW-browser-test-secret-8kPz3QyVt"
DOMAIN = "example.test"


# The certificate and the sites


def certificate(directory: Path) -> ssl.SSLContext:
    """A self-signed certificate for example.test and its subdomains."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(DOMAIN), x509.DNSName(f"*.{DOMAIN}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


async def page(request: web.Request) -> web.Response:
    """The login page: who is logged in, and a form with its CSRF token."""
    session = await get_session(request)
    who = f"Logged in as {session.user_id}." if session.user_id else "Not logged in."
    token = html.escape(await session.csrf_token())
    text = f"""<!doctype html><title>app</title><p id="who">{html.escape(who)}</p>
<form method="post" action="/login"><input id="user" name="user">
<input type="hidden" name="csrf_token" value="{token}"><button id="login">Log in</button></form>"""
    return web.Response(text=text, content_type="text/html")


async def login(request: web.Request) -> web.StreamResponse:
    session = await get_session(request)
    await session.upgrade(str((await request.post()).get("user", "")))
    raise web.HTTPSeeOther("/")


async def cookie_names(request: web.Request) -> web.Response:
    """Every cookie the browser sent, by name, in order (repeats included)."""
    pairs = parse_cookie_header(request.headers.get(hdrs.COOKIE, ""))
    return web.Response(text=" ".join(name for name, _ in pairs) or "(none)")


def site(store: RedisSessions, **options: Any) -> web.Application:
    app = web.Application()
    setup_sessions(app, store, app_name="sibling", csrf=True, secrets=[SECRET], **options)
    app.router.add_get("/", page)
    app.router.add_post("/login", login)
    app.router.add_get("/cookie-names", cookie_names)
    return app


class Evil:
    """The attacker's site: pages that plant cookies for the parent domain and submit a
    form to another site; what they plant and submit is set by the test."""

    def __init__(self) -> None:
        self.plant: list[str] = []  # Set-Cookie headers
        self.submit: tuple[str, dict[str, str]] | None = None  # action, fields

    async def attack(self, request: web.Request) -> web.Response:
        form = ""
        if self.submit is not None:
            action, fields = self.submit
            inputs = "".join(
                f'<input name="{html.escape(k)}" value="{html.escape(v)}">'
                for k, v in fields.items()
            )
            form = f"""<form id="f" method="post" action="{html.escape(action)}">{inputs}</form>
<script>document.getElementById("f").submit()</script>"""
        response = web.Response(text=f"<!doctype html><p>evil</p>{form}", content_type="text/html")
        for header in self.plant:
            response.headers.add(hdrs.SET_COOKIE, header)
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.attack)
        return app


class Sites:
    """The three sites over TLS, on an event loop in a thread of their own: Selenium's
    calls block, and the servers must answer meanwhile."""

    def __init__(self, redis_url: str, namespace: str, context: ssl.SSLContext) -> None:
        self.evil = Evil()
        self._context = context
        self._redis_url, self._namespace = redis_url, namespace
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    async def _start(self) -> None:
        def store() -> RedisSessions:
            return RedisSessions(url=self._redis_url, namespace=self._namespace, wipe=0)

        apps = {
            "app": site(store()),  # the defaults: __Host-sid and __Host-csrf
            "legacy": site(store(), cookie_name="sid", csrf_cookie_name="csrf"),
            "evil": self.evil.app(),
        }
        for host, app in apps.items():
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._context).start()
            self._runners.append(runner)
            self.ports[host] = runner.addresses[0][1]

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}.{DOMAIN}:{self.ports[host]}{path}"

    def fetch(
        self, host: str, path: str, cookies: str = "", form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        """What the attacker's own script gets from a site: status, cookies set, body."""
        unverified = ssl._create_unverified_context()  # the certificate made above
        connection = http.client.HTTPSConnection("127.0.0.1", self.ports[host], context=unverified)
        headers = {"Host": f"{host}.{DOMAIN}:{self.ports[host]}"}
        if cookies:
            headers["Cookie"] = cookies
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request("POST" if form is not None else "GET", path, body, headers)
        response = connection.getresponse()
        jar: dict[str, str] = {}
        for header in response.headers.get_all("Set-Cookie") or []:
            parsed: SimpleCookie = SimpleCookie()
            parsed.load(header)
            jar.update({name: morsel.value for name, morsel in parsed.items()})
        text = response.read().decode()
        connection.close()
        return response.status, jar, text


def form_token(text: str) -> str:
    marker = 'name="csrf_token" value="'
    return html.unescape(text.split(marker, 1)[1].split('"', 1)[0])


# Fixtures


@pytest.fixture(scope="module")
def sites(server: ServerProcess) -> Iterator[Sites]:
    with tempfile.TemporaryDirectory(prefix="cs-tls-") as directory:
        running = Sites(server.url, "sibling-browser", certificate(Path(directory)))
        running.start()
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def no_selenium_manager(*args: object, **kwargs: object) -> None:
        raise AssertionError("Selenium Manager was called; pass the driver's path instead")

    monkeypatch.setattr(selenium_manager.SeleniumManager, "binary_paths", no_selenium_manager)
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    with tempfile.TemporaryDirectory(prefix="cs-chromium-sibling-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--ignore-certificate-errors",  # the certificate made by this test
            # The three sites are on loopback; every other name fails to resolve.
            f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ):  # fmt: skip
            options.add_argument(argument)
        options.set_capability("acceptInsecureCerts", True)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def wait(driver: Any) -> Any:
    """A wait that looks again when the page changed under an element it held: a form
    that submits itself replaces the page between finding an element and reading it."""
    return WebDriverWait(
        driver, 15, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    )


def shown_text(driver: Any) -> str:
    return str(wait(driver).until(lambda d: d.find_element(By.TAG_NAME, "body").text))


def visit(driver: Any, url: str) -> str:
    """Load `url` and return the text shown."""
    driver.get(url)
    wait(driver).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return shown_text(driver)


def fall_for(driver: Any, sites: Sites) -> str:
    """Open the attacker's page, which submits its form elsewhere: the text shown there."""
    driver.get(sites.url("evil"))
    wait(driver).until(
        lambda d: (
            not d.current_url.startswith(sites.url("evil"))
            and d.execute_script("return document.readyState") == "complete"
        )
    )
    return shown_text(driver)


def log_in_through_the_form(driver: Any, sites: Sites, host: str, user: str) -> None:
    driver.get(sites.url(host))
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "login").click()
    wait(driver).until(lambda d: d.find_element(By.ID, "who").text == f"Logged in as {user}.")


def attackers_form(sites: Sites, host: str) -> tuple[dict[str, str], str]:
    """The attacker fetches the login form himself: his cookies and his form token."""
    status, jar, text = sites.fetch(host, "/")
    assert status == 200
    return jar, form_token(text)


# The attacks


def test_a_sibling_cannot_plant_host_cookies_nor_log_the_victim_in(
    sites: Sites, browser: Any
) -> None:
    """With the default names, the browser refuses the planted cookies; the login form
    submitted from the sibling is refused for its origin as well."""
    jar, token = attackers_form(sites, "app")
    assert set(jar) == {"__Host-csrf"}
    attributes = f"Domain={DOMAIN}; Path=/; Secure; SameSite=Lax"
    sites.evil.plant = [f"__Host-csrf={jar['__Host-csrf']}; {attributes}"]
    sites.evil.submit = (sites.url("app", "/login"), {"user": "attacker", "csrf_token": token})
    answer = fall_for(browser, sites)
    assert "Cross-site request refused" in answer, answer
    assert "__Host-csrf" not in visit(browser, sites.url("app", "/cookie-names"))
    assert "Not logged in." in visit(browser, sites.url("app"))


def test_planted_copies_of_plain_names_log_nobody_into_the_attackers_account(
    sites: Sites, browser: Any
) -> None:
    """Without prefixes the browser keeps what the sibling plants. The origin check still
    refuses the login CSRF, and the planted session cookie next to the victim's own makes
    the request anonymous: never the attacker's account, and the victim's cookie is not
    cleared, so it works again once the planted one is gone."""
    jar, token = attackers_form(sites, "legacy")
    status, session_jar, _ = sites.fetch(
        "legacy",
        "/login",
        cookies=f"csrf={jar['csrf']}",
        form={"user": "mallory", "csrf_token": token},
    )
    assert status == 303 and "sid" in session_jar
    log_in_through_the_form(browser, sites, "legacy", "victim")

    attributes = f"Domain={DOMAIN}; Path=/; Secure; SameSite=Lax"
    jar, token = attackers_form(sites, "legacy")
    sites.evil.plant = [
        f"sid={session_jar['sid']}; {attributes}",
        f"csrf={jar['csrf']}; {attributes}",
    ]
    sites.evil.submit = (sites.url("legacy", "/login"), {"user": "mallory", "csrf_token": token})
    answer = fall_for(browser, sites)
    assert "Cross-site request refused" in answer, answer

    names = visit(browser, sites.url("legacy", "/cookie-names")).split()
    assert names.count("sid") == 2 and names.count("csrf") == 2, names  # both planted
    assert "Not logged in." in visit(browser, sites.url("legacy"))

    sites.evil.plant = [f"sid=; Max-Age=0; {attributes}", f"csrf=; Max-Age=0; {attributes}"]
    sites.evil.submit = None
    visit(browser, sites.url("evil"))  # the attacker takes his cookies back
    assert visit(browser, sites.url("legacy", "/cookie-names")).split().count("sid") == 1
    assert "Logged in as victim." in visit(browser, sites.url("legacy"))
