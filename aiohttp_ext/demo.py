"""`python -m aiohttp_ext.demo`: a small app on several worker processes, one port.

Each worker is its own process with its own session cache, all sharing one Redis and
one port (SO_REUSEPORT lets the kernel spread connections over them). The page says
which worker answered, who is logged in, a counter kept in the session and this
user's sessions (devices), this one marked, each other one with a button that logs
it out, and "log out my other devices"; logging out everywhere in one worker logs the user
out in all of them at once. `/metrics` serves this worker's cache counters for
Prometheus. It shows the safe way: CSRF protection on, a token in every form.

SO_REUSEPORT would also let a second demo join the first on its port, the two then
splitting the requests between two Redis servers: the launcher refuses a port that
already answers, and a Redis it cannot reach, each with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time

from aiohttp import web

from cached_sessions import Device, EmbeddedServer, InvalidInputError, RedisSessions
from cached_sessions.connect import redacted_url
from cached_sessions.store import UNREACHABLE
from cached_sessions.validation import MAX_ID_LENGTH
from cached_sessions.web import Session

from . import get_session, get_store, setup_sessions

log = logging.getLogger("aiohttp_ext.demo")

APP_NAME = "demo"
WORKER_KEY = web.AppKey("demo.worker", int)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cached-sessions demo</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; color: #222; }}
.worker {{ background: #eef; padding: .4rem .8rem; border-radius: .4rem; display: inline-block; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ border-bottom: 1px solid #ddd;
padding: .3rem; text-align: left; }} form {{ display: inline-block; margin: .3rem .6rem .3rem 0; }}
.error {{ color: #a00; }}
</style></head><body>
<h1>cached-sessions demo</h1>
<p class="worker" id="worker">Served by worker {worker} (pid {pid})</p>
{body}
<p><a href="/metrics">/metrics</a> of this worker &middot; a browser keeps its connection, and
so its worker; another browser, a private window or <code>curl</code> may meet the other</p>
</body></html>
"""


def _page(request: web.Request, body: str, status: int = 200) -> web.Response:
    text = PAGE.format(worker=request.app[WORKER_KEY], pid=os.getpid(), body=body)
    return web.Response(text=text, content_type="text/html", status=status)


async def token_field(session: Session) -> str:
    """The hidden field that carries this session's CSRF token in a form."""
    token = html.escape(await session.csrf_token())
    return f'<input type="hidden" name="csrf_token" value="{token}">'


async def login_form(session: Session, error: str = "") -> str:
    message = f'<p class="error" id="error">{html.escape(error)}</p>' if error else ""
    return f"""<p id="who">Not logged in.</p>{message}
<form method="post" action="/login">{await token_field(session)}<label>Name
<input name="user" id="user" required maxlength="{MAX_ID_LENGTH}"></label>
<button id="login">Log in</button></form>"""


def name_problem(name: str) -> str | None:
    """What is wrong with a name, in the words of the form; None if it can be used."""
    if not name:
        return "Please enter a name."
    if len(name) > MAX_ID_LENGTH:
        return f"Name is {len(name)} characters long; it can be at most {MAX_ID_LENGTH}."
    if not name.isprintable():
        return "Name cannot contain control characters (tabs, line breaks)."
    return None


