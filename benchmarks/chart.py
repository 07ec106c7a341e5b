"""The PNG: throughput per configuration, and the cost curve (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHORT = {
    "bare": "bare\naiohttp",
    "middleware": "cookie-reading\nmiddleware\nonly",
    "aiohttp-session": "aiohttp-\nsession\nRedisStorage",
    "cache-off": "cached-\nsessions,\ncache off",
    "cache-on": "cached-\nsessions,\ncache on",
}


def available() -> str | None:
    """Why no chart can be drawn, or None when it can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    return None


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(17, 9))
    _throughput(axes[0][0], report)
    _cpu(axes[0][1], report)
    _mixed(axes[0][2], report)
    _latency(axes[1][0], report)
    _memory(axes[1][1], report)
    _rates(axes[1][2], report)
    m = report["machine"]
    figure.suptitle(
        f"cached-sessions benchmarks, {m['date']}: {m['cpu']} ({m['cores']} cores), "
        f"{report['server']}, Python {m['python']}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _empty(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _throughput(ax: Any, report: dict[str, Any]) -> None:
    rows = [r for r in report.get("http", {}).get("rows", []) if "rps" in r or "skipped" in r]
    if not rows:
        return _empty(ax, "HTTP throughput")
    configs = [c for c in SHORT if any(r["config"] == c for r in rows)]
    workers = sorted({r["workers"] for r in rows})
    width = 0.8 / max(1, len(workers))
    for i, count in enumerate(workers):
        values = []
        for config in configs:
            row: dict[str, Any] = next(
                (r for r in rows if r["config"] == config and r["workers"] == count), {}
            )
            values.append(row.get("rps", 0))
        xs = [x + (i - (len(workers) - 1) / 2) * width for x in range(len(configs))]
        bars = ax.bar(xs, values, width, label=f"{count} worker{'s' if count > 1 else ''}")
        for bar, value in zip(bars, values, strict=True):
            text = f"{value:,.0f}" if value else "skipped"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax.set_xticks(range(len(configs)), [SHORT[c] for c in configs], fontsize=8)
    ax.set_ylabel("requests/s")
    http = report.get("http", {})
    ax.set_title(f"HTTP throughput, {http.get('connections', '?')} connections", fontsize=10)
    ax.legend(fontsize=8)


def _curve(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(report.get("cost_curve", {}).get("rows", []))


def _latency(ax: Any, report: dict[str, Any]) -> None:
    rows = _curve(report)
    if not rows:
        return _empty(ax, "Cost curve: latency")
    sizes = [r["sessions"] for r in rows]
    for key, label in (
        ("get_hit_p50_us", "get, cache hit"),
        ("get_miss_p50_us", "get, cache miss (Redis)"),
        ("soapp_p50_us", "soapp (100 returned)"),
        ("activity_p50_us", "activity"),
    ):
        ax.plot(sizes, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sessions in Redis")
    ax.set_ylabel("p50 latency, µs")
    ax.set_title("Cost curve: latency", fontsize=10)
    if rows:
        ax.set_ylim(top=max(r["soapp_p50_us"] for r in rows) * 30)  # room for the legend
    ax.legend(fontsize=8, loc="upper right", ncols=2)
    ax.grid(True, which="both", alpha=0.3)


def _memory(ax: Any, report: dict[str, Any]) -> None:
    rows = _curve(report)
    if not rows:
        return _empty(ax, "Cost curve: memory")
    sizes = [r["sessions"] for r in rows]
    ax.plot(sizes, [r["redis_bytes_per_session"] for r in rows], marker="o",
            label="Redis used_memory per session")  # fmt: skip
    ax.plot(sizes, [r["cache_bytes_per_entry"] for r in rows], marker="o",
            label="process memory per cached session")  # fmt: skip
    ax.axhline(1024, color="grey", linestyle=":", label="1 KiB")
    ax.set_xscale("log")
    ax.set_xlabel("sessions in Redis")
    ax.set_ylabel("bytes")
    ax.set_ylim(bottom=0)
    ax.set_title("Cost curve: memory", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def _cpu(ax: Any, report: dict[str, Any]) -> None:
    rows = [r for r in report.get("http", {}).get("rows", []) if r["workers"] == 1 and "rps" in r]
    if not rows:
        return _empty(ax, "HTTP, 1 worker: CPU time per request")
    configs = [c for c in SHORT if any(r["config"] == c for r in rows)]
    worker = [next(r for r in rows if r["config"] == c).get("worker_cpu_us") or 0 for c in configs]
    redis = [next(r for r in rows if r["config"] == c).get("redis_cpu_us") or 0 for c in configs]
    xs = range(len(configs))
    ax.bar(xs, worker, 0.6, label="worker process")
    ax.bar(xs, redis, 0.6, bottom=worker, label="Redis server")
    for x, (w, r) in enumerate(zip(worker, redis, strict=True)):
        ax.annotate(f"{w + r:,.0f}", (x, w + r), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [SHORT[c] for c in configs], fontsize=8)
    ax.set_ylabel("CPU µs per request")
    ax.set_title("HTTP, 1 worker: CPU time per request", fontsize=10)
    ax.legend(fontsize=8)


def _mixed(ax: Any, report: dict[str, Any]) -> None:
    mixed = report.get("mixed", {})
    rows = mixed.get("rows", [])
    if not rows:
        return _empty(ax, "Mixed load")
    names = [f"cache {r['config'].replace('cache-', '')}" for r in rows]
    bars = ax.bar(range(len(rows)), [r["rps"] for r in rows], 0.5, color=["#999", "#2a7"])
    for bar, row in zip(bars, rows, strict=True):
        rate = row.get("hit_rate")
        text = f"{row['rps']:,.0f} req/s" + (f"\nhit rate {rate:.1%}" if rate is not None else "")
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(rows)), names, fontsize=8)
    ax.set_ylabel("requests/s")
    workers = rows[0]["workers"] if rows else "?"
    share = rows[0]["write_share"] if rows and rows[0].get("write_share") else 0
    ax.set_title(f"Mixed load, {workers} workers, {share:.1%} writes", fontsize=10)
    ax.margins(y=0.2)


def _rates(ax: Any, report: dict[str, Any]) -> None:
    rows = _curve(report)
    if not rows:
        return _empty(ax, "Cost curve: create rate")
    sizes = [r["sessions"] for r in rows]
    ax.plot(sizes, [r["create_per_s"] for r in rows], marker="o",
            label="RedisSessions.create, 64 in flight")  # fmt: skip
    populated = [(r["sessions"], r["populate_per_s"]) for r in rows if r.get("populate_per_s")]
    if populated:
        ax.plot(*zip(*populated, strict=True), marker="s", linestyle="--",
                label="the create script, pipelined (filling)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("sessions in Redis")
    ax.set_ylabel("sessions created per second")
    ax.set_ylim(bottom=0)
    ax.set_title("Cost curve: create rate", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


# The cluster section's own chart

CALLS = ("get-off", "set", "create+kill")  # cache hits never reach Redis: left out


def draw_cluster(report: dict[str, Any], path: Path) -> None:
    """Cluster over standalone per call; balance and app-wide calls per bucket count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cluster = report["cluster"]
    figure, axes = plt.subplots(1, 3, figsize=(17, 5))
    _cluster_ratios(axes[0], cluster["throughput"]["rows"])
    _cluster_balance(axes[1], cluster["balance"])
    _cluster_fanout(axes[2], cluster["fanout"])
    m = report["machine"]
    figure.suptitle(
        f"cached-sessions on Redis Cluster ({cluster['primaries']} primaries, 1 replica each) "
        f"against one server, {m['date']}: {m['cpu']} ({m['cores']} cores), {cluster['server']}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _cluster_ratios(ax: Any, rows: list[dict[str, Any]]) -> None:
    loads = sorted({(r["processes"], r["clients"]) for r in rows})
    width = 0.8 / max(1, len(loads))
    for i, (processes, clients) in enumerate(loads):
        values = [
            next(
                (r.get("x_standalone_ops") or 0 for r in rows
                 if r["deployment"] == "cluster" and r["operation"] == call
                 and (r["processes"], r["clients"]) == (processes, clients)),
                0,
            )
            for call in CALLS
        ]  # fmt: skip
        xs = [x + (i - (len(loads) - 1) / 2) * width for x in range(len(CALLS))]
        label = (
            f"{processes} process{'es' if processes > 1 else ''} x "
            f"{clients} client{'s' if clients > 1 else ''}"
        )
        bars = ax.bar(xs, values, width, label=label)
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_xticks(range(len(CALLS)), ["get (cache off)", "set", "create + kill"], fontsize=8)
    ax.set_ylabel("cluster ops/s ÷ standalone ops/s")
    ax.set_title("Calls through the library: cluster ÷ one server", fontsize=10)
    ax.legend(fontsize=7)


def _cluster_balance(ax: Any, balance: dict[str, Any]) -> None:
    rows = balance["rows"]
    buckets = [r["buckets"] for r in rows]
    ax.plot(buckets, [r["max_over_min"] for r in rows], marker="o",
            label=f"sessions, 3 primaries ({balance['users']:,} users)")  # fmt: skip
    for growth_row in (5, 10, 12):
        ratios = [g["max_over_min_by_shards"].get(str(growth_row)) for g in balance["growth"]]
        ax.plot(buckets, ratios, marker=".", linestyle="--",
                label=f"buckets, {growth_row} shards (computed)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(buckets, [str(b) for b in buckets])
    ax.set_xlabel("buckets per namespace")
    ax.set_ylabel("most ÷ fewest per shard")
    ax.set_title("Balance over the shards", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)


def _cluster_fanout(ax: Any, fanout: dict[str, Any]) -> None:
    rows = [r for r in fanout["rows"] if r["deployment"] == "cluster"]
    single = next((r for r in fanout["rows"] if r["deployment"] == "standalone"), None)
    buckets = [r["buckets"] for r in rows]
    series = (
        ("empty", "killall", "killall, empty app"),
        ("empty", "soapp", "soapp, empty app"),
        ("empty", "activity", "activity, empty app"),
        ("listed", "soapp", f"soapp, {fanout['listed']:,} sessions"),
    )
    for part, call, label in series:
        line = ax.plot(buckets, [r[part][call]["p50_ms"] for r in rows], marker="o", label=label)
        if single is not None:
            ax.axhline(single[part][call]["p50_ms"], color=line[0].get_color(), linestyle=":")
    line = ax.plot(buckets, [r["killall_bulk"]["ms"] for r in rows], marker="s",
                   label=f"killall of {fanout['bulk']:,} sessions")  # fmt: skip
    if single is not None:
        ax.axhline(single["killall_bulk"]["ms"], color=line[0].get_color(), linestyle=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    highest = max(r["killall_bulk"]["ms"] for r in rows) if rows else 1.0
    ax.set_ylim(top=highest * 100)  # room for the legend above the lines
    ax.set_xticks(buckets, [str(b) for b in buckets])
    ax.set_xlabel("buckets per namespace")
    ax.set_ylabel("p50 ms (dotted: one server)")
    ax.set_title("App-wide calls on the cluster", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncols=2)
    ax.grid(True, which="both", alpha=0.3)
