"""The aiohttp app of README's "Sessions in aiohttp", run verbatim on a real aiohttp
server with the embedded Valkey it starts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp import DummyCookieJar

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_app_source() -> str:
    text = README.read_text()
    section = text.split("## Sessions in aiohttp", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section holds one complete program"
    return str(blocks[0])


async def test_the_readme_aiohttp_app_runs_as_written(aiohttp_client: Any) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(readme_app_source(), "README.md", "exec"), namespace)
    client = await aiohttp_client(namespace["make_app"](), cookie_jar=DummyCookieJar())
    anonymous = await client.get("/")
    assert await anonymous.text() == "please log in"
    login = await client.post("/login", allow_redirects=False)
    assert login.status == 303
    cookie = login.cookies["sid"].value
    first = await client.get("/", headers={"Cookie": f"sid={cookie}"})
    second = await client.get("/", headers={"Cookie": f"sid={cookie}"})
    assert (await first.text(), await second.text()) == ("alice: 1", "alice: 2")
