"""`evalterm pki`: the files it writes, their modes, what the certificates say, and one-line errors.
(That Mosquitto and TLS clients accept them: tests/test_broker_security.py.)"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from collector.cli import pki as pki_cli
from collector.errors import EvaltermError
from collector.provision import pki


def run(*argv: str) -> int:
    """The `evalterm pki` group as `collector.cli.main` runs a group: an EvaltermError is one
    line, no traceback."""
    p = argparse.ArgumentParser(prog="evalterm")
    pki_cli.add_parsers(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["pki", *argv])
    return int(args.func(args))


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _crls(path: Path) -> list[x509.CertificateRevocationList]:
    end = b"-----END X509 CRL-----"
    blocks = [b + end for b in path.read_bytes().split(end) if b.strip()]
    return [x509.load_pem_x509_crl(b) for b in blocks]


def test_init_issue_and_the_files_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    d = tmp_path / "pki"
    assert run("init", "--dir", str(d)) == 0
    assert run("issue", "server", "--dir", str(d), "--name", "broker.hall01.example",
               "--name", "10.20.0.2") == 0
    assert run("issue", "client", "--dir", str(d), "--name", "kp-a1b2c3") == 0
    assert "ca-bundle.crt" in capsys.readouterr().out
    for key in ("ca.key", "server.key", "clients/kp-a1b2c3.key"):
        assert (d / key).stat().st_mode & 0o777 == 0o600, key
        serialization.load_pem_private_key((d / key).read_bytes(), None)
    assert (d / "ca.crt").stat().st_mode & 0o777 == 0o644
    [ca] = _certs(d / "ca.crt")
    assert _certs(d / "ca-bundle.crt") == [ca]
    [server] = _certs(d / "server.crt")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.hall01.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.20.0.2")]
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    [client] = _certs(d / "clients" / "kp-a1b2c3.crt")
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "kp-a1b2c3"
    # openssl agrees: the chain verifies, the server certificate is for TLS servers.
    out = subprocess.run(["openssl", "verify", "-CAfile", str(d / "ca-bundle.crt"),
                          "-purpose", "sslserver", str(d / "server.crt")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_revoke_writes_a_crl_per_ca_with_the_serials(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    pki.init_ca(d)
    _, crt = pki.issue_client(d, "kp-1")
    pki.issue_client(d, "kp-2")
    [crl] = _crls(d / "crl.pem")
    assert len(list(crl)) == 0
    assert run("revoke", "--dir", str(d), "--name", "kp-1") == 0
    [cert] = _certs(crt)
    [crl] = _crls(d / "crl.pem")
    assert [r.serial_number for r in crl] == [cert.serial_number]
    pki.rotate_ca(d)
    crls = _crls(d / "crl.pem")
    assert len(crls) == 2 and all(len(list(c)) == 1 for c in crls)


def test_rotate_keeps_both_cas_until_finished(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    pki.init_ca(d)
    pki.issue_server(d, ["localhost"])
    [old] = _certs(d / "ca.crt")
    assert run("rotate", "--dir", str(d)) == 0
    [new] = _certs(d / "ca.crt")
    assert new.subject != old.subject and new.public_key() != old.public_key()
    assert _certs(d / "ca-bundle.crt") == [new, old]
    server, cross = _certs(d / "server.crt")
    server.verify_directly_issued_by(new)
    cross.verify_directly_issued_by(old)
    assert cross.subject == new.subject and cross.public_key() == new.public_key()
    assert (d / "old" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert run("rotate", "--dir", str(d), "--finish") == 0
    assert _certs(d / "ca-bundle.crt") == [new]
    [server] = _certs(d / "server.crt")
    server.verify_directly_issued_by(new)
    assert not (d / "old").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["issue", "server", "--name", "h"], "run `evalterm pki init"),
    (["rotate"], "run `evalterm pki init"),
    (["revoke", "--name", "kp-9"], "no client certificate was issued to 'kp-9'"),
    (["issue", "server"], "needs at least one --name"),
    (["issue", "client", "--name", "kp 1"], "client name 'kp 1'"),
    (["issue", "server", "--name", "a/b"], "neither a host name nor an IP address"),
    (["rotate", "--finish"], "no rotation is under way"),
    (["init"], "already holds a CA"),
])
def test_errors_are_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    d = tmp_path / "pki"
    needs_ca = not (argv[0] in ("issue", "rotate") and "init" in message) and argv[0] != "revoke"
    if needs_ca or argv == ["init"]:
        pki.init_ca(d)
    with pytest.raises(EvaltermError) as exc:
        run(*argv, "--dir", str(d))
    assert message in str(exc.value) and "\n" not in str(exc.value)
