"""Ratios, the printed table and the DaemonSet sizing derived from one run's results (plain dicts)."""

from __future__ import annotations

import math
from typing import Any

from .targets import targets

# Sizing rules, stated once so the printed recommendation can say how it was derived. The pod watch is filtered
# by spec.nodeName, so "pods" means pods on one node: AKS allows at most 250, so 1,000 is already generous.
MEMORY_REQUEST_HEADROOM = 1.25  # over the RSS of a busy node (pods_at_start pods, after cache misses)
MEMORY_LIMIT_HEADROOM = 1.5  # over the peak RSS of a start with pods_total pods (the initial list is the peak)
MEMORY_LIMIT_FACTOR = 2  # and at least twice the request: a relist holds the old and the new list at once
MEMORY_ROUNDING_MIB = 16
CPU_SIZING_RATE = 300  # cached token requests per second per node the CPU request should carry
CPU_ROUNDING_MILLICORES = 50


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """None when either side was not measured (or the baseline is zero)."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """nmi/baseline for every figure both were measured on (throughput: below 1 means nmi is slower)."""
    out: dict[str, float | None] = {}
    for scenario in ("hits", "errors"):
        nmi, base = results[f"nmi_{scenario}"], results[f"baseline_{scenario}"]
        out[f"{scenario}_throughput"] = ratio(nmi["requests_per_second"], base["requests_per_second"])
        out[f"{scenario}_p50"] = ratio(nmi["p50_ms"], base["p50_ms"])
        out[f"{scenario}_p99"] = ratio(nmi["p99_ms"], base["p99_ms"])
        out[f"{scenario}_cpu_per_request"] = ratio(nmi["server_cpu_us_per_request"], base["server_cpu_us_per_request"])
    base_idle = results["baseline_rss_idle_mib"]
    out["rss_idle"] = ratio(results["nmi_rss_idle_mib"], base_idle)
    out["rss_after_hits"] = ratio(results["nmi_rss_after_hits_mib"], results["baseline_rss_after_load_mib"])
    out["rss_pods_at_start"] = ratio(results["nmi_rss_pods_at_start_mib"], base_idle)
    out["rss_pods_total"] = ratio(results["nmi_rss_pods_total_mib"], base_idle)
    out["rss_all_pods_at_start"] = ratio(results["nmi_rss_all_pods_at_start_mib"], base_idle)
    out["startup"] = ratio(results["nmi_startup_seconds"], results["baseline_startup_seconds"])
    out["startup_with_pods"] = ratio(results["nmi_startup_with_pods_seconds"], results["baseline_startup_seconds"])
    if "nmi_standard_hits" in results:
        standard, base = results["nmi_standard_hits"], results["baseline_hits"]
        out["standard_hits_throughput"] = ratio(standard["requests_per_second"], base["requests_per_second"])
        out["standard_hits_p99"] = ratio(standard["p99_ms"], base["p99_ms"])
    out["startup_with_all_pods"] = ratio(results["nmi_startup_with_all_pods_seconds"],
                                         results["baseline_startup_seconds"])
    return {name: value for name, value in out.items() if value is not None}


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def recommendation(results: dict[str, Any]) -> dict[str, Any]:
    # The world (SPEC §10's 250 pods and 20,000 CRD objects) is the busy node the request must carry.
    busy = max(results["nmi_rss_pods_at_start_mib"], results["nmi_rss_after_misses_mib"],
               results.get("nmi_world_rss_mib", 0.0))
    request = _round_up(busy * MEMORY_REQUEST_HEADROOM, MEMORY_ROUNDING_MIB)
    peak = max(results["nmi_peak_rss_all_pods_at_start_mib"], results["nmi_peak_rss_mib"],
               results.get("nmi_world_peak_rss_mib", 0.0))
    limit = max(request * MEMORY_LIMIT_FACTOR, _round_up(peak * MEMORY_LIMIT_HEADROOM, MEMORY_ROUNDING_MIB))
    cpu_us = results["nmi_hits"]["server_cpu_us_per_request"]
    if cpu_us is None:
        cpu_request, cpu_basis = None, "CPU not sized: too few requests to measure CPU per request"
    else:
        millicores_at_rate = cpu_us * CPU_SIZING_RATE / 1000
        cpu_request = max(CPU_ROUNDING_MILLICORES, _round_up(millicores_at_rate, CPU_ROUNDING_MILLICORES))
        cpu_basis = (f"CPU request = {CPU_SIZING_RATE} cached token requests/s x {cpu_us:.0f} us CPU each "
                     f"({millicores_at_rate:.0f}m), rounded up to {CPU_ROUNDING_MILLICORES}m")
    return {
        "memory_request_mib": request,
        "memory_limit_mib": limit,
        "cpu_request_millicores": cpu_request,
        "cpu_limit": "none (a CFS quota would throttle the event loop and add latency to every pod's token call)",
        "basis": (f"memory request = {MEMORY_REQUEST_HEADROOM} x RSS with {results['pods_at_start']:,} pods, after "
                  f"cache misses or in the SPEC world ({busy:.0f} MiB); limit = max({MEMORY_LIMIT_FACTOR} x request, "
                  f"{MEMORY_LIMIT_HEADROOM} x peak RSS of a start with {results['pods_total']:,} pods "
                  f"or of the SPEC world ({peak:.0f} MiB)); "
                  f"both rounded up to {MEMORY_ROUNDING_MIB} MiB. {cpu_basis}"),
    }


def _load_row(name: str, nmi: dict[str, Any], *, base: dict[str, Any] | None) -> list[str]:
    def shown(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def trio(key: str, fmt: str) -> list[str]:
        if base is None:
            return [shown(nmi[key], fmt), "-", "-"]
        return [shown(nmi[key], fmt), shown(base[key], fmt), shown(ratio(nmi[key], base[key]), ".2f")]

    return [name, str(nmi["answered"]), *trio("requests_per_second", ",.0f"), *trio("p50_ms", ".2f"),
            *trio("p99_ms", ".2f"), *trio("server_cpu_us_per_request", ".0f")]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


def _versus(label: str, nmi: float, *, base: float | None, fmt: str) -> list[str]:
    if base is None:
        return [label, format(nmi, fmt), "-", "-"]
    return [label, format(nmi, fmt), format(base, fmt), format(nmi / base, ".2f")]


def render(results: dict[str, Any]) -> str:
    r = results
    config = r["config"]
    pinning = (f"servers pinned to CPU {r['server_cpu']}, load generator to CPU {r['client_cpu']}"
               if r["server_cpu"] is not None else "no CPU pinning (fewer than 2 CPUs)")
    parts = [f"nmi benchmark: nmi vs bare aiohttp (baseline), measured in this run; {pinning}; "
             f"keep-alive, {config['concurrency']} connections; best of {config['rounds']} interleaved rounds; "
             f"ratio = nmi / baseline", ""]
    parts.append(_table(
        ["scenario", "answered", "nmi req/s", "base req/s", "ratio", "nmi p50 ms", "base p50", "ratio",
         "nmi p99 ms", "base p99", "ratio", "nmi CPU us/req", "base", "ratio"],
        [_load_row("cached token (200)", r["nmi_hits"], base=r["baseline_hits"]),
         *([_load_row("  standard mode", r["nmi_standard_hits"], base=r["baseline_hits"])]
           if "nmi_standard_hits" in r else []),
         _load_row("no Metadata header (400)", r["nmi_errors"], base=r["baseline_errors"]),
         _load_row("cache miss -> IMDS (200)", r["nmi_misses"], base=None)]))
    parts.append(f"\ncache misses: {r['distinct_resources']} distinct resources, "
                 f"{config['miss_concurrency']} connections "
                 f"-> {r['imds_calls_for_misses']} IMDS calls; statuses {r['nmi_misses']['statuses']}. Throughput is "
                 f"capped by nmi's own IMDS limit (20 calls/s, 5 in flight per node), by design.")
    parts.append(f"token answer: {r['token_body_bytes']} bytes (the baseline answers a body of the same size)\n")
    base_rss = r["baseline_rss_idle_mib"]
    parts.append(_table(["memory (VmRSS)", "nmi MiB", "baseline MiB", "ratio"], [
        _versus("idle after start", r["nmi_rss_idle_mib"], base=base_rss, fmt=".1f"),
        _versus(f"after {config['hit_requests'] + config['warmup_requests']:,} cached requests",
                r["nmi_rss_after_hits_mib"], base=r["baseline_rss_after_load_mib"], fmt=".1f"),
        _versus(f"after {r['distinct_resources']} cache misses", r["nmi_rss_after_misses_mib"], base=None, fmt=".1f"),
        _versus(f"{r['pods_at_start']:,} pods on the node", r["nmi_rss_pods_at_start_mib"], base=base_rss, fmt=".1f"),
        _versus(f"{r['pods_total']:,} pods (added while running)", r["nmi_rss_pods_total_mib"], base=base_rss,
                fmt=".1f"),
        _versus("  peak (VmHWM) of that process", r["nmi_peak_rss_mib"], base=None, fmt=".1f"),
        _versus(f"{r['pods_total']:,} pods (listed at start)", r["nmi_rss_all_pods_at_start_mib"], base=base_rss,
                fmt=".1f"),
        _versus("  peak (VmHWM) of that process", r["nmi_peak_rss_all_pods_at_start_mib"], base=None, fmt=".1f")]))
    base_start = r["baseline_startup_seconds"]
    parts.append("")
    parts.append(_table(["start-up (spawn -> ready 200)", "nmi s", "baseline s", "ratio"], [
        _versus("1 pod on the node", r["nmi_startup_seconds"], base=base_start, fmt=".2f"),
        _versus(f"{r['pods_at_start']:,} pods on the node", r["nmi_startup_with_pods_seconds"], base=base_start,
                fmt=".2f"),
        _versus(f"{r['pods_total']:,} pods on the node", r["nmi_startup_with_all_pods_seconds"], base=base_start,
                fmt=".2f")]))
    parts.append(f"\n{r['pods_total'] - r['pods_at_start']:,} pods added while running were indexed through the "
                 f"watch in {r['seconds_to_index_added_pods']:.2f} s")
    rec = r["recommendation"]
    cpu = "not sized" if rec["cpu_request_millicores"] is None else f"{rec['cpu_request_millicores']}m"
    parts.append(f"\nDaemonSet sizing: requests memory {rec['memory_request_mib']}Mi, cpu {cpu}; "
                 f"limits memory {rec['memory_limit_mib']}Mi, cpu {rec['cpu_limit']}.\n  ({rec['basis']})")
    exits = ", ".join(f"{name} {r[key]}" for name, key in (
        ("nmi", "nmi_exit_code"), ("nmi with pods", "nmi_pods_exit_code"),
        ("nmi with all pods", "nmi_all_pods_exit_code"), ("baseline", "baseline_exit_code")))
    parts.append(f"\nexit codes after SIGTERM: {exits}; whole run: {r['bench_seconds']:.1f} s")
    parts.append("\nSPEC §10 targets (this run):\n" + _table(["figure", "measured", "target", "verdict"],
                                                             targets(r)))
    return "\n".join(parts)
