"""Fixtures for the fault suites: fakes on a background loop and the real nmi process against them."""

from __future__ import annotations

import pytest

from fakes.background import BackgroundFakes

from tests.faults.harness import REPORT, FaultyNmi
from tests.faults.world import MANAGED_FLAGS, NODE, X, Y, base_objects


@pytest.fixture
def fakes():
    """Fakes not started yet: the test decides whether the API server is there from the start."""
    fakes = BackgroundFakes([X, Y])
    yield fakes
    fakes.stop()


@pytest.fixture(scope="module")
def shared_fakes():
    with BackgroundFakes([X, Y]) as fakes:
        fakes.put_all(base_objects())
        yield fakes


@pytest.fixture(scope="module")
def running(shared_fakes, tmp_path_factory):
    """One ready nmi (managed mode) per module; tests use their own pod IPs and restore what they break."""
    nmi = FaultyNmi(tmp_path_factory.mktemp("nmi"), shared_fakes, node=NODE, extra=MANAGED_FLAGS)
    nmi.start()
    yield nmi
    assert nmi.stop() == 0, nmi.log()[-3000:]


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.write_sep("-", "chaos")
        for line in REPORT:
            terminalreporter.write_line(line)
