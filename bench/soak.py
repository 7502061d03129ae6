"""`make soak` / `python -m bench.soak`: nmi under steady load and recurring faults for a long time.

Many simulated pods (bound pods on 127.1.x.y, unknown callers on 127.2.x.y) ask for tokens at a steady rate:
mostly cache hits, some misses (a resource never asked before: one IMDS call each) and answers nmi must refuse
(unknown caller: 503). Every 20 s or so a fault is injected: a watch cut, a 410, a slow list, IMDS failing,
throttling or resetting. Every `--interval` seconds one row is sampled: requests by class, latency percentiles,
nmi's RSS, fds, threads (/proc) and its event-loop lag (`nmi_event_loop_lag_seconds` on /metrics).

Writes soak.csv (one row per sample), soak-summary.csv (first/last/max per series) and soak.png (needs
matplotlib: `pip install -e '.[bench]'`). Stops by itself after `--seconds` (default: $SOAK_SECONDS or 1800).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from fakes.imds import Fault

from .loadgen import percentile
from .processes import ServerProcess, free_port, http_get
from .world import NAMESPACE, NODE, BenchFakes, bulk_pod_ip, bulk_pods

TOKEN_PATH = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
COLUMNS = ["elapsed_s", "requests", "per_second", "ok", "refused", "unavailable", "throttled", "failed",
           "p50_ms", "p90_ms", "p99_ms", "max_ms", "rss_mib", "fds", "threads", "loop_lag_ms", "faults"]


@dataclass
class Window:
    """What the callers saw since the last sample."""

    latencies: list[float] = field(default_factory=list)
    classes: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, kind: str) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.classes[kind] += 1

    def take(self) -> tuple[list[float], Counter]:
        with self.lock:
            taken = (self.latencies, self.classes)
            self.latencies, self.classes = [], Counter()
        return taken


def classify(status: int) -> str:
    return {200: "ok", 503: "unavailable", 429: "throttled"}.get(status, "refused" if status < 500 else "failed")


def caller(port: int, stop: threading.Event, window: Window, rng: random.Random, *, pods: int,
           per_second: float) -> None:
    """One simulated client, paced to `per_second`: 85 % hits, 5 % misses, 10 % unknown callers."""
    period = 1.0 / per_second
    next_at = time.monotonic()
    while not stop.is_set():
        roll = rng.random()
        source = bulk_pod_ip(rng.randrange(pods))
        resource = f"https://app-{rng.randrange(4)}.example/"
        if roll < 0.05:
            resource = f"https://fresh-{rng.randrange(10**12)}.example/"
        elif roll < 0.15:
            source = f"127.2.{rng.randrange(250)}.{rng.randrange(1, 250)}"
        started = time.perf_counter()
        try:
            status, _ = http_get(port, TOKEN_PATH + quote(resource, safe=""), source=source,
                                 headers={"Metadata": "true"}, timeout=30)
            kind = classify(status)
        except OSError:
            kind = "failed"
        window.add(time.perf_counter() - started, kind)
        next_at += period
        stop.wait(max(0.0, next_at - time.monotonic()))


FAULTS = ["cut", "expire", "slow-list", "imds-500", "imds-429", "imds-reset", "imds-slow"]


def inject(fakes: BenchFakes, rng: random.Random) -> str:
    fault = rng.choice(FAULTS)
    api, imds = fakes.api, fakes.imds
    actions = {
        "cut": lambda: api.cut_watches(),
        "expire": lambda: (api.compact(), api.cut_watches()),
        "slow-list": lambda: (setattr(api, "list_delay", 1.0), api.compact(), api.cut_watches()),
        "imds-500": lambda: imds.fail_next(3, Fault(500)),
        "imds-429": lambda: imds.fail_next(3, Fault(429, retry_after="2")),
        "imds-reset": lambda: imds.fail_next(3, Fault(reset=True)),
        "imds-slow": lambda: imds.fail_next(5, Fault(status=0, delay=1.0)),
    }
    fakes.call(actions[fault])
    return fault


def proc_counts(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def loop_lag_ms(metrics_port: int) -> float:
    try:
        _, body = http_get(metrics_port, "/metrics", timeout=5)
    except OSError:
        return float("nan")
    for line in body.decode().splitlines():
        if line.startswith("nmi_event_loop_lag_seconds "):
            return float(line.split()[1]) * 1000
    return float("nan")


def run(seconds: float, *, out: Path, pods: int, callers: int, per_second: float, interval: float,
        seed: int) -> list[dict]:
    workdir = Path(tempfile.mkdtemp(prefix="nmi-soak-"))
    rng = random.Random(seed)
    rows: list[dict] = []
    with BenchFakes(workdir) as fakes:
        fakes.put_all(bulk_pods(0, pods))
        port, probe_port, metrics_port = free_port(), free_port(), free_port()
        argv = [sys.executable, "-m", "nmi", f"--node={NODE}", f"--nmi-port={port}",
                f"--http-probe-port={probe_port}", f"--prometheus-port={metrics_port}", "--metadata-ip=127.0.0.1",
                f"--metadata-port={fakes.imds.port}", f"--kubeconfig={fakes.kubeconfig_path}",
                f"--kubelet-config={fakes.kubelet_config_path}", "--manage-iptables=false",
                "--operation-mode=managed", "--forceNamespaced"]
        with ServerProcess("nmi", argv, log_path=workdir / "nmi.log", ready_port=probe_port,
                           service_port=port) as nmi:
            nmi.start()
            print(f"soak: {seconds:.0f}s, {callers} callers x {per_second}/s over {pods} pods in {NAMESPACE}; "
                  f"logs in {workdir}", flush=True)
            stop, window = threading.Event(), Window()
            threads = [threading.Thread(target=caller, args=(port, stop, window, random.Random(seed + n)),
                                        kwargs={"pods": pods, "per_second": per_second}, daemon=True)
                       for n in range(callers)]
            for thread in threads:
                thread.start()
            began = time.monotonic()
            next_sample, next_fault = began + interval, began + rng.uniform(10, 30)
            faults: list[str] = []
            try:
                while time.monotonic() - began < seconds:
                    now = time.monotonic()
                    if now >= next_fault:
                        fakes.call(lambda: setattr(fakes.api, "list_delay", 0.0))
                        faults.append(inject(fakes, rng))
                        next_fault = now + rng.uniform(10, 30)
                    if now >= next_sample:
                        rows.append(sample(nmi, window, now - began, interval, metrics_port, faults))
                        print(" ".join(f"{k}={rows[-1][k]}" for k in COLUMNS), flush=True)
                        faults, next_sample = [], next_sample + interval
                    time.sleep(min(0.2, max(0.0, min(next_sample, next_fault) - time.monotonic())))
            finally:
                stop.set()
                for thread in threads:
                    thread.join(35)
            code = nmi.stop()
            print(f"soak: nmi exited with {code}", flush=True)
    write_outputs(rows, out)
    return rows


def sample(nmi: ServerProcess, window: Window, elapsed: float, interval: float, metrics_port: int,
           faults: list[str]) -> dict:
    latencies, classes = window.take()
    latencies.sort()
    fds, threads = proc_counts(nmi.pid)
    ms = [round(percentile(latencies, f) * 1000, 2) if latencies else 0.0 for f in (0.5, 0.9, 0.99)]
    return {"elapsed_s": round(elapsed), "requests": len(latencies), "per_second": round(len(latencies) / interval, 1),
            "ok": classes["ok"], "refused": classes["refused"], "unavailable": classes["unavailable"],
            "throttled": classes["throttled"], "failed": classes["failed"], "p50_ms": ms[0], "p90_ms": ms[1],
            "p99_ms": ms[2], "max_ms": round(latencies[-1] * 1000, 2) if latencies else 0.0,
            "rss_mib": round(nmi.rss_mib(), 1), "fds": fds, "threads": threads,
            "loop_lag_ms": round(loop_lag_ms(metrics_port), 2), "faults": "+".join(faults)}


def summary(rows: list[dict]) -> list[dict]:
    numeric = [c for c in COLUMNS if c not in ("elapsed_s", "faults")]
    steady = rows[len(rows) // 5:] or rows  # after the first fifth: caches and pools have filled
    out = []
    for column in numeric:
        values = [float(r[column]) for r in rows]
        late = [float(r[column]) for r in steady]
        out.append({"series": column, "first": values[0], "after_warmup": late[0], "last": values[-1],
                    "min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 2)})
    return out


def write_outputs(rows: list[dict], out: Path) -> None:
    if not rows:
        print("soak: no sample taken (shorter than one interval)")
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "soak.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "soak-summary.csv", "w", newline="") as handle:
        table = summary(rows)
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    plotted = plot(rows, out / "soak.png")
    print(f"soak: {out / 'soak.csv'}, {out / 'soak-summary.csv'}" + (f", {plotted}" if plotted else ""))


def plot(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak: matplotlib missing (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return None
    minutes = [r["elapsed_s"] / 60 for r in rows]
    figure, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(minutes, [r["rss_mib"] for r in rows], label="RSS (MiB)")
    axes[0].set_ylabel("MiB")
    axes[1].plot(minutes, [r["fds"] for r in rows], label="fds")
    axes[1].plot(minutes, [r["threads"] for r in rows], label="threads")
    axes[2].plot(minutes, [r["loop_lag_ms"] for r in rows], label="event-loop lag (max of 10 s, ms)")
    axes[2].set_ylabel("ms")
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        axes[3].plot(minutes, [r[key] for r in rows], label=key.replace("_ms", ""))
    axes[3].set_ylabel("latency ms")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("minutes")
    for axis in axes:
        axis.legend(loc="upper right", fontsize=8)
        axis.grid(alpha=0.3)
    for n, row in enumerate(rows):
        if row["faults"]:
            for axis in axes:
                axis.axvline(minutes[n], color="red", alpha=0.15)
    step = rows[1]["elapsed_s"] - rows[0]["elapsed_s"] if len(rows) > 1 else rows[0]["elapsed_s"]
    figure.suptitle(f"nmi soak: resources and latency per {step:.0f} s sample (red: faults injected)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "1800")))
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    p.add_argument("--pods", type=int, default=200)
    p.add_argument("--callers", type=int, default=8)
    p.add_argument("--per-second", type=float, default=10.0, help="requests per second per caller")
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    if not 0 < args.seconds <= 24 * 3600:
        p.error("--seconds must be in (0, 86400]")
    out = args.out or Path(tempfile.mkdtemp(prefix="nmi-soak-out-"))
    run(args.seconds, out=out, pods=args.pods, callers=args.callers, per_second=args.per_second,
        interval=args.interval, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
