"""The SPEC §10 verdicts of `bench.targets`, judged on hand-made results (no processes, no timing)."""

from bench.targets import targets


def one_call_row(bursts):
    results = {"baseline_hits": {"requests_per_second": 1000.0, "p99_ms": 1.0}, "imds_calls_for_misses": 60,
               "distinct_resources": 60, "bursts": bursts, "nmi_startup_seconds": 0.5}
    [row] = [row for row in targets(results) if row[0] == "upstream calls per (identity, resource)"]
    return row


def burst(size, *, imds_calls=1, statuses=None, failed=0):
    return {"concurrent_requests": size, "sources": 1, "answered": size - failed, "failed": failed,
            "statuses": {"200": size} if statuses is None else statuses, "imds_calls": imds_calls}


def test_one_call_is_met_only_when_every_burst_made_one_call_and_answered_every_request_200():
    assert one_call_row([burst(1), burst(16), burst(256)])[3] == "met"
    assert one_call_row([burst(1), burst(256, imds_calls=2)])[3] == "NOT MET"
    assert one_call_row([burst(1), burst(256, imds_calls=0)])[3] == "NOT MET"


def test_a_burst_cut_short_by_the_per_source_cap_is_not_met_and_says_so():
    # 256 connections from one source address: nmi answers 64 (SPEC §7) and closes the rest.
    row = one_call_row([burst(1), burst(256, statuses={"200": 64}, failed=192)])
    assert row[3] == "NOT MET" and "64 x 200" in row[1] and "192 unanswered" in row[1]
    row = one_call_row([burst(16, statuses={"200": 15, "503": 1})])
    assert row[3] == "NOT MET" and "1 x 503" in row[1]
