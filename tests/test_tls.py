"""TLS certificates on the control plane: the checker, `manage.py tls`, the admin, audit and encryption at rest."""

import datetime
import getpass
import io
import json

import pytest
from cryptography.hazmat.primitives import serialization
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse

from tests.tlsca import CA, issue, make_ca, new_key
from toppcloud_site.records import tls
from toppcloud_site.records.models import AuditEntry, Certificate

UTC = datetime.timezone.utc
NOW = datetime.datetime.now(UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A root CA, an intermediate under it, and a directory for leaves."""
    d = tmp_path_factory.mktemp("pki")
    root = make_ca(d)
    return {"dir": d, "root": root, "inter": make_ca(d, "Test Intermediate", parent=root)}


@pytest.fixture
def leaf(pki):
    return issue(pki["inter"], ["shop.test", "www.shop.test"], pki["dir"])


def refused(match, host, cert_pem, key_pem, **kw):
    with pytest.raises(ValueError) as info:
        tls.check_certificate(host, cert_pem, key_pem, **kw)
    assert match in str(info.value), str(info.value)
    return str(info.value)


def key_body(pem):
    """A line from the middle of a PEM key: what would show if any part of the key leaked."""
    return pem.splitlines()[2]


# -- the checker: what it accepts ---------------------------------------------------------------------------


def test_it_accepts_a_chain_with_an_intermediate_and_returns_what_to_store(pki, leaf):
    info = tls.check_certificate("shop.test", leaf.cert_pem, leaf.key_pem)
    assert info["fingerprint"] == leaf.fingerprint and len(info["fingerprint"]) == 64
    assert info["not_after"] == leaf.cert.not_valid_after_utc
    assert (info["subject"], info["issuer"]) == ("CN=shop.test", "CN=Test Intermediate")
    assert info["names"] == ["shop.test", "www.shop.test"]
    assert info["certificate"] == leaf.cert_pem and info["certificate"].count("BEGIN CERTIFICATE") == 2
    assert "key" not in json.dumps(info, default=str).lower()


def test_it_normalizes_the_pem_to_the_certificates_in_order(pki, leaf):
    # openssl's "Bag Attributes" text, CRLF line ends, the key in the same file, the root at the end: all fine.
    messy = ("Bag Attributes\n    friendlyName: shop\nsubject=CN=shop.test\n" + leaf.cert_pem.replace("\n", "\r\n")
             + leaf.key_pem + pki["root"].cert_pem)
    info = tls.check_certificate("shop.test", messy, leaf.key_pem)
    assert info["certificate"] == leaf.cert_pem + pki["root"].cert_pem
    assert "PRIVATE KEY" not in info["certificate"] and "friendlyName" not in info["certificate"]


def test_it_accepts_rsa_keys_ip_addresses_and_a_self_signed_leaf(pki):
    rsa_leaf = issue(pki["root"], ["rsa.test"], pki["dir"], key_type="rsa")
    assert tls.check_certificate("rsa.test", rsa_leaf.cert_pem, rsa_leaf.key_pem)["issuer"] == "CN=toppcloud test CA"
    ip_leaf = issue(pki["root"], ["127.0.0.2"], pki["dir"])
    assert tls.check_certificate("127.0.0.2", ip_leaf.cert_pem, ip_leaf.key_pem)["names"] == ["127.0.0.2"]
    root = pki["root"]
    ca_as_leaf = issue(CA(cert=root.cert, key=root.key, cert_path=root.cert_path, key_path=root.key_path,
                          root=root), ["self.test"], pki["dir"])
    assert tls.check_certificate("SELF.test", ca_as_leaf.cert_pem, ca_as_leaf.key_pem)["host"] == "self.test"


def test_a_wildcard_name_covers_one_label_as_browsers_match(pki):
    wild = issue(pki["inter"], ["*.example.com"], pki["dir"])
    assert tls.check_certificate("a.example.com", wild.cert_pem, wild.key_pem)["names"] == ["*.example.com"]
    assert tls.check_certificate("*.example.com", wild.cert_pem, wild.key_pem)["host"] == "*.example.com"
    for host in ("example.com", "a.b.example.com", "aexample.com", "a.example.org"):
        refused(f"the certificate does not cover host {host!r}: its subjectAltName DNS names are *.example.com",
                host, wild.cert_pem, wild.key_pem)


@pytest.mark.parametrize("name, host, covered", [
    ("a.example.com", "a.example.com", True),
    ("A.Example.COM", "a.example.com", True),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "a.b.example.com", False),
    ("*.example.com", "*.example.com", True),
    ("a.example.com", "*.example.com", False),  # a wildcard host needs a wildcard name
    ("*.com", "example.com", False),  # no wildcard for a whole top-level domain
    ("*.a.example.com", "*.example.com", False),
])
def test_it_matches_names_like_browsers(name, host, covered):
    assert tls.covers(name, host) is covered


# -- the checker: every refusal, with its message ------------------------------------------------------------


def test_it_refuses_what_is_not_pem_or_holds_no_certificate(pki, leaf):
    refused("the certificate is not PEM: no '-----BEGIN CERTIFICATE-----' block found", "shop.test",
            "hello, I am a certificate", leaf.key_pem)
    refused("the certificate is not PEM", "shop.test", leaf.cert.public_bytes(serialization.Encoding.DER),
            leaf.key_pem)
    refused("the certificate is not PEM", "shop.test", leaf.key_pem, leaf.key_pem)  # the key twice
    refused("the certificate is empty", "shop.test", "  \n", leaf.key_pem)
    damaged = leaf.leaf_pem.replace(leaf.leaf_pem.splitlines()[3], "A" * 64)
    refused("certificate 1 of the chain is not readable", "shop.test", damaged, leaf.key_pem)


def test_it_refuses_files_over_100_kb(leaf):
    big = leaf.cert_pem + "x" * 100 * 1024
    refused("the certificate is more than 100 KB", "shop.test", big, leaf.key_pem)
    refused("the private key is more than 100 KB", "shop.test", leaf.cert_pem, leaf.key_pem + "\n" * 100 * 1024)


def test_it_refuses_an_unreadable_key(leaf):
    refused("the private key is not readable: no '-----BEGIN PRIVATE KEY-----' block found", "shop.test",
            leaf.cert_pem, leaf.cert_pem)
    damaged = leaf.key_pem.replace(leaf.key_pem.splitlines()[1], "QUFB" * 16)
    refused("the private key is not readable: its PEM block is damaged", "shop.test", leaf.cert_pem, damaged)
    refused("the private key is empty", "shop.test", leaf.cert_pem, "")
    other = new_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    refused("the private key file holds more than one private key", "shop.test", leaf.cert_pem,
            leaf.key_pem + other)


def test_it_refuses_a_key_encrypted_with_a_passphrase(leaf):
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        locked = leaf.key.private_bytes(serialization.Encoding.PEM, fmt,
                                        serialization.BestAvailableEncryption(b"passphrase")).decode()
        assert "ENCRYPTED" in locked
        refused("the private key is encrypted with a passphrase: nginx would ask for it at every start; give it "
                "decrypted", "shop.test", leaf.cert_pem, locked)


def test_it_refuses_a_key_that_is_not_the_leafs(pki, leaf):
    other = issue(pki["inter"], ["shop.test"], pki["dir"], stem="other")
    refused("the private key does not match the certificate: its public key is not the one in the leaf "
            "(CN=shop.test)", "shop.test", leaf.cert_pem, other.key_pem)
    # The key of the intermediate with the chain as given: the leaf is not first.
    refused("the chain is out of order: the certificate of the private key (CN=Test Intermediate) is number 2; "
            "put it first", "shop.test", leaf.cert_pem, pki["inter"].key_pem)


def test_it_refuses_weak_rsa_keys(pki):
    weak = issue(pki["root"], ["weak.test"], pki["dir"], key=new_key("rsa", bits=1024))
    refused("the private key is RSA 1024 bits: browsers refuse less than 2048", "weak.test", weak.cert_pem,
            weak.key_pem)


def test_it_refuses_a_host_the_leaf_does_not_cover(pki, leaf):
    refused("the certificate does not cover host 'shop.example': its subjectAltName DNS names are shop.test, "
            "www.shop.test", "shop.example", leaf.cert_pem, leaf.key_pem)
    refused("the certificate does not cover host 'a.shop.test'", "a.shop.test", leaf.cert_pem, leaf.key_pem)
    refused("the certificate does not cover host '*.shop.test'", "*.shop.test", leaf.cert_pem, leaf.key_pem)
    refused("the certificate does not cover host '127.0.0.2'", "127.0.0.2", leaf.cert_pem, leaf.key_pem)


def test_it_refuses_a_leaf_without_subject_alt_names(pki):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = new_key()
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cn.test")]))
            .issuer_name(pki["root"].cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=1)).sign(pki["root"].key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    refused("the certificate does not cover host 'cn.test': it has no subjectAltName DNS names (browsers ignore "
            "the common name)", "cn.test", cert.public_bytes(serialization.Encoding.PEM), key_pem)


def test_it_refuses_hosts_a_certificate_cannot_be_for(leaf):
    refused("host '*' is invalid for a certificate: no certificate covers every name", "*", leaf.cert_pem,
            leaf.key_pem)
    refused("host 'shop test' is invalid", "shop test", leaf.cert_pem, leaf.key_pem)
    refused("host '*.127.0.0.1' is invalid", "*.127.0.0.1", leaf.cert_pem, leaf.key_pem)


def test_it_refuses_an_expired_or_not_yet_valid_certificate(pki):
    old = issue(pki["inter"], ["old.test"], pki["dir"], not_before=datetime.datetime(2020, 1, 1, tzinfo=UTC),
                not_after=datetime.datetime(2021, 3, 4, 5, 6, tzinfo=UTC))
    refused("the leaf (CN=old.test) expired on 2021-03-04 05:06 UTC", "old.test", old.cert_pem, old.key_pem)
    early = issue(pki["inter"], ["early.test"], pki["dir"], not_before=NOW + datetime.timedelta(days=2))
    refused("the leaf (CN=early.test) is not yet valid: valid from", "early.test", early.cert_pem, early.key_pem)
    fine = issue(pki["inter"], ["fine.test"], pki["dir"], days=10)
    refused("the leaf (CN=fine.test) expired on", "fine.test", fine.cert_pem, fine.key_pem,
            now=NOW + datetime.timedelta(days=11))


def test_it_refuses_an_expired_intermediate(pki, tmp_path):
    short = make_ca(tmp_path, "Short Intermediate", parent=pki["root"], days=5)
    leaf = issue(short, ["short.test"], tmp_path, days=30)  # outlives its issuer
    assert tls.check_certificate("short.test", leaf.cert_pem, leaf.key_pem)
    refused("certificate 2 of the chain (CN=Short Intermediate) expired on", "short.test", leaf.cert_pem,
            leaf.key_pem, now=NOW + datetime.timedelta(days=6))


def test_it_refuses_a_chain_out_of_order(pki, leaf):
    root, inter = pki["root"], pki["inter"]
    refused("the chain is out of order: certificate 2 (CN=toppcloud test CA) is not the issuer of certificate 1 "
            "(issued by CN=Test Intermediate); put the leaf first", "shop.test",
            leaf.leaf_pem + root.cert_pem + inter.cert_pem, leaf.key_pem)
    # Another CA with the intermediate's very name but its own key: the names match, the signature does not.
    impostor = make_ca(pki["dir"], "Test Intermediate", parent=root, stem="impostor")
    refused("the chain is out of order: the signature of certificate 1 (CN=shop.test) does not verify with the "
            "key of certificate 2 (CN=Test Intermediate), though the names match", "shop.test",
            leaf.leaf_pem + impostor.cert_pem, leaf.key_pem)


def test_it_refuses_an_issuer_that_is_not_a_ca(pki, tmp_path):
    first = issue(pki["root"], ["first.test"], tmp_path)
    as_ca = CA(cert=first.cert, key=first.key, cert_path=first.cert_path, key_path=first.key_path, root=pki["root"],
               below_root=[first.cert])
    second = issue(as_ca, ["second.test"], tmp_path)
    refused("certificate 2 of the chain (CN=first.test) is not a CA (basicConstraints CA:FALSE)", "second.test",
            second.cert_pem, second.key_pem)


# -- save_certificate, encryption at rest, audit ------------------------------------------------------------


def raw_key(pk):
    with connection.cursor() as cursor:
        cursor.execute("SELECT private_key, certificate FROM records_certificate WHERE id = %s", [pk])
        return cursor.fetchone()


@pytest.mark.django_db
def test_save_stores_the_chain_and_the_key_encrypted_and_audits_with_the_key_masked(pki, leaf):
    record, created = tls.save_certificate("Shop.Test", leaf.cert_pem, leaf.key_pem)
    assert created and record.host == "shop.test"
    stored_key, stored_chain = raw_key(record.pk)
    assert stored_key.startswith("gAAAA") and "PRIVATE KEY" not in stored_key
    assert key_body(leaf.key_pem) not in stored_key
    assert stored_chain == leaf.cert_pem
    again = Certificate.objects.get(pk=record.pk)
    assert again.private_key.startswith("-----BEGIN PRIVATE KEY-----")
    assert tls.check_certificate("shop.test", again.certificate, again.private_key)["fingerprint"] == leaf.fingerprint
    assert (again.fingerprint, again.not_after) == (leaf.fingerprint, leaf.cert.not_valid_after_utc)

    renewed = issue(pki["inter"], ["shop.test"], pki["dir"], stem="renewed", days=90)
    record, created = tls.save_certificate("shop.test", renewed.cert_pem, renewed.key_pem)
    assert not created and Certificate.objects.count() == 1 and record.fingerprint == renewed.fingerprint
    pk = record.pk
    record.delete()

    entries = list(AuditEntry.objects.filter(model="certificate", object_id=str(pk)).order_by("pk"))
    assert [e.action for e in entries] == ["create", "update", "delete"]
    assert entries[0].changes["private_key"] == [None, "********"]
    assert entries[1].changes["private_key"] == ["********", "******** (changed)"]
    assert entries[1].changes["fingerprint"] == [leaf.fingerprint, renewed.fingerprint]
    assert entries[2].changes["private_key"] == ["********", None]
    dumped = json.dumps([e.changes for e in entries])
    for pem in (leaf.key_pem, renewed.key_pem):
        assert key_body(pem) not in dumped
    assert "PRIVATE KEY" not in dumped


@pytest.mark.django_db
def test_save_changes_nothing_when_the_check_fails(pki, leaf):
    tls.save_certificate("shop.test", leaf.cert_pem, leaf.key_pem)
    before = list(Certificate.objects.values())
    audits = AuditEntry.objects.count()
    other = issue(pki["inter"], ["shop.test"], pki["dir"], stem="other")
    with pytest.raises(ValueError, match="the private key does not match the certificate"):
        tls.save_certificate("shop.test", other.cert_pem, leaf.key_pem)
    assert list(Certificate.objects.values()) == before and AuditEntry.objects.count() == audits


@pytest.mark.django_db
def test_secrets_rotate_re_encrypts_certificate_keys(pki, leaf, settings):
    from cryptography.fernet import Fernet

    from toppcloud_site.records import secrets as secrets_module

    session = list(settings.TOPPCLOUD_SECRET_KEYS or secrets_module._key_file())
    record, _ = tls.save_certificate("shop.test", leaf.cert_pem, leaf.key_pem)
    new = Fernet.generate_key().decode()
    settings.TOPPCLOUD_SECRET_KEYS = [new, *session]
    out = io.StringIO()
    call_command("secrets", "rotate", stdout=out)
    assert "1 certificates (private_key)" in out.getvalue()
    assert "PRIVATE KEY" in Fernet(new).decrypt(raw_key(record.pk)[0].encode()).decode()


# -- manage.py tls ------------------------------------------------------------------------------------------


def tls_command(*args, stdin=None, monkeypatch=None):
    out = io.StringIO()
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    call_command("tls", *args, stdout=out, stderr=out)
    return out.getvalue()


@pytest.mark.django_db
def test_the_command_adds_lists_and_removes_certificates_and_never_prints_the_key(pki, leaf, monkeypatch):
    out = tls_command("add", "shop.test", "--cert", str(leaf.cert_path), "--key", str(leaf.key_path))
    assert out.startswith("certificate for shop.test added: valid until ") and leaf.fingerprint in out
    wild = issue(pki["root"], ["*.example.com"], pki["dir"], days=10)
    out = tls_command("add", "*.example.com", "--cert", str(wild.cert_path), "--key", "-", stdin=wild.key_pem,
                      monkeypatch=monkeypatch)
    assert "certificate for *.example.com added" in out and "(9 days)" in out
    both = issue(pki["inter"], ["both.test"], pki["dir"])
    out = tls_command("add", "both.test", "--cert", "-", "--key", "-", stdin=both.cert_pem + both.key_pem,
                      monkeypatch=monkeypatch)  # one stream: cat fullchain.pem privkey.pem |
    assert "certificate for both.test added" in out
    assert Certificate.objects.get(host="both.test").certificate == both.cert_pem
    tls_command("remove", "both.test")
    renewed = issue(pki["inter"], ["shop.test"], pki["dir"], stem="renewed", days=90)
    out = tls_command("add", "shop.test", "--cert", str(renewed.cert_path), "--key", str(renewed.key_path))
    assert "certificate for shop.test replaced" in out and "(89 days)" in out

    listing = tls_command("list")
    lines = listing.splitlines()
    assert lines[0].split() == ["HOST", "VALID", "UNTIL", "(UTC)", "DAYS", "SHA-256"]
    assert lines[1].split()[0] == "*.example.com" and lines[1].split()[-2:] == ["9", wild.fingerprint]
    assert lines[2].split()[0] == "shop.test" and lines[2].split()[-2:] == ["89", renewed.fingerprint]
    rows = json.loads(tls_command("list", "--json"))
    assert [(r["host"], r["days_left"], r["fingerprint"]) for r in rows] == [
        ("*.example.com", 9, wild.fingerprint), ("shop.test", 89, renewed.fingerprint)]
    for pem in (leaf.key_pem, wild.key_pem, renewed.key_pem):
        assert key_body(pem) not in listing + out

    assert tls_command("remove", "shop.test") == ("certificate for shop.test removed\n"
                                                  "no app with a location on shop.test is live on any node: no "
                                                  "front door to render\n")
    assert list(Certificate.objects.values_list("host", flat=True)) == ["*.example.com"]
    with pytest.raises(CommandError, match=r"there is no certificate for host 'shop.test' \(known: \*.example.com\)"):
        tls_command("remove", "shop.test")
    entries = AuditEntry.objects.filter(model="certificate")
    assert set(entries.values_list("actor", flat=True)) == {f"user:{getpass.getuser()}"}
    assert list(entries.filter(object_repr="shop.test").values_list("action", flat=True).order_by("pk")) == [
        "create", "update", "delete"]


@pytest.mark.django_db
def test_the_command_refuses_bad_input_and_changes_nothing(pki, leaf, tmp_path, monkeypatch):
    tls_command("add", "shop.test", "--cert", str(leaf.cert_path), "--key", str(leaf.key_path))
    before, audits = list(Certificate.objects.values()), AuditEntry.objects.count()
    expired = issue(pki["inter"], ["shop.test"], tmp_path, not_before=datetime.datetime(2020, 1, 1, tzinfo=UTC),
                    not_after=datetime.datetime(2020, 6, 1, tzinfo=UTC))
    cases = [
        (("shop.test", "--cert", str(expired.cert_path), "--key", str(expired.key_path)),
         "the certificate for 'shop.test' was not stored: the leaf (CN=shop.test) expired on 2020-06-01 00:00 UTC"),
        (("shop.test", "--cert", str(leaf.key_path), "--key", str(leaf.key_path)),
         "was not stored: the certificate is not PEM"),
        (("other.test", "--cert", str(leaf.cert_path), "--key", str(leaf.key_path)),
         "the certificate for 'other.test' was not stored: the certificate does not cover host 'other.test'"),
        (("*", "--cert", str(leaf.cert_path), "--key", str(leaf.key_path)), "host '*' is invalid for a certificate"),
        (("shop.test", "--cert", str(tmp_path / "missing.pem"), "--key", str(leaf.key_path)),
         f"--cert {tmp_path / 'missing.pem'}: cannot read it: No such file or directory"),
    ]
    for args, message in cases:
        with pytest.raises(CommandError) as info:
            tls_command("add", *args)
        assert message in str(info.value), str(info.value)
        assert key_body(leaf.key_pem) not in str(info.value)
    with pytest.raises(CommandError, match="the private key is not readable"):
        tls_command("add", "shop.test", "--cert", str(leaf.cert_path), "--key", "-", stdin="not a key",
                    monkeypatch=monkeypatch)
    assert list(Certificate.objects.values()) == before and AuditEntry.objects.count() == audits


def test_the_command_exits_non_zero_with_the_reason(leaf, tmp_path):
    import subprocess
    import sys

    from django.conf import settings

    result = subprocess.run([sys.executable, "manage.py", "tls", "add", "*", "--cert", str(leaf.cert_path),
                             "--key", str(leaf.key_path)], capture_output=True, text=True, cwd=settings.BASE_DIR,
                            timeout=60)
    assert result.returncode == 1
    assert "host '*' is invalid for a certificate" in result.stderr and key_body(leaf.key_pem) not in result.stderr


# -- the admin ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_adds_a_certificate_and_never_shows_the_key(admin_client, admin_user, pki, leaf):
    add = reverse("admin:records_certificate_add")
    page = admin_client.get(add).content.decode()
    assert 'name="new_private_key"' in page and 'name="certificate"' in page
    response = admin_client.post(add, {"host": "shop.test", "certificate": "junk\n" + leaf.cert_pem,
                                       "new_private_key": leaf.key_pem, "_save": "Save"})
    assert response.status_code == 302, response.content.decode()
    record = Certificate.objects.get(host="shop.test")
    assert record.certificate == leaf.cert_pem and record.private_key.startswith("-----BEGIN PRIVATE KEY")
    assert record.fingerprint == leaf.fingerprint
    entry = AuditEntry.objects.get(model="certificate", action="create", object_id=str(record.pk))
    assert entry.actor == f"user:{admin_user.username}" and entry.changes["private_key"] == [None, "********"]

    change = reverse("admin:records_certificate_change", args=[record.pk])
    page = admin_client.get(change).content.decode()
    assert leaf.fingerprint in page and "BEGIN CERTIFICATE" in page
    assert "PRIVATE KEY" not in page and key_body(leaf.key_pem) not in page and key_body(record.private_key) not in page
    assert "leave this empty to keep it" in page
    listing = admin_client.get(reverse("admin:records_certificate_changelist")).content.decode()
    assert "shop.test" in listing and leaf.fingerprint in listing and "PRIVATE KEY" not in listing
    audit_page = admin_client.get(reverse("admin:records_auditentry_changelist")).content.decode()
    assert "certificate" in audit_page and key_body(leaf.key_pem) not in audit_page

    # A new chain for the same key, the key left empty: kept.
    longer = issue(pki["inter"], ["shop.test"], pki["dir"], stem="longer", days=60, key=leaf.key)
    response = admin_client.post(change, {"host": "shop.test", "certificate": longer.cert_pem,
                                          "new_private_key": "", "_save": "Save"})
    assert response.status_code == 302, response.content.decode()
    record.refresh_from_db()
    assert record.fingerprint == longer.fingerprint and record.private_key.startswith("-----BEGIN PRIVATE KEY")


@pytest.mark.django_db
def test_the_admin_shows_the_checkers_error_and_not_the_submitted_key(admin_client, pki, leaf):
    add = reverse("admin:records_certificate_add")
    other = issue(pki["inter"], ["shop.test"], pki["dir"], stem="other")
    cases = [
        ({"host": "shop.test", "certificate": leaf.cert_pem, "new_private_key": other.key_pem},
         "the private key does not match the certificate"),
        ({"host": "elsewhere.test", "certificate": leaf.cert_pem, "new_private_key": leaf.key_pem},
         "the certificate does not cover host &#x27;elsewhere.test&#x27;"),
        ({"host": "shop.test", "certificate": "not a certificate", "new_private_key": leaf.key_pem},
         "the certificate is not PEM"),
        ({"host": "*", "certificate": leaf.cert_pem, "new_private_key": leaf.key_pem},
         "host &#x27;*&#x27; is invalid for a certificate"),
        ({"host": "shop.test", "certificate": leaf.cert_pem, "new_private_key": ""},
         "give the certificate&#x27;s private key (PEM)"),
    ]
    for data, message in cases:
        response = admin_client.post(add, {**data, "_save": "Save"})
        page = response.content.decode()
        assert response.status_code == 200 and message in page, page
        assert "PRIVATE KEY" not in page and key_body(leaf.key_pem) not in page and key_body(other.key_pem) not in page
    assert not Certificate.objects.exists()
