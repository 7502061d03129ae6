"""Builders for schema-complete Kubernetes objects (plain dicts) as the fake API server serves them.

Pods carry everything the real client's pydantic models insist on (spec.containers...), so the same
objects also work with code that does deserialize them.
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

CRD_API = "aadpodidentity.k8s.io/v1"


def _meta(name: str, namespace: str, *, labels: Mapping[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = dict(labels)
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


def make_pod(
    name: str,
    namespace: str = "default",
    ip: str = "10.244.0.5",
    node: str = "node-1",
    *,
    labels: Mapping[str, str] | None = None,
    phase: str = "Running",
    uid: str | None = None,
    replicaset: str | None = None,
    replicaset_uid: str | None = None,
    deleting: bool = False,
    host_network: bool = False,
    service_account: str = "default",
) -> dict[str, Any]:
    owners = None
    if replicaset:
        owners = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replicaset,
                   "uid": replicaset_uid or f"rs-{replicaset}", "controller": True}]
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status.update(podIP=ip, podIPs=[{"ip": ip}], hostIP="10.240.0.4")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(
            name, namespace, labels=labels, uid=uid, ownerReferences=owners,
            deletionTimestamp="2026-01-01T00:00:00Z" if deleting else None,
        ),
        "spec": {
            "nodeName": node,
            "serviceAccountName": service_account,
            "hostNetwork": host_network,
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
        "status": status,
    }


def make_deployment(name: str, namespace: str = "default", *, uid: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, namespace, uid=uid),
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": name, "image": "registry.example/mic:1"}]}}}}


def make_replicaset(name: str, namespace: str = "default", *, uid: str | None = None, deployment: str | None = None,
                    deployment_uid: str | None = None) -> dict[str, Any]:
    """A ReplicaSet, controlled by the named Deployment (with that UID) when one is given."""
    owners = None
    if deployment:
        owners = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                   "uid": deployment_uid or f"deploy-{deployment}", "controller": True, "blockOwnerDeletion": True}]
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": _meta(name, namespace, uid=uid,
                                                                              ownerReferences=owners),
            "spec": {"selector": {"matchLabels": {"app": "mic"}}}}


def make_identity(
    name: str,
    namespace: str = "default",
    *,
    type: int = 0,
    client_id: str = "00000000-0000-0000-0000-000000000001",
    resource_id: str = "",
    tenant_id: str = "",
    auxiliary_tenant_ids: list[str] | None = None,
    ad_endpoint: str = "",
    secret: str | None = None,
    secret_namespace: str | None = None,
    namespaced: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type, "clientID": client_id, "resourceID": resource_id, "tenantID": tenant_id}
    if auxiliary_tenant_ids:
        spec["auxiliaryTenantIDs"] = list(auxiliary_tenant_ids)
    if ad_endpoint:
        spec["adEndpoint"] = ad_endpoint
    if secret:
        spec["clientPassword"] = {"name": secret, "namespace": secret_namespace or namespace}
    annotations = {"aadpodidentity.k8s.io/Behavior": "namespaced"} if namespaced else None
    return {"apiVersion": CRD_API, "kind": "AzureIdentity",
            "metadata": _meta(name, namespace, annotations=annotations), "spec": spec}


def make_binding(
    name: str, namespace: str = "default", *, identity: str, selector: str, weight: int | str | None = None,
    active_windows: str | None = None,
) -> dict[str, Any]:
    """`active_windows` sets the aadpodidentity.k8s.io/active-windows annotation (time-boxed binding)."""
    spec: dict[str, Any] = {"azureIdentity": identity, "selector": selector}
    if weight is not None:
        spec["weight"] = weight
    annotations = {"aadpodidentity.k8s.io/active-windows": active_windows} if active_windows is not None else None
    return {"apiVersion": CRD_API, "kind": "AzureIdentityBinding",
            "metadata": _meta(name, namespace, annotations=annotations), "spec": spec}


def make_assigned_identity(
    name: str,
    namespace: str = "default",
    *,
    pod: str,
    pod_namespace: str = "default",
    node: str = "node-1",
    identity: Mapping[str, Any] | None = None,
    binding: Mapping[str, Any] | None = None,
    status: str | None = "Assigned",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"pod": pod, "podNamespace": pod_namespace, "nodename": node}
    if identity is not None:
        spec["azureIdentityRef"] = dict(identity)
    if binding is not None:
        spec["azureBindingRef"] = dict(binding)
    obj = {"apiVersion": CRD_API, "kind": "AzureAssignedIdentity",
           "metadata": _meta(name, namespace, labels={"nodename": node}), "spec": spec}
    if status is not None:
        obj["status"] = {"status": status}
    return obj


def make_exception(name: str, namespace: str = "default", *, pod_labels: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": CRD_API, "kind": "AzurePodIdentityException", "metadata": _meta(name, namespace),
            "spec": {"podLabels": dict(pod_labels)}}


def make_secret(name: str, namespace: str = "default", data: Mapping[str, bytes | str] | None = None) -> dict[str, Any]:
    encoded = {
        key: base64.b64encode(value.encode() if isinstance(value, str) else value).decode()
        for key, value in (data or {}).items()
    }
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, namespace), "type": "Opaque",
            "data": encoded}


def make_service_account(name: str, namespace: str = "default", *, client_id: str | None = None,
                         tenant_id: str | None = None, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A ServiceAccount, with the azure.workload.identity annotations when client_id / tenant_id are given."""
    notes = dict(annotations or {})
    if client_id is not None:
        notes["azure.workload.identity/client-id"] = client_id
    if tenant_id is not None:
        notes["azure.workload.identity/tenant-id"] = tenant_id
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if notes:
        meta["annotations"] = notes
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}
