"""The measurements, in one run: nmi and the bare-aiohttp baseline side by side, on loopback.

    fakes ─┬─ nmi #1 (1 pod)  ── start-up, idle RSS, cache hits, error path, cache misses, RSS after
           │   baseline ──────── start-up, idle RSS, cache hits, error path, RSS after
           ├─ nmi #2 (N pods) ── start-up with N pods, RSS; then M pods added through the watch, RSS
           └─ nmi #3 (N+M pods) ─ start-up with all pods, RSS and peak RSS

Everything returned is plain data (dicts, numbers) for `bench.report`. Nothing here judges a number.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from .loadgen import LoadResult
from . import scale
from .processes import (ServerProcess, compile_bytecode, cpu_layout, free_port, run_load, running, token_answer,
                        wait_indexed)
from .world import NODE, BenchFakes, bulk_pod_ip, bulk_pods


@dataclass(frozen=True, slots=True)
class BenchConfig:
    workdir: Path
    hit_requests: int = 10_000
    error_requests: int = 10_000
    miss_requests: int = 60
    warmup_requests: int = 500
    rounds: int = 3  # hits and errors: best of this many interleaved rounds per server
    concurrency: int = 8
    miss_concurrency: int = 10
    pods_at_start: int = 1_000
    pods_total: int = 5_000
    # SPEC §10's world: pods on the node, and as many AzureIdentities as bindings over some namespaces.
    world_pods: int = 250
    world_identities: int = 10_000
    world_namespaces: int = 100
    watch_events: int = 20_000
    bursts: tuple[int, ...] = scale.BURSTS


def _nmi(fakes: BenchFakes, workdir: Path, *, name: str, cpu: int | None, mode: str = "managed") -> ServerProcess:
    port, probe_port, metrics_port = free_port(), free_port(), free_port()
    # Configured in-cluster as in a pod (bench.in_cluster), so no kubeconfig loader is imported: see there.
    argv = [sys.executable, "-m", "bench.in_cluster", f"--api-url={fakes.api.url}", f"--node={NODE}",
            f"--nmi-port={port}", f"--http-probe-port={probe_port}",
            f"--prometheus-port={metrics_port}", "--metadata-ip=127.0.0.1", f"--metadata-port={fakes.imds.port}",
            f"--kubelet-config={fakes.kubelet_config_path}",
            "--manage-iptables=false", f"--operation-mode={mode}", "--forceNamespaced"]
    return ServerProcess(name, argv, log_path=workdir / f"{name}.log", ready_port=probe_port, service_port=port,
                         cpu=cpu)


def _baseline(workdir: Path, *, body_size: int, cpu: int | None) -> ServerProcess:
    port = free_port()
    return ServerProcess("baseline", [sys.executable, "-m", "bench.baseline", f"--port={port}",
                                      f"--body-size={body_size}"],
                         log_path=workdir / "baseline.log", ready_port=port, cpu=cpu)


# /proc counts CPU in clock ticks (10 ms): below this much CPU a per-request figure would be mostly rounding.
MIN_MEASURABLE_CPU_SECONDS = 0.05


def _measured(server: ServerProcess, load: Callable[[], LoadResult]) -> dict[str, Any]:
    """Runs `load()` and adds the server's CPU time spent meanwhile (all its threads); the per-request CPU
    is None when the run was too short to measure it."""
    before = server.cpu_seconds()
    result = load()
    cpu = server.cpu_seconds() - before
    row = asdict(result)
    row["server_cpu_seconds"] = cpu
    measurable = cpu >= MIN_MEASURABLE_CPU_SECONDS and result.answered > 0
    row["server_cpu_us_per_request"] = cpu / result.answered * 1e6 if measurable else None
    return row


def _best_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the highest throughput (the least disturbed by whatever else runs on the machine),
    with every round's throughput kept for the record."""
    best = dict(max(rounds, key=lambda row: row["requests_per_second"]))
    best["rounds_requests_per_second"] = [row["requests_per_second"] for row in rounds]
    return best


