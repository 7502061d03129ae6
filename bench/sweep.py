"""Throughput and p99 against the number of connections (1-256), nmi and the baseline, in one run; a PNG plot.

`python -m bench.sweep --png docs/performance.png --json results.json`. At each connection count the two
servers are loaded alternately (best of `--rounds`), so a disturbance on the machine hits both alike.
Needs matplotlib for the plot (`pip install -e .[bench]`); without `--png` it only prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .processes import compile_bytecode, cpu_layout, run_load, running, token_answer
from .scenarios import _baseline, _nmi
from .world import BenchFakes, bulk_pods, caller_sources

# nmi holds at most 64 connections per source address (SPEC §7): above that the load comes from several pods,
# at most 32 connections each (256 over 8). The baseline gets the same sources.
CALLER_PODS = 8
SOURCES = ",".join(caller_sources(CALLER_PODS))

CONNECTIONS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def sweep(*, workdir: Path, requests: int, rounds: int, connections: tuple[int, ...] = CONNECTIONS) -> dict[str, Any]:
    server_cpu, client_cpu = cpu_layout()
    compile_bytecode()
    rows: dict[str, list[dict[str, Any]]] = {"nmi": [], "baseline": []}
    with BenchFakes(workdir) as fakes:
        fakes.put_all(bulk_pods(0, CALLER_PODS - 1))
        with running(lambda: _nmi(fakes, workdir, name="nmi-sweep", cpu=server_cpu)) as (nmi, _):
            status, body = token_answer(nmi.service_port)
            if status != 200:
                raise RuntimeError(f"nmi refused the benchmark pod ({status})")
            with running(lambda: _baseline(workdir, body_size=len(body), cpu=server_cpu)) as (baseline, _):
                servers = (("baseline", baseline), ("nmi", nmi))
                for _, server in servers:
                    run_load(server.service_port, requests // 4, concurrency=8, cpu=client_cpu)
                for count in connections:
                    for label, server in servers:
                        best = max((run_load(server.service_port, max(requests, count * 20), concurrency=count,
                                             cpu=client_cpu, source=SOURCES) for _ in range(rounds)),
                                   key=lambda result: result.requests_per_second)
                        rows[label].append({"connections": count, "requests_per_second": best.requests_per_second,
                                            "p50_ms": best.p50_ms, "p99_ms": best.p99_ms, "failed": best.failed})
    return {"connections": list(connections), "requests": requests, "rounds": rounds, "servers": rows,
            "server_cpu": server_cpu, "client_cpu": client_cpu}


def render(result: dict[str, Any]) -> str:
    lines = ["connections  nmi req/s  base req/s  ratio  nmi p99 ms  base p99 ms  ratio"]
    for nmi, base in zip(result["servers"]["nmi"], result["servers"]["baseline"], strict=True):
        lines.append(f"{nmi['connections']:>11}  {nmi['requests_per_second']:>9,.0f}  "
                     f"{base['requests_per_second']:>10,.0f}  "
                     f"{nmi['requests_per_second'] / base['requests_per_second']:>5.2f}  {nmi['p99_ms']:>10.2f}  "
                     f"{base['p99_ms']:>11.2f}  {nmi['p99_ms'] / base['p99_ms']:>5.2f}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, style in (("nmi", "o-"), ("baseline", "s--")):
        rows = result["servers"][label]
        x = [row["connections"] for row in rows]
        name = "nmi (cached token)" if label == "nmi" else "bare aiohttp, same body"
        left.plot(x, [row["requests_per_second"] for row in rows], style, label=name)
        right.plot(x, [row["p99_ms"] for row in rows], style, label=name)
    for axis, title, unit in ((left, "Throughput", "requests/s"), (right, "p99 latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(result["connections"], [str(n) for n in result["connections"]])
        axis.set_xlabel("keep-alive connections")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend()
    right.set_yscale("log")
    fig.suptitle("nmi vs bare aiohttp, one run, server on one CPU, load generator on the other")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000, help="requests per point (at least 20 per connection)")
    parser.add_argument("--rounds", type=int, default=2, help="best of N per point and server")
    parser.add_argument("--connections", default=",".join(map(str, CONNECTIONS)))
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = sweep(workdir=Path(tempfile.mkdtemp(prefix="nmi-sweep-")), requests=args.requests, rounds=args.rounds,
                   connections=tuple(int(n) for n in args.connections.split(",")))
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.png:
        plot(result, args.png)
        print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
