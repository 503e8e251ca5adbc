"""Reading an app's app.ini (the `[production]` section, as in Silver Lining).

app.ini comes from the app's author, so every value is checked here, before
anything reaches a host, and every error names the file, the line and the key
so it can be shown to the person deploying as is.

    [production]
    app_name = blog
    runner = blog.wsgi:application
    default_location = example.com/blog
    health_check = /healthz
    update_fetch = /migrate
        script: python manage.py migrate --noinput
    processes = 2
    threads = 4
    service.postgresql =
    service.files =
    keep_backups = 10

`service.NAME =` (no value) asks for a data service: `postgresql` (a
database and role of the app's own) or `files` (a persistent directory).
Other sections ([cron], [services], ...) are kept unvalidated in
`extra_sections` for the code that will handle them.
"""

import configparser
import io
import ipaddress
import os
import posixpath
import re
import shlex
from dataclasses import dataclass, field

from nodeops.validate import RUNNER_RE, validate_address, validate_name, validate_url_path

SECTION = "production"

# The defaults of the optional keys are those of AppIni's fields.
_OPTIONAL_KEYS = ("default_location", "health_check", "update_fetch", "requirements",
                  "static", "processes", "threads", "keep_releases", "keep_backups")
# The data services a node provides, in the order they are backed up.
SERVICES = ("postgresql", "files")
_REQUIRED_HINTS = {
    "app_name": "the app's name, e.g. app_name = blog",
    "runner": "the WSGI callable, e.g. runner = app:application",
}
_RANGES = {"processes": (1, 64), "threads": (1, 256), "keep_releases": (1, 100), "keep_backups": (1, 1000)}
KNOWN_KEYS = frozenset(_REQUIRED_HINTS) | frozenset(_OPTIONAL_KEYS)

# A URL path the platform requests itself: printable ASCII without spaces.
_URL_PATH_RE = re.compile(r"/[!-~]*")
_REL_PATH_RE = re.compile(r"[A-Za-z0-9._/-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~-]+")
# Control characters (tab aside) have no business in any value: they would
# end up in config files, logs and command lines on the host.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class AppIniError(ValueError):
    def __init__(self, message, *, path, line=None, key=None):
        super().__init__(message)
        self.path = path
        self.line = line
        self.key = key


@dataclass(frozen=True)
class AppIni:
    app_name: str
    runner: str
    default_location: str | None = None  # "host" or "host/path/", normalised
    health_check: str | None = None
    update_fetch: tuple[str, ...] = ()
    requirements: str = "requirements.txt"
    static: str = "static/"
    processes: int = 2
    threads: int = 2
    keep_releases: int = 5
    keep_backups: int = 10
    services: tuple[str, ...] = ()  # of SERVICES, in that order
    warnings: tuple[str, ...] = ()
    # Not validated yet: left to the code that handles [cron], [services]...
    extra_sections: dict[str, dict[str, str]] = field(default_factory=dict, hash=False)
    # (section, key) -> line number, so later checks of extra_sections can
    # name the line too.
    key_lines: dict[tuple[str, str], int] = field(default_factory=dict, hash=False, compare=False)

    @property
    def location_host(self):
        if self.default_location is None:
            return None
        return self.default_location.split("/", 1)[0]

    @property
    def location_path(self):
        if self.default_location is None or "/" not in self.default_location:
            return "/"
        return "/" + self.default_location.split("/", 1)[1]


def parse_app_ini(path):
    """Read and check the app.ini at path; the messages name it as given."""
    label = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise AppIniError(f"{label}: not found (an app needs an app.ini with a [production] section)",
                          path=label) from None
    except IsADirectoryError:
        raise AppIniError(f"{label}: is a directory, not a file", path=label) from None
    except OSError as e:
        raise AppIniError(f"{label}: cannot be read: {e.strerror}", path=label) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise AppIniError(f"{label} line {line}: is not UTF-8 text", path=label, line=line) from None
    return parse_app_ini_text(text, path=label)


