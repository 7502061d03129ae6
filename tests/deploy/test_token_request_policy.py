"""The workload-identity component's ValidatingAdmissionPolicy: `serviceaccounts/token create` for nmi only with
audience api://AzureADTokenExchange, bound to a Pod, <= 3600 s. Rendered from the kustomization, its CEL evaluated
(cel-python) against the TokenRequest nmi's real client sends and against the requests a thief of nmi's token
would send. Schema validity is checked with every other rendered object (test_manifest_schemas)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import pytest

from fakes.kubeobjects import make_pod, make_service_account
from nmi.kube import KubeServiceAccountTokens

from .conftest import find_one, render_kustomization, render_overlay, write_overlay_with_components
from .crd_schema import Manifest

POLICY = "nmi-workload-identity-token-requests"
NMI_USER = "system:serviceaccount:kube-system:nmi"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    return render_kustomization(write_overlay_with_components("managed", tmp_path_factory.mktemp("wi"),
                                                              ("workload-identity",)))


def evaluate(expression: str, **activation: Any) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    return bool(program.evaluate(celpy.json_to_cel(activation)))


def admitted(policy: Manifest, token_request: dict[str, Any], *, username: str = NMI_USER) -> bool:
    """As the API server decides: a request the match conditions exclude is not judged; else every validation."""
    request = {"userInfo": {"username": username}, "operation": "CREATE", "subResource": "token"}
    if not all(evaluate(c["expression"], request=request, object=token_request)
               for c in policy["spec"]["matchConditions"]):
        return True
    return all(evaluate(v["expression"], request=request, object=token_request) for v in policy["spec"]["validations"])


def test_the_policy_comes_with_the_token_grant_and_is_bound_to_deny(rendered):
    policy = find_one(rendered, "ValidatingAdmissionPolicy", POLICY)
    binding = find_one(rendered, "ValidatingAdmissionPolicyBinding", POLICY)
    assert binding["spec"]["policyName"] == POLICY and binding["spec"]["validationActions"] == ["Deny"]
    assert "paramRef" not in binding["spec"] and "matchResources" not in binding["spec"]  # every namespace
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["serviceaccounts/token"]}]
    without = render_overlay("managed")
    assert not [o for o in without if o["kind"].startswith("ValidatingAdmissionPolicy")]


@pytest.fixture
async def nmis_token_request(apiserver, api_client) -> dict[str, Any]:
    """The TokenRequest nmi's real client sends (as the fake API server received it)."""
    apiserver.put(make_service_account("app", "team", client_id="cid"))
    pod = apiserver.put(make_pod("web", "team", service_account="app"))
    minter = KubeServiceAccountTokens(api_client, timeout=2.0)
    try:
        await minter.mint_token("team", "app", pod_name="web", pod_uid=pod["metadata"]["uid"])
    finally:
        minter.close()
    (request,) = apiserver.token_requests
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": request["spec"]}


async def test_the_token_request_nmi_sends_is_admitted(rendered, nmis_token_request):
    assert admitted(find_one(rendered, "ValidatingAdmissionPolicy", POLICY), nmis_token_request)


def _with(request: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(request)
    *parents, leaf = path.split(".")
    node = changed
    for part in parents:
        node = node[part]
    if value is _DELETE:
        node.pop(leaf)
    else:
        node[leaf] = value
    return changed


_DELETE = object()


@pytest.mark.parametrize("path, value", [
    ("spec.audiences", ["https://kubernetes.default.svc.cluster.local"]),  # a token the API server accepts
    ("spec.audiences", ["api://AzureADTokenExchange", "https://kubernetes.default.svc.cluster.local"]),
    ("spec.audiences", []),
    ("spec.audiences", _DELETE),  # the API server's default audience
    ("spec.boundObjectRef", _DELETE),  # outlives every pod
    ("spec.boundObjectRef.kind", "Secret"),
    ("spec.boundObjectRef.uid", _DELETE),
    ("spec.boundObjectRef.name", ""),
    ("spec.expirationSeconds", 3601),
    ("spec.expirationSeconds", 86400 * 365),
    ("spec.expirationSeconds", _DELETE),
])
async def test_attack_a_thief_of_nmis_token_can_mint_nothing_else(rendered, nmis_token_request, path, value):
    policy = find_one(rendered, "ValidatingAdmissionPolicy", POLICY)
    assert not admitted(policy, _with(nmis_token_request, path, value))


async def test_the_policy_judges_nmis_service_account_in_any_namespace_and_no_one_else(rendered, nmis_token_request):
    policy = find_one(rendered, "ValidatingAdmissionPolicy", POLICY)
    unbound = _with(nmis_token_request, "spec.boundObjectRef", _DELETE)
    assert not admitted(policy, unbound, username="system:serviceaccount:identity:nmi")  # moved by a kustomization
    for other in ("system:serviceaccount:team:app", "system:serviceaccount:team:nmi-helper", "system:node:node-1",
                  "admin"):
        assert admitted(policy, unbound, username=other)


def test_the_component_says_it_needs_kubernetes_1_30():
    text = (Path(__file__).resolve().parents[2] / "daemonset/components/workload-identity/token-request-policy.yaml")
    assert "Kubernetes >= 1.30" in text.read_text()
