"""The rendered DaemonSet has the properties a node agent that edits the node's nat table needs, and
no more."""

from __future__ import annotations

import pytest

from .conftest import find_one, render_overlay
from .crd_schema import Manifest


@pytest.fixture
def daemonset(mode: str) -> Manifest:
    return find_one(render_overlay(mode), "DaemonSet", "nmi")


def _pod_spec(daemonset: Manifest) -> Manifest:
    return daemonset["spec"]["template"]["spec"]


def _container(daemonset: Manifest) -> Manifest:
    (container,) = _pod_spec(daemonset)["containers"]
    return container


def test_pod_runs_on_the_host_network_with_cluster_dns(daemonset):
    spec = _pod_spec(daemonset)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["serviceAccountName"] == "nmi"


def test_node_name_comes_from_the_downward_api_and_reaches_the_args(daemonset):
    container = _container(daemonset)
    env = {item["name"]: item for item in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "--node=$(NODE_NAME)" in container["args"]


def test_container_keeps_only_the_capabilities_iptables_needs(daemonset):
    context = _container(daemonset)["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert _pod_spec(daemonset)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_xtables_lock_and_kubelet_config_are_mounted_from_the_host_as_upstream(daemonset):
    volumes = {volume["name"]: volume for volume in _pod_spec(daemonset)["volumes"]}
    mounts = {mount["name"]: mount for mount in _container(daemonset)["volumeMounts"]}
    assert volumes["iptableslock"]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert mounts["iptableslock"]["mountPath"] == "/run/xtables.lock"
    assert not mounts["iptableslock"].get("readOnly", False)  # flock needs the file open for writing
    assert volumes["kubelet-config"]["hostPath"] == {"path": "/etc/default/kubelet", "type": "FileOrCreate"}
    assert mounts["kubelet-config"] == {"name": "kubelet-config", "mountPath": "/etc/default/kubelet", "readOnly": True}
    assert "--kubelet-config=/etc/default/kubelet" in _container(daemonset)["args"]
    host_paths = sorted(volume["hostPath"]["path"] for volume in volumes.values() if "hostPath" in volume)
    assert host_paths == ["/etc/default/kubelet", "/run/xtables.lock"]


def test_probes_use_healthz_and_readyz_on_the_probe_port(daemonset):
    container = _container(daemonset)
    assert "--http-probe-port=8085" in container["args"]
    # by port name: a patch of --http-probe-port then only has to move the `probe` containerPort with it
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probe"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probe"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"probe": 8085, "metrics": 9090}
    assert "--prometheus-port=9090" in container["args"]


def test_prometheus_scrape_annotations_name_the_metrics_port_and_path(daemonset):
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    ports = {port["name"]: port["containerPort"] for port in _container(daemonset)["ports"]}
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(ports["metrics"]),
                           "prometheus.io/path": "/metrics"}
    assert f"--prometheus-port={ports['metrics']}" in _container(daemonset)["args"]


def test_scheduled_on_every_linux_node_at_node_critical_priority(daemonset):
    spec = _pod_spec(daemonset)
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_grace_period_outlasts_the_ten_second_shutdown_and_updates_roll(daemonset):
    assert _pod_spec(daemonset)["terminationGracePeriodSeconds"] > 10
    assert daemonset["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}


def test_resources_are_requested_and_memory_is_limited(daemonset):
    resources = _container(daemonset)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]


def test_default_image_is_fully_qualified_and_cannot_resolve_anywhere(daemonset):
    # A short name (`nmi:0.1.0`) would be searched for on the node's registries, where anyone may own `nmi`.
    # The default names a reserved domain (RFC 2606) instead: pulling fails at once until `images:` sets yours.
    assert _container(daemonset)["image"] == "registry.example/nmi:0.1.0"


def test_selector_matches_the_pod_template_labels(daemonset):
    selector = daemonset["spec"]["selector"]["matchLabels"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_overlays_set_their_operation_mode():
    managed = _container(find_one(render_overlay("managed"), "DaemonSet", "nmi"))["args"]
    standard = _container(find_one(render_overlay("standard"), "DaemonSet", "nmi"))["args"]
    assert "--operation-mode=managed" in managed and "--forceNamespaced" in managed
    assert "--operation-mode=standard" in standard and "--enableScaleFeatures=true" in standard
    assert not any(arg.startswith("--forceNamespaced") for arg in standard)
    for args in (managed, standard):
        assert len(args) == len(set(args))
        assert "--metadata-header-required=true" in args
        assert "--log-format=text" in args
