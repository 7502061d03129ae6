"""`python -m bench`: run every measurement once, print the table, write the results as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .report import ratios, recommendation, render
from .scenarios import BenchConfig, run_all


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = BenchConfig(workdir=Path("."))
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default: results.json in a new folder under the temp directory)")
    p.add_argument("--hit-requests", type=int, default=defaults.hit_requests)
    p.add_argument("--error-requests", type=int, default=defaults.error_requests)
    p.add_argument("--miss-requests", type=int, default=defaults.miss_requests,
                   help="distinct resources, one IMDS call each (nmi allows 20 IMDS calls/s)")
    p.add_argument("--warmup-requests", type=int, default=defaults.warmup_requests)
    p.add_argument("--concurrency", type=int, default=defaults.concurrency)
    p.add_argument("--rounds", type=int, default=defaults.rounds, help="best of N interleaved rounds (hits, errors)")
    p.add_argument("--pods-at-start", type=int, default=defaults.pods_at_start)
    p.add_argument("--pods-total", type=int, default=defaults.pods_total)
    p.add_argument("--world-pods", type=int, default=defaults.world_pods, help="pods on the node in the world")
    p.add_argument("--world-identities", type=int, default=defaults.world_identities,
                   help="AzureIdentities in the world, and as many AzureIdentityBindings")
    p.add_argument("--world-namespaces", type=int, default=defaults.world_namespaces)
    p.add_argument("--watch-events", type=int, default=defaults.watch_events)
    p.add_argument("--bursts", default=",".join(map(str, defaults.bursts)),
                   help="comma-separated sizes of simultaneous first requests for one new resource")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="nmi-bench-"))
    config = BenchConfig(workdir=workdir, hit_requests=args.hit_requests, error_requests=args.error_requests,
                         miss_requests=args.miss_requests, warmup_requests=args.warmup_requests,
                         concurrency=args.concurrency, rounds=args.rounds, pods_at_start=args.pods_at_start,
                         pods_total=args.pods_total, world_pods=args.world_pods,
                         world_identities=args.world_identities, world_namespaces=args.world_namespaces,
                         watch_events=args.watch_events, bursts=tuple(int(n) for n in args.bursts.split(",")))
    print(f"running (process logs in {workdir}) ...", flush=True)
    results = run_all(config)
    results["ratios"] = ratios(results)
    results["recommendation"] = recommendation(results)
    print(render(results))
    out = args.out or workdir / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