def parse_app_ini_text(text, path="app.ini"):
    if text.startswith("\ufeff"):  # a BOM left by some editors
        text = text[1:]
    text = text.replace("\r\n", "\n")  # files written on Windows
    nul = text.find("\0")
    if nul != -1:
        line = text.count("\n", 0, nul) + 1
        raise AppIniError(f"{path} line {line}: contains a NUL character", path=path, line=line)

    parser = configparser.RawConfigParser(
        interpolation=None,
        strict=True,  # duplicate sections and keys are errors, with their line
        # configparser would copy a [DEFAULT] section's keys into every
        # section; NUL cannot occur in the text, so this turns that off.
        default_section="\0",
    )
    try:
        parser.read_string(text, source=path)
    except configparser.Error as e:
        raise _config_error(e, path, text) from None

    if not parser.has_section(SECTION):
        hint = ""
        if parser.sections():
            hint = " (found " + ", ".join(f"[{s}]" for s in parser.sections()) + ")"
        if any(s.lower() == SECTION for s in parser.sections()):
            hint += "; section names are case-sensitive"
        raise AppIniError(f"{path}: has no [{SECTION}] section{hint}", path=path)

    lines = _scan_lines(text, parser)
    warnings = []
    values = {}
    services = set()
    for key, raw in parser.items(SECTION):
        line = lines[(SECTION, key)][0]
        if key.startswith("service."):
            services.add(_check_service(key, raw, path, line))
            continue
        if key not in KNOWN_KEYS:
            warnings.append(f"{path} line {line}: unknown key {key!r} in [{SECTION}] (ignored)")
            continue
        values[key] = (raw, line)

    checked = {}
    for key, hint in _REQUIRED_HINTS.items():
        if key not in values:
            raise AppIniError(f"{path}: [{SECTION}] has no {key} ({hint})", path=path, key=key)
    for key, (raw, line) in values.items():
        def bad(why, line=line, key=key):
            return AppIniError(f"{path} line {line}: {why}", path=path, line=line, key=key)

        if key != "update_fetch":
            if "\n" in raw:
                raise bad(f"{key} must be on one line")
            if _CONTROL_RE.search(raw):
                raise bad(f"{key} {raw!r} contains a control character")
        if raw == "" and key not in _REQUIRED_HINTS:
            continue  # "key =" with nothing after it means the default
        try:
            if key == "update_fetch":
                checked[key] = _check_update_fetch(lines[(SECTION, key)][1], path)
            else:
                checked[key] = _CHECKS[key](key, raw)
        except _Bad as e:
            raise bad(str(e)) from None

    extra = {s: dict(parser.items(s)) for s in parser.sections() if s != SECTION}
    key_lines = {k: v[0] for k, v in lines.items()}
    return AppIni(**checked, services=tuple(s for s in SERVICES if s in services), warnings=tuple(warnings),
                  extra_sections=extra, key_lines=key_lines)


def _check_service(key, raw, path, line):
    name = key[len("service."):]
    if name not in SERVICES:
        raise AppIniError(f"{path} line {line}: unknown service {name!r}: toppcloud provides "
                          + " and ".join(f"service.{s}" for s in SERVICES), path=path, line=line, key=key)
    if raw.strip():
        raise AppIniError(f"{path} line {line}: {key} takes no value (write `{key} =`), got {raw.strip()!r}",
                          path=path, line=line, key=key)
    return name


class _Bad(Exception):
    """A value check failed; the caller adds the file and line."""


def _check_app_name(key, value):
    try:
        return validate_name(value, field=key)
    except ValueError as e:
        raise _Bad(str(e)) from None


def _check_runner(key, value):
    if not RUNNER_RE.fullmatch(value):
        raise _Bad(f"{key} {value!r} must be module:callable (e.g. app:application)")
    return value


def _check_location(key, value):
    def bad(why):
        return _Bad(f"{key} {value!r} is invalid: {why}")

    if "://" in value:
        raise bad("give a host name and an optional path, not a URL (e.g. example.com/blog)")
    host, slash, path = value.partition("/")
    host = host.lower()
    name = host[2:] if host.startswith("*.") else host
    try:
        name = validate_address(name)
    except ValueError:
        raise bad(f"host {host!r} must be a host name or an IP address "
                  "(letters, digits, '-' and '.', optionally starting with '*.')") from None
    if host.startswith("*.") and _is_ip(name):
        raise bad("a '*.' wildcard needs a host name, not an IP address")
    host = "*." + name if host.startswith("*.") else name
    if not path.strip("/"):
        return host
    segments = path.rstrip("/").split("/")
    if not all(_SEGMENT_RE.fullmatch(s) and s not in (".", "..") for s in segments):
        raise bad(f"path {'/' + path!r} may contain only letters, digits and . _ ~ - "
                  "between single slashes (no '.' or '..' segments)")
    normalised = validate_url_path("/" + "/".join(segments) + "/")
    return host + normalised


