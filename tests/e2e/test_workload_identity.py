"""The workload identity bridge through the real nmi process: ServiceAccounts and TokenRequest at the fake API
server, federated assertions checked by the fake Azure AD over HTTPS (test CA through REQUESTS_CA_BUNDLE)."""

import base64
import json

import pytest

from fakes.aad import TOKEN_EXCHANGE_AUDIENCE, FakeAad
from fakes.background import BackgroundFakes
from fakes.imds import VmIdentity
from fakes.kubeobjects import make_binding, make_identity, make_pod, make_service_account

from tests.e2e.harness import NmiProcess

NODE, NS, TENANT = "wi-node", "wi", "tenant-wi"
WI_CLIENT_ID = "f00df00d-0000-4000-8000-00000000f00d"
MI = VmIdentity(client_id="aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa")
USE = {"azure.workload.identity/use": "true"}
PODS = {  # name: (ip, service account, labels)
    "pod-a": ("127.0.0.60", "sa-a", USE),
    "pod-b": ("127.0.0.61", "sa-b", USE),
    "pod-c": ("127.0.0.62", "sa-c", USE),
    "pod-plain": ("127.0.0.63", "plain", USE),
    "pod-unlabelled": ("127.0.0.64", "sa-a", {}),
    "pod-bound": ("127.0.0.65", "sa-a", {**USE, "aadpodidbinding": "mi"}),
}


def cluster_objects() -> list[dict]:
    objects = [
        make_service_account("sa-a", NS, client_id=WI_CLIENT_ID, tenant_id=TENANT),
        make_service_account("sa-b", NS, client_id=WI_CLIENT_ID),  # tenant from --workload-identity-tenant-id
        make_service_account("sa-c", NS, client_id=WI_CLIENT_ID, tenant_id=TENANT),  # not federated at Azure AD
        make_service_account("plain", NS),
        make_identity("mi", NS, client_id=MI.client_id),
        make_binding("bind-mi", NS, identity="mi", selector="mi"),
    ]
    objects += [make_pod(name, NS, ip, NODE, labels=labels, service_account=account)
                for name, (ip, account, labels) in PODS.items()]
    return objects


def start_world(tmp, *, bridge: bool):
    fakes = BackgroundFakes([MI])
    fakes.start()
    aad = FakeAad()
    fakes.run(aad.start())
    issuer = fakes.api.sa_issuer
    for account in ("sa-a", "sa-b"):
        aad.register_federated_app(TENANT, WI_CLIENT_ID, issuer.issuer, f"system:serviceaccount:{NS}:{account}",
                                   public_key=issuer.public_key)
    for obj in cluster_objects():
        fakes.put(obj)
    flags = [f"--workload-identity-tenant-id={TENANT}", f"--workload-identity-authority-host={aad.authority_host}"]
    nmi = NmiProcess(tmp, fakes, node=NODE,
                     extra=["--operation-mode=managed", "--forceNamespaced",
                            f"--workload-identity={str(bridge).lower()}", *flags],
                     env={"REQUESTS_CA_BUNDLE": str(aad.write_ca_bundle(tmp / "ca.pem"))})
    nmi.start()
    return fakes, aad, nmi


def stop_world(fakes, aad, nmi) -> None:
    try:
        assert nmi.stop() == 0
    finally:
        fakes.run(aad.stop())
        fakes.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    parts = start_world(tmp_path_factory.mktemp("wi"), bridge=True)
    yield parts
    stop_world(*parts)


