"""Raw Kubernetes JSON (plain dicts) → nmi value types. Pure; no client models, no pydantic.

Every function returns None for an object it cannot make sense of and logs one warning naming it, so one
malformed object never stops a watch. Fields that are merely odd (a weight written as a string) are read
tolerantly instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from sys import intern
from types import MappingProxyType
from typing import Any, TypeGuard, TypeVar

from ..model import (
    EMPTY,
    NAMESPACED_ANNOTATION,
    AssignedIdentity,
    Binding,
    Identity,
    PodIdentityException,
    WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION,
    WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION,
    PodInfo,
    SecretRef,
    ServiceAccount,
    Workload,
)
from ..windows import ANNOTATION as ACTIVE_WINDOWS_ANNOTATION
from ..windows import ActiveWindows, WindowSyntaxError, parse_windows

log = logging.getLogger(__name__)

T = TypeVar("T")
UNSUPPORTED_TYPE = -1  # spec.type present but not an integer: kept, so resolution can say what is wrong


class Malformed(ValueError):
    pass


def object_key(raw: Any) -> tuple[str, str] | None:
    """(namespace, name) of any namespaced object, None if it has none."""
    try:
        meta = _mapping(raw, "metadata")
        return _str(meta, "namespace", required=True), _str(meta, "name", required=True)
    except Malformed:
        return None


def project_pod(raw: Any) -> PodInfo | None:
    return _guard("Pod", raw, _pod)


def project_identity(raw: Any) -> Identity | None:
    return _guard("AzureIdentity", raw, _identity)


def project_binding(raw: Any) -> Binding | None:
    return _guard("AzureIdentityBinding", raw, _binding)


def project_assigned_identity(raw: Any) -> AssignedIdentity | None:
    return _guard("AzureAssignedIdentity", raw, _assigned)


def project_exception(raw: Any) -> PodIdentityException | None:
    return _guard("AzurePodIdentityException", raw, _exception)


def project_service_account(raw: Any) -> ServiceAccount | None:
    return _guard("ServiceAccount", raw, _service_account)


def project_workload(raw: Any) -> Workload | None:
    """A ReplicaSet or Deployment (apps/v1): its UID and its controlling owner."""
    return _guard("workload", raw, _workload)


def _guard(kind: str, raw: Any, projector: Callable[[Any], T]) -> T | None:
    try:
        return projector(raw)
    except Malformed as exc:
        key = object_key(raw)
        where = f"{key[0]}/{key[1]}" if key else "<unnamed>"
        log.warning("skipping malformed %s %s: %s", kind, where, exc)
        return None


def _pod(raw: Any) -> PodInfo:
    meta = _mapping(raw, "metadata")
    spec = _mapping(raw, "spec", required=False)
    status = _mapping(raw, "status", required=False)
    owner = _owner(meta, "replicaset")
    # Values many pods share (namespace, phase, owner, ServiceAccount, label keys and values) are interned: one
    # string per distinct value instead of one per pod, which is most of a cached pod's bytes.
    return PodInfo(
        namespace=intern(_str(meta, "namespace", required=True)),
        name=_str(meta, "name", required=True),
        uid=_str(meta, "uid"),
        ip=_str(status, "podIP"),
        phase=intern(_str(status, "phase") or "Pending"),
        labels=_labels(meta, "labels", shared=True),
        replicaset=intern(str(owner.get("name", ""))),
        replicaset_uid=intern(str(owner.get("uid", ""))),
        deleting=meta.get("deletionTimestamp") is not None,
        host_network=spec.get("hostNetwork") is True,
        service_account=intern(_str(spec, "serviceAccountName") or "default"),
        resource_version=_str(meta, "resourceVersion"),
    )


def _owner(meta: Mapping[str, Any], kind: str | None) -> Mapping[str, Any]:
    """The owner reference of this kind (any kind with None): the controller one if any is marked, else the first."""
    refs = meta.get("ownerReferences") or []
    if not isinstance(refs, list):
        raise Malformed("metadata.ownerReferences is not a list")
    candidates = [ref for ref in refs if _is_object(ref)
                  and (kind is None or str(ref.get("kind", "")).lower() == kind)]
    controllers = [ref for ref in candidates if ref.get("controller") is True]
    return (controllers or candidates or [EMPTY])[0]


def _workload(raw: Any) -> Workload:
    meta = _mapping(raw, "metadata")
    owner = _owner(meta, None)
    return Workload(
        namespace=_str(meta, "namespace", required=True),
        name=_str(meta, "name", required=True),
        uid=_str(meta, "uid"),
        owner_kind=str(owner.get("kind", "")),
        owner_name=str(owner.get("name", "")),
        owner_uid=str(owner.get("uid", "")),
    )


def _service_account(raw: Any) -> ServiceAccount:
    meta = _mapping(raw, "metadata")
    annotations = _labels(meta, "annotations")
    return ServiceAccount(
        namespace=_str(meta, "namespace", required=True),
        name=_str(meta, "name", required=True),
        # Empty values count as absent, as the azwi webhook skips them.
        client_id=annotations.get(WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION, "").strip(),
        tenant_id=annotations.get(WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION, "").strip(),
        uid=_str(meta, "uid"),
    )


def _identity(raw: Any) -> Identity:
    meta = _mapping(raw, "metadata")
    spec = _mapping(raw, "spec", required=False)
    namespace = _str(meta, "namespace", required=True)
    password = None
    ref = spec.get("clientPassword")
    if _is_object(ref) and ref.get("name"):
        password = SecretRef(namespace=str(ref.get("namespace") or namespace), name=str(ref["name"]))
    tenants = spec.get("auxiliaryTenantIDs") or []
    if not isinstance(tenants, list):
        raise Malformed("spec.auxiliaryTenantIDs is not a list")
    annotations = meta.get("annotations") or {}
    # Namespaces, tenants and authority hosts repeat across a cluster's identities: interned, one string each.
    return Identity(
        namespace=intern(namespace),
        name=_str(meta, "name", required=True),
        type=_identity_type(spec.get("type")),
        client_id=_str(spec, "clientID"),
        resource_id=_str(spec, "resourceID"),
        tenant_id=intern(_str(spec, "tenantID")),
        auxiliary_tenant_ids=tuple(intern(str(t)) for t in tenants if t),
        ad_endpoint=intern(_str(spec, "adEndpoint")),
        client_password=password,
        namespaced=_is_object(annotations) and annotations.get(NAMESPACED_ANNOTATION) == "namespaced",
        uid=_str(meta, "uid"),
    )


def _binding(raw: Any) -> Binding:
    meta = _mapping(raw, "metadata")
    spec = _mapping(raw, "spec", required=False)
    windows, windows_error = _active_windows(meta)
    return Binding(
        namespace=intern(_str(meta, "namespace", required=True)),
        name=_str(meta, "name", required=True),
        identity_name=_str(spec, "azureIdentity"),
        selector=_str(spec, "selector"),
        weight=_weight(spec.get("weight")),
        windows=windows,
        windows_error=windows_error,
    )


def _active_windows(meta: Mapping[str, Any]) -> tuple[ActiveWindows | None, str]:
    """Parsed here, once per binding version; a malformed annotation keeps the binding (inactive, with the
    reason) so resolution can refuse its pods with a 403 rather than forget them."""
    annotations = meta.get("annotations")
    if not _is_object(annotations) or ACTIVE_WINDOWS_ANNOTATION not in annotations:
        return None, ""
    text = annotations[ACTIVE_WINDOWS_ANNOTATION]
    if not isinstance(text, str):
        return None, "not a string"
    try:
        return parse_windows(text), ""
    except WindowSyntaxError as exc:
        return None, str(exc)


def _assigned(raw: Any) -> AssignedIdentity:
    meta = _mapping(raw, "metadata")
    spec = _mapping(raw, "spec", required=False)
    status = _mapping(raw, "status", required=False)
    embedded = spec.get("azureIdentityRef")
    identity = _identity(embedded) if _is_object(embedded) else None
    binding = spec.get("azureBindingRef")
    binding = binding if _is_object(binding) else {}
    binding_meta = _mapping(binding, "metadata", required=False)
    try:
        embedded = _binding(binding) if binding_meta.get("name") and binding_meta.get("namespace") else None
    except Malformed:
        embedded = None
    return AssignedIdentity(
        namespace=_str(meta, "namespace", required=True),
        name=_str(meta, "name", required=True),
        pod=_str(spec, "pod"),
        pod_namespace=_str(spec, "podNamespace"),
        node=_str(spec, "nodename"),
        status=_str(status, "status"),
        identity=identity,
        binding_name=_str(binding_meta, "name"),
        binding_weight=_weight(_mapping(binding, "spec", required=False).get("weight")),
        binding_namespace=_str(binding_meta, "namespace"),
        binding=embedded,
    )


def _exception(raw: Any) -> PodIdentityException:
    meta = _mapping(raw, "metadata")
    spec = _mapping(raw, "spec", required=False)
    return PodIdentityException(
        namespace=_str(meta, "namespace", required=True),
        name=_str(meta, "name", required=True),
        pod_labels=_labels(spec, "podLabels"),
    )


def _is_object(value: Any) -> TypeGuard[Mapping[str, Any]]:
    # dict first: what JSON gives us, and ~5x cheaper than the ABC check every other mapping needs.
    return isinstance(value, dict) or isinstance(value, Mapping)


def _mapping(raw: Any, field: str, *, required: bool = True) -> Mapping[str, Any]:
    if raw.__class__ is dict:  # the usual case (parsed JSON), checked first: every pod watch event comes here
        value = raw.get(field)
        if value.__class__ is dict:
            return value
    if not _is_object(raw):
        raise Malformed("not a JSON object")
    value = raw.get(field)
    if value is None and not required:
        return EMPTY
    if not _is_object(value):
        raise Malformed(f"{field} is missing or not an object")
    return value


def _str(raw: Mapping[str, Any], field: str, *, required: bool = False) -> str:
    value = raw.get(field)
    if value.__class__ is str and value:  # the usual case, checked first
        return value
    if value is None or value == "":
        if required:
            raise Malformed(f"{field} is missing")
        return ""
    if not isinstance(value, str):
        raise Malformed(f"{field} is not a string")
    return value


def _labels(raw: Mapping[str, Any], field: str, *, shared: bool = False) -> Mapping[str, str]:
    value = raw.get(field)
    if not value:
        return EMPTY
    if not _is_object(value):
        raise Malformed(f"{field} is not an object")
    if shared:  # keys and values repeat across the pods of a workload (interned strings are freed when unused)
        return MappingProxyType({intern(str(k)): intern(v) for k, v in value.items() if isinstance(v, str)})
    return MappingProxyType({str(k): v for k, v in value.items() if isinstance(v, str)})


def _identity_type(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        return UNSUPPORTED_TYPE
    try:
        return int(value)
    except (TypeError, ValueError):
        return UNSUPPORTED_TYPE


def _weight(value: Any) -> int:
    # NMI upstream ignores weight; we rank by it, so a bad value must not drop the binding.
    if value is None or isinstance(value, bool):
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
