"""bench.soak's outputs from given samples (the soak itself runs for minutes: `make soak`, never in CI)."""

import csv

import pytest

from bench.soak import COLUMNS, classify, main, summary, write_outputs


def rows(count: int) -> list[dict]:
    return [{"elapsed_s": 10 * (n + 1), "requests": 100, "per_second": 10.0, "ok": 90, "refused": 0,
             "unavailable": 10, "throttled": 0, "failed": 0, "p50_ms": 2.0, "p90_ms": 5.0, "p99_ms": 9.0 + n,
             "max_ms": 20.0, "rss_mib": 90.0 + n, "fds": 20, "threads": 9, "loop_lag_ms": 1.5,
             "faults": "cut" if n == 2 else ""} for n in range(count)]


def test_samples_become_a_csv_a_summary_and_a_plot(tmp_path):
    write_outputs(rows(10), tmp_path)
    with open(tmp_path / "soak.csv") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 10 and list(written[0]) == COLUMNS and written[2]["faults"] == "cut"
    by_series = {row["series"]: row for row in summary(rows(10))}
    assert by_series["rss_mib"]["first"] == 90.0 and by_series["rss_mib"]["last"] == 99.0
    assert by_series["rss_mib"]["after_warmup"] == 92.0 and by_series["p99_ms"]["max"] == 18.0
    assert (tmp_path / "soak-summary.csv").read_text().startswith("series,first,after_warmup,last,min,max,mean")
    pytest.importorskip("matplotlib")
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_answers_are_classified_and_the_duration_is_bounded():
    assert [classify(s) for s in (200, 400, 403, 429, 503, 500)] == [
        "ok", "refused", "refused", "throttled", "unavailable", "failed"]
    with pytest.raises(SystemExit):
        main(["--seconds", "0"])
    with pytest.raises(SystemExit):
        main(["--seconds", "100000"])
