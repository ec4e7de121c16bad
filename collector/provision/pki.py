"""The project's own certificate authority for the broker's TLS listener (`evalterm pki`).

Files in the PKI folder (docs/provisioning.md lists them for the device config):

    ca.key, ca.crt          the current CA (key mode 600)
    ca-bundle.crt           every CA a client may be pinned to: the current one, and during a
                            rotation the previous one too. The broker's `cafile` (client
                            certificates of either CA are accepted) and the devices' CA file.
    server.key, server.crt  the broker's certificate with its SANs; during a rotation server.crt
                            also holds the new CA cross-signed by the old one, so a device pinned
                            to the old CA still verifies the chain (server -> cross -> old CA)
    crl.pem                 the revocation lists of every CA in the bundle (Mosquitto `crlfile`)
    clients/ID.key, .crt    optional client certificates for mutual TLS (CN = the device id)
    old/                    the previous CA's key and certificate during a rotation
    serials.txt             serial, CN, state of every issued certificate (revocation needs it)

Pure builders (`make_ca`, `make_cert`, `make_crl`) return `cryptography` objects; the functions
taking a folder do the file I/O. Keys are written with mode 600 before any byte of them is.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector.errors import EvaltermError

__all__ = ["CA_DAYS", "CERT_DAYS", "CRL_DAYS", "PkiError", "PkiFiles", "finish_rotation",
           "init_ca", "issue_client", "issue_server", "make_ca", "make_cert", "make_crl",
           "new_key", "revoke", "rotate_ca"]

CA_DAYS = 3650
CERT_DAYS = 825
CRL_DAYS = 365

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class PkiError(EvaltermError):
    """A PKI folder or request that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class PkiFiles:
    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def ca_crt(self) -> Path:
        return self.root / "ca.crt"

    @property
    def bundle(self) -> Path:
        return self.root / "ca-bundle.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def server_crt(self) -> Path:
        return self.root / "server.crt"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def old(self) -> Path:
        return self.root / "old"

    @property
    def serials(self) -> Path:
        return self.root / "serials.txt"

    def client(self, name: str) -> tuple[Path, Path]:
        return self.root / "clients" / f"{name}.key", self.root / "clients" / f"{name}.crt"


# -- pure builders ---------------------------------------------------------------------------

def new_key(kind: str = "ec") -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise PkiError(f"key type {kind!r}: use ec (P-256) or rsa (2048 bits)")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evalterm"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_ca(key: PrivateKey, cn: str, *, days: int = CA_DAYS,
            signer: tuple[x509.Certificate, PrivateKey] | None = None) -> x509.Certificate:
    """A CA certificate for `key`: self-signed, or cross-signed by `signer` (cert, key)."""
    now = _now()
    issuer_name, issuer_key = (signer[0].subject, signer[1]) if signer else (_name(cn), key)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=days))
         # A root may sign one intermediate: its successor, cross-signed during a rotation.
         .add_extension(x509.BasicConstraints(ca=True, path_length=0 if signer else 1),
                        critical=True)
         .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False,
                                      key_agreement=False, key_cert_sign=True, crl_sign=True,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if signer:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer[1].public_key()), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _san(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            if not n or any(c in n for c in " /:@"):
                raise PkiError(f"{n!r} is neither a host name nor an IP address") from None
            out.append(x509.DNSName(n))
    return out


def make_cert(ca: x509.Certificate, ca_key: PrivateKey, key: PrivateKey, cn: str, *,
              server_names: Sequence[str] = (), days: int = CERT_DAYS) -> x509.Certificate:
    """A leaf: a server certificate when `server_names` are given (SANs), else a client one."""
    now = _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                        critical=False))
    if server_names:
        b = b.add_extension(x509.SubjectAlternativeName(_san(server_names)), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def make_crl(ca: x509.Certificate, ca_key: PrivateKey, revoked: Iterable[int], *,
             days: int = CRL_DAYS) -> x509.CertificateRevocationList:
    now = _now()
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
         .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=days)))
    for serial in sorted(set(revoked)):
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(now).build())
    return b.sign(ca_key, hashes.SHA256())


# -- files -----------------------------------------------------------------------------------

def _pem(cert: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int = 0o644, group: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if group:
        try:
            shutil.chown(tmp, group=group)
        except (LookupError, PermissionError) as exc:
            tmp.unlink(missing_ok=True)
            raise PkiError(f"cannot give {path} to group {group!r} ({exc}): run as root or "
                           "drop --group") from None
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_key(path: Path, key: PrivateKey, group: str | None = None) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    _write(path, data, 0o640 if group else 0o600, group)


def _load_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        raise PkiError(f"no CA key {path}: run `evalterm pki init --dir {path.parent}` "
                       "first") from None
    except ValueError as exc:
        raise PkiError(f"{path} is not a PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{path}: unsupported key type")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"no certificate {path}: run `evalterm pki init` first") from None
    except ValueError as exc:
        raise PkiError(f"{path} is not a PEM certificate ({exc})") from None


def _ca(files: PkiFiles) -> tuple[x509.Certificate, PrivateKey]:
    return _load_cert(files.ca_crt), _load_key(files.ca_key)


def _old_ca(files: PkiFiles) -> tuple[x509.Certificate, PrivateKey] | None:
    if not (files.old / "ca.crt").exists():
        return None
    return _load_cert(files.old / "ca.crt"), _load_key(files.old / "ca.key")


def _record(files: PkiFiles, cert: x509.Certificate, kind: str) -> None:
    with files.serials.open("a") as f:
        f.write(f"{cert.serial_number:x} {kind} {_cn(cert)} {_fp(cert)}\n")


