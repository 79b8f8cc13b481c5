"""Reading and checking PEM certificates with `cryptography` (spec 3.1)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


class CertProblem(Exception):
    """A certificate file that can't be served, with the reason."""


@dataclass(frozen=True)
class CertInfo:
    domains: tuple[str, ...]
    not_after: dt.datetime
    key_type: str
    chain_length: int

    @property
    def days_to_expiry(self) -> int:
        return (self.not_after - dt.datetime.now(dt.timezone.utc)).days


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertProblem(f"cannot read {path}: {exc.strerror or exc}") from exc


def _chain(path: Path) -> list[x509.Certificate]:
    data = _read(path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertProblem(f"{path}: no PEM certificate in the file")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertProblem(f"{path}: certificate chain does not parse: {exc}") from exc


def _domains(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
        if names:
            return names
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return tuple(str(c.value).lower() for c in cns)


def _key_type(key) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "EC"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RSA"
    return type(key).__name__


def load_server_cert(cert_path: Path, key_path: Path) -> CertInfo:
    chain = _chain(cert_path)
    key_data = _read(key_path)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError as exc:
        raise CertProblem(f"{key_path}: the private key is encrypted; lbcore needs it "
                          "unencrypted") from exc
    except ValueError as exc:
        raise CertProblem(f"{key_path}: not a PEM private key: {exc}") from exc
    leaf = chain[0]
    if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertProblem(f"{key_path}: private key does not match the certificate "
                          f"{cert_path}")
    return CertInfo(_domains(leaf), leaf.not_valid_after_utc, _key_type(key), len(chain))


def load_ca_bundle(cert_path: Path, crl_path: Path | None) -> CertInfo:
    chain = _chain(cert_path)
    if crl_path is not None:
        data = _read(crl_path)
        try:
            x509.load_pem_x509_crl(data)
        except ValueError as exc:
            raise CertProblem(f"{crl_path}: not a PEM CRL: {exc}") from exc
    first = chain[0]
    return CertInfo(_domains(first), min(c.not_valid_after_utc for c in chain),
                    _key_type(first.public_key()), len(chain))
