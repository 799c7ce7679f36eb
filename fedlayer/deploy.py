"""Certificates and keys for running fedlayer on Flower's deployment engine (SuperLink + SuperNodes).

`make_certificates` writes what a TLS deployment needs: a private certificate authority (`ca.crt`,
given to every SuperNode and to the `flwr` CLI as root certificate), a server certificate signed by it
for the SuperLink's addresses (`server.pem`, `server.key`), and optionally one key pair per SuperNode
for SuperNode authentication (`supernode-K`, `supernode-K.pub`: ECDSA P-384 in OpenSSH format, the
format `flower-supernode --auth-supernode-private-key` and `flwr supernode register` read).
Every file is written atomically; private keys are readable by their owner only (mode 0600).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlayer.atomic import write_bytes
from fedlayer.errors import ConfigError

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_DAYS = 365
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_TLS_CURVE = ec.SECP256R1  # what every TLS stack accepts
_SUPERNODE_CURVE = ec.SECP384R1  # Flower's docs: `ssh-keygen -t ecdsa -b 384`


@dataclass(frozen=True)
class Certificates:
    """Paths of the files `make_certificates` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    supernode_keys: tuple[tuple[Path, Path], ...]  # (private key, public key) per SuperNode

    def files(self) -> list[Path]:
        pairs = [p for pair in self.supernode_keys for p in pair]
        return [self.ca_cert, self.ca_key, self.server_cert, self.server_key, *pairs]


def subject_alt_name(host: str) -> x509.GeneralName:
    """The SAN entry for `host` (an IP address or a DNS name); anything else is a FedlayerError."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    dns_ok = all(_DNS_LABEL.match(label) for label in labels) and not labels[-1].isdigit()  # "10.0.0": a typo
    if host and len(host) <= 253 and dns_ok:
        return x509.DNSName(host.rstrip(".").lower())
    hint = " (give the host without a port or scheme)" if ":" in host or "/" in host else ""
    raise ConfigError(
        f"--host {host!r} is neither an IP address nor a DNS name{hint}; "
        "valid examples: 127.0.0.1, 10.0.0.5, localhost, myserver.example"
    )


def supernode_key_files(out_dir: str | Path, index: int) -> tuple[Path, Path]:
    """(private key, public key) paths of SuperNode `index` in `out_dir`."""
    private = Path(out_dir) / f"supernode-{index}"
    return private, private.with_name(f"{private.name}.pub")


def make_certificates(
    out_dir: str | Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    supernode_keys: int = 0,
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
) -> Certificates:
    """Write a CA, a server certificate for `hosts` and `supernode_keys` SuperNode key pairs to `out_dir`.

    Every input is checked before anything is written; existing files are kept unless `overwrite`
    (replacing a CA silently would lock out every SuperNode that holds the old one).
    """
    out = Path(out_dir)
    names = [subject_alt_name(h) for h in hosts]
    if not names:
        raise ConfigError("no --host given: the server certificate needs an IP address or a DNS name")
    if supernode_keys < 0:
        raise ConfigError(f"--supernode-keys {supernode_keys} is negative; give 0 or more")
    if days < 1:
        raise ConfigError(f"--days {days} is not positive; give the certificates' validity in days (>= 1)")
    result = Certificates(
        ca_cert=out / CA_CERT,
        ca_key=out / CA_KEY,
        server_cert=out / SERVER_CERT,
        server_key=out / SERVER_KEY,
        supernode_keys=tuple(supernode_key_files(out, k) for k in range(supernode_keys)),
    )
    existing = [p.name for p in result.files() if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds {', '.join(existing)}; use --force to replace them "
            "(whoever holds the old ca.crt will then no longer trust the SuperLink)"
        )

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(_TLS_CURVE())
    ca_cert = _ca_certificate(ca_key, now, days)
    server_key = ec.generate_private_key(_TLS_CURVE())
    server_cert = _server_certificate(server_key, ca_key, ca_cert, names, now, days)
    write_bytes(result.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    write_bytes(result.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(result.ca_key, _private_bytes(ca_key, serialization.PrivateFormat.PKCS8))
    _write_private(result.server_key, _private_bytes(server_key, serialization.PrivateFormat.PKCS8))
    for private_path, public_path in result.supernode_keys:
        key = ec.generate_private_key(_SUPERNODE_CURVE())
        _write_private(private_path, _private_bytes(key, serialization.PrivateFormat.OpenSSH))
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        write_bytes(public_path, public + b"\n")
    return result


def _private_bytes(key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@contextlib.contextmanager
def _owner_only() -> Iterator[None]:
    """Files created inside get mode 0600 from the start (the atomic writer honours the umask)."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def _write_private(path: Path, data: bytes) -> None:
    with _owner_only():
        write_bytes(path, data)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlayer"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(*allowed: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{flag: flag in allowed for flag in _KEY_USAGE_FLAGS})


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, now: datetime.datetime, days: int
) -> x509.CertificateBuilder:
    """The fields every certificate here shares (valid from five minutes ago, to absorb clock skew)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime, days: int) -> x509.Certificate:
    name = _name("fedlayer deployment CA")
    return (
        _builder(name, name, key, now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[x509.GeneralName],
    now: datetime.datetime,
    days: int,
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        _builder(_name(str(names[0].value)), ca_cert.subject, key, now, days)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature", "key_agreement"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
