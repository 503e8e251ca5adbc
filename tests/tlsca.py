"""A test certificate authority: plain Python + cryptography, no Django, no openssl binary.

    from tests.tlsca import make_ca, issue

    ca = make_ca(tmp_path)                                     # root CA: ca.cert_path, ca.key_path
    leaf = issue(ca, ["shop.test", "*.shop.test"], tmp_path)   # leaf.cert_path (chain), leaf.key_path
    # manage.py tls add shop.test --cert leaf.cert_path --key leaf.key_path
    # curl --cacert leaf.root_path --resolve shop.test:443:127.0.0.2 https://shop.test/

    inter = make_ca(tmp_path, "Test Intermediate", parent=ca)  # an intermediate CA under the root
    leaf = issue(inter, ["blog.test"], tmp_path)               # leaf.cert_path = leaf + intermediate

Files are PEM: certificates as `<stem>.crt`, unencrypted PKCS#8 keys as
`<stem>.key` (0600). A leaf's `.crt` is its chain (the leaf, then the
intermediates, not the root): what nginx's `ssl_certificate` and
`manage.py tls add --cert` take; `root_path` is the root CA certificate,
what `curl --cacert` takes. Keys are ECDSA P-256 (fast) unless
`key_type="rsa"` or a `key` is given.
"""

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodeops.validate import is_ip


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@dataclass
class CA:
    """A certificate authority: its certificate and key, and the certificates a leaf it issues carries."""

    cert: x509.Certificate
    key: object
    cert_path: Path
    key_path: Path
    root: "CA" = None  # the root CA above it (itself for a root)
    below_root: list = field(default_factory=list)  # this CA and the ones between it and the root, nearest first

    @property
    def cert_pem(self):
        return _pem(self.cert)

    @property
    def key_pem(self):
        return _key_pem(self.key)


@dataclass
class Leaf:
    """A server certificate: `cert_path` is the chain file (leaf first), `root_path` the root to trust."""

    cert: x509.Certificate
    key: object
    chain: list  # the leaf, then the intermediates
    cert_path: Path
    key_path: Path
    root_path: Path

    @property
    def cert_pem(self):
        """The chain as PEM (leaf, then intermediates): the contents of cert_path."""
        return "".join(_pem(c) for c in self.chain)

    @property
    def leaf_pem(self):
        return _pem(self.cert)

    @property
    def key_pem(self):
        return _key_pem(self.key)

    @property
    def fingerprint(self):
        return self.cert.fingerprint(hashes.SHA256()).hex()


def new_key(key_type="ec", bits=2048):
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    raise ValueError(f"key_type {key_type!r}: 'ec' or 'rsa'")


def make_ca(dir, name="toppcloud test CA", parent=None, days=3650, stem=None, key_type="ec"):
    """A CA written to `dir` as `<stem>.crt` / `<stem>.key`: a self-signed root, or an intermediate under `parent`."""
    key = new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_cert, issuer_key = (parent.cert, parent.key) if parent else (None, key)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if parent:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    stem = stem or _slug(name)
    cert_path, key_path = _write(Path(dir), stem, _pem(cert), _key_pem(key))
    ca = CA(cert=cert, key=key, cert_path=cert_path, key_path=key_path)
    ca.root = parent.root if parent else ca
    ca.below_root = [cert, *parent.below_root] if parent else []
    return ca


def issue(ca, names, dir, days=30, not_before=None, not_after=None, stem=None, key=None, key_type="ec"):
    """A leaf for `names` (DNS names, '*.example.com' wildcards, or IP addresses) signed by `ca`.

    Valid from `not_before` (default an hour ago) to `not_after` (default
    `days` after not_before): pass past or future datetimes to make expired or
    not-yet-valid ones. Written to `dir` as `<stem>.crt` (chain) and `<stem>.key`;
    the stem defaults to the first name ('*' spelled 'wildcard').
    """
    if isinstance(names, str):
        names = [names]
    key = key or new_key(key_type)
    not_before = not_before or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    not_after = not_after or not_before + datetime.timedelta(days=days)
    sans = [x509.IPAddress(ipaddress.ip_address(n)) if is_ip(n) else x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))
    chain = [cert, *ca.below_root]
    cert_path, key_path = _write(Path(dir), stem or names[0].replace("*", "wildcard"),
                                 "".join(_pem(c) for c in chain), _key_pem(key))
    return Leaf(cert=cert, key=key, chain=chain, cert_path=cert_path, key_path=key_path,
                root_path=ca.root.cert_path)


def _write(dir, stem, cert_pem, key_pem):
    dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = dir / f"{stem}.crt", dir / f"{stem}.key"
    cert_path.write_text(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key_pem)
    return cert_path, key_path


def _slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "ca"

