import pytest

from nodeops.validate import (
    validate_address,
    validate_host_key,
    validate_name,
    validate_port,
    validate_root,
)

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
RSA_BLOB = "AAAAB3NzaC1yc2EAAAADAQABAAABAQC7"  # starts with the ssh-rsa type name


def test_it_accepts_good_names():
    assert validate_name("a") == "a"
    assert validate_name("web-1") == "web-1"
    assert validate_name("a" * 63) == "a" * 63


@pytest.mark.parametrize("bad", ["", "1app", "App", "my app", "my_app", "a..b", "../x",
                                 "-x", "a" * 64, "app\n", None, 5])
def test_it_rejects_bad_names(bad):
    with pytest.raises(ValueError) as e:
        validate_name(bad, field="app")
    assert str(e.value) == (
        f"app {bad!r} is invalid: use 1 to 63 characters a-z, 0-9 and '-', starting with a letter"
    )


@pytest.mark.parametrize("good,normal", [
    ("127.0.0.2", "127.0.0.2"), ("::1", "::1"), ("2001:db8:0::1", "2001:db8::1"),
    ("web1.example.com", "web1.example.com"), ("localhost", "localhost"),
    ("node-3.internal.", "node-3.internal."),
])
def test_it_accepts_good_addresses(good, normal):
    assert validate_address(good) == normal


@pytest.mark.parametrize("bad", ["example .com", "root@host", "host:22", "a_b.com", "-oProxyCommand=x",
                                 "host-.com", "..", "10.1.2", "a" * 64 + ".com", "$(id)"])
def test_it_rejects_bad_addresses(bad):
    with pytest.raises(ValueError) as e:
        validate_address(bad)
    if bad.startswith("-"):
        assert str(e.value) == f"address {bad!r} is invalid: it must not start with '-'"
    else:
        assert str(e.value) == (
            f"address {bad!r} is invalid: it must be an IPv4/IPv6 address or a host name "
            f"made of letters, digits, '-' and '.'"
        )


def test_it_rejects_empty_address_and_scope_ids():
    with pytest.raises(ValueError, match=r"^address '' is invalid: it must be an IP address or a host name$"):
        validate_address("")
    with pytest.raises(ValueError) as e:
        validate_address("fe80::1%eth0")
    assert str(e.value) == "address 'fe80::1%eth0' is invalid: IPv6 scope ids are not supported"


def test_it_accepts_ports():
    assert validate_port(1) == 1
    assert validate_port(65535) == 65535
    assert validate_port("2222") == 2222


@pytest.mark.parametrize("bad", [0, 65536, -1, True, False, "22a", "", " 22", "-1", 22.0, None, "²"])
def test_it_rejects_bad_ports(bad):
    with pytest.raises(ValueError) as e:
        validate_port(bad, field="ssh_port")
    assert str(e.value) == f"ssh_port {bad!r} is invalid: it must be a number from 1 to 65535"


@pytest.mark.parametrize("good", ["/srv/toppcloud", "/opt/tc", "/var/lib/toppcloud", "/tmp/x/root",
                                  "/home/deploy/toppcloud", "/srv/a.b_c-d"])
def test_it_accepts_good_roots(good):
    assert validate_root(good) == good


@pytest.mark.parametrize("bad,why", [
    ("srv/toppcloud", "it must be an absolute path"),
    ("", "it must be an absolute path"),
    ("/srv/top cloud", "only letters, digits, '.', '_', '-' and '/' are allowed"),
    ("/srv/$(id)", "only letters, digits, '.', '_', '-' and '/' are allowed"),
    ("/srv/../etc", "'..' is not allowed"),
    ("/srv/toppcloud/", "it must be a normalized path (like '/srv/toppcloud')"),
    ("/srv//toppcloud", "it must be a normalized path (like '/srv/toppcloud')"),
    ("/srv/./x", "it must be a normalized path (like '/srv/x')"),
    ("//srv", "it must be a normalized path (like '/srv')"),
    ("/", "it must not be a system directory; use e.g. /srv/toppcloud"),
    ("/etc", "it must not be a system directory; use e.g. /srv/toppcloud"),
    ("/var", "it must not be a system directory; use e.g. /srv/toppcloud"),
    ("/tmp", "it must not be a system directory; use e.g. /srv/toppcloud"),
    ("/root", "it must not be a system directory; use e.g. /srv/toppcloud"),
    ("/etc/toppcloud", "it must not be inside a system directory; use e.g. /srv/toppcloud"),
    ("/usr/local/tc", "it must not be inside a system directory; use e.g. /srv/toppcloud"),
    ("/proc/1", "it must not be inside a system directory; use e.g. /srv/toppcloud"),
])
def test_it_rejects_bad_roots(bad, why):
    with pytest.raises(ValueError) as e:
        validate_root(bad)
    assert str(e.value) == f"root {bad!r} is invalid: {why}"


def test_it_normalizes_host_keys():
    assert validate_host_key(ED25519) == ED25519
    assert validate_host_key("  " + ED25519.replace(" ", "   ") + " root@web1\n") == ED25519
    assert validate_host_key("ssh-rsa " + RSA_BLOB) == "ssh-rsa " + RSA_BLOB


@pytest.mark.parametrize("bad,why", [
    ("", "it must be '<type> <base64>'"),
    ("ssh-ed25519", "it must be '<type> <base64>'"),
    ("ssh-dss AAAAB3NzaC1kc3M=", "key type 'ssh-dss' is not one of ssh-ed25519, ecdsa-sha2-nistp256, "
                                 "ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, ssh-rsa"),
    ("ssh-ed25519 not*base64", "the key data is not a valid ssh-ed25519 key"),
    ("ssh-ed25519 " + RSA_BLOB, "the key data is not a valid ssh-ed25519 key"),
    (ED25519 + "\n" + ED25519, "it must be a single line '<type> <base64>'"),
])
def test_it_rejects_bad_host_keys(bad, why):
    with pytest.raises(ValueError) as e:
        validate_host_key(bad)
    assert str(e.value) == f"host_key {bad!r} is invalid: {why}"
