"""SPEC §2 row by row, black-box, against the real nmi process in managed mode."""

import base64
import json
import time

import pytest

from fakes.imds import Fault
from fakes.kubeobjects import make_deployment, make_pod, make_replicaset

from tests.e2e.conftest import A, B, C, NODE, NODE_IDENTITY, NS

REQUIRED_HEADER_BODY = '{"error":"invalid_request","error_description":"Required metadata header not specified"}'


def oid(answer) -> str:
    token = answer.json["access_token"]
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["oid"]


def test_missing_metadata_header_is_400_with_the_exact_upstream_body(nmi):
    answer = nmi.token(metadata=False)
    assert answer.status == 400 and answer.body == REQUIRED_HEADER_BODY
    assert answer.headers["Content-Type"].startswith("application/json")
    wrong = nmi.get("/metadata/identity/oauth2/token?resource=x", headers={"Metadata": "True"})
    assert wrong.status == 400 and wrong.body == REQUIRED_HEADER_BODY


def test_request_checks_answer_at_once_in_spec_order(nmi):
    xff = nmi.get("/metadata/identity/oauth2/token?resource=r", headers={"Metadata": "true", "X-Forwarded-For": "1.2.3.4"},
                  method="POST")
    assert xff.status == 400 and xff.json["error"] == "invalid_request"
    assert nmi.get("/metadata/identity/oauth2/token?resource=r", headers={"Metadata": "true"}, method="POST").status == 405
    duplicate = nmi.get("/metadata/identity/oauth2/token?resource=r&resource=s", headers={"Metadata": "true"})
    assert duplicate.status == 400 and "more than once" in duplicate.json["error_description"]
    missing = nmi.get("/metadata/identity/oauth2/token?api-version=2018-02-01", headers={"Metadata": "true"})
    assert missing.status == 400 and "resource" in missing.json["error_description"]
    two = nmi.token(client_id=A.client_id, msi_res_id=A.resource_id)
    assert two.status == 400


def test_bound_pod_gets_the_highest_weight_identity_with_an_all_strings_body(nmi):
    answers = [nmi.token() for _ in range(3)]
    for answer in answers:
        assert answer.status == 200
        body = answer.json
        assert set(body) == {"access_token", "refresh_token", "expires_in", "expires_on", "not_before", "resource",
                             "token_type", "client_id"}
        assert all(isinstance(v, str) for v in body.values())
        assert body["client_id"] == B.client_id and oid(answer) == B.object_id
        assert body["resource"] == "https://management.azure.com/" and body["token_type"] == "Bearer"
        assert 3500 < int(body["expires_in"]) <= 3599
        assert abs(int(body["expires_on"]) - (time.time() + int(body["expires_in"]))) <= 2


def test_requested_identity_is_used_by_client_id_resource_id_or_object_id(nmi):
    assert nmi.token(client_id=A.client_id.upper()).json["client_id"] == A.client_id
    assert oid(nmi.token(msi_res_id=A.resource_id)) == A.object_id
    assert oid(nmi.token(mi_res_id=A.resource_id.lower())) == A.object_id
    assert oid(nmi.token(object_id=A.object_id)) == A.object_id


def test_identity_not_bound_to_the_pod_is_never_handed_out(nmi):
    for query in ({"client_id": C.client_id}, {"msi_res_id": C.resource_id}, {"object_id": C.object_id},
                  {"client_id": NODE_IDENTITY.client_id}):
        answer = nmi.token(**query)
        assert answer.status == 400, query
        assert answer.json == {"error": "invalid_request", "error_description": "Identity not found"}


def test_pod_without_binding_fails_fast_with_identity_not_found(nmi):
    answer = nmi.token(source="127.0.0.2")
    assert answer.status == 400 and answer.json["error_description"] == "Identity not found"


def test_unknown_caller_gets_503_with_retry_after(nmi):
    for source in ("127.0.0.9", "127.0.0.4", "127.0.0.5"):  # nobody; a Succeeded pod; a pod of another node
        answer = nmi.token(source=source)
        assert answer.status == 503, source
        assert int(answer.headers["Retry-After"]) > 0
        assert answer.json["error"] == "temporarily_unavailable"


