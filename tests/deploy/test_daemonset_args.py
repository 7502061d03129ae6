"""The args the DaemonSet gives nmi are accepted by nmi's own parser, after the kubelet has expanded
`$(VAR)` references, and mean what the manifests intend."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import COMPONENTS, find_one, render_kustomization, render_overlay, write_overlay_with_components
from .crd_schema import Manifest

NODE = "aks-nodepool1-12345678-vmss000000"
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_like_kubelet(text: str, environment: dict[str, str]) -> str:
    """Kubelet's expansion: `$(NAME)` of a defined variable is replaced, `$$` is a literal `$`, and any
    other reference is left as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return environment.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def container_argv_and_environment(objects: list[Manifest]) -> tuple[list[str], dict[str, str]]:
    (container,) = find_one(objects, "DaemonSet", "nmi")["spec"]["template"]["spec"]["containers"]
    field_values = {"spec.nodeName": NODE}
    environment: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = expand_like_kubelet(variable["value"], environment)
        else:
            environment[variable["name"]] = field_values[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    return [expand_like_kubelet(arg, environment) for arg in container["args"]], environment


def test_kubelet_expansion_replaces_defined_variables_only():
    assert expand_like_kubelet("--node=$(NODE_NAME)", {"NODE_NAME": "n1"}) == "--node=n1"
    assert expand_like_kubelet("$(UNSET) $$(NODE_NAME)", {"NODE_NAME": "n1"}) == "$(UNSET) $(NODE_NAME)"


@pytest.mark.parametrize("with_components", [False, True], ids=["overlay", "overlay+components"])
def test_daemonset_args_are_accepted_by_nmis_parser(mode, with_components, tmp_path: Path):
    from nmi import cli

    objects = (
        render_kustomization(write_overlay_with_components(mode, tmp_path, COMPONENTS))
        if with_components
        else render_overlay(mode)
    )
    argv, environment = container_argv_and_environment(objects)
    settings = cli.parse_args(argv, environ=environment)
    assert settings.node == NODE
    assert settings.operation_mode == mode
    assert settings.force_namespaced is (mode == "managed")
    assert settings.probe_port == 8085
    assert settings.prometheus_port == 9090
    assert settings.metadata_header_required is True
    assert settings.kubelet_config == "/etc/default/kubelet"
    assert settings.audit_events is with_components
    assert settings.workload_identity is with_components


def test_a_misspelt_flag_in_the_args_would_be_refused():
    from nmi import cli

    argv, environment = container_argv_and_environment(render_overlay("managed"))
    argv = [arg.replace("--http-probe-port", "--http-probe-prot") for arg in argv]
    with pytest.raises((cli.UsageError, SystemExit)):
        cli.parse_args(argv, environ=environment)
