"""Validation of everything a person types that later reaches a host.

Each validator returns the (normalized) value or raises ValueError whose
message names the field and repeats the bad value, so the admin or a
management command can show it as is.
"""

import base64
import ipaddress
import os
import re
import struct

_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ROOT_CHARS_RE = re.compile(r"[A-Za-z0-9._/-]+")

HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)

# The root may not be one of these, nor anything below the ones in
# _SYSTEM_TREES (package-managed or virtual filesystems).
_SYSTEM_DIRS = {"/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc",
                "/root", "/run", "/sbin", "/sys", "/usr", "/var", "/tmp"}
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc",
                 "/run", "/sbin", "/sys", "/usr")


def validate_name(value, field="name"):
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"{field} {value!r} is invalid: use 1 to 63 characters a-z, 0-9 "
            f"and '-', starting with a letter"
        )
    return value


def validate_address(value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"address {value!r} is invalid: it must be an IP address or a host name")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        # A scope id ("fe80::1%eth0") would have to be quoted differently by
        # ssh, nginx and urls; nobody needs it for a server.
        if "%" in value:
            raise ValueError(f"address {value!r} is invalid: IPv6 scope ids are not supported")
        return str(ip)
    if value.startswith("-"):
        raise ValueError(f"address {value!r} is invalid: it must not start with '-'")
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if (
        len(value) > 253
        or not all(_LABEL_RE.fullmatch(label) for label in labels)
        # "10.1.2" is not a name: resolvers would read it as an IPv4 address.
        or labels[-1].isdigit()
    ):
        raise ValueError(
            f"address {value!r} is invalid: it must be an IPv4/IPv6 address or a "
            f"host name made of letters, digits, '-' and '.'"
        )
    return value


def validate_port(value, field="port"):
    if isinstance(value, bool):
        raise ValueError(f"{field} {value!r} is invalid: it must be a number from 1 to 65535")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{field} {value!r} is invalid: it must be a number from 1 to 65535")
    return value


def validate_root(value):
    def bad(why):
        return ValueError(f"root {value!r} is invalid: {why}")

    if not isinstance(value, str) or not value.startswith("/"):
        raise bad("it must be an absolute path")
    if not _ROOT_CHARS_RE.fullmatch(value):
        raise bad("only letters, digits, '.', '_', '-' and '/' are allowed")
    if ".." in value.split("/"):
        raise bad("'..' is not allowed")
    # normpath keeps a leading "//" (POSIX allows it a special meaning).
    if os.path.normpath(value) != value or value.startswith("//"):
        raise bad(f"it must be a normalized path (like {os.path.normpath(value).replace('//', '/')!r})")
    if value == "/" or value in _SYSTEM_DIRS:
        raise bad("it must not be a system directory; use e.g. /srv/toppcloud")
    if any(value.startswith(tree + "/") for tree in _SYSTEM_TREES):
        raise bad("it must not be inside a system directory; use e.g. /srv/toppcloud")
    return value


def validate_host_key(value):
    """Check an OpenSSH public host key line; return it as 'type base64'."""
    if not isinstance(value, str) or "\n" in value.strip() or "\r" in value:
        raise ValueError(f"host_key {value!r} is invalid: it must be a single line '<type> <base64>'")
    parts = value.split()
    if len(parts) < 2:
        raise ValueError(f"host_key {value!r} is invalid: it must be '<type> <base64>'")
    keytype, b64 = parts[0], parts[1]
    if keytype not in HOST_KEY_TYPES:
        raise ValueError(
            f"host_key {value!r} is invalid: key type {keytype!r} is not one of "
            f"{', '.join(HOST_KEY_TYPES)}"
        )
    try:
        blob = base64.b64decode(b64, validate=True)
    except ValueError:
        blob = b""
    # The key blob starts with its own type name; a pasted mix of two keys
    # or a truncated key is caught here rather than by ssh later.
    if len(blob) < 4 or blob[4:4 + struct.unpack(">I", blob[:4])[0]] != keytype.encode():
        raise ValueError(f"host_key {value!r} is invalid: the key data is not a valid {keytype} key")
    return f"{keytype} {b64}"