def _is_ip(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_url_path(key, value):
    if not _URL_PATH_RE.fullmatch(value) or ".." in value or "://" in value or value.startswith("//"):
        raise _Bad(f"{key} {value!r} must be a URL path starting with '/' "
                   "(e.g. /healthz), without spaces, '..' or '://'")
    return value


def _check_update_fetch(value_lines, path):
    """Each non-empty line: a URL path the platform requests, or 'script: <command>'."""
    entries = []
    for line, entry in value_lines:
        if not entry:
            continue
        try:
            if entry.startswith("script:"):
                command = entry[len("script:"):].strip()
                try:
                    argv = shlex.split(command)
                except ValueError as e:
                    raise _Bad(f"update_fetch command {command!r} cannot be split into "
                               f"arguments: {str(e).lower()}") from None
                if not argv:
                    raise _Bad("update_fetch 'script:' needs a command after it "
                               "(e.g. script: python manage.py migrate)")
                # The command may be run as `env ... <argv>`, where a first
                # word like "-i" or "A=b" would be read by env, not run.
                if argv[0].startswith("-") or "=" in argv[0]:
                    raise _Bad(f"update_fetch command {command!r} must start with a program "
                               "to run, not an option or VAR=value")
            elif entry.startswith("/"):
                _check_url_path("update_fetch", entry)
            else:
                raise _Bad(f"update_fetch {entry!r} must be a URL path (e.g. /migrate) "
                           "or 'script: <command>'")
        except _Bad as e:
            raise AppIniError(f"{path} line {line}: {e}", path=path, line=line,
                              key="update_fetch") from None
        entries.append(entry)
    return tuple(entries)


def _check_relative(key, value):
    def bad(why):
        return _Bad(f"{key} {value!r} is invalid: {why}")

    if value.startswith("/"):
        raise bad("it must be a path relative to the app directory")
    if not _REL_PATH_RE.fullmatch(value):
        raise bad("only letters, digits, '.', '_', '-' and '/' are allowed")
    if ".." in value.split("/"):
        raise bad("'..' is not allowed")
    normalised = posixpath.normpath(value)
    if normalised == ".":
        raise bad("it must name something inside the app directory, not the directory itself")
    return normalised


def _check_requirements(key, value):
    if value.endswith("/"):
        raise _Bad(f"{key} {value!r} is invalid: it must be a file, not a directory")
    return _check_relative(key, value)


def _check_static(key, value):
    # A static directory is served by nginx as is; "." would publish the
    # app's source, which _check_relative already refuses.
    return _check_relative(key, value) + "/"


def _check_int(key, value):
    low, high = _RANGES[key]
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise _Bad(f"{key} {value!r} is not a whole number")
    number = int(value)
    if not low <= number <= high:
        raise _Bad(f"{key} {value!r} is out of range: use {low} to {high}")
    return number


_CHECKS = {
    "app_name": _check_app_name,
    "runner": _check_runner,
    "default_location": _check_location,
    "health_check": _check_url_path,
    "requirements": _check_requirements,
    "static": _check_static,
    "processes": _check_int,
    "threads": _check_int,
    "keep_releases": _check_int,
    "keep_backups": _check_int,
}


def _config_error(e, path, text):
    """Turn a configparser error into an AppIniError naming the line."""
    if isinstance(e, configparser.DuplicateOptionError):
        return AppIniError(f"{path} line {e.lineno}: duplicate key {e.option!r} in [{e.section}]",
                           path=path, line=e.lineno, key=e.option)
    if isinstance(e, configparser.DuplicateSectionError):
        return AppIniError(f"{path} line {e.lineno}: duplicate section [{e.section}]",
                           path=path, line=e.lineno)
    if isinstance(e, configparser.MissingSectionHeaderError):
        return AppIniError(f"{path} line {e.lineno}: {e.line.strip()!r} comes before any "
                           f"[section] header (start with [{SECTION}])", path=path, line=e.lineno)
    if isinstance(e, configparser.ParsingError) and e.errors:
        line = e.errors[0][0]  # [1] is a repr() of the line: quote it ourselves
        content = text.split("\n")[line - 1].strip()
        return AppIniError(f"{path} line {line}: cannot read {content!r} "
                           "(expected key = value)", path=path, line=line)
    return AppIniError(f"{path}: not a valid ini file: {e}", path=path)


def _scan_lines(text, parser):
    """(section, key) -> (line of the key, [(line, text) of each value line]).

    configparser does not keep line numbers, so this walks the text with the
    same rules as its reader (comments, indented continuation lines, the key
    before the first '=' or ':'). It runs only on text configparser accepted.
    """
    result = {}
    section = None
    current = None  # value lines of the key being read
    indent_level = 0
    for lineno, line in enumerate(io.StringIO(text), start=1):
        stripped = line.strip()
        if stripped.startswith(("#", ";")):
            continue
        if not stripped:
            if current is not None:
                current.append((lineno, ""))
            continue
        indent = len(line) - len(line.lstrip())
        if current is not None and indent > indent_level:
            current.append((lineno, stripped))
            continue
        indent_level = indent
        header = parser.SECTCRE.match(stripped)
        if header:
            section, current = header.group("header"), None
            continue
        option = parser._optcre.match(stripped)
        key = parser.optionxform(option.group("option").rstrip())
        current = [(lineno, option.group("value").strip())]
        result[(section, key)] = (lineno, current)
    return result
