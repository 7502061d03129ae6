"""Service principals through the real nmi process: Secrets from the API server, a fake Azure AD over HTTPS with
a test CA (trusted through REQUESTS_CA_BUNDLE, as in a cluster), auxiliary tenants, rotation, audit Events."""

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fakes.aad import FakeAad
from fakes.background import BackgroundFakes
from fakes.imds import VmIdentity
from fakes.kubeobjects import make_binding, make_identity, make_pod, make_secret
from fakes.pki import new_key, pkcs12_bundle, self_signed_certificate, with_mac_iterations

from tests.e2e.harness import NmiProcess

NODE, NS = "sp-node", "sp"
TENANT, AUX1, AUX2 = "tenant-main", "tenant-aux-1", "tenant-aux-2"
SP_SECRET_ID, SP_CERT_ID = "5e5e5e5e-0000-4000-8000-00000000005e", "ce7ce7ce-0000-4000-8000-0000000000ce"
MI = VmIdentity(client_id="aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa")
ATTACKER, VICTIM, VICTIM_SECRET = "attacker", "victim", "victims-s3cr3t"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sp")
    fakes = BackgroundFakes([MI])
    fakes.start()
    aad = FakeAad()
    fakes.run(aad.start())
    hostile = FakeAad()  # an https server of the attacker's, with a certificate nmi trusts (the worst case)
    fakes.run(hostile.start())
    ca = tmp / "ca.pem"
    ca.write_bytes(aad.write_ca_bundle(tmp / "aad-ca.pem").read_bytes()
                   + hostile.write_ca_bundle(tmp / "hostile-ca.pem").read_bytes())
    for tenant in (TENANT, AUX1, AUX2):
        aad.register_secret_app(tenant, SP_SECRET_ID, "s3cr3t-value-1")
    key = new_key("rsa")
    cert = self_signed_certificate("nmi-sp", key)
    aad.register_certificate_app(TENANT, SP_CERT_ID, cert)
    endpoint = aad.authority_host
    objects = [
        make_secret("sp-secret", NS, {"clientSecret": "s3cr3t-value-1"}),
        make_secret("sp-cert", NS, {"certificate": pkcs12_bundle(key, cert, b"pfx-pass"), "password": "pfx-pass"}),
        make_identity("sp", NS, type=1, client_id=SP_SECRET_ID, tenant_id=TENANT, ad_endpoint=endpoint,
                      secret="sp-secret"),
        make_identity("sp-aux", NS, type=1, client_id=SP_SECRET_ID, tenant_id=TENANT, ad_endpoint=endpoint,
                      secret="sp-secret", auxiliary_tenant_ids=[AUX1, AUX2]),
        make_identity("sp-cert", NS, type=2, client_id=SP_CERT_ID, tenant_id=TENANT, ad_endpoint=endpoint,
                      secret="sp-cert"),
        make_identity("sp-missing", NS, type=1, client_id=SP_SECRET_ID, tenant_id=TENANT, ad_endpoint=endpoint,
                      secret="does-not-exist"),
        make_identity("sp-too-many", NS, type=1, client_id=SP_SECRET_ID, tenant_id=TENANT, ad_endpoint=endpoint,
                      secret="sp-secret", auxiliary_tenant_ids=["a", "b", "c", "d"]),
        make_identity("mi", NS, client_id=MI.client_id),
    ]
    for n, name in enumerate(("sp", "sp-aux", "sp-cert", "sp-missing", "sp-too-many", "mi")):
        objects.append(make_binding(f"bind-{name}", NS, identity=name, selector=name))
        objects.append(make_pod(f"pod-{name}", NS, f"127.0.0.{50 + n}", NODE, labels={"aadpodidbinding": name}))
    # A certificate whose key derivation takes seconds (30M MAC rounds), then fails.
    slow = with_mac_iterations(pkcs12_bundle(key, cert, b"pfx-pass"), 30_000_000)
    objects += [make_secret("slow-cert", NS, {"certificate": slow, "password": "pfx-pass"}),
                make_identity("sp-slow", NS, type=2, client_id=SP_CERT_ID, tenant_id=TENANT, ad_endpoint=endpoint,
                              secret="slow-cert"),
                make_binding("bind-sp-slow", NS, identity="sp-slow", selector="sp-slow"),
                make_pod("pod-sp-slow", NS, "127.0.0.57", NODE, labels={"aadpodidbinding": "sp-slow"})]
    # A user who may create AzureIdentities only in namespace `attacker`, and the victim's Secret in `victim`.
    hostile.register_secret_app(TENANT, SP_SECRET_ID, "anything")
    objects += [
        make_secret("victim-sp", VICTIM, {"clientSecret": VICTIM_SECRET}),
        make_identity("borrow", ATTACKER, type=1, client_id=SP_SECRET_ID, tenant_id=TENANT, ad_endpoint=endpoint,
                      secret="victim-sp", secret_namespace=VICTIM),
        make_secret("own-sp", ATTACKER, {"clientSecret": "attackers-own-secret"}),
        make_identity("exfiltrate", ATTACKER, type=1, client_id=SP_SECRET_ID, tenant_id=TENANT,
                      ad_endpoint=f"https://localhost:{hostile.port}/", secret="own-sp"),
        make_identity("exfiltrate-userinfo", ATTACKER, type=1, client_id=SP_SECRET_ID, tenant_id=TENANT,
                      ad_endpoint=f"https://login.microsoftonline.com@localhost:{hostile.port}/", secret="own-sp"),
        make_identity("plain-http", ATTACKER, type=1, client_id=SP_SECRET_ID, tenant_id=TENANT,
                      ad_endpoint=f"http://127.0.0.1:{aad.port}/", secret="own-sp"),
    ]
    for n, name in enumerate(("borrow", "exfiltrate", "exfiltrate-userinfo", "plain-http")):
        objects.append(make_binding(f"bind-{name}", ATTACKER, identity=name, selector=name))
        objects.append(make_pod(f"pod-{name}", ATTACKER, f"127.0.0.{60 + n}", NODE, labels={"aadpodidbinding": name}))
    for obj in objects:
        fakes.put(obj)
    # The fake Azure AD listens on 127.0.0.1: trusted as an operator trusts a private authority. Never `localhost`.
    nmi = NmiProcess(tmp, fakes, node=NODE, extra=["--operation-mode=managed", "--forceNamespaced",
                                                    "--allowed-authority-hosts=127.0.0.1"],
                     env={"REQUESTS_CA_BUNDLE": str(ca)})
    nmi.start()
    yield fakes, aad, nmi, hostile
    try:
        assert nmi.stop() == 0
    finally:
        fakes.run(hostile.stop())
        fakes.run(aad.stop())
        fakes.stop()


