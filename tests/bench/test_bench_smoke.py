"""The benchmark machinery works end to end with tiny counts and leaves no process behind.

Correctness only: counts of answered requests, statuses, IMDS calls, positive ratios. No timing is asserted.
"""

import math
import os
import sys
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.processes import PortTaken, ServerProcess, free_port, running
from bench.report import ratios, recommendation, render
from bench.scenarios import BenchConfig, run_all


def child_pids() -> set[int]:
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
            if ppid == os.getpid():
                children.add(int(entry.name))
    return children


@pytest.fixture
def no_leftover_children():
    before = child_pids()
    yield
    assert child_pids() - before == set()


@pytest.mark.timeout(90)
def test_tiny_run_answers_every_request_and_reports_positive_ratios(tmp_path, no_leftover_children):
    config = BenchConfig(workdir=tmp_path, hit_requests=50, error_requests=40, miss_requests=5, warmup_requests=10,
                         concurrency=4, miss_concurrency=3, rounds=2, pods_at_start=10, pods_total=20,
                         world_pods=5, world_identities=30, world_namespaces=3, watch_events=40, bursts=(1, 70))
    results = run_all(config)

    for server in ("nmi", "baseline"):
        assert results[f"{server}_hits"]["answered"] == 50 and results[f"{server}_hits"]["statuses"] == {"200": 50}
        assert results[f"{server}_errors"]["answered"] == 40 and results[f"{server}_errors"]["statuses"] == {"400": 40}
        assert results[f"{server}_hits"]["failed"] == 0 and results[f"{server}_errors"]["failed"] == 0
        assert len(results[f"{server}_hits"]["rounds_requests_per_second"]) == 2
    assert results["nmi_misses"]["statuses"] == {"200": 5}
    assert results["imds_calls_for_misses"] == 5  # one IMDS call per distinct resource
    # 70 at once is more than nmi holds from one source address (64): the burst comes from 3 bound pods.
    assert [(b["sources"], b["imds_calls"], b["statuses"], b["failed"]) for b in results["bursts"]] == [
        (1, 1, {"200": 1}, 0), (3, 1, {"200": 70}, 0)]
    assert results["nmi_standard_hits"]["statuses"] == {"200": 50}  # standard mode serves the cached path too
    assert results["nmi_world_hits"]["statuses"] == {"200": 50} and results["nmi_world_exit_code"] == 0
    watch = results["watch_apply"]
    assert watch["speed"]["pods"]["events"] == 40 and watch["speed"]["azureidentities"]["objects_listed"] == 30
    assert all(0 < size < 10_000 for size in watch["bytes_per_object"].values())
    assert results["version_seconds"] > 0
    assert results["token_body_bytes"] > 500  # a real token answer came back and sized the baseline's body
    assert [results[k] for k in ("nmi_exit_code", "nmi_pods_exit_code", "nmi_all_pods_exit_code",
                                 "baseline_exit_code")] == [0, 0, 0, 0]

    figures = ratios(results)
    assert figures and all(math.isfinite(v) and v > 0 for v in figures.values())
    assert results["nmi_rss_pods_total_mib"] > 0 and results["baseline_rss_idle_mib"] > 0
    sizing = recommendation(results)
    assert sizing["memory_limit_mib"] >= sizing["memory_request_mib"] > results["nmi_rss_idle_mib"]
    assert sizing["cpu_request_millicores"] is None or sizing["cpu_request_millicores"] > 0
    results.update(ratios=figures, recommendation=sizing)
    table = render(results)
    assert "cached token (200)" in table and "20 pods" in table and "Mi" in table
    assert "SPEC §10 targets" in table and "exactly 1" in table and "met" in table


def test_command_line_writes_the_results_file(tmp_path, capsys, no_leftover_children):
    out = tmp_path / "results.json"
    assert main(["--out", str(out), "--hit-requests=20", "--error-requests=20", "--miss-requests=2",
                 "--warmup-requests=5", "--concurrency=2", "--rounds=1", "--pods-at-start=2", "--pods-total=3",
                 "--world-pods=2", "--world-identities=4", "--watch-events=10", "--bursts=2"]) == 0
    assert '"nmi_hits"' in out.read_text() and f"results: {out}" in capsys.readouterr().out


def test_server_that_never_gets_ready_is_stopped_on_the_way_out(tmp_path, no_leftover_children):
    sleeper = ServerProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                            log_path=tmp_path / "sleeper.log", ready_port=free_port(), cpu=None)
    with pytest.raises(RuntimeError, match="not ready"):
        with sleeper:
            sleeper.start(timeout=0.5)
    assert sleeper.proc is not None and sleeper.proc.returncode is not None


def test_start_is_retried_with_fresh_ports_when_a_port_was_taken(tmp_path, no_leftover_children):
    attempts: list[ServerProcess] = []

    def make() -> ServerProcess:
        port = free_port()
        argv = ([sys.executable, "-c", "print('address already in use'); raise SystemExit(1)"] if not attempts
                else [sys.executable, "-m", "bench.baseline", f"--port={port}"])
        attempts.append(ServerProcess("flaky", argv, log_path=tmp_path / f"try{len(attempts)}.log", ready_port=port))
        return attempts[-1]

    with running(make) as (server, seconds):
        assert len(attempts) == 2 and seconds > 0 and server.rss_mib() > 0
    assert all(a.proc is not None and a.proc.returncode is not None for a in attempts)


def test_a_port_clash_on_every_attempt_is_reported(tmp_path, no_leftover_children):
    def make() -> ServerProcess:
        return ServerProcess("clash", [sys.executable, "-c", "print('Address already in use'); raise SystemExit(1)"],
                             log_path=tmp_path / "clash.log", ready_port=free_port())

    with pytest.raises(PortTaken):
        with running(make, attempts=2):
            pass


def test_connection_sweep_measures_both_servers_and_plots(tmp_path, no_leftover_children):
    from bench.sweep import render as render_sweep
    from bench.sweep import sweep

    result = sweep(workdir=tmp_path, requests=30, rounds=1, connections=(1, 3))
    for server in ("nmi", "baseline"):
        assert [row["connections"] for row in result["servers"][server]] == [1, 3]
        assert all(row["requests_per_second"] > 0 and row["failed"] == 0 for row in result["servers"][server])
    assert "connections" in render_sweep(result)
    pytest.importorskip("matplotlib")
    from bench.sweep import plot

    plot(result, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_startup_with_a_world_starts_nmi_each_time_until_every_cache_is_listed(tmp_path, no_leftover_children):
    from bench.startup import startup

    result = startup(workdir=tmp_path, runs=2, pods=3, identities=20, namespaces=2)
    assert len(result["starts"]) == 2 and all(start["exit_code"] == 0 for start in result["starts"])
    assert result["best_spawn_to_ready_seconds"] == min(s["spawn_to_ready_seconds"] for s in result["starts"]) > 0
    assert all(start["nmi_cpu_seconds"] > 0 and start["rss_mib"] > 0 for start in result["starts"])


def test_bytecode_is_compiled_as_the_image_compiles_it(tmp_path):
    import importlib.util

    from bench.processes import compile_bytecode

    (tmp_path / "nmi" / "kube").mkdir(parents=True)
    sources = [tmp_path / "nmi" / "__init__.py", tmp_path / "nmi" / "kube" / "informer.py"]
    for source in sources:
        source.write_text("VALUE = 1\n")
    compile_bytecode(tmp_path)  # no iptables/ or bench/ here: skipped
    assert all(Path(importlib.util.cache_from_source(str(source))).is_file() for source in sources)
