"""Throw-away X.509 material for the fakes: a test CA, a TLS server certificate, client certificates, PKCS#12."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]


def new_key(kind: str = "rsa") -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: str, public_key: object) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(public_key).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2)))


def self_signed_certificate(common_name: str, key: PrivateKey) -> x509.Certificate:
    return _builder(common_name, common_name, key.public_key()).sign(key, hashes.SHA256())


def pkcs12_bundle(key: PrivateKey, certificate: x509.Certificate, password: bytes | None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return pkcs12.serialize_key_and_certificates(b"sp", key, certificate, None, encryption)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA and one server certificate for 127.0.0.1 and localhost, signed by it."""


    ca_key: PrivateKey = field(repr=False)
    ca_certificate: x509.Certificate
    server_key: PrivateKey = field(repr=False)
    server_certificate: x509.Certificate

    @classmethod
    def create(cls) -> "CertificateAuthority":
        ca_key = new_key("ec")
        ca = (_builder("nmi test CA", "nmi test CA", ca_key.public_key())
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False, decipher_only=False),
                             critical=True)
              .sign(ca_key, hashes.SHA256()))
        server_key = new_key("ec")
        server = (_builder("localhost", "nmi test CA", server_key.public_key())
                  .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                              x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                 critical=False)
                  .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                  .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                  .sign(ca_key, hashes.SHA256()))
        return cls(ca_key, ca, server_key, server)

    def write_ca_bundle(self, path: Path | str) -> Path:
        """The CA certificate as PEM, for REQUESTS_CA_BUNDLE."""
        path = Path(path)
        path.write_bytes(self.ca_certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def write_server_files(self, directory: Path) -> tuple[Path, Path]:
        cert = directory / "server.pem"
        key = directory / "server.key"
        cert.write_bytes(self.server_certificate.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(self.server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        return cert, key


def with_mac_iterations(bundle: bytes, iterations: int) -> bytes:
    """The bundle with its MAC key-derivation iteration count rewritten (the MAC no longer verifies): a PKCS#12
    that costs `iterations` rounds of work to open and then fails, made in microseconds (building a bundle with
    that many rounds would cost the same work as opening it). Expects `pkcs12_bundle` output: a PFX of 256..65535
    bytes whose MacData ends the file with the default 2048 iterations."""
    if not (bundle[:2] == b"\x30\x82" and bundle[-4:] == b"\x02\x02\x08\x00" and 0 < iterations < 2**31):
        raise ValueError("not a bundle made by pkcs12_bundle")
    body = bundle[4:-4] + b"\x02\x04" + iterations.to_bytes(4, "big")
    mac_data = body.rfind(b"\x30\x41\x30\x31")  # SEQUENCE(65) { DigestInfo(49), salt, iterations }
    body = body[:mac_data] + b"\x30\x43" + body[mac_data + 2:]
    return b"\x30\x82" + len(body).to_bytes(2, "big") + body
