"""`python -m bench.startup`: nmi's spawn -> ready with SPEC §10's world, several fresh starts, the best kept.

    fakes + world (250 pods, 10,000 AzureIdentity, 10,000 bindings, 100 namespaces)
      └─ nmi, started N times one after the other: spawn -> /readyz 200 (every cache listed), and meanwhile
         nmi's CPU and this process's (the fake API server serving the lists, and the readiness polling)

`make bench` measures this once among everything else; this is the figure alone, quicker to repeat while working
on start-up. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from .processes import compile_bytecode, cpu_layout, print_json, running
from .scale import world_objects
from .scenarios import _nmi
from .world import BenchFakes


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def startup(*, workdir: Path, runs: int, pods: int, identities: int, namespaces: int) -> dict[str, Any]:
    if runs < 1:
        raise ValueError("at least one start")
    server_cpu, _ = cpu_layout()
    compile_bytecode()  # nmi starts from compiled bytecode, as deployed
    starts = []
    with BenchFakes(workdir) as fakes:
        fakes.put_all(world_objects(pods=pods, identities=identities, namespaces=namespaces))
        for run in range(runs):
            before = _own_cpu_seconds()
            with running(partial(_nmi, fakes, workdir, name=f"nmi-world-{run}", cpu=server_cpu)) as (nmi, seconds):
                starts.append({"spawn_to_ready_seconds": seconds, "nmi_cpu_seconds": nmi.cpu_seconds(),
                               "bench_process_cpu_seconds": _own_cpu_seconds() - before, "rss_mib": nmi.rss_mib(),
                               "exit_code": nmi.stop()})
    return {"world_pods": pods, "world_identities": identities, "world_bindings": identities,
            "world_namespaces": namespaces, "starts": starts,
            "best_spawn_to_ready_seconds": min(start["spawn_to_ready_seconds"] for start in starts),
            "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh starts, one after the other")
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--identities", type=int, default=10_000, help="AzureIdentities, and as many bindings")
    parser.add_argument("--namespaces", type=int, default=100)
    args = parser.parse_args(argv)
    result = startup(workdir=Path(tempfile.mkdtemp(prefix="nmi-startup-")), runs=args.runs, pods=args.pods,
                     identities=args.identities, namespaces=args.namespaces)
    print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
