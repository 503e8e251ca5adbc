"""TLS certificates for hosts: checked before they are stored, so nginx is never given one it cannot serve.

`check_certificate` refuses, with a message that names the problem, what a
browser or nginx would refuse: no PEM certificate, a file over 100 KB, a
private key that is unreadable, protected by a passphrase or not the leaf's,
a host the leaf's subjectAltName does not cover, a certificate outside its
validity, a chain out of order. `save_certificate` checks and stores in one
transaction (`manage.py tls add` and the admin both end up here).
"""

import datetime
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from nodeops.validate import DEFAULT_HOST, is_ip, validate_location_host

MAX_PEM_BYTES = 100 * 1024
MIN_RSA_BITS = 2048
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)


def check_certificate(host, cert_pem, key_pem, now=None):
    """Check a certificate chain (PEM, leaf first) and its private key for `host`.

    Returns {"host", "not_after", "fingerprint" (SHA-256 of the leaf, hex), "subject", "issuer",
    "names" (the leaf's subjectAltNames), "certificate" (the chain normalized: certificates only,
    in order, as PEM)}; never the key. Raises ValueError naming the problem.
    """
    return _check(host, cert_pem, key_pem, now)[0]


def fill_certificate(record, cert_pem, key_pem, now=None):
    """Check the chain and key for `record.host` and set the record's fields (not saved); returns the check's dict."""
    info, key = _check(record.host, cert_pem, key_pem, now)
    record.host = info["host"]
    record.certificate = info["certificate"]
    record.private_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()).decode()
    record.not_after = info["not_after"]
    record.fingerprint = info["fingerprint"]
    return info


def save_certificate(host, cert_pem, key_pem, now=None):
    """Check, then create or replace the Certificate of `host` in one transaction; returns (record, created)."""
    from django.db import transaction

    from toppcloud_site.records.models import Certificate

    host = _host(host)
    with transaction.atomic():
        record = Certificate.objects.select_for_update().filter(host=host).first()
        created = record is None
        record = record or Certificate(host=host)
        fill_certificate(record, cert_pem, key_pem, now=now)
        record.full_clean()
        record.save()
    return record, created


