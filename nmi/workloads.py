"""Watch caches of ReplicaSets and Deployments in --MICNamespace (standard mode only): the MIC owner chain.

Imports no foreign library; fed by two informers like the other stores.
"""

from __future__ import annotations

from .cache import ObjectStore
from .model import Workload


def _namespace(item: Workload) -> str:
    return item.namespace


class WorkloadIndex:
    """`nmi.ports.WorkloadDirectory`."""

    def __init__(self) -> None:
        self.generation = 0  # bumped on every change: what a remembered decision is checked against
        self.replicaset_store: ObjectStore[Workload] = ObjectStore(_namespace, on_change=self._changed)
        self.deployment_store: ObjectStore[Workload] = ObjectStore(_namespace, on_change=self._changed)

    def _changed(self) -> None:
        self.generation += 1

    def replicaset(self, namespace: str, name: str) -> Workload | None:
        return self.replicaset_store.get(namespace, name)

    def deployment(self, namespace: str, name: str) -> Workload | None:
        return self.deployment_store.get(namespace, name)
