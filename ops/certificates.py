"""Development TLS certificates and SuperNode keys for a secure federation (issue 4).

    python -m ops.certificates certs/ --hosts 127.0.0.1 localhost server.example.org --nodes 3

writes, under certs/:
    ca.crt                   a self-signed development CA's certificate (the SuperLink, every
                             SuperNode and `flwr run` need it)
    ca-private/ca.key        the CA's private key, in a folder of its own (mode 0700): only needed
                             to sign certificates; the SuperLink does not need it, keep it off the servers
    server.pem, server.key   the SuperLink's certificate, signed by the CA, valid for --hosts
    node-<i>, node-<i>.pub   one EC (NIST P-384) key pair per SuperNode, OpenSSH format, as
                             `flower-supernode --auth-supernode-private-key` and
                             `flwr supernode register` expect

Private keys are created with mode 0600 from their first byte (never readable by others, not
even between creating and restricting the file).

For production use certificates from your organisation's CA; the node keys are made the
same way (`ssh-keygen -t ecdsa -b 384 -N "" -f node-0`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365
CA_PRIVATE = "ca-private"  # the CA key's own folder: what the SuperLink reads at run time lies outside it
PRIVATE_MODE = 0o600


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write `data`; a private file is opened with mode 0600 (an existing one is restricted before
    it is truncated and written), never through a symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not private:
        path.write_bytes(data)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)  # an existing file keeps its mode through os.open: restrict it first
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_tls(folder: str | Path, hosts: list[str], ca_folder: str | Path | None = None) -> dict[str, Path]:
    """A development CA and a SuperLink certificate for `hosts` (IPs or DNS names) signed by it.

    The CA's private key goes to `ca_folder` (default `<folder>/ca-private/`, mode 0700), apart
    from what the SuperLink reads at run time (ca.crt, server.pem, server.key in `folder`)."""
    if not hosts:
        raise ValueError("make_tls needs at least one host name or IP the SuperLink is reached at")
    folder = Path(folder)
    ca_folder = Path(ca_folder) if ca_folder is not None else folder / CA_PRIVATE
    ca_folder.mkdir(parents=True, exist_ok=True)
    os.chmod(ca_folder, 0o700)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedssl development CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca_cert": folder / "ca.crt", "ca_key": ca_folder / "ca.key",
             "server_cert": folder / "server.pem", "server_key": folder / "server.key"}
    _write(paths["ca_cert"], ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths["ca_key"], _pem_key(ca_key), private=True)
    _write(paths["server_cert"], server_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths["server_key"], _pem_key(server_key), private=True)
    return paths


def make_node_key(folder: str | Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format: (private key, public key) paths."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = Path(folder) / name
    public = Path(folder) / f"{name}.pub"
    _write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()), private=True)
    _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--hosts", nargs="+", default=["127.0.0.1", "localhost"],
                   help="IPs / DNS names the SuperLink is reached at (all go into its certificate)")
    p.add_argument("--nodes", type=int, default=0, help="also make this many SuperNode key pairs")
    args = p.parse_args(argv)
    paths = make_tls(args.folder, args.hosts)
    for name, path in paths.items():
        print(f"{name:12s} {path}")
    print(f"the SuperLink needs {paths['ca_cert']}, {paths['server_cert']} and {paths['server_key']}; it does not "
          f"need the CA key {paths['ca_key']}: keep that off the servers (only to sign new certificates)")
    for i in range(args.nodes):
        private, public = make_node_key(args.folder, f"node-{i}")
        print(f"node {i:<7d} {private} (give to SuperNode {i}), {public} (register on the SuperLink)")


if __name__ == "__main__":
    main()