def _hits_errors_misses(fakes: BenchFakes, config: BenchConfig, *, server_cpu: int | None,
                        client_cpu: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with running(lambda: _nmi(fakes, config.workdir, name="nmi-small", cpu=server_cpu)) as (nmi, nmi_startup):
        out["nmi_startup_seconds"] = nmi_startup
        out["nmi_rss_idle_mib"] = nmi.rss_mib()
        status, body = token_answer(nmi.service_port)
        if status != 200:
            raise RuntimeError(f"nmi refused the benchmark pod ({status}): {body[:300]!r}")
        out["token_body_bytes"] = len(body)
        with running(lambda: _baseline(config.workdir, body_size=len(body), cpu=server_cpu)) as (baseline, started), \
                running(lambda: _nmi(fakes, config.workdir, name="nmi-standard", cpu=server_cpu,
                                     mode="standard")) as (standard, _):
            out["baseline_startup_seconds"] = started
            out["baseline_rss_idle_mib"] = baseline.rss_mib()
            servers = (("baseline", baseline), ("nmi", nmi), ("nmi_standard", standard))
            for _, server in servers:
                run_load(server.service_port, config.warmup_requests, concurrency=config.concurrency, cpu=client_cpu)
            rounds: dict[str, list[dict[str, Any]]] = {}
            # Interleaved rounds, so a disturbance on the machine hits both servers alike.
            for _ in range(config.rounds):
                for label, server in servers:
                    port = server.service_port
                    rounds.setdefault(f"{label}_hits", []).append(_measured(server, partial(
                        run_load, port, config.hit_requests, concurrency=config.concurrency, cpu=client_cpu)))
                    if label == "nmi_standard":  # the cached path in the other mode; errors do not differ
                        continue
                    rounds.setdefault(f"{label}_errors", []).append(_measured(server, partial(
                        run_load, port, config.error_requests, concurrency=config.concurrency, cpu=client_cpu,
                        metadata=False)))
            out.update({name: _best_of(rows) for name, rows in rounds.items()})
            out["nmi_standard_exit_code"] = standard.stop()
            out["baseline_rss_after_load_mib"] = baseline.rss_mib()
            out["baseline_exit_code"] = baseline.stop()
        out["nmi_rss_after_hits_mib"] = nmi.rss_mib()
        imds_before = fakes.imds_token_requests()
        out["nmi_misses"] = _measured(nmi, lambda: run_load(
            nmi.service_port, config.miss_requests, concurrency=config.miss_concurrency,
            cpu=client_cpu, distinct_resources=True))
        out["imds_calls_for_misses"] = fakes.imds_token_requests() - imds_before
        out["distinct_resources"] = config.miss_requests
        out["nmi_rss_after_misses_mib"] = nmi.rss_mib()
        out["bursts"] = scale.bursts(fakes, nmi, sizes=config.bursts, client_cpu=client_cpu)
        out["nmi_exit_code"] = nmi.stop()
    return out


def _pods(fakes: BenchFakes, config: BenchConfig, *, server_cpu: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"pods_at_start": config.pods_at_start, "pods_total": config.pods_total}
    fakes.put_all(bulk_pods(0, config.pods_at_start))
    with running(lambda: _nmi(fakes, config.workdir, name="nmi-pods", cpu=server_cpu)) as (nmi, started):
        out["nmi_startup_with_pods_seconds"] = started
        wait_indexed(nmi, bulk_pod_ip(config.pods_at_start - 1))
        out["nmi_rss_pods_at_start_mib"] = nmi.rss_mib()
        added = time.perf_counter()
        fakes.put_all(bulk_pods(config.pods_at_start, config.pods_total))
        wait_indexed(nmi, bulk_pod_ip(config.pods_total - 1))
        out["seconds_to_index_added_pods"] = time.perf_counter() - added
        out["nmi_rss_pods_total_mib"] = nmi.rss_mib()
        out["nmi_peak_rss_mib"] = nmi.peak_rss_mib()
        out["nmi_pods_exit_code"] = nmi.stop()
    # A fresh start with every pod: the initial list is the biggest thing nmi ever holds at once.
    with running(lambda: _nmi(fakes, config.workdir, name="nmi-all-pods", cpu=server_cpu)) as (nmi, started):
        out["nmi_startup_with_all_pods_seconds"] = started
        wait_indexed(nmi, bulk_pod_ip(config.pods_total - 1))
        out["nmi_rss_all_pods_at_start_mib"] = nmi.rss_mib()
        out["nmi_peak_rss_all_pods_at_start_mib"] = nmi.peak_rss_mib()
        out["nmi_all_pods_exit_code"] = nmi.stop()
    return out


def run_all(config: BenchConfig) -> dict[str, Any]:
    """Every measurement; every process started here is stopped before this returns or raises."""
    if config.pods_total < config.pods_at_start or config.pods_at_start < 1:
        raise ValueError("need 1 <= pods_at_start <= pods_total")
    server_cpu, client_cpu = cpu_layout()
    config.workdir.mkdir(parents=True, exist_ok=True)
    compile_bytecode()  # nmi starts from compiled bytecode, as deployed
    started = time.perf_counter()
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
                               "server_cpu": server_cpu, "client_cpu": client_cpu}
    with BenchFakes(config.workdir) as fakes:
        results.update(_hits_errors_misses(fakes, config, server_cpu=server_cpu, client_cpu=client_cpu))
        results.update(_pods(fakes, config, server_cpu=server_cpu))
    world_dir = config.workdir / "world"
    world_dir.mkdir(exist_ok=True)
    with BenchFakes(world_dir) as fakes:
        results.update(scale.world(fakes, lambda: _nmi(fakes, world_dir, name="nmi-world", cpu=server_cpu),
                                   pods=config.world_pods, identities=config.world_identities,
                                   namespaces=config.world_namespaces, hit_requests=config.hit_requests,
                                   concurrency=config.concurrency, client_cpu=client_cpu))
    results["watch_apply"] = scale.watch_apply(pods=config.world_pods, identities=config.world_identities,
                                               namespaces=config.world_namespaces, events=config.watch_events,
                                               cpu=server_cpu)
    results["version_seconds"] = scale.version_seconds()
    results["bench_seconds"] = time.perf_counter() - started
    return results
