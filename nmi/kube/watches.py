"""The informers nmi runs: this node's pods and the aad-pod-identity CRDs, wired to the indexes."""

from __future__ import annotations

import functools
from typing import Any

from kubernetes import client as k8s_client

from ..cache import IdentityIndex
from ..model import MIC_DEPLOYMENT
from ..pod_index import PodIndex
from ..workloads import WorkloadIndex
from .informer import Informer, WatchTarget
from .rest import KubeApi
from .projection import (
    project_assigned_identity,
    project_binding,
    project_exception,
    project_identity,
    project_pod,
    project_service_account,
    project_workload,
)

GROUP = "aadpodidentity.k8s.io"
VERSION = "v1"
IDENTITIES = "azureidentities"
BINDINGS = "azureidentitybindings"
ASSIGNED_IDENTITIES = "azureassignedidentities"
EXCEPTIONS = "azurepodidentityexceptions"


def pods_target(api_client: k8s_client.ApiClient, node: str) -> WatchTarget:
    return WatchTarget(
        resource="pods",
        list_call=KubeApi(api_client).list_pod_for_all_namespaces,
        project=project_pod,
        field_selector=f"spec.nodeName={node}",
    )


def service_accounts_target(api_client: k8s_client.ApiClient) -> WatchTarget:
    """Every ServiceAccount (the workload identity bridge reads their azure.workload.identity annotations)."""
    return WatchTarget(
        resource="serviceaccounts",
        list_call=KubeApi(api_client).list_service_account_for_all_namespaces,
        project=project_service_account,
    )


def mic_owner_targets(api_client: k8s_client.ApiClient, mic_namespace: str) -> tuple[WatchTarget, WatchTarget]:
    """ReplicaSets of --MICNamespace and its Deployment `mic` (apps/v1), for the MIC owner chain: one namespace,
    and for Deployments one name (RBAC can grant list/watch of that name alone with this field selector)."""
    apps = KubeApi(api_client)
    return (
        WatchTarget(resource="replicasets", project=project_workload,
                    list_call=functools.partial(apps.list_namespaced_replica_set, mic_namespace)),
        WatchTarget(resource="deployments", project=project_workload,
                    list_call=functools.partial(apps.list_namespaced_deployment, mic_namespace),
                    field_selector=f"metadata.name={MIC_DEPLOYMENT}"),
    )


def crd_target(
    api_client: k8s_client.ApiClient, plural: str, *, label_selector: str | None = None
) -> WatchTarget:
    projections = {
        IDENTITIES: project_identity,
        BINDINGS: project_binding,
        ASSIGNED_IDENTITIES: project_assigned_identity,
        EXCEPTIONS: project_exception,
    }
    api = KubeApi(api_client)
    return WatchTarget(
        resource=plural,
        list_call=functools.partial(api.list_cluster_custom_object, GROUP, VERSION, plural),
        project=projections[plural],
        label_selector=label_selector,
    )


def node_informers(
    api_client: k8s_client.ApiClient,
    *,
    node: str,
    pods: PodIndex,
    identities: IdentityIndex,
    managed: bool,
    scale_features: bool = False,
    workload_identity: bool = False,
    mic_namespace: str = "default",
    workloads: WorkloadIndex | None = None,
    **informer_options: Any,
) -> list[Informer]:
    """The informers one mode needs: this node's pods, AzureIdentity, AzureIdentityBinding and
    AzurePodIdentityException always; AzureAssignedIdentity in standard mode, filtered by the `nodename`
    label when scale features are on, and (given `workloads`) the ReplicaSets and Deployment `mic` of
    `mic_namespace` for the MIC check; ServiceAccounts with the workload identity bridge. `informer_options` go to every `Informer`.

    Unlike upstream, standard mode watches identities and bindings too: a pod no binding selects must fail
    at once rather than wait for an assignment MIC will never make (SPEC §2).
    """
    informers = [
        Informer(pods_target(api_client, node), pods, **informer_options),
        Informer(crd_target(api_client, EXCEPTIONS), identities.exception_store, **informer_options),
        Informer(crd_target(api_client, IDENTITIES), identities.identity_store, **informer_options),
        Informer(crd_target(api_client, BINDINGS), identities.binding_store, **informer_options),
    ]
    if not managed:
        selector = f"nodename={node}" if scale_features else None
        target = crd_target(api_client, ASSIGNED_IDENTITIES, label_selector=selector)
        informers.append(Informer(target, identities.assigned_store, **informer_options))
        if workloads is not None:
            replicasets, deployments = mic_owner_targets(api_client, mic_namespace)
            informers.append(Informer(replicasets, workloads.replicaset_store, **informer_options))
            informers.append(Informer(deployments, workloads.deployment_store, **informer_options))
    if workload_identity:  # opt-in: without the flag nmi neither lists nor watches ServiceAccounts
        informers.append(Informer(service_accounts_target(api_client), identities.service_account_store,
                                  **informer_options))
    return informers