def days_left(not_after, now=None):
    """Whole days until `not_after` (negative once expired)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return (not_after - now) // datetime.timedelta(days=1)


def _check(host, cert_pem, key_pem, now):
    host = _host(host)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    chain = _certificates(_bytes(cert_pem, "the certificate"))
    key = _private_key(_bytes(key_pem, "the private key"))
    _key_matches(chain, key)
    names = _names(chain[0])
    _covers(host, names)
    for number, cert in enumerate(chain, 1):
        _valid_at(cert, number, now)
    _in_order(chain)
    leaf = chain[0]
    return {
        "host": host,
        "not_after": leaf.not_valid_after_utc,
        "fingerprint": leaf.fingerprint(hashes.SHA256()).hex(),
        "subject": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
        "names": names,
        "certificate": "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain),
    }, key


def _host(host):
    if host == DEFAULT_HOST:
        raise ValueError("host '*' is invalid for a certificate: no certificate covers every name; give a host "
                         "name or '*.example.com'")
    return validate_location_host(host)


def _bytes(pem, what):
    if isinstance(pem, str):
        pem = pem.encode()
    if not isinstance(pem, bytes) or not pem.strip():
        raise ValueError(f"{what} is empty: give it as PEM text (-----BEGIN ...-----)")
    if len(pem) > MAX_PEM_BYTES:
        raise ValueError(f"{what} is more than {MAX_PEM_BYTES // 1024} KB: give only the PEM of the certificate "
                         "and its intermediates, or of the key")
    return pem


def _certificates(pem):
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(pem) if m.group(1) in (b"CERTIFICATE", b"X509 CERTIFICATE")]
    if not blocks:
        raise ValueError("the certificate is not PEM: no '-----BEGIN CERTIFICATE-----' block found (a DER file "
                         "converts with `openssl x509 -inform der -in cert.der -out cert.pem`)")
    chain = []
    for number, block in enumerate(blocks, 1):
        try:
            chain.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            raise ValueError(f"certificate {number} of the chain is not readable: its PEM block is damaged or not "
                             "an X.509 certificate") from None
    return chain


def _private_key(pem):
    blocks = [m for m in _PEM_BLOCK.finditer(pem) if m.group(1).endswith(b"PRIVATE KEY")]
    if not blocks:
        raise ValueError("the private key is not readable: no '-----BEGIN PRIVATE KEY-----' block found (is it "
                         "the certificate, or DER?)")
    if len(blocks) > 1:
        raise ValueError("the private key file holds more than one private key: give only the certificate's key")
    block = blocks[0].group(0)
    if blocks[0].group(1) == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block:
        raise _encrypted()
    try:
        key = serialization.load_pem_private_key(block, password=None)
    except TypeError:  # "password was not given but private key is encrypted"
        raise _encrypted() from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("the private key is not readable: its PEM block is damaged or not a key type nginx "
                         "uses (RSA, ECDSA)") from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"the private key is RSA {key.key_size} bits: browsers refuse less than {MIN_RSA_BITS}")
    return key


def _encrypted():
    return ValueError("the private key is encrypted with a passphrase: nginx would ask for it at every start; "
                      "give it decrypted (`openssl pkey -in key.pem -out key-plain.pem`)")


def _public(key):
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_matches(chain, key):
    mine = _public(key.public_key())
    numbers = [n for n, cert in enumerate(chain, 1) if _public(cert.public_key()) == mine]
    if not numbers:
        raise ValueError(f"the private key does not match the certificate: its public key is not the one in "
                         f"the leaf ({_describe(chain[0])})")
    if numbers[0] != 1:
        first = numbers[0]
        raise ValueError(f"the chain is out of order: the certificate of the private key "
                         f"({_describe(chain[first - 1])}) is number {first}; put it first, then its issuer, "
                         "then the issuer's issuer")


def _names(leaf):
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def covers(name, host):
    """Does the subjectAltName `name` cover `host`, as browsers match (RFC 6125)?

    A '*.' name covers exactly one label in its place: '*.example.com' covers
    'a.example.com', not 'example.com' nor 'a.b.example.com'; a host
    '*.example.com' is covered only by the name '*.example.com'.
    """
    name, host = name.lower().rstrip("."), host.lower().rstrip(".")
    if name == host:
        return True
    if not name.startswith("*.") or name.count(".") < 2 or host.startswith("*."):
        return False  # '*.com' covers nothing; only a wildcard name covers a wildcard host
    label, _, rest = host.partition(".")
    return bool(label) and rest == name[2:]


def _covers(host, names):
    if not names:
        raise ValueError(f"the certificate does not cover host {host!r}: it has no subjectAltName DNS names "
                         "(browsers ignore the common name); issue it with the host as a DNS name")
    if is_ip(host):
        ok = host in names
    else:
        ok = any(covers(name, host) for name in names if not is_ip(name))
    if not ok:
        raise ValueError(f"the certificate does not cover host {host!r}: its subjectAltName DNS names are "
                         f"{', '.join(names)} ('*.example.com' covers one label: 'a.example.com', not "
                         "'example.com' nor 'a.b.example.com'; host '*.example.com' needs the name '*.example.com')")



def _valid_at(cert, number, now):
    which = "the leaf" if number == 1 else f"certificate {number} of the chain"
    if now > cert.not_valid_after_utc:
        raise ValueError(f"{which} ({_describe(cert)}) expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if now < cert.not_valid_before_utc:
        raise ValueError(f"{which} ({_describe(cert)}) is not yet valid: valid from "
                         f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


def _in_order(chain):
    for number, (child, parent) in enumerate(zip(chain, chain[1:]), 1):
        if child.issuer != parent.subject:
            raise ValueError(f"the chain is out of order: certificate {number + 1} ({_describe(parent)}) is not "
                             f"the issuer of certificate {number} (issued by {child.issuer.rfc4514_string()}); "
                             "put the leaf first, then its issuer, then the issuer's issuer")
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError(f"the chain is out of order: the signature of certificate {number} "
                             f"({_describe(child)}) does not verify with the key of certificate {number + 1} "
                             f"({_describe(parent)}), though the names match") from None
        try:
            is_ca = parent.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = True  # an old v1 certificate: the signature above is what counts
        if not is_ca:
            raise ValueError(f"certificate {number + 1} of the chain ({_describe(parent)}) is not a CA "
                             f"(basicConstraints CA:FALSE), so it cannot be the issuer of certificate {number}")


def _describe(cert):
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={names[0].value}" if names else cert.subject.rfc4514_string() or "no subject"