def _ago(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 5400:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def devices_table(devices: list[Device], token: str, now: int) -> str:
    """The user's sessions, this browser's marked; each other one with a button that
    logs it out. A row carries the session's handle, never its token."""
    rows = []
    for device in devices:
        agent = device["user_agent"] or "unknown"
        browser = html.escape(agent if len(agent) <= 60 else agent[:57] + "...")
        created = device["created"]
        since = _ago(max(0, now - created)) if created is not None else "unknown"
        if device["current"]:
            mark, row_id = '<strong class="current">this browser</strong>', ' id="current-session"'
            action = ""
        else:
            mark, row_id = "", ""
            handle = html.escape(device["handle"])
            action = (
                f'<form method="post" action="/devices/revoke">{token}'
                f'<input type="hidden" name="handle" value="{handle}">'
                '<button class="revoke">Log out this device</button></form>'
            )
        rows.append(
            f"<tr{row_id}><td>{mark}</td><td>{browser}</td>"
            f"<td>{html.escape(device['ip'])}</td><td>{since}</td>"
            f"<td>{device['idle']} s</td><td>{action}</td></tr>"
        )
    header = "<tr><th></th><th>browser</th><th>ip</th><th>logged in</th><th>idle</th><th></th></tr>"
    return f'<table id="sessions">{header}{"".join(rows)}</table>'


def flashes(session: Session) -> str:
    """The messages the last action left (a logout of other devices says how many)."""
    return "".join(
        f'<p class="flash {html.escape(category)}">{html.escape(message)}</p>'
        for category, message in session.pop_flashes()
    )


async def account(session: Session) -> str:
    """The page of a logged-in user: who, a counter, their devices and the logouts."""
    session["visits"] = int(session.get("visits", 0)) + 1
    token = await token_field(session)
    name = html.escape(session.user_id or "")
    table = devices_table(await session.devices(), token, int(time.time()))
    return f"""{flashes(session)}<p id="who">Logged in as <strong id="user-id">{name}</strong>.
This session has seen <strong id="visits">{session["visits"]}</strong> page views.</p>
<h2>Your sessions</h2>
{table}
<form method="post" action="/logout">{token}<button id="logout">Log out</button></form>
<form method="post" action="/logout-others">{token}<button id="logout-others">
Log out my other devices</button></form>
<form method="post" action="/logout-everywhere">{token}<button id="logout-everywhere">
Log out everywhere</button></form>"""


async def revoke_device(session: Session, handle: object) -> None:
    """Log out the device whose handle the form posted; say what happened."""
    try:
        ended = await session.revoke(handle)  # type: ignore[arg-type]  # checked there
    except InvalidInputError:  # not a handle at all: a hand-made form
        session.flash("That is not one of your devices.", "error")
        return
    session.flash("That device is logged out." if ended else "That device was already logged out.")


async def log_out_others(session: Session) -> None:
    ended = await session.destroy_others()
    session.flash(f"Logged out {ended} other device{'' if ended == 1 else 's'}.")


async def log_in(session: Session, name: str) -> str | None:
    """Log in as `name`; None, or what is wrong with the name in the form's words."""
    problem = name_problem(name)
    if problem is not None:
        return problem
    try:
        await session.upgrade(name)
    except InvalidInputError:  # a rule of the store that name_problem does not know
        return "That name cannot be used; please choose another."
    return None


async def index(request: web.Request) -> web.Response:
    session = await get_session(request)
    if session.user_id is None:
        return _page(request, await login_form(session))
    return _page(request, await account(session))


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    user = str(form.get("user", "")).strip()
    session = await get_session(request)
    problem = await log_in(session, user)
    if problem is not None:
        return _page(request, await login_form(session, problem), status=400)
    raise web.HTTPSeeOther("/")


async def logout(request: web.Request) -> web.StreamResponse:
    await (await get_session(request)).destroy()
    raise web.HTTPSeeOther("/")


async def revoke(request: web.Request) -> web.StreamResponse:
    handle = (await request.post()).get("handle")
    await revoke_device(await get_session(request), handle)
    raise web.HTTPSeeOther("/")


async def logout_others(request: web.Request) -> web.StreamResponse:
    await log_out_others(await get_session(request))
    raise web.HTTPSeeOther("/")


async def logout_everywhere(request: web.Request) -> web.StreamResponse:
    await (await get_session(request)).destroy_all()
    raise web.HTTPSeeOther("/")


async def me(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.json_response(
        {"worker": request.app[WORKER_KEY], "pid": os.getpid(), "user": session.user_id}
    )


async def metrics(request: web.Request) -> web.Response:
    stats = get_store(request).cache_stats()
    worker = request.app[WORKER_KEY]
    lines = []
    for name, value in stats.items():
        if isinstance(value, bool | int):
            metric = f"cached_sessions_cache_{name}"
            lines.append(f"# TYPE {metric} {'gauge' if name in GAUGES else 'counter'}")
            lines.append(f'{metric}{{worker="{worker}"}} {int(value)}')
    for reason, count in stats.get("flush_reasons", {}).items():
        labels = f'worker="{worker}",reason="{reason}"'
        lines.append(f"cached_sessions_cache_flushes_by_reason{{{labels}}} {count}")
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


GAUGES = frozenset({"enabled", "subscribed", "entries", "touches_pending"})


def make_app(redis_url: str, worker: int, *, cachetime: float = 30) -> web.Application:
    app = web.Application()
    app[WORKER_KEY] = worker
    store = RedisSessions(url=redis_url, cachetime=cachetime)
    # The demo serves plain HTTP on loopback, so its cookie cannot be Secure and keeps
    # a plain name (sid). Behind TLS, leave secure=True: it becomes __Host-sid, which no
    # other subdomain can set. csrf=True: every POST needs the token its form carries.
    setup_sessions(app, store, app_name=APP_NAME, secure=False, csrf=True)
    app.router.add_get("/", index)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/devices/revoke", revoke)
    app.router.add_post("/logout-others", logout_others)
    app.router.add_post("/logout-everywhere", logout_everywhere)
    app.router.add_get("/api/me", me)
    app.router.add_get("/metrics", metrics)
    return app


def run_worker(worker: int, host: str, port: int, redis_url: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"worker {worker}: %(message)s")
    web.run_app(make_app(redis_url, worker), host=host, port=port, reuse_port=True, print=None)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aiohttp_ext.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="default: REDIS_URL, else an embedded server",
    )
    arguments = parser.parse_args(argv)
    if arguments.workers < 1:
        parser.error("--workers must be at least 1")
    return arguments


def port_in_use(host: str, port: int) -> bool:
    """Whether something already accepts connections on host:port. Binding would not
    tell: with SO_REUSEPORT a second server joins the first on its port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def redis_problem(url: str) -> str | None:
    """Why the store cannot use `url`, in one line; None when it answers."""

    async def attempt() -> None:
        async with RedisSessions(url=url, wipe=0):
            pass

    try:
        asyncio.run(attempt())
    except UNREACHABLE as error:
        return f"Redis at {redacted_url(url)} is unreachable: {error}"
    return None


def refuse_to_start(host: str, port: int, url: str | None) -> None:
    """Exit with one line if the port is already served or the Redis is unreachable."""
    if port_in_use(host, port):
        sys.exit(
            f"demo: http://{host}:{port}/ is already served (another demo?): "
            "stop it, or pass --port"
        )
    if url and (problem := redis_problem(url)) is not None:
        sys.exit(
            f"demo: {problem} (start it, or leave out --redis-url and REDIS_URL "
            "for an embedded server)"
        )


def main(argv: list[str] | None = None) -> None:
    arguments = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="demo: %(message)s")
    refuse_to_start(arguments.host, arguments.port, arguments.redis_url)
    embedded: EmbeddedServer | None = None
    url = arguments.redis_url
    if not url:
        embedded = EmbeddedServer()
        url = embedded.start()
        log.info("no --redis-url and no REDIS_URL: using that embedded server")
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=run_worker,
            args=(n, arguments.host, arguments.port, url),
            name=f"demo worker {n}",
        )
        for n in range(1, arguments.workers + 1)
    ]
    for process in workers:
        process.start()
    log.info(
        "serving http://%s:%d/ with %d workers; Ctrl-C stops",
        arguments.host, arguments.port, arguments.workers,
    )  # fmt: skip

    stop = _stop_signal()
    try:
        while not stop.is_set() and all(p.is_alive() for p in workers):
            stop.wait(0.5)
    finally:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in workers:
            process.join(10)
            if process.is_alive():
                process.kill()
        if embedded is not None:
            embedded.stop()
        log.info("stopped")
    if not stop.is_set():
        sys.exit("a worker exited; demo stopped")


def _stop_signal() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


if __name__ == "__main__":
    main()
