"""5. A mixed load: mostly reads, some writes, across several worker processes.

`mixed_users` users, each logged in with a session, take turns on `mixed_workers`
workers sharing one port. Each turn is a read (`GET /`) but for 2.5% data updates
(`POST /update`, one `set`) and 1.25% logouts (`POST /logout`, a `kill`); a user who
logged out logs in again on their next turn (`POST /login`: `create` and a read), so
logins are about as frequent as logouts and writes make about 5% of requests. Every
write publishes an invalidation that the other workers' caches act on.

Run with the cache on and, for comparison, off; the hit rate comes from the workers'
own counters over the measured window.
"""

from __future__ import annotations

from typing import Any

from cached_sessions import RedisSessions

from .harness import APP, Progress, Server, Sizes, namespace
from .http_load import create_sessions, median_run
from .load import Fleet, hit_rate, loaded, warm
from .worker import COOKIE

UPDATE_SHARE = 0.025
LOGOUT_SHARE = 0.0125


async def run_one(config: str, server: Server, sizes: Sizes, generator: str) -> dict[str, Any]:
    ns = namespace("mixed")
    async with RedisSessions(url=server.url, namespace=ns, wipe=0) as store:
        tokens = await create_sessions(store, sizes.mixed_users, {"n": 0})
        users = [[f"user{i}", token] for i, token in enumerate(tokens)]
        scenario = {"kind": "mixed", "cookie": COOKIE, "users": users,
                    "update": UPDATE_SHARE, "logout": LOGOUT_SHARE}  # fmt: skip
        try:
            async with Fleet("aiohttp", config, sizes.mixed_workers, server.url, ns) as fleet:
                await warm(fleet.port, scenario, sizes.http_warmup)
                result, served, _ = await loaded(
                    fleet, server, generator, scenario,
                    connections=sizes.connections, seconds=sizes.mixed_seconds,
                )  # fmt: skip
        finally:
            await store.killall(app=APP)
    requests, cache = dict(served["requests"]), served["cache"]
    count = sum(v for k, v in requests.items() if k in ("read", "login", "logout", "update"))
    writes = sum(requests.get(k, 0) for k in ("login", "logout", "update"))
    row: dict[str, Any] = {"config": config, "workers": sizes.mixed_workers}
    row.update(result)
    row["served"] = requests
    row["write_share"] = round(writes / count, 4) if count else None
    if config == "cache-on":
        row["hit_rate"] = hit_rate(cache)
        row["invalidations"] = cache["invalidations"]
    return row


async def measure(
    server: Server, sizes: Sizes, generator: str, progress: Progress
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"cache-off": [], "cache-on": []}
    for turn in range(sizes.http_rounds):  # interleaved, as the HTTP rows
        for config in list(runs) if turn % 2 == 0 else list(runs)[::-1]:
            row = await run_one(config, server, sizes, generator)
            runs[config].append(row)
            progress(
                f"mixed {config} x{sizes.mixed_workers}: {row['rps']:.0f} req/s, "
                f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, writes {row['write_share']}"
                + (f", hit rate {row['hit_rate']}" if "hit_rate" in row else "")
            )
    rows = [median_run(group) for group in runs.values()]
    off, on = rows
    ratio = round(on["rps"] / off["rps"], 2) if off["rps"] else None
    return {
        "users": sizes.mixed_users,
        "update_share": UPDATE_SHARE,
        "logout_share": LOGOUT_SHARE,
        "rows": rows,
        "cache_on_over_off": ratio,
    }
