"""Fixtures for the real-iptables tests: a fresh namespace per test, the backend mode, agent processes."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from tests.iptables.agent_process import Agent
from tests.iptables.netns import Namespace, Topology, netns_unavailable

MODES = ("legacy", "nft")


@pytest.fixture
def netns() -> Iterator[Namespace]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with Namespace("ipt") as namespace:
        yield namespace


@pytest.fixture
def topology() -> Iterator[Topology]:
    """A node namespace with two pods on a bridge (see netns.Topology)."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with Topology(pods=2) as built:
        yield built


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def start_agent(request: pytest.FixtureRequest) -> Iterator[Callable[..., Agent]]:
    """Starts agents (by default in the test's `netns`) and kills them all at teardown."""
    agents: list[Agent] = []

    def start(*args: str, ns: Namespace | None = None) -> Agent:
        agents.append(Agent(ns or request.getfixturevalue("netns"), *args))
        return agents[-1]

    yield start
    for agent in agents:
        agent.kill()


@pytest.fixture
def backend_agent(start_agent: Callable[..., Agent], mode: str) -> Agent:
    """A `serve` agent for the test's backend mode in the test's namespace, ready for calls."""
    agent = start_agent("serve", "--backend", mode)
    agent.wait_for(lambda event: event.get("event") == "ready")
    return agent