def test_a_pod_started_a_moment_ago_gets_its_token(nmi, fakes):
    fakes.put(make_pod("fresh", NS, "127.0.0.20", NODE, labels={"aadpodidbinding": "app"}))
    answer = nmi.token(source="127.0.0.20")
    assert answer.status == 200 and answer.json["client_id"] == B.client_id


def test_new_pod_reusing_an_old_pods_ip_never_gets_the_old_pods_identity(nmi, fakes):
    fakes.put(make_pod("old", NS, "127.0.0.21", NODE, labels={"aadpodidbinding": "app"}))
    assert nmi.token(source="127.0.0.21").status == 200
    fakes.delete("Pod", NS, "old")
    # As on a real node, the IP is reused only after the deletion: wait until nmi has seen it (the old pod's
    # address no longer answers 200), so the race below is the one this test is about, not event delivery.
    deadline = time.monotonic() + 5
    while nmi.token(source="127.0.0.21").status == 200:
        assert time.monotonic() < deadline, "nmi never saw the old pod's deletion"
        time.sleep(0.05)
    fakes.put(make_pod("new", NS, "127.0.0.21", NODE, labels={"app": "unbound"}))
    deadline = time.monotonic() + 5
    while True:
        answer = nmi.token(source="127.0.0.21")
        assert answer.status != 200, "the new pod got the old pod's identity"
        if answer.status == 400 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer.status == 400 and answer.json["error_description"] == "Identity not found"


def test_two_live_pods_with_one_ip_get_503_never_a_token(nmi, fakes):
    fakes.put(make_pod("twin-1", NS, "127.0.0.22", NODE, labels={"aadpodidbinding": "app"}))
    fakes.put(make_pod("twin-2", NS, "127.0.0.22", NODE, labels={"aadpodidbinding": "app"}))
    time.sleep(0.3)
    answer = nmi.token(source="127.0.0.22")
    assert answer.status == 503 and "Retry-After" in answer.headers


def test_exception_pod_gets_the_nodes_identity_honouring_client_id(nmi):
    answer = nmi.token(source="127.0.0.3", resource="https://vault.azure.net")
    assert answer.status == 200 and answer.json["client_id"] == NODE_IDENTITY.client_id
    answer = nmi.token(source="127.0.0.3", resource="https://vault.azure.net", client_id=C.client_id)
    assert answer.status == 200 and answer.json["client_id"] == C.client_id


@pytest.mark.parametrize("selector, wanted, imds_selector", [
    ({"object_id": A.object_id}, A, {"object_id": A.object_id}),
    ({"mi_res_id": B.resource_id}, B, {"msi_res_id": B.resource_id}),
    ({"msi_res_id": C.resource_id}, C, {"msi_res_id": C.resource_id}),
])
def test_exception_pod_selectors_reach_imds_as_imds_own_never_dropped(nmi, fakes, selector, wanted, imds_selector):
    """Upstream dropped object_id and mi_res_id and answered with the node's system-assigned token."""
    resource = f"https://exception-{next(iter(selector))}.example/"
    answer = nmi.token(source="127.0.0.3", resource=resource, **selector)
    assert answer.status == 200, answer.body
    assert answer.json["client_id"] == wanted.client_id and oid(answer) == wanted.object_id
    sent = fakes.call(lambda: [q for q in fakes.imds.queries if q.get("resource") == resource])
    assert len(sent) == 1
    assert {k: v for k, v in sent[0].items() if k in ("client_id", "msi_res_id", "mi_res_id", "object_id")} \
        == imds_selector


def test_tokens_are_cached_per_identity_and_resource(nmi, fakes):
    resource = "https://cache-test.example/"
    first = nmi.token(resource=resource)
    second = nmi.token(resource=resource)
    assert first.json["access_token"] == second.json["access_token"]
    assert fakes.call(lambda: fakes.imds.calls[(B.client_id, resource)]) == 1
    assert int(second.json["expires_in"]) <= int(first.json["expires_in"])


