"""Importing the `kubernetes` package without what nmi never uses.

`import kubernetes.client` first runs `kubernetes/__init__.py`, which imports the kubeconfig loader (yaml,
oauthlib, requests-oauthlib, pydantic through the dynamic client), the dynamic client, the stream, watch,
leader-election and informer helpers: about 16 MiB and 0.2 s that a daemon configured in-cluster never uses.
The daemon's entry point calls `import_kubernetes_without_extras` before anything imports kubernetes: the two
packages are then registered without running their `__init__`, so each submodule nmi imports (client,
config.incluster_config, and config.kube_config only when a kubeconfig is given) loads on its own.
Library code and tests import kubernetes normally; only the module set differs, never the code that runs.
"""

from __future__ import annotations

import importlib.util
import sys
import types

# kubernetes.utils: the REST client needs only its retry and keepalive modules; its __init__ adds create_from_yaml
# and with it yaml (~1 MiB).
_PACKAGES = ("kubernetes", "kubernetes.config", "kubernetes.utils")


def import_kubernetes_without_extras() -> bool:
    """Registers the bare packages; False (and nothing done) when kubernetes is already imported or absent."""
    if any(name in sys.modules for name in _PACKAGES):
        return False
    for name in _PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            return False
        package = types.ModuleType(name)
        package.__spec__ = spec
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        package.__package__ = name
        sys.modules[name] = package
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, package)
    return True
