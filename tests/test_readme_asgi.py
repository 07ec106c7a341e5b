"""The FastAPI app of README's "Sessions in Starlette and FastAPI", run verbatim on a
real uvicorn server with the embedded Valkey it starts."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from tests.servers import free_port
from tests.web_apps import serve_app

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_app_source() -> str:
    text = README.read_text()
    section = text.split("## Sessions in Starlette and FastAPI", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section holds one complete program"
    return str(blocks[0])


async def test_the_readme_fastapi_app_runs_as_written() -> None:
    namespace: dict[str, object] = {}
    exec(compile(readme_app_source(), "README.md", "exec"), namespace)
    async with (
        serve_app(namespace["app"], free_port()) as base,
        aiohttp.ClientSession(base, cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        async with http.get("/") as anonymous:
            assert await anonymous.json() == {"user": None, "visits": 0}
        async with http.post("/login", params={"user": "ada"}, allow_redirects=False) as login:
            assert login.status == 303
            cookie = login.cookies["sid"].value
        async with http.get("/", headers={"Cookie": f"sid={cookie}"}) as home:
            assert await home.json() == {"user": "ada", "visits": 1}