def test_imds_refusal_is_403_and_throttling_is_429_with_retry_after(nmi, fakes):
    fakes.call(lambda: fakes.imds.fail_next(1, Fault(status=403, body={"error": "forbidden", "error_description": "no"})))
    refused = nmi.token(resource="https://refused.example/")
    assert refused.status == 403 and refused.json["error"] and "error_description" in refused.json
    fakes.call(lambda: fakes.imds.fail_next(20, Fault(status=429, retry_after="7")))
    throttled = nmi.token(resource="https://throttled.example/")
    fakes.call(lambda: fakes.imds._faults.clear())
    assert throttled.status == 429 and int(throttled.headers["Retry-After"]) > 0


def test_a_transient_imds_failure_is_retried(nmi, fakes):
    fakes.call(lambda: fakes.imds.fail_next(1, Fault(status=500)))
    answer = nmi.token(resource="https://retried.example/")
    assert answer.status == 200


def test_host_token_only_from_loopback_with_pod_headers(nmi):
    path = "/host/token/?resource=https%3A%2F%2Fvault.azure.net"
    answer = nmi.get(path, headers={"podns": NS, "podname": "app"})
    assert answer.status == 200
    assert set(answer.json) == {"token", "clientid"} and answer.json["clientid"] == B.client_id
    assert answer.json["token"]["resource"] == "https://vault.azure.net"
    assert nmi.get(path, headers={"podns": NS}).status == 400
    remote = nmi.get(path, headers={"podns": NS, "podname": "app"}, source="127.0.0.2")
    assert remote.status == 403 and remote.json["error"] == "forbidden"


def test_mangled_token_paths_are_400_and_other_paths_are_proxied(nmi):
    assert nmi.get("/metadata/identity\\oauth2/token/", headers={"Metadata": "true"}).status == 400
    instance = nmi.get("/metadata/instance?api-version=2021-02-01", headers={"Metadata": "true"})
    assert instance.status == 200 and instance.json["compute"]["name"] == "fake-vm"
    assert nmi.get("/metadata/instance?api-version=2021-02-01").status == 400
    assert nmi.get("/doesnotexist", headers={"Metadata": "true"}).status == 404


def test_probes_and_metrics(nmi):
    assert nmi.get("/healthz", port=nmi.probe_port).body == "Active"
    assert nmi.get("/readyz", port=nmi.probe_port).status == 200
    metrics = nmi.get("/metrics", port=nmi.metrics_port).body
    assert 'aadpodidentity_nmi_operations_duration_seconds_count{operation_type="/metadata/identity/oauth2/token"' in metrics


def test_real_clients_get_tokens(nmi, monkeypatch):
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{nmi.port}")
    monkeypatch.setenv("NO_PROXY", "*")
    from azure.identity import ManagedIdentityCredential
    token = ManagedIdentityCredential(client_id=A.client_id).get_token("https://storage.azure.com/.default")
    claims = json.loads(base64.urlsafe_b64decode(token.token.split(".")[1] + "=="))
    assert claims["oid"] == A.object_id and token.expires_on > time.time() + 3000
    import msal
    import requests
    client = msal.ManagedIdentityClient(msal.SystemAssignedManagedIdentity(), http_client=requests.Session())
    result = client.acquire_token_for_client(resource="https://vault.azure.net")
    assert "access_token" in result, result
    claims = json.loads(base64.urlsafe_b64decode(result["access_token"].split(".")[1] + "=="))
    assert claims["oid"] == B.object_id  # the pod's default identity, not the node's system identity
    import subprocess
    done = subprocess.run(["curl", "-sS", "--noproxy", "*", "-H", "Metadata: true",
                           f"http://127.0.0.1:{nmi.port}/metadata/identity/oauth2/token?resource=https://graph.microsoft.com"],
                          capture_output=True, text=True, timeout=30)
    assert json.loads(done.stdout)["client_id"] == B.client_id


