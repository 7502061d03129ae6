"""CacheHealth answers "anything untrusted?" from a set it keeps; it must always agree with the caches' states."""

from __future__ import annotations

import random

from nmi.freshness import FRESH, POD_CACHE, CacheHealth


def _expected(health: CacheHealth, resources: list[str], *, identity_only: bool) -> bool:
    """Whether some cache cannot be trusted, from each cache's state alone."""
    return any(health.state(r) != FRESH for r in resources if not (identity_only and r == POD_CACHE))


def test_the_untrusted_set_agrees_with_every_cache_state_through_random_reports():
    rng = random.Random(12)
    resources = [POD_CACHE, "azureidentities", "azureidentitybindings"]
    for _ in range(50):
        health = CacheHealth(clock=lambda: 0.0)
        for resource in resources:
            health.track(resource)
        for _ in range(40):
            resource = rng.choice(resources)
            report = rng.choice(["listed", "watching", "failed", "expired"])
            if report == "failed":
                health.failed(resource, rng.choice(["list", "watch"]), "HTTP 500")
            else:
                getattr(health, report)(resource)
            for identity_only in (False, True):
                assert bool(health.problems(identity_only=identity_only)) == _expected(
                    health, resources, identity_only=identity_only)
            assert bool(health.identity_problems()) == _expected(health, resources, identity_only=True)


def test_a_stale_identity_cache_is_reported_even_while_the_pod_cache_is_stale_too():
    health = CacheHealth(clock=lambda: 0.0)
    for resource in (POD_CACHE, "azureidentities"):
        health.track(resource)
        health.listed(resource)
    assert health.problems() == [] and health.identity_problems() == []
    health.failed(POD_CACHE, "watch", "HTTP 500")
    assert health.identity_problems() == [] and health.problems()
    health.expired("azureidentities")
    assert health.identity_problems() == ["azureidentities watch stale for 0s (relisting after 410 Gone)"]
    health.listed("azureidentities")
    assert health.identity_problems() == []
