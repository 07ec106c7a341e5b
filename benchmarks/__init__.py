"""Benchmarks of cached-sessions against bare aiohttp and aiohttp-session: `python -m benchmarks`.

One module per measured thing: `http_load` (HTTP throughput on aiohttp and on ASGI),
`store_ops`, `invalidation`, `mixed`, `wipe`, `cost_curve`, `cluster` (with
`cluster_capacity`: what one shard holds), `profiling`, and `script_cost` (run on its
own). Shared: `harness` (sizes, server, machine, fast fills), `load` (the HTTP worker
fleet and load generators) and `worker` (the HTTP apps); the output in `report` and
`chart`.
"""