def test_no_token_ever_appears_in_the_log(nmi):
    answer = nmi.token(resource="https://log-scan.example/")
    log = nmi.log()
    assert answer.json["access_token"] not in log
    assert "eyJ" not in log
    assert "token request" in log and "pod=e2e/app" in log


def raw(nmi, request: bytes) -> bytes:
    import socket
    with socket.create_connection(("127.0.0.1", nmi.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


@pytest.mark.parametrize("request_bytes", [
    b"GET /metadata/identity/oauth2/token?resource=%ff%fe HTTP/1.1\r\nMetadata: true\r\nConnection: close\r\n\r\n",
    b"GET /metadata/%ff/instance HTTP/1.1\r\nMetadata: true\r\nConnection: close\r\n\r\n",
    b"GET /metadata/%00 HTTP/1.1\r\nMetadata: true\r\nConnection: close\r\n\r\n",
    b"BREW /metadata/identity/oauth2/token?resource=r HTTP/1.1\r\nMetadata: true\r\nConnection: close\r\n\r\n",
    b"GET /metadata/identity/oauth2/token?resource=r HTTP/1.1\r\nMetadata: true\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET /metadata/identity/oauth2/token?resource=r&&&=&%% HTTP/1.1\r\nMetadata: true\r\nConnection: close\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello\r\n\r\n",
    b"GET http://evil.example/metadata/instance HTTP/1.1\r\nMetadata: true\r\nConnection: close\r\n\r\n",
    b"POST /metadata/identity/oauth2/token?resource=r HTTP/1.1\r\nMetadata: true\r\nContent-Length: 999999999\r\n\r\nx",
])
def test_bad_input_never_crashes_or_answers_500(nmi, request_bytes):
    answer = raw(nmi, request_bytes)
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500 or status in (502, 503), answer[:300]
    assert nmi.token().status == 200  # still serving


def test_thousands_of_junk_resources_keep_metric_labels_bounded(nmi):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", nmi.port, timeout=30, source_address=("127.0.0.2", 0))
    for n in range(2000):
        conn.request("GET", f"/metadata/identity/oauth2/token?resource=https://junk-{n}.example/",
                     headers={"Metadata": "true"})
        response = conn.getresponse()
        response.read()
        assert response.status == 400
    conn.close()
    metrics = nmi.get("/metrics", port=nmi.metrics_port).body
    series = [line for line in metrics.splitlines() if line.startswith("aadpodidentity_nmi_operations_duration_seconds_count")]
    assert len(series) < 50
    assert "junk-" not in metrics and 'resource="other"' in metrics


def test_attack_managed_mode_has_no_mic_shortcut_even_for_a_perfect_owner_chain(nmi, fakes):
    """Managed mode runs no MIC: a pod of Deployment `mic` (real chain, by UID) gets nothing, and a bare pod with a
    forged mic-<hash> owner reference (the reproduced attack: it got the kubelet's identity) neither."""
    for obj in (make_deployment("mic", "default", uid="uid-managed-mic"),
                make_replicaset("mic-8b8b8b", "default", uid="uid-managed-rs", deployment="mic",
                                deployment_uid="uid-managed-mic"),
                make_pod("mic-8b8b8b-xxxxx", "default", "127.0.0.70", NODE, replicaset="mic-8b8b8b",
                         replicaset_uid="uid-managed-rs", labels={"pod-template-hash": "8b8b8b"}),
                make_pod("bare", "default", "127.0.0.71", NODE, replicaset="mic-9a9a9a",
                         labels={"pod-template-hash": "9a9a9a"})):
        fakes.put(obj)
    for source in ("127.0.0.70", "127.0.0.71"):
        answer = nmi.token(source=source)
        assert answer.status == 400 and answer.json["error_description"] == "Identity not found", answer.body
    assert fakes.call(lambda: fakes.api.requests_for("replicasets") + fakes.api.requests_for("deployments")) == []
