"""--node-startup-taint: the guarded JSON patch, the real kubernetes client against the fake API server's Nodes,
a concurrent writer that must not be overwritten, and the root task's wait and backoff (injected sleep)."""

from __future__ import annotations

import asyncio

import pytest

from fakes.nodes import make_node
from nmi.kube.nodes import KubeNodeTaints
from nmi.startup_taint import (TaintConflict, TaintRemovalFailed, remove_once, remove_startup_taint,
                               removal_patch)

KEY = "aadpodidentity.k8s.io/nmi-not-ready"
OURS = {"key": KEY, "value": "true", "effect": "NoSchedule"}
OURS_EXECUTE = {"key": KEY, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}
OTHER = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
THEIRS = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}


def test_patch_tests_each_taint_it_removes_highest_index_first():
    assert removal_patch([OTHER, OURS, THEIRS, OURS_EXECUTE], KEY) == [
        {"op": "test", "path": "/spec/taints/3", "value": OURS_EXECUTE}, {"op": "remove", "path": "/spec/taints/3"},
        {"op": "test", "path": "/spec/taints/1", "value": OURS}, {"op": "remove", "path": "/spec/taints/1"},
    ]
    assert removal_patch([OTHER, THEIRS], KEY) == []
    assert removal_patch([], KEY) == []


@pytest.fixture
def nodes(api_client):
    adapter = KubeNodeTaints(api_client, request_timeout=5)
    yield adapter
    adapter.close()


async def test_the_taint_is_removed_with_a_json_patch_and_nothing_else_changes(apiserver, nodes):
    apiserver.nodes.put(make_node("n1", taints=[OTHER, OURS, THEIRS], labels={"pool": "a"}))
    assert await remove_once(nodes, node="n1", key=KEY) is True
    assert apiserver.nodes.taints("n1") == [OTHER, THEIRS]
    assert apiserver.nodes.nodes["n1"]["metadata"]["labels"] == {"pool": "a"}
    (patch,) = apiserver.nodes.patches
    assert patch["content_type"] == "application/json-patch+json" and patch["status"] == 200
    assert [op["op"] for op in patch["operations"]] == ["test", "remove"]
    assert await remove_once(nodes, node="n1", key=KEY) is False  # gone: a read, no patch
    assert len(apiserver.nodes.patches) == 1


async def test_attack_a_concurrent_taint_change_is_never_overwritten(apiserver, nodes):
    apiserver.nodes.put(make_node("n1", taints=[OTHER, OURS]))
    # Right after nmi read the Node, another controller inserts a taint first (shifting ours to index 2).
    apiserver.nodes.on_read = lambda node: node["spec"]["taints"].insert(0, THEIRS)
    with pytest.raises(TaintConflict):
        await remove_once(nodes, node="n1", key=KEY)
    assert apiserver.nodes.taints("n1") == [THEIRS, OTHER, OURS]  # the refused patch changed nothing
    assert apiserver.nodes.patches[-1]["status"] == 422
    assert await remove_once(nodes, node="n1", key=KEY) is True  # read again, removed exactly ours
    assert apiserver.nodes.taints("n1") == [THEIRS, OTHER]


async def test_a_concurrently_removed_taint_makes_the_patch_fail_not_remove_another(apiserver, nodes):
    apiserver.nodes.put(make_node("n1", taints=[OTHER, OURS, THEIRS]))
    apiserver.nodes.on_read = lambda node: node["spec"]["taints"].remove(OURS)  # someone removed it first
    with pytest.raises(TaintConflict):
        await remove_once(nodes, node="n1", key=KEY)
    assert apiserver.nodes.taints("n1") == [OTHER, THEIRS]  # index 1 is now THEIRS: the test op protected it
    assert await remove_once(nodes, node="n1", key=KEY) is False


@pytest.mark.parametrize("status, error", [(403, TaintRemovalFailed), (404, TaintRemovalFailed),
                                           (500, TaintRemovalFailed), (409, TaintConflict)])
async def test_api_failures_are_translated(apiserver, nodes, status, error):
    apiserver.nodes.put(make_node("n1", taints=[OURS]))
    apiserver.fail_next(1, status=status, path_prefix="/api/v1/nodes/")
    with pytest.raises(error) as raised:
        await remove_once(nodes, node="n1", key=KEY)
    if status == 403:
        assert "startup-taint component" in str(raised.value)
    assert apiserver.nodes.taints("n1") == [OURS]


class Clock:
    """An injected sleep: records the pauses, runs `actions[n]` during the n-th, returns at once."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self.actions: dict[int, object] = {}

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        action = self.actions.get(len(self.pauses))
        if callable(action):
            action()
        await asyncio.sleep(0)


async def run_task(nodes, clock, ready, done: asyncio.Event, **kwargs) -> None:
    task = asyncio.create_task(remove_startup_taint(nodes, node="n1", key=KEY, ready=ready, sleep=clock,
                                                    on_done=lambda removed: done.set(), **kwargs))
    try:
        await asyncio.wait_for(done.wait(), timeout=10)
        await asyncio.sleep(0)
        assert not task.done()  # a root task: it idles once done, never ends on its own
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_task_touches_the_node_only_once_nmi_is_ready(apiserver, nodes):
    apiserver.nodes.put(make_node("n1", taints=[OURS]))
    state = {"ready": False}
    clock = Clock()

    def become_ready() -> None:
        assert apiserver.nodes.patches == [] and apiserver.requests_for("") == []  # nothing before ready
        state["ready"] = True

    clock.actions[3] = become_ready
    await run_task(nodes, clock, lambda: state["ready"], asyncio.Event(), ready_poll=0.5)
    assert clock.pauses == [0.5, 0.5, 0.5]
    assert apiserver.nodes.taints("n1") == []


async def test_conflicts_and_failures_are_retried_with_capped_exponential_backoff(apiserver, nodes):
    apiserver.nodes.put(make_node("n1", taints=[OURS]))
    apiserver.fail_next(2, status=409, path_prefix="/api/v1/nodes/")
    apiserver.fail_next(3, status=503, path_prefix="/api/v1/nodes/")
    clock = Clock()
    await run_task(nodes, clock, lambda: True, asyncio.Event(), backoff_initial=0.5, backoff_max=3)
    assert clock.pauses == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert apiserver.nodes.taints("n1") == []
