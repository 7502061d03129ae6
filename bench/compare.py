"""`python -m bench.compare --before DIR`: an earlier nmi, this nmi and the baseline measured in one run.

DIR holds an earlier nmi's source tree (e.g. `git archive <commit> | tar -x -C DIR`). Both nmis are started the
same way (`bench.in_cluster`, configured in-cluster as in a pod), against the same fakes, with the same flags; the
cached-token rounds are interleaved (baseline, before, now, again) and the best of `--rounds` is kept per server,
so a disturbance on the machine hits all three alike. Then each nmi alone: start-up and RSS with one pod, and
with SPEC §10's world; and `bench.watch_apply` of each tree. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from .processes import (REPO_ROOT, ServerProcess, compile_bytecode, cpu_layout, print_json, run_load, running,
                        token_answer)
from .scale import world_objects
from .scenarios import _baseline, _best_of, _measured, _nmi
from .world import BenchFakes


def _nmi_from(tree: Path | None, fakes: BenchFakes, workdir: Path, *, name: str, cpu: int | None) -> ServerProcess:
    """This nmi, or (with `tree`) the nmi package of that source tree, started by this tree's launcher."""
    process = _nmi(fakes, workdir, name=name, cpu=cpu)
    if tree is not None:  # `env` execs python: the pid measured is the server's
        launcher = str(REPO_ROOT / "bench" / "in_cluster.py")
        process.argv = ["env", f"PYTHONPATH={tree}", process.argv[0], launcher, *process.argv[3:]]
    return process


def _watch_apply(tree: Path, *, identities: int, cpu: int | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.watch_apply", f"--identities={identities}"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
    return json.loads(done.stdout)


def compare(before: Path, *, rounds: int, requests: int, concurrency: int, identities: int) -> dict[str, Any]:
    server_cpu, client_cpu = cpu_layout()
    compile_bytecode()
    compile_bytecode(before)
    workdir = Path(tempfile.mkdtemp(prefix="nmi-compare-"))
    trees: dict[str, Path | None] = {"before": before, "now": None}
    out: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    with BenchFakes(workdir) as fakes:
        with running(lambda: _nmi_from(before, fakes, workdir, name="nmi-before", cpu=server_cpu)) as (old, t_old), \
                running(lambda: _nmi_from(None, fakes, workdir, name="nmi-now", cpu=server_cpu)) as (new, t_new):
            out["startup_seconds"] = {"before": t_old, "now": t_new}
            out["rss_idle_mib"] = {"before": old.rss_mib(), "now": new.rss_mib()}
            body = token_answer(new.service_port)[1]
            if token_answer(old.service_port)[0] != 200:
                raise RuntimeError("the earlier nmi refused the benchmark pod")
            with running(lambda: _baseline(workdir, body_size=len(body), cpu=server_cpu)) as (base, _):
                servers = (("baseline", base), ("before", old), ("now", new))
                for _, server in servers:
                    run_load(server.service_port, 500, concurrency=concurrency, cpu=client_cpu)
                hits: dict[str, list[dict[str, Any]]] = {}
                for _ in range(rounds):
                    for label, server in servers:
                        port = server.service_port
                        hits.setdefault(label, []).append(_measured(server, partial(
                            run_load, port, requests, concurrency=concurrency, cpu=client_cpu)))
                out["hits"] = {label: _best_of(rows) for label, rows in hits.items()}
    world_dir = workdir / "world"
    world_dir.mkdir()
    with BenchFakes(world_dir) as fakes:
        fakes.put_all(world_objects(pods=250, identities=identities, namespaces=100))
        out["world"] = {}
        for label, tree in trees.items():
            with running(partial(_nmi_from, tree, fakes, world_dir, name=f"world-{label}",
                                 cpu=server_cpu)) as (nmi, started):
                out["world"][label] = {"startup_seconds": started, "rss_mib": nmi.rss_mib(),
                                       "peak_rss_mib": nmi.peak_rss_mib()}
    out["watch_apply"] = {label: _watch_apply(tree or REPO_ROOT, identities=identities, cpu=server_cpu)
                          for label, tree in trees.items()}
    out["load_average_at_end"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="source tree of the earlier nmi")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--identities", type=int, default=10_000, help="AzureIdentities (and bindings) in the world")
    args = parser.parse_args(argv)
    result = compare(args.before.resolve(), rounds=args.rounds, requests=args.requests,
                     concurrency=args.concurrency, identities=args.identities)
    print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
