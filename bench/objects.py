"""Kubernetes objects the size real clusters serve: the fakes' minimal objects plus what the API server adds.

A real pod carries managedFields, a full container spec and status conditions; a real AzureIdentity or binding
carries the kubectl last-applied annotation and managedFields. nmi parses all of it and keeps a small projection,
so both parsing speed and bytes kept per object are measured on objects of these sizes (about 3.5 KiB per pod,
1.3 KiB per AzureIdentity, 0.9 KiB per binding as JSON).
"""

from __future__ import annotations

import json
from typing import Any

from fakes.kubeobjects import make_binding, make_identity, make_pod

CLIENT_ID = "bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb"


def _managed_fields(manager: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"manager": manager, "operation": "Update", "apiVersion": "v1", "time": "2026-11-30T10:00:00Z",
             "fieldsType": "FieldsV1", "fieldsV1": fields}]


def _server_metadata(obj: dict[str, Any], index: int, *, applied: bool) -> dict[str, Any]:
    meta = obj["metadata"]
    meta.setdefault("uid", f"{index:08x}-1111-4111-8111-{index:012x}")
    meta.update(resourceVersion=str(100_000 + index), creationTimestamp="2026-11-30T10:00:00Z", generation=1)
    if applied:
        shown = {k: v for k, v in obj.items() if k != "status"}
        meta.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = json.dumps(shown)
    meta["managedFields"] = _managed_fields("kubectl-client-side-apply", {"f:spec": {
        key: {} for key in obj.get("spec", {})}})
    return obj


def pod(index: int, *, namespace: str, ip: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    app = f"app-{index // 50:04d}"
    obj = make_pod(f"{app}-{index:05d}", namespace, ip, node, replicaset=app, labels=labels,
                   uid=f"uid-{index:05d}")
    obj["spec"].update(
        containers=[{"name": "app", "image": "mcr.microsoft.com/azure-cli:2.60.0", "command": ["sleep", "infinity"],
                     "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                     "env": [{"name": "AZURE_CLIENT_ID", "value": CLIENT_ID}],
                     "volumeMounts": [{"name": "kube-api-access", "mountPath":
                                       "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}],
                     "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"}],
        volumes=[{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
        restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default-scheduler",
        tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                      "tolerationSeconds": 300}])
    obj.setdefault("status", {}).update(
        hostIP="10.240.0.4", startTime="2026-11-30T10:00:01Z", qosClass="Burstable",
        conditions=[{"type": t, "status": "True", "lastTransitionTime": "2026-11-30T10:00:05Z"}
                    for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
        containerStatuses=[{"name": "app", "ready": True, "restartCount": 0, "started": True,
                            "image": "mcr.microsoft.com/azure-cli:2.60.0",
                            "imageID": "mcr.microsoft.com/azure-cli@sha256:" + "ab" * 32,
                            "containerID": "containerd://" + f"{index:064x}",
                            "state": {"running": {"startedAt": "2026-11-30T10:00:04Z"}}}])
    obj["metadata"]["labels"]["pod-template-hash"] = "5d8f7c9b6d"
    return _server_metadata(obj, index, applied=False)


def identity(index: int, *, namespace: str) -> dict[str, Any]:
    name = f"id-{index:05d}"
    resource_id = ("/subscriptions/00000000-0000-4000-8000-000000000000/resourceGroups/rg-bench/providers/"
                   f"Microsoft.ManagedIdentity/userAssignedIdentities/{name}")
    return _server_metadata(make_identity(name, namespace, client_id=f"{index:08x}-2222-4222-8222-bbbbbbbbbbbb",
                                          resource_id=resource_id), index, applied=True)


def binding(index: int, *, namespace: str) -> dict[str, Any]:
    return _server_metadata(make_binding(f"binding-{index:05d}", namespace, identity=f"id-{index:05d}",
                                         selector=f"selector-{index:05d}"), index, applied=True)
