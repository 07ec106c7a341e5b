"""Benchmarks of cached-sessions against bare aiohttp and aiohttp-session: `python -m benchmarks`.

One concern per module: `http_load` (HTTP throughput, with `worker`, `fleet` and
`loadgen`), `store_ops`, `invalidation` (with `invalidation_worker`), `mixed`, `wipe`,
`cost_curve` (with `populate`), `profiling`, and the output in `report` and `chart`.
"""
