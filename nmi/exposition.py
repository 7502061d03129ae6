"""Prometheus text exposition as upstream's OpenCensus exporter wrote it: a small thread-safe series store
(registered as one collector) and a writer that keeps counter names as given (no forced `_total`) and writes
numbers the Go way. nmi.metrics defines what is measured; this module only stores and writes.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Iterator, cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"
MAX_SERIES_PER_FAMILY = 2000


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(init=False)  # per bucket, not cumulative; the last one is +Inf
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class Family:
    name: str
    help: str
    type: str  # counter | gauge | histogram
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    series: dict[tuple[str, ...], float | Histogram] = field(default_factory=dict)

    def key(self, values: tuple[str, ...]) -> tuple[str, ...]:
        if values in self.series or len(self.series) < MAX_SERIES_PER_FAMILY:
            return values
        return tuple(OTHER for _ in values)

    def to_metric(self) -> Metric:
        metric = Metric(self.name, self.help, self.type)
        for values, value in sorted(self.series.items()):
            labels = dict(zip(self.labels, values))
            if isinstance(value, Histogram):
                cumulative = 0
                for bound, count in zip((*self.buckets, float("inf")), value.counts):
                    cumulative += count
                    metric.add_sample(f"{self.name}_bucket", {**labels, "le": go_float(bound)}, cumulative)
                metric.add_sample(f"{self.name}_sum", labels, value.total)
                metric.add_sample(f"{self.name}_count", labels, value.count)
            else:
                metric.add_sample(self.name, labels, value)
        return metric


class SeriesStore:
    """All series behind one lock (observations come from the event loop and from adapter threads); also the
    registry's collector."""

    def __init__(self, families: list[Family]) -> None:
        self.families = {f.name: f for f in families}
        self._lock = threading.Lock()

    def add(self, name: str, values: tuple[str, ...] = (), amount: float = 1.0) -> None:
        family = self.families[name]
        with self._lock:
            key = family.key(values)
            # counters and gauges hold floats; only observe() stores histograms (a family has one type)
            family.series[key] = cast(float, family.series.get(key, 0.0)) + amount

    def set(self, name: str, values: tuple[str, ...], value: float) -> None:
        family = self.families[name]
        with self._lock:
            family.series[family.key(values)] = value

    def observe(self, name: str, values: tuple[str, ...], value: float) -> None:
        family = self.families[name]
        with self._lock:
            key = family.key(values)
            histogram = cast("Histogram | None", family.series.get(key))
            if histogram is None:
                histogram = family.series[key] = Histogram(family.buckets)
            histogram.observe(value)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            metrics = [f.to_metric() for f in self.families.values() if f.series]
        yield from metrics


def go_float(value: float) -> str:
    """Numbers as Go's exporter wrote them (`1`, not `1.0`): `le` label values must match upstream's exactly,
    or queries such as `..._bucket{le="1"}` in existing dashboards would match nothing."""
    if value != value:
        return "NaN"
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render_text(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format, with metadata named after the samples as written (no forced `_total`)."""
    lines: list[str] = []
    for metric in registry.collect():
        samples = [s for s in metric.samples if not s.name.endswith("_created")]
        if not samples:
            continue
        name = samples[0].name if metric.type == "counter" else metric.name
        mtype = metric.type if metric.type in ("counter", "gauge", "histogram", "summary") else "untyped"
        documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {name} {documentation}\n")
        lines.append(f"# TYPE {name} {mtype}\n")
        for sample in samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            lines.append(f"{sample.name}{{{labels}}} {go_float(sample.value)}\n" if labels
                         else f"{sample.name} {go_float(sample.value)}\n")
    return "".join(lines).encode("utf-8")