def _fp(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()[:16]


def _serials(files: PkiFiles) -> list[list[str]]:
    if not files.serials.exists():
        return []
    return [line.split() for line in files.serials.read_text().splitlines() if line.strip()]


def _revoked_serials(files: PkiFiles) -> set[int]:
    path = files.root / "revoked.txt"
    if not path.exists():
        return set()
    return {int(s, 16) for s in path.read_text().split()}


def _write_bundle_and_crl(files: PkiFiles) -> None:
    cas = [_ca(files)]
    old = _old_ca(files)
    if old:
        cas.append(old)
    _write(files.bundle, b"".join(_pem(c) for c, _ in cas))
    revoked = _revoked_serials(files)
    _write(files.crl, b"".join(_pem(make_crl(c, k, revoked)) for c, k in cas))


def init_ca(root: Path, *, cn: str = "evalterm CA 1", key_type: str = "ec",
            days: int = CA_DAYS) -> PkiFiles:
    files = PkiFiles(Path(root))
    if files.ca_key.exists() or files.ca_crt.exists():
        raise PkiError(f"{files.root} already holds a CA: use `evalterm pki rotate` to replace "
                       "it, or choose another --dir")
    files.root.mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o755)  # noqa: S103 - certificates are public; keys are 600
    key = new_key(key_type)
    _write_key(files.ca_key, key)
    cert = make_ca(key, cn, days=days)
    _write(files.ca_crt, _pem(cert))
    _record(files, cert, "ca")
    _write_bundle_and_crl(files)
    return files


def issue_server(root: Path, names: Sequence[str], *, group: str | None = None,
                 key_type: str = "ec", days: int = CERT_DAYS) -> x509.Certificate:
    """server.key + server.crt for the broker; SANs = `names` (host names, IP addresses)."""
    if not names:
        raise PkiError("the broker's certificate needs at least one --name: the host name or "
                       "IP address the keypads use in their broker.host")
    files = PkiFiles(Path(root))
    ca, ca_key = _ca(files)
    key = new_key(key_type)
    cert = make_cert(ca, ca_key, key, names[0], server_names=names, days=days)
    chain = _pem(cert)
    old = _old_ca(files)
    if old:  # mid-rotation: the new CA cross-signed by the old one, for devices pinned to it
        chain += _pem(make_ca(ca_key, _cn(ca), signer=old,
                              days=(old[0].not_valid_after_utc - _now()).days))
    _write_key(files.server_key, key, group)
    _write(files.server_crt, chain)
    _record(files, cert, "server")
    return cert


def _cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value.decode() if isinstance(value, bytes) else value


def issue_client(root: Path, name: str, *, key_type: str = "ec",
                 days: int = CERT_DAYS) -> tuple[Path, Path]:
    """A client certificate with CN = `name` (a device id or a service user) for mutual TLS."""
    from collector.protocol import ID_PATTERN

    if not ID_PATTERN.fullmatch(name):
        raise PkiError(f"client name {name!r}: 1-32 of A-Z a-z 0-9 _ - (a device id or a "
                       "broker user name)")
    files = PkiFiles(Path(root))
    ca, ca_key = _ca(files)
    key = new_key(key_type)
    cert = make_cert(ca, ca_key, key, name, days=days)
    key_path, crt_path = files.client(name)
    _write_key(key_path, key)
    _write(crt_path, _pem(cert))
    _record(files, cert, "client")
    return key_path, crt_path


def revoke(root: Path, name: str) -> list[int]:
    """Revoke every client certificate issued to `name`; rewrites crl.pem. Returns serials."""
    files = PkiFiles(Path(root))
    serials = [int(s, 16) for s, kind, cn, *_ in _serials(files) if kind == "client" and cn == name]
    if not serials:
        raise PkiError(f"no client certificate was issued to {name!r} in {files.root}")
    done = _revoked_serials(files) | set(serials)
    _write(files.root / "revoked.txt", "".join(f"{s:x}\n" for s in sorted(done)).encode())
    _write_bundle_and_crl(files)
    return serials


def rotate_ca(root: Path, *, key_type: str = "ec", days: int = CA_DAYS) -> x509.Certificate:
    """A new CA beside the old one: old/ keeps the old CA, the bundle and CRL hold both."""
    files = PkiFiles(Path(root))
    if _old_ca(files):
        raise PkiError("a rotation is already under way: finish it first (`evalterm pki "
                       "rotate --finish`, once every device has the new CA file)")
    ca, ca_key = _ca(files)
    n = int(_cn(ca).rsplit(" ", 1)[-1]) + 1 if _cn(ca).rsplit(" ", 1)[-1].isdecimal() else 2
    base = _cn(ca).rsplit(" ", 1)[0] if _cn(ca).rsplit(" ", 1)[-1].isdecimal() else _cn(ca)
    files.old.mkdir(exist_ok=True, mode=0o700)
    _write_key(files.old / "ca.key", ca_key)
    _write(files.old / "ca.crt", _pem(ca))
    key = new_key(key_type)
    _write_key(files.ca_key, key)
    cert = make_ca(key, f"{base} {n}", days=days)
    _write(files.ca_crt, _pem(cert))
    _record(files, cert, "ca")
    _write_bundle_and_crl(files)
    return cert


def finish_rotation(root: Path) -> None:
    """Drop the old CA: the bundle and CRL hold the new CA only (server.crt: issue again)."""
    files = PkiFiles(Path(root))
    if not _old_ca(files):
        raise PkiError("no rotation is under way (no old/ folder)")
    for p in (files.old / "ca.key", files.old / "ca.crt"):
        p.unlink()
    files.old.rmdir()
    _write_bundle_and_crl(files)


def server_names(cert_path: Path) -> list[str]:
    cert = _load_cert(cert_path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]
