"""nmi's one backoff, with the numbers each user gives it: the token retries, the watches, the startup taint."""

from __future__ import annotations

import pytest

from nmi.backoff import Backoff, Retries


def test_delays_double_from_base_up_to_the_cap_without_jitter():
    backoff = Backoff(0.5, 3.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert backoff.delay(0) == 0.5  # no failure yet counts as the first


@pytest.mark.parametrize("rand, expected", [(0.0, 2.0), (0.5, 2.5), (0.999, 2.0 * 1.4995)])
def test_jitter_scales_the_capped_ceiling_within_its_range(rand, expected):
    assert Backoff(1.0, 4.0, jitter=(1.0, 1.5)).delay(2, lambda: rand) == pytest.approx(expected)
    assert Backoff(0.5, 30.0, jitter=(0.5, 1.0)).delay(50, lambda: 1.0) == 30.0


def test_a_jitter_free_backoff_draws_no_randomness():
    def no_draws() -> float:
        raise AssertionError("drew a random number")

    assert Backoff(0.5, 30.0).delay(3, no_draws) == 2.0


def test_retries_count_failures_in_a_row_and_start_again_after_a_reset():
    retries = Retries(Backoff(0.5, 3.0))
    assert [retries.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retries.failures == 5
    retries.reset()
    assert (retries.failed(), retries.failures) == (0.5, 1)


def test_an_outage_of_hours_keeps_the_cap_instead_of_overflowing():
    # Found while typing nmi (2**(failures - 1) overflowed a float at ~1025 failures in a row: the watch thread
    # or the startup-taint task died of OverflowError after hours of API server outage instead of retrying).
    assert Backoff(0.5, 30.0, jitter=(0.5, 1.0)).delay(5000, lambda: 0.999) == pytest.approx(30.0 * 0.9995)
    assert Backoff(1e-9, 1e9).delay(10**6) == 1e9
    retries = Retries(Backoff(2.0, 300.0))
    assert {retries.failed() for _ in range(3000)} >= {300.0}
    assert retries.failed() == 300.0
