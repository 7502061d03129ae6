"""SPEC §10 (and issue 12) targets, each judged on one run's results: figure, target, met / not met.

Speed figures are ratios to the baseline measured in the same run; the watch rate is judged per CPU-second of
the process applying the events (on a shared machine wall time counts the other processes too; both are shown).
"""

from __future__ import annotations

from typing import Any

THROUGHPUT_RATIO = 0.7  # nmi cached tokens/s >= 0.7 x bare aiohttp
P99_RATIO = 2.0  # nmi p99 <= 2 x bare aiohttp
CPU_RATIO = 1.4  # CPU per cached request <= 1.4 x bare aiohttp (issue 12)
EVENTS_PER_SECOND = 20_000
BYTES_PER_OBJECT = 1024
RSS_MIB = 80
READY_SECONDS = 2.0
VERSION_SECONDS = 0.5  # `nmi --version` imports no daemon: about an interpreter start


def _row(figure: str, value: str, target: str, met: bool | None) -> list[str]:
    return [figure, value, target, "-" if met is None else ("met" if met else "NOT MET")]


def _ratio_rows(results: dict[str, Any], label: str, key: str) -> list[list[str]]:
    nmi, base = results.get(key), results["baseline_hits"]
    if nmi is None:
        return []
    rows = []
    tput = nmi["requests_per_second"] / base["requests_per_second"] if base["requests_per_second"] else 0.0
    rows.append(_row(f"cached tokens/s, {label}", f"{nmi['requests_per_second']:,.0f} vs "
                     f"{base['requests_per_second']:,.0f} = {tput:.2f}x", f">= {THROUGHPUT_RATIO}x",
                     tput >= THROUGHPUT_RATIO))
    p99 = nmi["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("inf")
    rows.append(_row(f"p99, {label}", f"{nmi['p99_ms']:.2f} vs {base['p99_ms']:.2f} ms = {p99:.2f}x",
                     f"<= {P99_RATIO}x", p99 <= P99_RATIO))
    if nmi.get("server_cpu_us_per_request") and base.get("server_cpu_us_per_request"):
        cpu = nmi["server_cpu_us_per_request"] / base["server_cpu_us_per_request"]
        rows.append(_row(f"CPU per cached request, {label}", f"{nmi['server_cpu_us_per_request']:.0f} vs "
                         f"{base['server_cpu_us_per_request']:.0f} us = {cpu:.2f}x", f"<= {CPU_RATIO}x",
                         cpu <= CPU_RATIO))
    return rows


def _statuses(burst: dict[str, Any]) -> str:
    shown = [f"{count} x {status}" for status, count in sorted(burst["statuses"].items())]
    if burst.get("failed"):
        shown.append(f"{burst['failed']} unanswered")
    return ", ".join(shown) or "none answered"


def targets(results: dict[str, Any]) -> list[list[str]]:
    r = results
    rows = _ratio_rows(r, "managed", "nmi_hits") + _ratio_rows(r, "standard", "nmi_standard_hits")
    # Met only if every burst made exactly one IMDS call and every one of its requests was answered 200.
    one_call = r["imds_calls_for_misses"] == r["distinct_resources"] and all(
        b["imds_calls"] == 1 and b["statuses"] == {"200": b["concurrent_requests"]} and not b.get("failed")
        for b in r.get("bursts", []))
    shown = ", ".join(f"{b['concurrent_requests']} at once -> {b['imds_calls']}"
                      + ("" if b["statuses"] == {"200": b["concurrent_requests"]} else f" ({_statuses(b)})")
                      for b in r.get("bursts", []))
    rows.append(_row("upstream calls per (identity, resource)",
                     f"{r['distinct_resources']} keys -> {r['imds_calls_for_misses']}; {shown}", "exactly 1",
                     one_call))
    watch = r.get("watch_apply")
    if watch:
        for resource in ("pods", "azureidentities"):
            speed = watch["speed"][resource]
            rows.append(_row(f"watch events applied/s, {resource}",
                             f"{speed['events_per_cpu_second']:,.0f} per CPU-s ({speed['events_per_second']:,.0f} "
                             f"wall)", f">= {EVENTS_PER_SECOND:,}", speed["events_per_cpu_second"] >= EVENTS_PER_SECOND))
        for resource, size in watch["bytes_per_object"].items():
            rows.append(_row(f"bytes per cached object, {resource}",
                             f"{size:,.0f} (raw JSON {watch['raw_json_bytes_per_object'][resource]:,})",
                             f"<= {BYTES_PER_OBJECT:,}", size <= BYTES_PER_OBJECT))
        listed = sum(watch["speed"][name]["list_cpu_seconds"] for name in watch["speed"])
        rows.append(_row("initial list, world (nmi's CPU)", f"{listed:.2f} CPU-s", "-", None))
    if "nmi_world_rss_mib" in r:
        world = f"{r['world_pods']} pods + {r['world_identities']:,} + {r['world_bindings']:,} CRD objects"
        rows.append(_row(f"RSS, {world}", f"{r['nmi_world_rss_mib']:.1f} MiB (peak {r['nmi_world_peak_rss_mib']:.1f})",
                         f"<= {RSS_MIB} MiB", r["nmi_world_rss_mib"] <= RSS_MIB))
        rows.append(_row(f"spawn -> ready, {world}", f"{r['nmi_world_startup_seconds']:.2f} s",
                         f"<= {READY_SECONDS} s", r["nmi_world_startup_seconds"] <= READY_SECONDS))
    rows.append(_row("spawn -> ready, 1 pod", f"{r['nmi_startup_seconds']:.2f} s", f"<= {READY_SECONDS} s",
                     r["nmi_startup_seconds"] <= READY_SECONDS))
    if "version_seconds" in r:
        rows.append(_row("nmi --version", f"{r['version_seconds']:.2f} s", f"<= {VERSION_SECONDS} s",
                         r["version_seconds"] <= VERSION_SECONDS))
    return rows