def claims(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def test_service_principal_with_client_secret(world):
    fakes, aad, nmi, _ = world
    answer = nmi.token(source="127.0.0.50", resource="https://vault.azure.net")
    assert answer.status == 200, answer.body
    assert answer.json["resource"] == "https://vault.azure.net" and answer.json["token_type"] == "Bearer"
    assert claims(answer.json["access_token"])["appid"] == SP_SECRET_ID


def test_auxiliary_tenants_answer_an_array_primary_first(world):
    fakes, aad, nmi, _ = world
    answer = nmi.token(source="127.0.0.51", resource="https://management.azure.com/")
    assert answer.status == 200, answer.body
    tenants = [claims(t["access_token"])["tid"] for t in answer.json]
    assert tenants == [TENANT, AUX1, AUX2]
    assert all(isinstance(v, str) for t in answer.json for v in t.values())


def test_service_principal_with_pkcs12_certificate(world):
    fakes, aad, nmi, _ = world
    answer = nmi.token(source="127.0.0.52", resource="https://storage.azure.com/")
    assert answer.status == 200, answer.body
    assert claims(answer.json["access_token"])["appid"] == SP_CERT_ID
    assert any(auth.startswith("assertion:") for auth in aad.client_auth)


def test_configuration_errors_are_403_naming_the_object_never_its_content(world):
    fakes, aad, nmi, _ = world
    missing = nmi.token(source="127.0.0.53")
    assert missing.status == 403 and "does-not-exist" in missing.json["error_description"]
    too_many = nmi.token(source="127.0.0.54")
    assert too_many.status == 403 and "auxiliary" in too_many.json["error_description"].lower()
    assert "s3cr3t" not in missing.body + too_many.body


def test_rotated_secret_takes_effect_without_restart(world):
    fakes, aad, nmi, _ = world
    assert nmi.token(source="127.0.0.50", resource="https://before-rotation.example/").status == 200
    fakes.call(lambda: aad.register_secret_app(TENANT, SP_SECRET_ID, "s3cr3t-value-2"))
    refused = nmi.token(source="127.0.0.50", resource="https://during-rotation.example/")
    assert refused.status == 403  # Azure AD now refuses the old secret
    fakes.put(make_secret("sp-secret", NS, {"clientSecret": "s3cr3t-value-2"}))
    answer = nmi.token(source="127.0.0.50", resource="https://after-rotation.example/")
    assert answer.status == 200, answer.body
    fakes.call(lambda: aad.register_secret_app(TENANT, SP_SECRET_ID, "s3cr3t-value-1"))
    fakes.put(make_secret("sp-secret", NS, {"clientSecret": "s3cr3t-value-1"}))


def test_concurrent_requests_for_one_token_make_one_upstream_call(world):
    fakes, aad, nmi, _ = world
    resource = "https://single-flight.example/"
    fakes.call(lambda: setattr(fakes.imds, "response_delay", 0.3))
    try:
        # 64 workers closing and reconnecting in bursts: nmi holds 64 per source and makes room by closing the
        # source's idle kept-alive connections (whose close it may not have read yet), never by refusing
        with ThreadPoolExecutor(max_workers=64) as pool:
            answers = list(pool.map(lambda _: nmi.token(source="127.0.0.55", resource=resource), range(300)))
    finally:
        fakes.call(lambda: setattr(fakes.imds, "response_delay", 0.0))
    assert [a.status for a in answers] == [200] * 300
    assert len({a.json["access_token"] for a in answers}) == 1
    assert fakes.call(lambda: fakes.imds.calls[(MI.client_id, resource)]) == 1


def test_no_secret_or_token_in_the_log(world):
    fakes, aad, nmi, _ = world
    log = nmi.log()
    assert "s3cr3t" not in log and "pfx-pass" not in log and "eyJ" not in log


def test_token_issuance_is_recorded_as_events_on_the_binding_at_shutdown(world):
    fakes, aad, nmi, _ = world
    for _ in range(5):
        assert nmi.token(source="127.0.0.55", resource="https://audited.example/").status == 200
    assert nmi.stop() == 0
    events = fakes.call(lambda: list(fakes.api.posted_events))
    audited = [e for e in events if e["involvedObject"]["name"] == "bind-mi"]
    assert audited and audited[0]["involvedObject"]["kind"] == "AzureIdentityBinding"
    assert sum(e.get("count", 1) for e in audited if "audited.example" in e["message"]) == 5
    nmi.start()  # the module fixture expects a running process


def test_attack_an_identity_naming_another_namespaces_secret_is_403_and_the_secret_is_never_read(world):
    fakes, aad, nmi, _ = world
    issued_before = sum(aad.token_calls.values())
    answer = nmi.token(source="127.0.0.60", resource="https://victim-resource.example/")
    assert answer.status == 403, answer.body
    assert answer.json["error"] == "invalid_identity"
    assert "AzureIdentity attacker/borrow" in answer.json["error_description"]
    assert "--allow-cross-namespace-secrets" in answer.json["error_description"]
    secret_reads = fakes.call(lambda: [r.path for r in fakes.api.requests_for("secrets")])
    assert not any("/namespaces/victim/" in path for path in secret_reads), secret_reads
    assert any(path.endswith("/sp-secret") for path in secret_reads)  # the recorder does see Secret reads
    assert sum(aad.token_calls.values()) == issued_before  # nothing was issued for the victim's principal
    assert VICTIM_SECRET not in answer.body + nmi.log()


def test_attack_a_hostile_authority_host_receives_nothing(world):
    fakes, aad, nmi, hostile = world
    for source, name in (("127.0.0.61", "exfiltrate"), ("127.0.0.62", "exfiltrate-userinfo")):
        answer = nmi.token(source=source, resource="https://exfiltration.example/")
        assert answer.status == 403, answer.body
        assert f"AzureIdentity attacker/{name}" in answer.json["error_description"]
    plain = nmi.token(source="127.0.0.63")
    assert plain.status == 403 and "https" in plain.json["error_description"]
    assert fakes.call(lambda: (hostile.token_requests, sum(hostile.discovery_calls.values()))) == (0, 0)
    secret_reads = fakes.call(lambda: [r.path for r in fakes.api.requests_for("secrets")])
    assert not any(path.endswith("/own-sp") for path in secret_reads)  # refused before the Secret was even read


def test_attack_a_slow_pkcs12_bundle_stalls_no_other_pod_and_is_opened_once(world):
    fakes, aad, nmi, _ = world
    assert nmi.token(source="127.0.0.52", resource="https://warm.example/").status == 200  # parser process started
    assert nmi.token(source="127.0.0.55", resource="https://cached.example/").status == 200  # a cached token
    reads_before = fakes.call(lambda: len(fakes.api.requests_for("secrets")))
    result: dict = {}
    attacker = threading.Thread(target=lambda: result.update(answer=nmi.token(source="127.0.0.57")))
    attacker.start()
    try:
        eventually(lambda: any(r.path.endswith("/slow-cert") for r in fakes.api.requests_for("secrets")[reads_before:]),
                   fakes)
        # The bundle is being opened (seconds of key derivation): other pods and the probes are answered meanwhile.
        for _ in range(3):
            assert nmi.token(source="127.0.0.55", resource="https://cached.example/").status == 200
            assert nmi.get("/healthz", port=nmi.probe_port).status == 200
        assert attacker.is_alive(), "the slow bundle was opened before the other requests were answered"
    finally:
        attacker.join(60)
    assert result["answer"].status == 403 and "Secret sp/slow-cert" in result["answer"].json["error_description"]
    again = nmi.token(source="127.0.0.57", resource="https://other.example/")
    assert again.status == 403 and again.json == result["answer"].json
    assert nmi.log().count("Secret sp/slow-cert: 'certificate' is not a PKCS#12 bundle") == 1  # parsed once


def eventually(condition, fakes, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not fakes.call(condition):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
