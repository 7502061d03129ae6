"""The rest of SPEC §10: a cluster-sized world, one upstream call per key under a burst, cold start, `--version`.

    fakes + world (250 pods, 10,000 AzureIdentity, 10,000 bindings) ── nmi #4: spawn → ready, RSS, peak RSS
    nmi #1 (already running)  ── bursts of 1..256 simultaneous requests for a fresh resource, from several bound
                                 pods (at most 32 connections each): IMDS calls each
    `python -m nmi --version` ── wall time, a few runs
    `python -m bench.watch_apply` ── nmi's Informer on canned answers: list time, events/s, bytes kept per object

Plain data out, like `bench.scenarios`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Callable

from .objects import binding, identity, pod
from .processes import REPO_ROOT, ServerProcess, run_load, running, wait_indexed
from .world import CONNECTIONS_PER_SOURCE, NODE, BenchFakes, bulk_pods, caller_sources, sources_for

BURSTS = (1, 16, 256)


def bursts(fakes: BenchFakes, nmi: ServerProcess, *, sizes: tuple[int, ...] = BURSTS,
           client_cpu: int | None, per_source: int = CONNECTIONS_PER_SOURCE) -> list[dict[str, Any]]:
    """For each size: that many connections ask at once for a resource nobody asked for before.

    nmi holds at most 64 connections per source address (SPEC §7), so a burst comes from several pods bound to
    the one identity, at most `per_source` connections each: every request is the same (identity, resource)
    key. Those pods (the caller and bulk pods 0, 1, ...) are put in the fakes and indexed by `nmi` before the
    first burst, and removed again after the last, so later scenarios find the cluster as it was."""
    counts = {size: sources_for(size, per_source=per_source) for size in sizes}
    extra = bulk_pods(0, max(counts.values(), default=1) - 1)  # the caller's pod is there already
    fakes.put_all(extra)
    for source in caller_sources(len(extra) + 1):
        wait_indexed(nmi, source)
    out = []
    for size in sizes:
        sources = caller_sources(counts[size])
        before = fakes.imds_token_requests()
        result = run_load(nmi.service_port, size, concurrency=size, cpu=client_cpu, source=",".join(sources),
                          resource=f"https://burst-{size}-{time.time_ns()}.example/")
        out.append({"concurrent_requests": size, "sources": len(sources), "answered": result.answered,
                    "failed": result.failed, "statuses": result.statuses,
                    "imds_calls": fakes.imds_token_requests() - before})
    for obj in extra:
        fakes.delete("Pod", obj["metadata"]["namespace"], obj["metadata"]["name"])
    return out


def world_objects(*, pods: int, identities: int, namespaces: int) -> list[dict[str, Any]]:
    return ([pod(i, namespace=f"ns-{i % namespaces:03d}", ip=f"10.244.{i // 250}.{i % 250 + 1}", node=NODE,
                 labels={"aadpodidbinding": f"selector-{i:05d}"}) for i in range(pods)]
            + [identity(i, namespace=f"ns-{i % namespaces:03d}") for i in range(identities)]
            + [binding(i, namespace=f"ns-{i % namespaces:03d}") for i in range(identities)])


def world(fakes: BenchFakes, make_nmi: Callable[[], ServerProcess], *, pods: int, identities: int,
          namespaces: int, hit_requests: int, concurrency: int, client_cpu: int | None) -> dict[str, Any]:
    fakes.put_all(world_objects(pods=pods, identities=identities, namespaces=namespaces))
    out: dict[str, Any] = {"world_pods": pods, "world_identities": identities, "world_bindings": identities,
                           "world_namespaces": namespaces}
    with running(make_nmi) as (nmi, started):
        out["nmi_world_startup_seconds"] = started  # spawn -> /readyz 200: every cache listed
        out["nmi_world_rss_ready_mib"] = nmi.rss_mib()
        hits = run_load(nmi.service_port, hit_requests, concurrency=concurrency, cpu=client_cpu)
        out["nmi_world_hits"] = {"answered": hits.answered, "statuses": hits.statuses,
                                 "requests_per_second": hits.requests_per_second, "p99_ms": hits.p99_ms}
        out["nmi_world_rss_mib"] = nmi.rss_mib()
        out["nmi_world_peak_rss_mib"] = nmi.peak_rss_mib()
        out["nmi_world_exit_code"] = nmi.stop()
    return out


def version_seconds(*, runs: int = 3) -> float:
    """The fastest of `runs` wall times of `python -m nmi --version` (the least disturbed by the machine)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nmi", "--version"], cwd=REPO_ROOT, check=True, capture_output=True,
                       timeout=60)
        best = min(best, time.perf_counter() - started)
    return best


def watch_apply(*, pods: int, identities: int, namespaces: int, events: int, cpu: int | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.watch_apply", f"--pods={pods}", f"--identities={identities}",
            f"--namespaces={namespaces}", f"--events={events}"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"bench.watch_apply failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)
