"""Benchmarks for nmi: speed and memory as ratios against a bare aiohttp baseline measured in the same run.

`python -m bench` (or `make bench`) runs everything on loopback in about a minute and prints a table;
nothing here passes or fails on a number. Modules: `loadgen` (the client, its own process), `baseline`
(the bare aiohttp server), `world` (fake API server + fake IMDS), `processes` (spawning, /proc readings),
`scenarios` (the measurements), `report` (ratios, table, DaemonSet sizing).
"""
