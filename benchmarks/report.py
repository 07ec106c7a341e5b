"""The figures as a report: targets checked, a Markdown table, the JSON written out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FLAT = 1.5  # "flat": the slowest p50 at most this many times the fastest


def _row(report: dict[str, Any], config: str, workers: int) -> dict[str, Any] | None:
    for row in report.get("http", {}).get("rows", []):
        if row["config"] == config and row["workers"] == workers and "rps" in row:
            return dict(row)
    return None


def _target(
    name: str, goal: str, measured: Any, met: bool | None, note: str = ""
) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured, "met": met, "note": note}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 15 with what this run measured; `met` None: not measured."""
    out = []
    if report.get("http"):
        out += _http_targets(report)
    mixed = report.get("mixed")
    if mixed and mixed.get("cache_on_over_off") is not None:
        ratio = mixed["cache_on_over_off"]
        out.append(_target(
            "mixed load: cache on vs cache off", ">= 2.0x", ratio, ratio >= 2.0,
            f"{mixed['update_share']:.1%} updates, {mixed['logout_share']:.2%} logouts",
        ))  # fmt: skip
    out += _asgi_targets(report.get("asgi") or {})
    inv = report.get("invalidation")
    if inv:
        p99 = inv["all"]["p99_us"]
        out.append(_target(
            "invalidation p99", "< 2000 us", p99, None if p99 is None else p99 < 2000,
            f"{inv['workers']} workers, {inv['writes']} writes",
        ))  # fmt: skip
    curve = report.get("cost_curve")
    if curve and curve["rows"]:
        worst = max(r["cache_bytes_per_entry"] for r in curve["rows"])
        out.append(_target(
            "process memory per cached session (small d)", "<= 1024 B", worst, worst <= 1024,
            "largest over the sizes",
        ))  # fmt: skip
        hits = [r["get_hit_p50_us"] for r in curve["rows"]]
        spread = round(max(hits) / min(hits), 2) if min(hits) else None
        sizes = f"{curve['rows'][0]['sessions']:,} to {curve['rows'][-1]['sessions']:,}"
        out.append(_target(
            f"hit latency flat from {sizes} sessions", f"max/min p50 <= {FLAT}",
            spread, None if spread is None else spread <= FLAT,
            " / ".join(f"{h} us" for h in hits),
        ))  # fmt: skip
    return out


def _http_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per worker count: cache off against aiohttp-session, cache on against the floor
    (a middleware that only reads the cookie); with one worker, what Redis spends per
    uncached read and what a hit costs the worker above the floor."""
    out = []
    for workers in sorted({r["workers"] for r in report["http"]["rows"]}):
        on, off = _row(report, "cache-on", workers), _row(report, "cache-off", workers)
        floor, theirs = (
            _row(report, "middleware", workers),
            _row(report, "aiohttp-session", workers),
        )
        suffix = f" ({workers} worker{'s' if workers > 1 else ''})"
        if off:
            ratio = off.get("x_aiohttp_session")
            out.append(_target(
                "cache off vs aiohttp-session" + suffix, ">= 1.2x", ratio,
                None if ratio is None else ratio >= 1.2,
                "" if theirs else "aiohttp-session not measured",
            ))  # fmt: skip
        if on and floor and floor.get("rps"):
            ratio = round(on["rps"] / floor["rps"], 2)
            out.append(_target("cache on vs the floor" + suffix, ">= 0.85x", ratio, ratio >= 0.85))
        if workers != 1:
            continue
        if off and off.get("redis_cpu_us") is not None:
            cpu = off["redis_cpu_us"]
            out.append(_target("Redis CPU per uncached read", "<= 20 us", cpu, cpu <= 20))
        if on and floor and on.get("worker_cpu_us") and floor.get("worker_cpu_us"):
            rows_above = round(on["worker_cpu_us"] - floor["worker_cpu_us"], 1)
            profiled = _profiled_above_floor(report)
            above = rows_above if profiled is None else profiled
            how = (
                "CPU per request of the two rows"
                if profiled is None
                else "the profiles: the session layer (middleware and all under it, the "
                f"prepare hook, touches) against the floor's middleware; the whole worker's "
                f"CPU per request of the two rows differs by {rows_above} us"
            )
            out.append(_target(
                "a cache hit's worker CPU above the floor", "<= 10 us", above, above <= 10, how,
            ))  # fmt: skip
    return out


def _profiled_above_floor(report: dict[str, Any]) -> float | None:
    """µs per request of the session layer in the cache-on profile above the floor's."""
    profiles = (report.get("profiling") or {}).get("profiles", {})
    on = profiles.get("cache-on", {}).get("session_layer_us")
    floor = profiles.get("middleware", {}).get("session_layer_us")
    return None if on is None or floor is None else round(on - floor, 1)


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    if isinstance(value, int | float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:g}"
    return str(value)


