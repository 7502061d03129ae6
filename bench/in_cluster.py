"""`python -m bench.in_cluster --api-url=URL <nmi flags>`: nmi started the way a DaemonSet pod starts it.

In a pod nmi has no kubeconfig: it configures its client in-cluster (`kubernetes.config.incluster_config`), and
the kubeconfig loader with what it imports (yaml, oauthlib, requests-oauthlib, pydantic: ~12 MiB resident and
~0.2 s) is never loaded. Started with `--kubeconfig`, as the benchmark once did, nmi's RSS and start-up carried
that cost, which no deployed nmi pays. The bench's API server is a plain-HTTP fake on loopback, which the in-cluster
loader cannot reach (it reads the service account's token and CA at fixed paths and speaks HTTPS), so this
launcher swaps only that loader for one that points the same `Configuration` at `URL`; every other line nmi runs
(flag parsing, the slim kubernetes import, the daemon) is nmi's own, in the same order as `python -m nmi`.
"""

from __future__ import annotations

import os
import sys

API_URL_FLAG = "--api-url="


def main(argv: list[str]) -> None:
    urls = [arg[len(API_URL_FLAG):] for arg in argv if arg.startswith(API_URL_FLAG)]
    nmi_argv = [arg for arg in argv if not arg.startswith(API_URL_FLAG)]
    if len(urls) != 1 or any(arg.startswith("--kubeconfig") for arg in nmi_argv):
        raise SystemExit("usage: python -m bench.in_cluster --api-url=URL <nmi flags, without --kubeconfig>")
    os.environ.pop("KUBECONFIG", None)  # nmi would prefer it to the in-cluster configuration
    from nmi.slim_imports import import_kubernetes_without_extras

    import_kubernetes_without_extras()  # as nmi's entry point does, before anything imports kubernetes
    from kubernetes.config import incluster_config

    def load_incluster_config(client_configuration, try_refresh_token: bool = True) -> None:
        client_configuration.host = urls[0].rstrip("/")

    incluster_config.load_incluster_config = load_incluster_config
    from nmi.__main__ import main as nmi_main

    nmi_main(nmi_argv)


if __name__ == "__main__":
    main(sys.argv[1:])
