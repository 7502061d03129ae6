"""daemonset/uninstall: one pod per node runs `nmi cleanup` with only what it needs, and the base turns
--fail-closed on (so a stopped nmi leaves the reject that the uninstall removes)."""

from __future__ import annotations

import kubernetes_validate
import pytest

from nmi import cleanup

from .conftest import DAEMONSET_DIR, find_one, render_kustomization, render_overlay
from .test_daemonset_args import container_argv_and_environment


@pytest.fixture(scope="module")
def uninstall() -> list[dict]:
    return render_kustomization(DAEMONSET_DIR / "uninstall")


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_uninstall_renders_one_valid_daemonset(uninstall, version):
    assert [obj["kind"] for obj in uninstall] == ["DaemonSet"]
    kubernetes_validate.validate(uninstall[0], version, strict=True)


def test_cleanup_pods_reach_every_node_with_host_network_and_only_net_admin_net_raw(uninstall):
    spec = find_one(uninstall, "DaemonSet", "nmi-cleanup")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["automountServiceAccountToken"] is False
    assert spec["tolerations"] == [{"operator": "Exists"}]
    (init,) = spec["initContainers"]
    assert init["args"] == ["cleanup"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert init["securityContext"]["privileged"] is False
    assert {m["mountPath"] for m in init["volumeMounts"]} == {"/run/xtables.lock"}
    (done,) = spec["containers"]
    assert "add" not in done["securityContext"]["capabilities"] and done["securityContext"]["runAsNonRoot"]


def test_cleanup_args_are_what_nmi_cleanup_accepts(uninstall, capsys):
    init = find_one(uninstall, "DaemonSet", "nmi-cleanup")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"][0] == "cleanup"
    with pytest.raises(SystemExit) as exited:
        cleanup.main([*init["args"][1:], "--help"])
    assert exited.value.code == 0 and "--iptables-backend" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["managed", "standard"])
def test_the_manifests_run_nmi_fail_closed(mode):
    from nmi import cli

    argv, environment = container_argv_and_environment(render_overlay(mode))
    assert cli.parse_args(argv, environ=environment).fail_closed is True