def _ratio(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def markdown(report: dict[str, Any], image: str | None, folder: str = "") -> str:
    """The run as Markdown; `image` is the main chart's path, `folder` what the paths of
    the other images start with."""
    m = report["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), {report['server']}, "
        f"Python {m['python']}, cached-sessions at {m.get('library_commit', 'unknown')}; "
        f"load from {report['load_generator']}; "
        f"`{report['command']}` ({report['mode']} mode, {report['runtime_s']:.0f} s).",
    ]
    if m.get("load_average_at_start"):
        busy = ", ".join(report.get("busy_processes_at_start") or []) or "none seen"
        lines.append(
            f"Load average at start {m['load_average_at_start']}; other processes busy at "
            f"start: {busy}."
        )
    for name, error in (report.get("errors") or {}).items():
        lines.append(f"**Section {name} failed**: {error}")
    if image:
        lines += ["", f"![throughput and cost curve]({image})"]
    http = report.get("http")
    if http:
        lines += [
            "",
            f"**HTTP**: {http['connections']} connections, {http['seconds']} s per run, "
            f"{_rounds(http)}a handler reading one session value, "
            f"{http['sessions']:,} sessions in turn.",
            "",
            *_http_table(http["rows"], "aiohttp-session", "x_aiohttp_session"),
        ]
        if report["load_generator"].startswith("python"):
            lines += ["", "The load came from the Python generator, which may itself be the "
                      "bottleneck: ratios near 1 then understate the differences (install "
                      "`wrk` for the real figures)."]  # fmt: skip
        reading = _reading(report)
        if reading:
            lines += ["", reading]
    if report.get("asgi"):
        lines += ["", *asgi_markdown(report["asgi"])]
    checks = report.get("targets")
    if checks:
        lines += ["", "**Targets** (ratios from this run)", "",
                  "| target | goal | measured | met |", "|---|---|---:|---|"]  # fmt: skip
        for t in checks:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            note = f" ({t['note']})" if t["note"] else ""
            lines.append(f"| {t['target']}{note} | {t['goal']} | {_n(t['measured'])} | {met} |")
    store = report.get("store")
    if store:
        lines += ["", "**Store operations**, one call at a time", "",
                  "| operation | p50 µs | p99 µs | of which Redis µs |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        for name, f in store["operations"].items():
            server = f.get("server_us")
            lines.append(
                f"| `{name}` | {f['p50_us']:.1f} | {f['p99_us']:.1f} | "
                f"{'-' if server is None else f'{server:.1f}'} |"
            )
        lines.append(
            f"\nA cache hit is {store['hit_speedup_p50']}x faster than a read from Redis (p50). "
            "The last column is the server's own time per script call (INFO commandstats); "
            "the rest of a call is the client and the network."
        )
    inv = report.get("invalidation")
    if inv:
        a = inv["all"]
        lines += [
            "",
            f"**Invalidation**: {inv['workers']} worker processes hold the session; another "
            f"process writes or kills it {inv['writes']:,} times. From the write's return to "
            f"each worker dropping its copy: p50 {a['p50_us']:.0f} µs, p99 {a['p99_us']:.0f} µs, "
            f"max {a['max_us']:.0f} µs ({a['n']:,} drops; set p99 {inv['set']['p99_us']:.0f} "
            f"µs, kill p99 {inv['kill']['p99_us']:.0f} µs; {inv['dropped_before_return']} drops "
            f"came before the write returned, {inv['missed']} missed). Counted from just before "
            f"the write was sent instead: p50 {inv['since_call']['p50_us']:.0f} µs, p99 "
            f"{inv['since_call']['p99_us']:.0f} µs.",
        ]
    curve = report.get("cost_curve")
    if curve:
        lines += [
            "",
            "**Cost curve** (get latencies p50; soapp and activity over a window holding "
            "100 sessions)",
            "",
            "| sessions in Redis | get hit µs | get miss µs | create/s | Redis B/session "
            "| cache B/entry | soapp µs (Redis) | activity µs |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in curve["rows"]:
            lines.append(
                f"| {r['sessions']:,} | {r['get_hit_p50_us']:.1f} | {r['get_miss_p50_us']:.0f} "
                f"| {r['create_per_s']:,} | {r['redis_bytes_per_session']:,} | "
                f"{r['cache_bytes_per_entry']:,} | {r['soapp_p50_us']:.0f} "
                f"({_n(r.get('soapp_server_us'))}) | "
                f"{r['activity_p50_us']:.0f} |"
            )
    wipe = report.get("wipe")
    if wipe:
        longest = wipe["longest_script_call_ms"]
        longest_text = wipe.get("slowlog_missing") or (
            f"longest script call {longest} ms, median {wipe['median_script_call_ms']} ms of "
            f"those over {wipe['slowlog_threshold_us']} µs (SLOWLOG)"
            if longest is not None
            else f"no script call over {wipe['slowlog_threshold_us']} µs (SLOWLOG)"
        )
        lines += [
            "",
            f"**Wipe** of {wipe['sessions']:,} expired sessions: {wipe['wipe_total_s']} s "
            f"({wipe['removed_per_s']:,}/s) in batches of {wipe['batch']} "
            f"({wipe.get('script_calls', '?')} script calls, "
            f"{wipe.get('server_us_per_session', '?')} µs of server time per session); "
            f"{longest_text}.",
        ]
    mixed = report.get("mixed")
    if mixed:
        lines += [
            "",
            f"**Mixed load**: {mixed['users']:,} users, reads with "
            f"{mixed['update_share']:.1%} data updates and {mixed['logout_share']:.2%} logouts "
            f"(each followed by a login), across worker processes"
            f"{'; ' + _rounds(mixed).rstrip(', ') if _rounds(mixed) else ''}.",
            "",
            "| cache | workers | req/s | p50 ms | p99 ms | writes | hit rate |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in mixed["rows"]:
            rate = r.get("hit_rate")
            lines.append(
                f"| {r['config'].replace('cache-', '')} | {r['workers']} | {_n(r['rps'])} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {_n(r['write_share'])} | "
                f"{'n/a' if rate is None else f'{rate:.1%}'} |"
            )
        if mixed.get("cache_on_over_off"):
            lines.append(
                f"\nCache on: {mixed['cache_on_over_off']:.2f}x the throughput of cache off."
            )
    if report.get("cluster"):
        lines += ["", *cluster_markdown(report["cluster"])]
        if report.get("cluster_chart"):
            lines += ["", f"![Redis Cluster]({folder}{report['cluster_chart']})"]
    if report.get("profiling"):
        from .profiling import markdown as profiles

        lines += ["", profiles(report["profiling"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _spread(value: Any, low: Any, high: Any) -> str:
    return f"{_n(value)} ({_n(low)} to {_n(high)})" if low != high else _n(value)


def cluster_markdown(cluster: dict[str, Any]) -> list[str]:
    """The cluster section: calls, balance, app-wide calls, what one shard holds."""
    if "skipped" in cluster:
        return [f"**Redis Cluster**: skipped ({cluster['skipped']})."]
    busy = ", ".join(cluster.get("busy_processes_at_start") or []) or "none seen"
    lines = [
        f"**Redis Cluster**: {cluster['primaries']} primaries with "
        f"{cluster['replicas_per_primary']} replica each against one server, both "
        f"{cluster['server']} on this machine; load average {cluster['load_average_at_start']} "
        f"at the start of the section; other processes busy then: {busy}.",
    ]
    for part in (_cluster_calls, _cluster_balance, _cluster_fanout, _cluster_capacity):
        lines += ["", *part(cluster)]
    after = [
        f"{name} {cluster[f'load_average_after_{name}']}"
        for name in ("throughput", "balance", "fanout", "capacity")
        if f"load_average_after_{name}" in cluster
    ]
    lines += ["", "Load average (1, 5, 15 min) after each part: " + "; ".join(after) + "."]
    return lines


def _cluster_calls(cluster: dict[str, Any]) -> list[str]:
    load = cluster["throughput"]
    lines = [
        f"Calls through the library, {load['seconds']} s per run, {load['repeats']} run(s) "
        f"each, over {load['sessions']:,} sessions; ops/s is the median run (min to max), "
        "latencies over every call; CPU µs per call: the client process(es), and the "
        "servers (cluster: primaries + replicas). `create+kill` counts a login and its "
        "logout as one.",
        "",
        "| operation | processes x clients | standalone ops/s | cluster ops/s | cluster ÷ "
        "standalone | p50 µs (s / c) | p99 µs (s / c) | client CPU µs (s / c) | server CPU "
        "µs (s / c) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = load["rows"]
    single = {(r["processes"], r["clients"], r["operation"]): r for r in rows
              if r["deployment"] == "standalone"}  # fmt: skip
    for c in (r for r in rows if r["deployment"] == "cluster"):
        s = single.get((c["processes"], c["clients"], c["operation"]))
        if s is None:
            continue
        lines.append(
            f"| `{c['operation']}` | {c['processes']} x {c['clients']} | "
            f"{_spread(s['ops_per_s'], s['ops_per_s_min'], s['ops_per_s_max'])} | "
            f"{_spread(c['ops_per_s'], c['ops_per_s_min'], c['ops_per_s_max'])} | "
            f"{_ratio(c.get('x_standalone_ops'))} | {_n(s['p50_us'])} / {_n(c['p50_us'])} | "
            f"{_n(s['p99_us'])} / {_n(c['p99_us'])} | "
            f"{_n(s['client_cpu_us'])} / {_n(c['client_cpu_us'])} | "
            f"{_n(s['primaries_cpu_us'])} / {_n(c['primaries_cpu_us'])} + "
            f"{_n(c['replicas_cpu_us'])} |"
        )
    return lines


def _cluster_balance(cluster: dict[str, Any]) -> list[str]:
    balance = cluster["balance"]
    lines = [
        f"Balance: {balance['users']:,} users with one session each, sessions per primary "
        "from the slot map, and counted on the primaries (SCAN) where measured.",
        "",
        "| buckets | buckets per primary | sessions per primary | counted | max ÷ min |",
        "|---:|---|---|---|---:|",
    ]
    for r in balance["rows"]:
        counted = r.get("counted_per_primary")
        counted_text = "not counted" if counted is None else " / ".join(f"{n:,}" for n in counted)
        lines.append(
            f"| {r['buckets']} | {' / '.join(map(str, r['buckets_per_primary']))} | "
            f"{' / '.join(f'{n:,}' for n in r['sessions_per_primary'])} | {counted_text} | "
            f"{r['max_over_min']} |"
        )
    growth = balance["growth"]
    shards = list(growth[0]["max_over_min_by_shards"])
    lines += [
        "",
        "Most ÷ fewest buckets per shard as the cluster grows (shards splitting the slots "
        "evenly; arithmetic on the layout, no server):",
        "",
        "| buckets | " + " | ".join(f"{n} shards" for n in shards) + " |",
        "|---:|" + "---:|" * len(shards),
    ]
    for r in growth:
        ratios = r["max_over_min_by_shards"]
        lines.append(f"| {r['buckets']} | " + " | ".join(_n(ratios[n]) for n in shards) + " |")
    return lines


def _cluster_fanout(cluster: dict[str, Any]) -> list[str]:
    fan = cluster["fanout"]
    lines = [
        f"App-wide calls, p50 ms over {fan['samples']} calls: on an empty app (the fixed "
        f"cost of the fan-out), over an app of {fan['listed']:,} sessions, and a `killall` "
        f"of {fan['bulk']:,} live sessions and a wipe of {fan['bulk']:,} expired ones "
        "(median ms, min to max, and script calls).",
        "",
        "| deployment | buckets | activity | soapp | killall | wipe | activity "
        f"{fan['listed']:,} | soapp {fan['listed']:,} | killall {fan['bulk']:,} | "
        f"wipe {fan['bulk']:,} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in fan["rows"]:
        empty, listed = r["empty"], r["listed"]
        bulk = [
            f"{_spread(b['ms'], b['ms_min'], b['ms_max'])} ({b['script_calls']:,} calls)"
            for b in (r["killall_bulk"], r["wipe_bulk"])
        ]
        lines.append(
            f"| {r['deployment']} | {r['buckets']} | "
            + " | ".join(_n(empty[op]["p50_ms"]) for op in ("activity", "soapp", "killall", "wipe"))
            + f" | {_n(listed['activity']['p50_ms'])} | {_n(listed['soapp']['p50_ms'])} | "
            + " | ".join(bulk)
            + " |"
        )
    return lines


def _cluster_capacity(cluster: dict[str, Any]) -> list[str]:
    capacity = cluster["capacity"]
    lines = [
        "What one shard holds: Redis memory per session (used_memory growth less buffers "
        "and scripts, over the sessions each primary holds) and sessions per GiB of it.",
        "",
        "| deployment | data | sessions | per primary | B/session per primary | sessions per GiB |",
        "|---|---|---:|---|---|---:|",
    ]
    for r in capacity["memory"]:
        lines.append(
            f"| {r['deployment']} | {r['data']} ({r['d_bytes']} B JSON) | {r['sessions']:,} | "
            f"{' / '.join(f'{n:,}' for n in r['sessions_per_primary'])} | "
            f"{' / '.join(_n(b) for b in r['bytes_per_session'])} | "
            f"{_n(r['sessions_per_gib'])} |"
        )
    lines += [
        "",
        f"Script calls one primary answers, the library's own `get` and `set` pipelined on "
        f"{capacity['connections']} connections ({capacity['depth']} calls per batch): calls/s "
        "as measured (median run, min to max); the primary's CPU share over the run (near "
        "1.0: the primary was the limit, below: the shared machine was); its CPU µs per call "
        "and so the calls one core of its own answers; the CPU µs per call of its replica.",
        "",
        "| deployment | call | calls/s | primary CPU share | primary CPU µs/call | calls/s "
        "per core | replica CPU µs/call |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in capacity["sustained"]:
        rate = _spread(r["calls_per_s"], r["calls_per_s_min"], r["calls_per_s_max"])
        core = _spread(r["calls_per_core_s"], r["calls_per_core_s_min"], r["calls_per_core_s_max"])
        lines.append(
            f"| {r['deployment']} | `{r['operation']}` | {rate} | {r['server_cpu_share']} | "
            f"{r['server_cpu_us_per_call']} | {core} | {_n(r.get('replica_cpu_us_per_call'))} |"
        )
    return lines


def _asgi_targets(asgi: dict[str, Any]) -> list[dict[str, Any]]:
    """The ASGI rows' targets: this project against starsessions under the same uvicorn
    (the ratio to bare Starlette is in the table, with no goal of its own)."""
    out = []
    rows = [r for r in asgi.get("rows", []) if "rps" in r]
    for workers in sorted({r["workers"] for r in rows}):
        group = {r["config"]: r for r in rows if r["workers"] == workers}
        suffix = f", ASGI ({workers} worker{'s' if workers > 1 else ''})"
        checks = (
            ("cache-on", "x_starsessions", "cache on vs starsessions", 2.0),
            ("cache-off", "x_starsessions", "cache off vs starsessions", 1.0),
        )
        for config, key, name, goal in checks:
            row = group.get(config)
            if row is None:
                continue
            ratio = row.get(key)
            met = None if ratio is None else ratio >= goal
            out.append(_target(name + suffix, f">= {goal:.1f}x", ratio, met))
    return out


def asgi_markdown(asgi: dict[str, Any]) -> list[str]:
    """The ASGI rows as a table, with the ratios to starsessions and to bare Starlette."""
    if "skipped" in asgi:
        return [f"**ASGI**: skipped ({asgi['skipped']})."]
    return [
        f"**ASGI** ({asgi['server']}): {asgi['connections']} connections, "
        f"{asgi['seconds']} s per run, {_rounds(asgi)}the same handler reading one "
        "session value, "
        f"{asgi['sessions']:,} sessions in turn.",
        "",
        *_http_table(asgi["rows"], "starsessions", "x_starsessions"),
    ]


def _rounds(section: dict[str, Any]) -> str:
    """How the rows were chosen, when each ran more than once."""
    runs = max((len(row.get("rps_runs", ())) for row in section["rows"]), default=0)
    if runs < 2:
        return ""
    return (
        f"each row the median of {runs} runs (configurations interleaved; every run's "
        "req/s in the JSON), "
    )


def _http_table(rows: list[dict[str, Any]], rival: str, key: str) -> list[str]:
    """HTTP rows with their ratios to the rival library and to the bare framework."""
    lines = [
        f"| configuration | workers | req/s | p50 ms | p99 ms | vs {rival} | vs bare "
        "| worker CPU µs/req | Redis CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['label']} | {row['workers']} | skipped: {row['skipped']} "
                         "| | | | | | |")  # fmt: skip
            continue
        errors = f" ({sum(row['errors'].values())} errors)" if row["errors"] else ""
        lines.append(
            f"| {row['label']}{errors} | {row['workers']} | {_n(row['rps'])} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {_ratio(row.get(key))} | "
            f"{_ratio(row.get('x_bare'))} | {_n(row.get('worker_cpu_us'))} | "
            f"{_n(row.get('redis_cpu_us'))} |"
        )
    return lines


def _reading(report: dict[str, Any]) -> str:
    """What the one-worker rows say about the targets, in CPU time per request."""
    rows = {c: _row(report, c, 1) for c in ("bare", "middleware", "aiohttp-session",
                                          "cache-off", "cache-on")}  # fmt: skip
    bare, floor, on = rows["bare"], rows["middleware"], rows["cache-on"]
    if not (bare and floor and on) or None in (bare["worker_cpu_us"], floor["worker_cpu_us"]):
        return ""
    text = (
        f"Reading it (1 worker, CPU time per request): bare aiohttp costs "
        f"{bare['worker_cpu_us']:.0f} µs; a middleware that only reads the cookie "
        f"{floor['worker_cpu_us']:.0f} µs, so it reaches {floor['rps'] / bare['rps']:.2f}x of "
        f"bare by itself; this project with the cache on {on['worker_cpu_us']:.0f} µs "
        f"({on['worker_cpu_us'] - floor['worker_cpu_us']:.0f} µs above that floor)"
    )
    theirs, off = rows["aiohttp-session"], rows["cache-off"]
    if theirs:
        text += (
            f"; aiohttp-session {theirs['worker_cpu_us']:.0f} µs plus "
            f"{theirs['redis_cpu_us']:.0f} µs in Redis"
        )
        if theirs["rps"] and floor["rps"]:
            text += (
                f". A session layer at the floor would be {floor['rps'] / theirs['rps']:.2f}x "
                "aiohttp-session here"
            )
    if off:
        text += (
            f"; with the cache off, {off['worker_cpu_us']:.0f} µs plus "
            f"{off['redis_cpu_us']:.0f} µs in Redis"
        )
    return text + "."


def write(report: dict[str, Any], folder: Path, stem: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    image = f"{stem}.png" if report.get("chart") else None
    paths["markdown"].write_text(markdown(report, image))
    return paths