def claims(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def pod_uid(fakes, name: str) -> str:
    return fakes.call(lambda: fakes.api.state.get("pods", NS, name))["metadata"]["uid"]


def token_requests_for(fakes, account: str) -> list[dict]:
    return fakes.call(lambda: [r for r in fakes.api.token_requests if r["service_account"] == account])


def test_workload_identity_pod_gets_a_token_through_federation_of_its_service_account(world):
    fakes, aad, nmi = world
    answer = nmi.token(source="127.0.0.60", resource="https://vault.azure.net")
    assert answer.status == 200, answer.body
    assert answer.json["client_id"] == WI_CLIENT_ID and answer.json["resource"] == "https://vault.azure.net"
    assert claims(answer.json["access_token"])["appid"] == WI_CLIENT_ID
    (minted,) = token_requests_for(fakes, "sa-a")
    assert minted["spec"]["audiences"] == [TOKEN_EXCHANGE_AUDIENCE]
    assert minted["spec"]["expirationSeconds"] == 3600
    assert minted["spec"]["boundObjectRef"] == {"apiVersion": "v1", "kind": "Pod", "name": "pod-a",
                                                "uid": pod_uid(fakes, "pod-a")}
    seen = fakes.call(lambda: list(aad.federated_assertions))
    assert [c["sub"] for c in seen] == [f"system:serviceaccount:{NS}:sa-a"]
    assert seen[0]["aud"] == [TOKEN_EXCHANGE_AUDIENCE]
    assert seen[0]["kubernetes.io"]["pod"]["uid"] == pod_uid(fakes, "pod-a")


def test_second_request_is_a_cache_hit_without_token_request_or_azure_ad_call(world):
    fakes, aad, nmi = world
    first = nmi.token(source="127.0.0.60", resource="https://cache-hit.example/")
    assert first.status == 200, first.body
    minted, aad_calls = len(fakes.call(lambda: list(fakes.api.token_requests))), fakes.call(lambda: aad.token_requests)
    second = nmi.token(source="127.0.0.60", resource="https://cache-hit.example/")
    assert second.status == 200 and second.json["access_token"] == first.json["access_token"]
    assert len(fakes.call(lambda: list(fakes.api.token_requests))) == minted
    assert fakes.call(lambda: aad.token_requests) == aad_calls


def test_two_service_accounts_with_one_client_id_never_share_tokens(world):
    fakes, aad, nmi = world
    resource = "https://shared-client-id.example/"
    a = nmi.token(source="127.0.0.60", resource=resource)
    b = nmi.token(source="127.0.0.61", resource=resource)
    assert a.status == b.status == 200, (a.body, b.body)
    assert a.json["access_token"] != b.json["access_token"]
    assert token_requests_for(fakes, "sa-b")[0]["spec"]["boundObjectRef"]["uid"] == pod_uid(fakes, "pod-b")
    subjects = {c["sub"] for c in fakes.call(lambda: list(aad.federated_assertions))}
    assert f"system:serviceaccount:{NS}:sa-b" in subjects
    # sa-c names the same client ID but has no federated credential: Azure AD refuses it, sa-a's token is not reused
    refused = nmi.token(source="127.0.0.62", resource=resource)
    assert refused.status == 403, refused.body
    assert refused.json["error"] == "invalid_client" and "AADSTS70021" in refused.json["error_description"]


def test_a_client_id_other_than_the_service_accounts_is_identity_not_found(world):
    fakes, aad, nmi = world
    wrong = nmi.token(source="127.0.0.60", client_id=MI.client_id)
    assert wrong.status == 400 and wrong.json["error_description"] == "Identity not found"
    by_resource_id = nmi.token(source="127.0.0.60", msi_res_id="/subscriptions/0/resourceGroups/rg/x")
    assert by_resource_id.status == 400 and by_resource_id.json["error_description"] == "Identity not found"
    own = nmi.token(source="127.0.0.60", client_id=WI_CLIENT_ID.upper())
    assert own.status == 200, own.body


def test_service_account_without_annotation_or_pod_without_label_is_identity_not_found(world):
    fakes, aad, nmi = world
    for source in ("127.0.0.63", "127.0.0.64"):
        answer = nmi.token(source=source)
        assert answer.status == 400 and answer.json["error_description"] == "Identity not found"
    assert token_requests_for(fakes, "plain") == []


def test_pods_with_a_binding_keep_their_aad_pod_identity(world):
    fakes, aad, nmi = world
    answer = nmi.token(source="127.0.0.65", resource="https://bound.example/")
    assert answer.status == 200, answer.body
    assert answer.json["client_id"] == MI.client_id


def test_no_service_account_token_in_the_log(world):
    fakes, aad, nmi = world
    assert "eyJ" not in nmi.log()


def test_without_the_flag_nothing_changes_and_service_accounts_are_not_watched(tmp_path):
    fakes, aad, nmi = start_world(tmp_path, bridge=False)
    try:
        answer = nmi.token(source="127.0.0.60")
        assert answer.status == 400 and answer.json["error_description"] == "Identity not found"
        assert nmi.token(source="127.0.0.65").status == 200
        assert fakes.call(lambda: fakes.api.count("serviceaccounts", "list")) == 0
        assert fakes.call(lambda: fakes.api.count("serviceaccounts", "watch")) == 0
        assert fakes.call(lambda: list(fakes.api.token_requests)) == []
        assert fakes.call(lambda: aad.token_requests) == 0
    finally:
        stop_world(fakes, aad, nmi)
