"""components/startup-taint: renders and validates (Kubernetes 1.30+), turns the flag on with the key the policy
allows, grants only nodes get/patch, and its ValidatingAdmissionPolicy — evaluated here with a CEL interpreter —
lets nmi's ServiceAccount remove that taint from its own Node and refuses every other change an attacker holding
nmi's token would try."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from .conftest import find_one, render_kustomization, write_overlay_with_components
from .test_daemonset_args import container_argv_and_environment

celpy = pytest.importorskip("celpy", reason="cel-python (test extra) evaluates the admission policy")

KEY = "aadpodidentity.k8s.io/nmi-not-ready"
NMI = "system:serviceaccount:kube-system:nmi"
CLAIM = "authentication.kubernetes.io/node-name"


@pytest.fixture(scope="module", params=["managed", "standard"])
def rendered(request, tmp_path_factory) -> list[dict]:
    directory = tmp_path_factory.mktemp(request.param)
    return render_kustomization(write_overlay_with_components(request.param, directory, ("startup-taint",)))


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_component_objects_are_valid_in_strict_mode(rendered, version):
    added = [obj for obj in rendered if "startup-taint" in obj["metadata"]["name"]]
    assert sorted(obj["kind"] for obj in added) == ["ClusterRole", "ClusterRoleBinding",
                                                    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    for obj in rendered:
        if not obj["apiVersion"].startswith("aadpodidentity"):
            kubernetes_validate.validate(obj, version, strict=True)


def policy_key(policy: dict) -> str:
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    return variables["taintKey"].strip("'")


def test_the_flag_is_on_with_the_key_the_policy_allows_and_the_daemonset_tolerates_it(rendered):
    from nmi import cli

    argv, environment = container_argv_and_environment(rendered)
    settings = cli.parse_args(argv, environ=environment)
    policy = find_one(rendered, "ValidatingAdmissionPolicy", "nmi-startup-taint")
    assert settings.node_startup_taint == policy_key(policy) == KEY
    pod_spec = find_one(rendered, "DaemonSet", "nmi")["spec"]["template"]["spec"]
    assert {"operator": "Exists"} in pod_spec["tolerations"]
    binding = find_one(rendered, "ValidatingAdmissionPolicyBinding", "nmi-startup-taint")
    assert binding["spec"] == {"policyName": "nmi-startup-taint", "validationActions": ["Deny"]}


def test_rbac_is_nodes_get_and_patch_for_nmi_only(rendered):
    role = find_one(rendered, "ClusterRole", "nmi-startup-taint")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    binding = find_one(rendered, "ClusterRoleBinding", "nmi-startup-taint")
    daemonset = find_one(rendered, "DaemonSet", "nmi")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "nmi",
                                    "namespace": daemonset["metadata"]["namespace"]}]


class Policy:
    """The rendered ValidatingAdmissionPolicy, evaluated as the API server does: match conditions, then the
    variables in order, then every validation. Returns None when the policy does not apply, else the messages
    of the failed validations ([] = allowed)."""

    def __init__(self, spec: dict) -> None:
        env = celpy.Environment()
        compile_ = lambda text: env.program(env.compile(text))  # noqa: E731
        self.spec = spec
        self.conditions = [compile_(c["expression"]) for c in spec["matchConditions"]]
        self.variables = [(v["name"], compile_(v["expression"])) for v in spec["variables"]]
        self.validations = [(compile_(v["expression"]), v["message"]) for v in spec["validations"]]

    def review(self, *, user: str, extra: dict, old: dict, new: dict) -> list[str] | None:
        rules = self.spec["matchConstraints"]["resourceRules"]
        assert rules == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes"]}]
        context = {"request": {"userInfo": {"username": user, "extra": extra}}, "object": new, "oldObject": old}
        if not all(bool(c.evaluate(celpy.json_to_cel(context))) for c in self.conditions):
            return None
        variables: dict = {}
        for name, program in self.variables:
            variables[name] = program.evaluate(celpy.json_to_cel({**context, "variables": variables}))
        activation = {**celpy.json_to_cel(context), "variables": celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in variables.items()})}
        return [message for program, message in self.validations if not bool(program.evaluate(activation))]


OURS = {"key": KEY, "value": "true", "effect": "NoSchedule"}
OTHER = {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}


def node(name="node-a", *, taints=(OURS, OTHER), **spec) -> dict:
    obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"pool": "a"}},
           "spec": {"podCIDR": "10.244.1.0/24", "providerID": "azure:///vm/a", **spec}}
    if taints is not None:
        obj["spec"]["taints"] = [dict(t) for t in taints]
    return obj


def changed(old: dict, edit) -> dict:
    new = copy.deepcopy(old)
    edit(new)
    return new


@pytest.fixture(scope="module")
def policy(rendered) -> Policy:
    return Policy(find_one(rendered, "ValidatingAdmissionPolicy", "nmi-startup-taint")["spec"])


def removed_ours(n: dict) -> None:
    n["spec"]["taints"] = [t for t in n["spec"]["taints"] if t["key"] != KEY]


OWN = {CLAIM: ["node-a"]}


def test_nmi_may_remove_its_taint_from_its_own_node(policy):
    old = node()
    assert policy.review(user=NMI, extra=OWN, old=old, new=changed(old, removed_ours)) == []
    only = node(taints=(OURS,))  # the last taint: the list is emptied, or dropped from the object
    assert policy.review(user=NMI, extra=OWN, old=only, new=changed(only, removed_ours)) == []
    assert policy.review(user=NMI, extra=OWN, old=only, new=node(taints=None)) == []
    # installed in another namespace, nmi's account is still narrowed (kustomize cannot rewrite the CEL)
    assert policy.review(user="system:serviceaccount:identity:nmi", extra=OWN, old=old,
                         new=changed(old, lambda n: n["spec"]["taints"].clear())) != []


def removed_ours_and(change):
    return lambda n: (removed_ours(n), change(n))


NODE_RULE, TAINT_RULE, REST_RULE = "its own pod runs on", "only remove the taint", "nothing on its Node but"
# attack: (node patched, the token's extra, the change, the rule that refuses it)
ATTACKS = {
    "another node's taint": ("node-b", {CLAIM: ["node-a"]}, removed_ours, NODE_RULE),
    "a token without the node claim": ("node-a", {}, removed_ours, NODE_RULE),
    "a claim naming several nodes": ("node-a", {CLAIM: ["node-a", "node-b"]}, removed_ours, NODE_RULE),
    "removing another taint": ("node-a", OWN, lambda n: n["spec"]["taints"].remove(OTHER), TAINT_RULE),
    "adding a NoExecute taint (evicts pods)": ("node-a", OWN, removed_ours_and(lambda n: n["spec"]["taints"].append(
        {"key": "evict", "effect": "NoExecute"})), TAINT_RULE),
    "changing its taint's effect": ("node-a", OWN, lambda n: n["spec"]["taints"][0].update(effect="NoExecute"),
                                    TAINT_RULE),
    "relabelling the node": ("node-a", OWN, removed_ours_and(lambda n: n["metadata"]["labels"].update(
        {"node-role.kubernetes.io/control-plane": ""})), REST_RULE),
    "cordoning the node": ("node-a", OWN, removed_ours_and(lambda n: n["spec"].update(unschedulable=True)),
                           REST_RULE),
    "an annotation": ("node-a", OWN, removed_ours_and(lambda n: n["metadata"].update(annotations={"x": "y"})),
                      REST_RULE),
    "a finalizer (blocks deletion)": ("node-a", OWN, removed_ours_and(
        lambda n: n["metadata"].update(finalizers=["x/y"])), REST_RULE),
    "an owner reference": ("node-a", OWN, removed_ours_and(lambda n: n["metadata"].update(
        ownerReferences=[{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}])), REST_RULE),
    "the provider ID": ("node-a", OWN, removed_ours_and(lambda n: n["spec"].update(providerID="azure:///vm/b")),
                        REST_RULE),
    "the pod CIDRs": ("node-a", OWN, removed_ours_and(lambda n: n["spec"].update(podCIDRs=["0.0.0.0/0"])),
                      REST_RULE),
}


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
def test_attack_nmis_token_cannot_change_anything_else(policy, attack):
    name, extra, edit, rule = ATTACKS[attack]
    old = node(name)
    refusals = policy.review(user=NMI, extra=extra, old=old, new=changed(old, edit))
    assert len(refusals) == 1 and rule in refusals[0], refusals


def test_other_users_are_not_subject_to_the_policy(policy):
    old = node()
    cordon = changed(old, lambda n: n["spec"].update(unschedulable=True))
    assert policy.review(user="system:serviceaccount:kube-system:node-controller", extra={}, old=old,
                         new=cordon) is None
    assert policy.review(user="kubernetes-admin", extra={}, old=old, new=cordon) is None
    assert policy.review(user="system:serviceaccount:kube-system:nmi-cleanup", extra={}, old=old, new=cordon) is None
