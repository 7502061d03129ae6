"""Node start-up checks and conntrack deletion."""

from __future__ import annotations

from pathlib import Path

import pytest

from iptables.node import ConntrackError, check_kubenet, check_route_localnet, delete_conntrack
from tests.iptables.agent_process import run_agent
from tests.iptables.netns import Namespace


def conf_dir(tmp_path: Path, **values: str) -> Path:
    """A stand-in for /proc/sys/net/ipv4/conf with route_localnet per interface."""
    for name, value in {"all": "0", "default": "0", "lo": "0", **values}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "route_localnet").write_text(value + "\n")
    return tmp_path


def test_a_non_loopback_target_needs_no_route_localnet(tmp_path):
    assert check_route_localnet("10.244.0.1", conf_dir=conf_dir(tmp_path, eth0="0")) is None


def test_route_localnet_on_all_covers_every_interface(tmp_path):
    assert check_route_localnet("127.0.0.1", conf_dir=conf_dir(tmp_path, all="1", eth0="0", cbr0="0")) is None


def test_without_interfaces_every_interface_but_lo_must_have_route_localnet(tmp_path):
    problem = check_route_localnet("127.0.0.1", conf_dir=conf_dir(tmp_path, eth0="0", cbr0="1", azure0="0"))
    assert problem is not None
    assert "it is off on azure0, eth0 " in problem
    assert "--nmi-listen-address" in problem and "route_localnet=1" in problem


def test_only_the_named_pod_facing_interfaces_are_checked(tmp_path):
    directory = conf_dir(tmp_path, eth0="0", cbr0="1")
    assert check_route_localnet("127.0.0.1", ["cbr0"], conf_dir=directory) is None
    assert "off on eth0" in check_route_localnet("127.0.0.1", ["cbr0", "eth0"], conf_dir=directory)


def test_the_real_proc_of_a_fresh_namespace_lacks_route_localnet(netns: Namespace):
    assert run_agent(netns, "route-localnet", "--target-ip", "127.0.0.1")[-1]["problem"] is None  # only lo
    netns.run("ip", "link", "add", "pods0", "type", "veth", "peer", "name", "pods1")
    problem = run_agent(netns, "route-localnet", "--target-ip", "127.0.0.1")[-1]["problem"]
    assert problem is not None and "off on pods0, pods1 " in problem
    netns.sysctl("net.ipv4.conf.all.route_localnet", "1")
    assert run_agent(netns, "route-localnet", "--target-ip", "127.0.0.1")[-1]["problem"] is None


@pytest.mark.parametrize("content", ["", "KUBELET_FLAGS=--network-plugin=cni --max-pods=30\n"])
def test_kubelet_config_without_kubenet_passes(tmp_path, content):
    path = tmp_path / "kubelet"
    path.write_text(content)
    assert check_kubenet(path, allow=False) is None


def test_kubenet_is_refused_naming_the_flag_that_allows_it(tmp_path):
    path = tmp_path / "kubelet"
    path.write_text("KUBELET_FLAGS=--network-plugin=kubenet --max-pods=110\n")
    problem = check_kubenet(path, allow=False)
    assert problem.startswith("AAD Pod Identity is not supported for Kubenet")
    assert "--allow-network-plugin-kubenet" in problem and str(path) in problem
    assert "\n" not in problem
    assert check_kubenet(path, allow=True) is None


def test_unreadable_kubelet_config_is_a_problem_unless_kubenet_is_allowed(tmp_path):
    missing = tmp_path / "absent"
    problem = check_kubenet(missing, allow=False)
    assert problem.startswith(f"--kubelet-config {missing}: failed to check if CNI plugin is kubenet")
    assert check_kubenet(missing, allow=True) is None


def test_conntrack_entries_to_the_metadata_endpoint_are_deleted_and_others_kept(netns: Namespace):
    for source, sport, dport in (("10.244.0.10", 40000, 80), ("10.244.0.11", 40001, 80), ("10.244.0.10", 40002, 443)):
        netns.run("conntrack", "-I", "-p", "tcp", "-s", source, "-d", "169.254.169.254", "--sport", str(sport),
                  "--dport", str(dport), "--state", "ESTABLISHED", "-t", "120", "-u", "SEEN_REPLY")
    assert run_agent(netns, "conntrack")[-1] == {"deleted": 2}
    left = netns.run("conntrack", "-L").stdout
    assert "dport=443" in left and "dport=80 " not in left
    assert run_agent(netns, "conntrack")[-1] == {"deleted": 0}  # conntrack exits 1 here: still a success


def test_a_missing_conntrack_tool_is_a_clear_error():
    with pytest.raises(ConntrackError, match="needs the 'nmi-no-such-conntrack' tool, which is not installed"):
        delete_conntrack("169.254.169.254", 80, command="nmi-no-such-conntrack")
