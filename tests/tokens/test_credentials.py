"""Service-principal credentials out of Secret data: the PKCS#12 parse in a separate process, once per Secret
version, failures included (moved from test_credential_rules.py)."""

from __future__ import annotations

import asyncio

import pytest

from nmi.errors import IdentityConfigurationError
from fakes.pki import new_key, pkcs12_bundle, self_signed_certificate, with_mac_iterations
from nmi.model import SERVICE_PRINCIPAL_CERTIFICATE, SecretData, SecretRef
from nmi.tokens.credentials import CredentialLoader


async def test_a_failed_parse_is_cached_per_secret_version_and_retried_for_a_new_version():
    loader = CredentialLoader()
    ref = SecretRef("apps", "cert")
    bad = SecretData({"certificate": b"not a bundle"}, "41")

    for _ in range(3):
        with pytest.raises(IdentityConfigurationError, match="Secret apps/cert"):
            await loader.load(SERVICE_PRINCIPAL_CERTIFICATE, ref, bad)
    assert loader.parses == 1

    key = new_key("rsa")
    good = SecretData({"certificate": pkcs12_bundle(key, self_signed_certificate("ok", key), None)}, "42")
    opened = await loader.load(SERVICE_PRINCIPAL_CERTIFICATE, ref, good)
    assert opened.private_key.private_numbers() == key.private_numbers()
    assert loader.parses == 2


async def test_concurrent_requests_for_one_version_share_one_parse():
    loader = CredentialLoader()
    key = new_key("rsa")
    data = SecretData({"certificate": pkcs12_bundle(key, self_signed_certificate("ok", key), None)}, "7")
    results = await asyncio.gather(*(loader.load(SERVICE_PRINCIPAL_CERTIFICATE, SecretRef("a", "c"), data)
                                     for _ in range(5)))
    assert loader.parses == 1 and len({r.fingerprint for r in results}) == 1


async def test_a_parse_that_outlives_its_budget_is_stopped_and_cached_as_a_failure():
    key = new_key("rsa")
    good = pkcs12_bundle(key, self_signed_certificate("ok", key), b"pw")
    # The budget also covers starting a fresh worker process (spawn + imports), seconds on a loaded machine.
    loader = CredentialLoader(parse_timeout=5.0)
    await loader.load(SERVICE_PRINCIPAL_CERTIFICATE, SecretRef("a", "warm"), {"certificate": good, "password": b"pw"})
    slow = SecretData({"certificate": with_mac_iterations(good, 400_000_000), "password": b"pw"}, "9")  # ~30 s
    for _ in range(2):
        with pytest.raises(IdentityConfigurationError, match="within 5s"):
            await loader.load(SERVICE_PRINCIPAL_CERTIFICATE, SecretRef("a", "slow"), slow)
    assert loader.parses == 2
    # The stuck worker was killed; the next bundle gets a fresh one.
    fresh = SecretData({"certificate": good, "password": b"pw"}, "10")
    assert (await loader.load(SERVICE_PRINCIPAL_CERTIFICATE, SecretRef("a", "slow"), fresh)).certificate_pem


EXIT_WHILE_PARSING = """
import asyncio
from nmi.tokens.credentials import CredentialLoader, ParserProcess
from fakes.pki import new_key, pkcs12_bundle, self_signed_certificate, with_mac_iterations
from nmi.model import SERVICE_PRINCIPAL_CERTIFICATE, SecretData, SecretRef

key = new_key("rsa")
bundle = with_mac_iterations(pkcs12_bundle(key, self_signed_certificate("x", key), b"p"), 2_000_000_000)  # minutes


async def main():
    parse = asyncio.ensure_future(CredentialLoader().load(SERVICE_PRINCIPAL_CERTIFICATE, SecretRef("a", "b"),
                                                          SecretData({"certificate": bundle, "password": b"p"}, "1")))
    while ParserProcess._pool is None or not getattr(ParserProcess._pool, "_processes", None):
        await asyncio.sleep(0.01)
    ParserProcess.kill()  # what nmi's shutdown does (assembly registers it on the exit stack)
    parse.cancel()
    await asyncio.gather(parse, return_exceptions=True)

asyncio.run(main())
print("exited")
"""


def test_a_parse_still_running_does_not_hold_the_exit():
    """Without the kill, the pool's exit handler waits for the parse (minutes): the run below would time out."""
    import os
    import signal
    import subprocess
    import sys

    # Its own process group, so that on failure the parser process it spawned is killed too.
    script = subprocess.Popen([sys.executable, "-c", EXIT_WHILE_PARSING], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = script.communicate(timeout=60)
    finally:
        try:
            os.killpg(script.pid, signal.SIGKILL)  # whatever is left of the group (nothing, when it passes)
        except ProcessLookupError:
            pass
        script.wait()
    assert script.returncode == 0 and out.strip() == "exited", err[-2000:]
