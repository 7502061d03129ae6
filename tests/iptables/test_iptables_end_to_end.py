"""A pod's request to 169.254.169.254 reaches a server in the node namespace, attributed to the pod's IP."""

from __future__ import annotations

import json

from tests.iptables.netns import Topology, curl_argv

TOKEN_URL = ("http://169.254.169.254/metadata/identity/oauth2/token"
             "?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F")


def curl_from(pod, *, max_time: float = 5) -> tuple[str, dict | None]:
    done = pod.ns.run(*curl_argv(TOKEN_URL, max_time=max_time), check=False)
    body, _, code = done.stdout.rpartition("\n")
    return code, json.loads(body) if code == "200" else None


def start_echo_server(topology: Topology, start_agent, host: str) -> None:
    server = start_agent("echo-server", "--host", host, "--port", "2579", ns=topology.node)
    server.wait_for(lambda event: event.get("event") == "listening")


def install(topology: Topology, start_agent, mode: str, target_ip: str) -> None:
    agent = start_agent("serve", "--backend", mode, "--target-ip", target_ip, ns=topology.node)
    assert agent.call("converge")["reasons"]


def test_pod_requests_reach_the_node_ip_attributed_to_each_pod(topology: Topology, mode: str, start_agent):
    start_echo_server(topology, start_agent, topology.node_ip)
    # Without the rule nothing answers: the node has no uplink and does not forward.
    assert curl_from(topology.pods[0], max_time=0.5) == ("000", None)
    install(topology, start_agent, mode, topology.node_ip)
    for pod in topology.pods:
        code, echo = curl_from(pod)
        assert code == "200"
        assert echo["remote"] == pod.ip
        assert echo["path"] == "/metadata/identity/oauth2/token"
        assert echo["query"] == {"api-version": "2018-02-01", "resource": "https://management.azure.com/"}
        assert echo["host"] == "169.254.169.254"
    counters = topology.node.run(f"iptables-{mode}", "-t", "nat", "-L", "aad-metadata", "-v", "-n", "-x").stdout
    assert counters.splitlines()[2].split()[0] == str(len(topology.pods))  # one SYN per connection was DNATed


def test_dnat_to_loopback_works_only_with_route_localnet(topology: Topology, start_agent):
    start_echo_server(topology, start_agent, "127.0.0.1")
    install(topology, start_agent, "nft", "127.0.0.1")
    problem = start_agent("route-localnet", "--target-ip", "127.0.0.1", "--interfaces", topology.bridge,
                          ns=topology.node).wait_for(lambda event: "problem" in event)["problem"]
    assert "route_localnet=1" in problem and topology.bridge in problem
    assert curl_from(topology.pods[0], max_time=0.5) == ("000", None)

    topology.node.sysctl(f"net.ipv4.conf.{topology.bridge}.route_localnet", "1")
    fixed = start_agent("route-localnet", "--target-ip", "127.0.0.1", "--interfaces", topology.bridge,
                        ns=topology.node).wait_for(lambda event: "problem" in event)["problem"]
    assert fixed is None
    code, echo = curl_from(topology.pods[1])
    assert code == "200" and echo["remote"] == topology.pods[1].ip


def test_host_network_traffic_is_not_redirected(topology: Topology, start_agent):
    # nmi runs on the host network and fetches its own tokens from IMDS: that must never loop back to nmi.
    start_echo_server(topology, start_agent, topology.node_ip)
    install(topology, start_agent, "nft", topology.node_ip)
    node = topology.node
    node.run("ip", "route", "add", "169.254.169.254/32", "dev", topology.bridge)
    # Had the packet been DNATed (nat OUTPUT runs before filter OUTPUT) it would pass this and reach the server.
    node.run("iptables-nft", "-A", "OUTPUT", "-d", "169.254.169.254/32", "-j", "REJECT")
    done = node.run(*curl_argv(TOKEN_URL, max_time=2), check=False)
    assert done.stdout.endswith("000") and "Failed to connect" in done.stderr
    # Control: were the chain also hooked into OUTPUT, the same request would be answered.
    node.run("iptables-nft", "-t", "nat", "-A", "OUTPUT", "-j", "aad-metadata")
    assert node.run(*curl_argv(TOKEN_URL, max_time=2), check=False).stdout.endswith("200")
