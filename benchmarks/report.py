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
    """Each target of issue 7 with what this run measured; `met` None: not measured."""
    out = []
    http = report.get("http")
    if http:
        for workers in sorted({r["workers"] for r in http["rows"]}):
            on, off = _row(report, "cache-on", workers), _row(report, "cache-off", workers)
            theirs = _row(report, "aiohttp-session", workers)
            skipped = "" if theirs else "aiohttp-session not measured"
            suffix = f" ({workers} worker{'s' if workers > 1 else ''})"
            if on:
                ratio = on.get("x_aiohttp_session")
                out.append(_target(
                    "cache on vs aiohttp-session" + suffix, ">= 3.0x",
                    ratio, None if ratio is None else ratio >= 3.0, skipped,
                ))  # fmt: skip
                ratio = on.get("x_bare")
                out.append(_target(
                    "cache on vs bare aiohttp" + suffix, ">= 0.80x",
                    ratio, None if ratio is None else ratio >= 0.8,
                ))  # fmt: skip
            if off:
                ratio = off.get("x_aiohttp_session")
                out.append(_target(
                    "cache off vs aiohttp-session" + suffix, ">= 1.0x",
                    ratio, None if ratio is None else ratio >= 1.0, skipped,
                ))  # fmt: skip
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


def markdown(report: dict[str, Any], image: str | None) -> str:
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
            f"**HTTP**: {http['connections']} connections, {http['seconds']} s per row, "
            f"a handler reading one session value, {http['sessions']:,} sessions in turn.",
            "",
            "| configuration | workers | req/s | p50 ms | p99 ms | vs aiohttp-session | vs bare "
            "| worker CPU µs/req | Redis CPU µs/req |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in http["rows"]:
            if "skipped" in row:
                lines.append(
                    f"| {row['label']} | {row['workers']} | skipped: {row['skipped']} | | | | | | |"
                )
                continue
            errors = f" ({sum(row['errors'].values())} errors)" if row["errors"] else ""
            lines.append(
                f"| {row['label']}{errors} | {row['workers']} | {_n(row['rps'])} | "
                f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                f"{_ratio(row.get('x_aiohttp_session'))} | {_ratio(row.get('x_bare'))} | "
                f"{_n(row.get('worker_cpu_us'))} | {_n(row.get('redis_cpu_us'))} |"
            )
        if report["load_generator"].startswith("python"):
            lines += ["", "The load came from the Python generator, which may itself be the "
                      "bottleneck: ratios near 1 then understate the differences (install "
                      "`wrk` for the real figures)."]  # fmt: skip
        reading = _reading(report)
        if reading:
            lines += ["", reading]
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
            f"({wipe['removed_per_s']:,}/s) in batches of {wipe['batch']}; {longest_text}.",
        ]
    mixed = report.get("mixed")
    if mixed:
        lines += [
            "",
            f"**Mixed load**: {mixed['users']:,} users, reads with "
            f"{mixed['update_share']:.1%} data updates and {mixed['logout_share']:.2%} logouts "
            "(each followed by a login), across worker processes.",
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
    if report.get("profiling"):
        from .profiling import markdown as profiles

        lines += ["", profiles(report["profiling"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


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
