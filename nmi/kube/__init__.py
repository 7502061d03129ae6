"""The Kubernetes adapter: the only package in nmi that imports `kubernetes`."""

from .client import KubeConfigError, build_api_client
from .informer import Informer, WatchTarget
from .watchstream import backoff_delay
from .reads import KubeSecretReader, LivePodLookup
from .tokenrequests import KubeServiceAccountTokens
from .watches import crd_target, node_informers, pods_target, service_accounts_target

__all__ = [
    "Informer",
    "KubeConfigError",
    "KubeSecretReader",
    "KubeServiceAccountTokens",
    "LivePodLookup",
    "WatchTarget",
    "backoff_delay",
    "build_api_client",
    "crd_target",
    "node_informers",
    "pods_target",
    "service_accounts_target",
]
