"""One real nmi daemon (managed mode, instance metadata blocked) and its fakes, shared by the attack tests of
this package; the fake IMDS records every request it receives."""

from __future__ import annotations

import pytest

from fakes.background import BackgroundFakes
from fakes.imds import VmIdentity
from tests.e2e.conftest import A, B, C, NODE, NODE_IDENTITY, managed_world
from tests.e2e.harness import NmiProcess

BOUND_POD = "127.0.0.1"  # pod "app": bound to identities a and b
NO_IDENTITY_POD = "127.0.0.2"  # pod "other": runs on the node, matches no binding
UNKNOWN_CALLER = "127.0.0.9"  # no pod has this address
VM_IDENTITY = VmIdentity(client_id="eeeeeeee-5555-4555-8555-eeeeeeeeeeee")  # on the VM, bound to nobody
DAEMON_FLAGS = ["--operation-mode=managed", "--forceNamespaced", "--block-instance-metadata"]


@pytest.fixture(scope="package")
def fakes():
    with BackgroundFakes([A, B, C, NODE_IDENTITY, VM_IDENTITY]) as fakes:
        fakes.put_all(managed_world())
        yield fakes


@pytest.fixture(scope="package")
def nmi(fakes, tmp_path_factory):
    process = NmiProcess(tmp_path_factory.mktemp("nmi"), fakes, node=NODE, extra=[*DAEMON_FLAGS, "-v=4"])
    process.start()
    yield process
    assert process.stop() == 0