_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def validate_user(value, field="ssh user"):
    """A POSIX login name (what useradd accepts by default)."""
    if not isinstance(value, str) or not _USER.match(value):
        raise ValueError(f"{field} {value!r} is not a valid login name: "
                         "use lowercase letters, digits, '_' and '-', starting with a letter or '_'")
    return value


# fullmatch: "$" alone would let a trailing newline through.
_URL_PATH = re.compile(r"/([A-Za-z0-9._~-]+/)*")

# A location's host: the app's default server for any host nginx has no other site for.
DEFAULT_HOST = "*"


LOCATION_HOST_MAX = 253  # Location.host's column; a DNS name is at most 253 characters too


def validate_location_host(value, field="host"):
    """A location's host: a name or address, a '*.example.com' wildcard, or '*' (the node's default app).

    Returned canonical: lower-cased and without a trailing dot, as nginx compares the Host header
    (host names are case-insensitive), so two spellings of one host are one record. Names are ASCII:
    an internationalized name is given in its IDNA form (xn--...), which is what browsers send.
    """
    if value == DEFAULT_HOST:
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} {value!r} is invalid: give a host name, '*.example.com' or '*' (any other host)")
    if not value.isascii():
        raise ValueError(f"{field} {value!r} is invalid: a host name is ASCII; give an internationalized name "
                         "in its IDNA form (xn--...)")
    wildcard = value.startswith("*.")
    name = value[2:] if wildcard else value
    try:
        name = validate_address(name.lower())
    except ValueError:
        raise ValueError(f"{field} {value!r} is invalid: it must be a host name or an IP address (letters, "
                         "digits, '-' and '.', optionally starting with '*.'), or '*' for any other host") from None
    if wildcard and is_ip(name):
        raise ValueError(f"{field} {value!r} is invalid: a '*.' wildcard needs a host name, not an IP address")
    name = name[:-1] if name.endswith(".") else name  # "example.com." is example.com (nginx drops the dot too)
    host = "*." + name if wildcard else name
    if len(host) > LOCATION_HOST_MAX:
        raise ValueError(f"{field} {value[:60]!r}... is invalid: it has {len(host)} characters, "
                         f"at most {LOCATION_HOST_MAX} are allowed")
    return host


def validate_location(host, path="/"):
    """The one rule for where an app is served (app.ini, Location records, group documents, the renderer).

    Returns (host, path) canonical (see validate_location_host); ValueError names what is wrong.
    """
    return validate_location_host(host), validate_url_path(path)


def is_ip(value):
    """Whether value is an IPv4 or IPv6 address (not a host name)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


LOCATION_PATH_MAX = 200  # Location.path's column


def validate_url_path(value, field="path"):
    """A location's path prefix: starts and ends with '/', plain segments only."""
    if not isinstance(value, str) or not _URL_PATH.fullmatch(value) or any(
            seg in (".", "..") for seg in value.split("/")):
        raise ValueError(f"{field} {value!r} is not a valid location path: it must start and end with '/' "
                         "and contain only letters, digits and . _ ~ - (no '..' segments)")
    if len(value) > LOCATION_PATH_MAX:
        raise ValueError(f"{field} {value[:60]!r}... is not a valid location path: it has {len(value)} "
                         f"characters, at most {LOCATION_PATH_MAX} are allowed")
    return value


# A WSGI runner, module.path:callable; app.ini and the node's program config both check it.
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
RUNNER_RE = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}")
# An environment variable name (config keys, env file keys).
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
# Names the platform sets in every release's environment (jobs/steps/environment.py): config may not use them.
RESERVED_ENV_PREFIXES = ("TOPPCLOUD_", "CONFIG_")
RESERVED_ENV_NAMES = frozenset({"PATH", "HOME", "LANG", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "PYTHONPATH",
                                "DATABASE_URL", "STATIC_URL"})


def reserved_env_name(name):
    """Why `name` cannot be a config name, or None."""
    if name.startswith(RESERVED_ENV_PREFIXES) or name in RESERVED_ENV_NAMES:
        return (f"{name} is set by toppcloud itself (names starting with {' or '.join(RESERVED_ENV_PREFIXES)}, "
                f"and {', '.join(sorted(RESERVED_ENV_NAMES))}); choose another name")
    return None
