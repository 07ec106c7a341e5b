"""`python -m cached_sessions`: a short tour of the store against a real server.

Uses `REDIS_URL` when set, else starts the embedded Valkey server and stops it at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from . import RedisSessions


def show(step: str, result: Any) -> None:
    print(f"{step:<44} {json.dumps(result, ensure_ascii=False)}")


async def tour() -> None:
    where = os.environ.get("REDIS_URL") or "an embedded Valkey server (REDIS_URL is unset)"
    print(f"cached-sessions tour, using {where}\n")
    async with RedisSessions(wipe=0) as rs:
        created = await rs.create(app="tour", id="alice", ip="127.0.0.1", ttl=3600, d={"cart": 0})
        token = created["token"]
        show("create(app='tour', id='alice', ...)", {"token": token[:8] + "..."})
        show("get(): the session, r = reads so far", await rs.get(app="tour", token=token))
        show(
            "set(d={'cart': 3, 'theme': 'dark'})",
            await rs.set(app="tour", token=token, d={"cart": 3, "theme": "dark"}),
        )
        show(
            "set(d={'theme': None}) removes a key",
            await rs.set(app="tour", token=token, d={"theme": None}),
        )
        second = await rs.create(app="tour", id="alice", ip="10.0.0.7")
        show("create() a second session for alice", {"token": second["token"][:8] + "..."})
        show("soid(id='alice'): her sessions", await rs.soid(app="tour", id="alice"))
        show(
            "activity(delta_time=600): distinct users",
            await rs.activity(app="tour", delta_time=600),
        )
        show("kill(token): log out one session", await rs.kill(app="tour", token=token))
        show("get() after kill", await rs.get(app="tour", token=token))
        show("killsoid(id='alice'): log out everywhere", await rs.killsoid(app="tour", id="alice"))
        show("activity() after that", await rs.activity(app="tour", delta_time=600))
    print("\nclosed the store (and the embedded server, if one was started)")


def main() -> None:
    asyncio.run(tour())


if __name__ == "__main__":
    main()
