"""Flags that change answers: --set-retry-after-header, --block-instance-metadata, --metadata-header-required."""

import socket

import pytest

from fakes.background import BackgroundFakes
from fakes.kubeobjects import make_binding, make_identity, make_pod

from tests.e2e.conftest import A, NODE_IDENTITY
from tests.e2e.harness import NmiProcess

NODE = "flags-node"
NS = "flags"


@pytest.fixture(scope="module")
def nmi(tmp_path_factory):
    fakes = BackgroundFakes([A, NODE_IDENTITY])
    fakes.start()
    for obj in (make_identity("id-a", NS, client_id=A.client_id), make_binding("b", NS, identity="id-a", selector="a"),
                make_pod("waiting", NS, "127.0.0.40", NODE, labels={"aadpodidbinding": "a"})):
        fakes.put(obj)
    process = NmiProcess(tmp_path_factory.mktemp("flags"), fakes, node=NODE, extra=[
        "--retry-attempts-for-created=1", "--retry-attempts-for-assigned=0", "--find-identity-retry-interval=1",
        "--set-retry-after-header", "--block-instance-metadata=true", "--metadata-header-required=false"])
    process.start()
    yield process
    try:
        assert process.stop() == 0
    finally:
        fakes.stop()


def test_exhausted_wait_with_retry_after_flag_is_503_retry_after_20(nmi):
    answer = nmi.token(source="127.0.0.40")
    assert answer.status == 503 and answer.headers["Retry-After"] == "20"


def test_metadata_header_not_required_when_disabled(nmi):
    answer = nmi.token(source="127.0.0.40", metadata=False)
    assert answer.status == 503 and answer.headers["Retry-After"] == "20"  # past the header check, into the wait


def raw_get(port: int, target: str) -> int:
    """Send the request line exactly as given (no client-side normalisation) and return the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("target", [
    "/metadata/instance", "/metadata/instance?api-version=2021-02-01", "/Metadata/instance/", "/METADATA/INSTANCE",
    "/metadata/Instance/compute", "//metadata/instance", "/metadata//instance", "/metadata/./instance",
    "/metadata/identity/../instance", "/x/../metadata/instance", "/metadata/%69nstance", "/%6detadata/instance",
    "/metadata%2finstance", "/metadata/identity/%2e%2e/instance", "/metadata/identity/%2E%2E/instance",
])
def test_blocked_instance_metadata_cannot_be_reached_through_any_spelling(nmi, target):
    assert raw_get(nmi.port, target) == 403


def test_other_paths_still_proxied_when_blocking(nmi):
    assert raw_get(nmi.port, "/doesnotexist") == 404
