"""Building the `kubernetes` ApiClient: explicit URL (tests, demo), kubeconfig, or in-cluster config."""

from __future__ import annotations

import os

from kubernetes import client as k8s_client
from kubernetes.config.config_exception import ConfigException


class KubeConfigError(Exception):
    """No usable Kubernetes API configuration. The message is one line, fit for the console."""


ApiClient = k8s_client.ApiClient  # for modules that hand the client on: only nmi.kube imports kubernetes


def build_api_client(
    *,
    host: str | None = None,
    token: str | None = None,
    kubeconfig: str | None = None,
    environ: dict[str, str] | None = None,
) -> k8s_client.ApiClient:
    """An ApiClient from, in order of preference: an explicit `host` URL (plus optional bearer `token`),
    the `kubeconfig` path or `$KUBECONFIG`, or the in-cluster service account.

    Raises KubeConfigError naming what was tried when none works.
    """
    env = os.environ if environ is None else environ
    configuration = k8s_client.Configuration()
    if host:
        configuration.host = host.rstrip("/")
        if token:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        return k8s_client.ApiClient(configuration)

    path = kubeconfig or env.get("KUBECONFIG", "")
    if path:
        # KUBECONFIG may be a path list; the client itself reads only the first file.
        first = path.split(os.pathsep)[0]
        try:
            from kubernetes.config.kube_config import load_kube_config  # yaml, oauthlib...: only when used

            load_kube_config(config_file=first, client_configuration=configuration, persist_config=False)
        except Exception as exc:  # an operator's file: whatever the loader (or its YAML parser) raises, one line
            raise KubeConfigError(f"cannot load kubeconfig {first}: {_one_line(exc)}") from exc
        return k8s_client.ApiClient(configuration)

    from kubernetes.config.incluster_config import load_incluster_config

    try:
        load_incluster_config(client_configuration=configuration)
    except (ConfigException, OSError) as exc:
        raise KubeConfigError(
            "no Kubernetes API configuration: not running in a cluster "
            f"({_one_line(exc)}) and neither --kubeconfig nor KUBECONFIG is set"
        ) from exc
    return k8s_client.ApiClient(configuration)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
