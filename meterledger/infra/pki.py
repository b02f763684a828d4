"""A small X.509 certificate authority for the services' TLS: P-256 keys, PEM files.

    ca = pki.new_ca("meterledger fog 0123456789abcdef")
    server = pki.issue_server(ca, ["broker.local", "127.0.0.1"])   # DNS and IP SANs
    client = pki.issue_client(ca, "0123456789abcdef")               # CN = the party's id
    pki.save(server, dir / "server.crt", dir / "server.key")         # key: mode 0600
    ca = pki.load(dir / "ca.crt", dir / "ca.key")

It knows nothing of MQTT or HTTP: a caller picks the names and the files. Certificates are
signed with ECDSA-SHA256; a CA may sign end-entity certificates only (path length 0); a
server certificate is for TLS server authentication (its names in the subjectAltName, the
first one also as its CN), a client certificate for TLS client authentication. Validity
starts an hour before issue, so a peer whose clock runs a little behind accepts it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meterledger.errors import ConfigError

__all__ = ["CA_DAYS", "LEAF_DAYS", "Issued", "PKIError", "cert_pem", "check_names",
           "issue_client", "issue_server", "load", "load_cert", "load_key", "new_ca", "save",
           "save_cert", "save_key", "verify_issued", "write_atomic"]

CA_DAYS = 20 * 365  # a CA outlives the devices that pin it
LEAF_DAYS = 5 * 365
_BACKDATE = datetime.timedelta(hours=1)


class PKIError(ConfigError):
    """A certificate or key file is missing, unreadable, or not what it should be."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def name(self) -> str:
        """The subject's common name."""
        cn = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(cn[0].value) if cn else ""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _builder(subject: str, issuer: x509.Name, pub: ec.EllipticCurvePublicKey, days: int,
             ) -> x509.CertificateBuilder:
    if days < 1:
        raise ValueError(f"a certificate must be valid for at least a day, not {days}")
    now = _now()
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False))


def new_ca(name: str, days: int = CA_DAYS) -> Issued:
    """A self-signed CA named `name` (its CN) with a fresh P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(name, subject, pub, days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def _leaf(ca: Issued, cn: str, days: int, usage: x509.ObjectIdentifier,
          names: list[x509.GeneralName]) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    b = (_builder(cn, ca.cert.subject, pub, days)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False,
                                      key_agreement=False, key_cert_sign=False, crl_sign=False,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             ca.key.public_key()), critical=False))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(b.sign(ca.key, hashes.SHA256()), key)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or len(name) > 253 or any(c.isspace() or c in "/:@" for c in name):
        raise ValueError(f"{name!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


def check_names(names: Sequence[str]) -> None:
    """Refuse (ValueError) names a server certificate cannot carry: none at all, or one that
    is neither an IP address nor a DNS name."""
    if not names:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    for n in names:
        _general_name(n)


def issue_server(ca: Issued, names: Sequence[str], days: int = LEAF_DAYS) -> Issued:
    """A TLS server certificate for `names` (DNS names or IP addresses, at least one)."""
    check_names(names)
    general = [_general_name(n) for n in names]
    return _leaf(ca, names[0], days, ExtendedKeyUsageOID.SERVER_AUTH, general)


def issue_client(ca: Issued, party: str, days: int = LEAF_DAYS) -> Issued:
    """A TLS client certificate whose CN is `party` (a meter, fog or service id)."""
    if not party or len(party) > 64:
        raise ValueError(f"a client certificate's party id must be 1..64 characters: {party!r}")
    return _leaf(ca, party, days, ExtendedKeyUsageOID.CLIENT_AUTH, [])


def verify_issued(ca: x509.Certificate, cert: x509.Certificate) -> bool:
    """Whether `cert` carries a valid signature of `ca`'s key (signature only: no dates,
    names or usages)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -- files ---------------------------------------------------------------------------------
def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_atomic(path: Path, data: bytes, mode: int, gid: int = -1) -> None:
    """Write a new file beside `path` with `mode` (and group `gid`, if not -1) from the start,
    fsync it, rename it over `path`: a reader sees the old file or the new one, never part of
    one, and never one it may not read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        if gid != -1:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask, and an old tmp keeps its own
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_cert(cert: x509.Certificate, path: Path) -> None:
    """The certificate as PEM (mode 0644: certificates are public)."""
    write_atomic(path, cert_pem(cert).encode(), 0o644)


def save_key(key: ec.EllipticCurvePrivateKey, path: Path, gid: int = -1) -> None:
    """The private key as unencrypted PKCS#8 PEM, mode 0600 from the first byte written; with
    a `gid`, 0640 and that group (a server that runs as another user in the group)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    write_atomic(path, data, 0o600 if gid == -1 else 0o640, gid)


def save(issued: Issued, cert_path: Path, key_path: Path, gid: int = -1) -> None:
    save_key(issued.key, key_path, gid)
    save_cert(issued.cert, cert_path)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PKIError(f"no {what} at {path}") from None
    except OSError as e:
        raise PKIError(f"cannot read the {what} {path}: {e}") from None


def load_cert(path: Path) -> x509.Certificate:
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise PKIError(f"{path} is not a PEM certificate: {e}") from None


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise PKIError(f"{path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PKIError(f"{path} is not a P-256 key")
    return key


def load(cert_path: Path, key_path: Path) -> Issued:
    """A certificate and its key; refuses a key that is not the certificate's."""
    issued = Issued(load_cert(cert_path), load_key(key_path))
    if issued.cert.public_key() != issued.key.public_key():
        raise PKIError(f"{key_path} is not the key of {cert_path}")
    return issued
