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
    build = python manage.py collectstatic --noinput
    python = 3.12
    processes = 2
    threads = 4
    service.postgresql =
    service.files =
    keep_backups = 10
    writable_static_files = /docs /uploads

`service.NAME =` (no value) asks for a data service: `postgresql` (a
database and role of the app's own) or `files` (a persistent directory).

`build` lists commands (one a line, split into words as `script:` commands
are, never by a shell; `script:` before one is allowed) run in the new
release, as the app's user and with its environment, after its venv and
before it starts: `collectstatic`, compiling assets. They may write only
into the release's `static` directory, which is then what nginx serves.

`python = 3.12` (or `3`) picks the interpreter the venv is built with, found
on the node (or installed with uv); without it, the node's python3.

`writable_static_files` names directories the app writes into and nginx
serves publicly under the app's location (`/docs` -> `<location>docs/`),
one URL segment each; each is `<root>/apps/<app>/writable/<name>/` on the
node, kept across deploys and backed up, given to the app as
$CONFIG_WRITABLE_<NAME>.

`[cron]` lists the app's scheduled jobs, one a line:

    [cron]
    cleanup = */5 * * * * /cron/cleanup
    report = 0 3 * * 1-5 script: python report.py --all
    weekly = @weekly /cron/weekly
    report.timeout = 120

NAME = SCHEDULE TARGET, where SCHEDULE is five crontab fields (minute hour
day-of-month month day-of-week) or a macro such as @daily, and TARGET is a URL
path requested from the live release or `script: COMMAND`; `NAME.timeout` is
in seconds (default 600). The schedule is held to cron's own grammar, and
whatever celery (which runs it) would read differently from cron is refused.

Other sections ([services], ...) are kept unvalidated in `extra_sections` for
the code that will handle them.
"""

import configparser
import io
import os
import posixpath
import re
import shlex
from dataclasses import dataclass, field

from nodeops.errors import NodeOpError
from nodeops.validate import (ENV_KEY_RE, RUNNER_RE, reserved_env_name, validate_location, validate_location_host,
                              validate_name)

SECTION = "production"
CRON_SECTION = "cron"

# The defaults of the optional keys are those of AppIni's fields.
_OPTIONAL_KEYS = ("default_location", "health_check", "update_fetch", "build", "python", "requirements",
                  "static", "processes", "threads", "keep_releases", "keep_backups", "writable_static_files")
# Keys whose value may go on over indented lines, one entry a line.
_MULTILINE_KEYS = ("update_fetch", "build")
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

CRON_TIMEOUT_DEFAULT = 600
_CRON_TIMEOUT_RANGE = (1, 86400)
_CRON_OPTIONS = ("timeout",)
_CRON_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
# One URL segment, also a directory name and (upper-cased, '-' -> '_') part of an env var name.
WRITABLE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
# Served at <location>static/ already.
_WRITABLE_RESERVED = ("static",)
# The macros cron knows, as the five fields they stand for.
CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Each crontab field in order: (its name in messages, lowest, highest, the
# names standing for lowest, lowest + 1, ... or None, its longest text: the
# fields are kept as written in django-celery-beat's CrontabSchedule, whose
# columns are that long).
_CRON_FIELDS = (
    ("minute", 0, 59, None, 240),
    ("hour", 0, 23, None, 96),
    ("day-of-month", 1, 31, None, 124),
    ("month", 1, 12, _MONTH_NAMES, 64),
    ("day-of-week", 0, 6, _DAY_NAMES, 64),
)
_CRON_FIELDS_HINT = "5 fields (minute hour day-of-month month day-of-week)"
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# One comma-separated part of a field as cron reads it (vixie cron, cronie):
# `*` or a number or name, or a range of two, then an optional /step.
_CRON_PART_RE = re.compile(r"(?:(\*)|([0-9]+|[A-Za-z]+)(?:-([0-9]+|[A-Za-z]+))?)(?:/([0-9]+))?")
# What could be a crontab field (to count the fields of a pasted 6- or
# 7-field crontab), as opposed to the start of a target or a stray word.
_CRON_FIELDISH_RE = re.compile(r"[0-9A-Za-z*?#,/-]+")


class AppIniError(NodeOpError, ValueError):
    def __init__(self, message, *, path, line=None, key=None):
        super().__init__(message)
        self.path = path
        self.line = line
        self.key = key


@dataclass(frozen=True)
class CronEntry:
    """One line of [cron]: `name = schedule target`."""
    name: str
    schedule: str  # as written, whitespace normalised: "*/5 * * * *", "@weekly"
    # minute, hour, day_of_month, month_of_year, day_of_week (macros
    # expanded): celery's crontab() takes them as they are (a test checks it).
    fields: tuple[str, str, str, str, str]
    target: str  # a URL path, or "script: <command>", as written
    timeout: int = CRON_TIMEOUT_DEFAULT  # seconds

    @property
    def is_script(self):
        return self.target.startswith("script:")

    @property
    def argv(self):
        """The command of a `script:` entry, split into words; None for a URL path."""
        if not self.is_script:
            return None
        return shlex.split(self.target[len("script:"):])


@dataclass(frozen=True)
class AppIni:
    app_name: str
    runner: str
    default_location: str | None = None  # "host" or "host/path/", normalised
    health_check: str | None = None
    update_fetch: tuple[str, ...] = ()
    # build = one command a line, run in the new release (its static directory writable) before it starts
    build: tuple[str, ...] = ()
    # python = 3.12: the interpreter the venv is built with (None: the node's python3)
    python: str | None = None
    requirements: str = "requirements.txt"
    static: str = "static/"
    processes: int = 2
    threads: int = 2
    keep_releases: int = 5
    keep_backups: int = 10
    # writable_static_files = /docs /uploads -> ("docs", "uploads"), in file order
    writable_static_files: tuple[str, ...] = ()
    services: tuple[str, ...] = ()  # of SERVICES, in that order
    cron: tuple[CronEntry, ...] = ()  # in file order
    # config.required = KEY ...: the deploy is refused unless the app's config (or a default) has each.
    config_required: tuple[str, ...] = ()
    # config.default.KEY = value: used when no config value of that name is set.
    config_defaults: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()
    # Not validated yet: left to the code that handles [services]...
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
    config = {"required": (), "defaults": {}}
    for key, raw in parser.items(SECTION):
        line = lines[(SECTION, key)][0]
        if key.startswith("service."):
            services.add(_check_service(key, raw, path, line))
            continue
        if key.startswith("config."):
            _check_config(key, raw, path, line, config)
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

        if key not in _MULTILINE_KEYS:
            if "\n" in raw:
                raise bad(f"{key} must be on one line")
            if _CONTROL_RE.search(raw):
                raise bad(f"{key} {raw!r} contains a control character")
        if raw == "" and key not in _REQUIRED_HINTS:
            continue  # "key =" with nothing after it means the default
        try:
            if key == "update_fetch":
                checked[key] = _check_update_fetch(lines[(SECTION, key)][1], path)
            elif key == "build":
                checked[key] = _check_build(lines[(SECTION, key)][1], path)
            else:
                checked[key] = _CHECKS[key](key, raw)
        except _Bad as e:
            raise bad(str(e)) from None

    cron = ()
    if parser.has_section(CRON_SECTION):
        cron = _check_cron(parser.items(CRON_SECTION), lines, path)
    extra = {s: dict(parser.items(s)) for s in parser.sections() if s not in (SECTION, CRON_SECTION)}
    key_lines = {k: v[0] for k, v in lines.items()}
    return AppIni(**checked, services=tuple(s for s in SERVICES if s in services), cron=cron,
                  config_required=config["required"], config_defaults=tuple(sorted(config["defaults"].items())),
                  warnings=tuple(warnings), extra_sections=extra, key_lines=key_lines)


def _check_config(key, raw, path, line, config):
    """config.required = KEY KEY..., config.default.KEY = value (into `config`)."""
    def bad(why):
        return AppIniError(f"{path} line {line}: {why}", path=path, line=line, key=key)

    def name(word, what):
        if not ENV_KEY_RE.fullmatch(word) or word != word.upper():
            raise bad(f"{what} {word!r} is not a config name: use upper-case letters, digits and '_', "
                      "not starting with a digit (app.ini keys are case-insensitive, so names are upper case)")
        reserved = reserved_env_name(word)
        if reserved:
            raise bad(f"{what} {reserved}")
        return word

    if "\n" in raw or _CONTROL_RE.search(raw):
        raise bad(f"{key} must be one line without control characters")
    if key == "config.required":
        names = raw.split()
        if len(set(names)) != len(names):
            raise bad(f"config.required names a key twice: {raw.strip()!r}")
        config["required"] = tuple(name(word, "config.required:") for word in names)
    elif key.startswith("config.default."):
        config["defaults"][name(key[len("config.default."):].upper(), "config.default:")] = raw
    else:
        raise bad(f"unknown key {key!r}: app.ini has config.required = KEY ... and config.default.KEY = value")


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
    try:
        host = validate_location_host(host)
    except ValueError as exc:
        if "must be a host name or an IP address" not in str(exc):
            raise bad(str(exc).split(" is invalid: ", 1)[-1]) from None  # wildcard of an IP, non-ASCII, length
        raise bad(f"host {host!r} must be a host name or an IP address "
                  "(letters, digits, '-' and '.', optionally starting with '*.')") from None
    if not path.strip("/"):
        return host
    segments = path.rstrip("/").split("/")
    if not all(_SEGMENT_RE.fullmatch(s) and s not in (".", "..") for s in segments):
        raise bad(f"path {'/' + path!r} may contain only letters, digits and . _ ~ - "
                  "between single slashes (no '.' or '..' segments)")
    try:  # the one rule for a location (as Location records and the front door apply it)
        host, normalised = validate_location(host, "/" + "/".join(segments) + "/")
    except ValueError as exc:
        raise bad(str(exc)) from None
    return host + normalised


def _check_url_path(key, value, example="/healthz"):
    if not _URL_PATH_RE.fullmatch(value) or ".." in value or "://" in value or value.startswith("//"):
        raise _Bad(f"{key} {value!r} must be a URL path starting with '/' "
                   f"(e.g. {example}), without spaces, '..' or '://'")
    return value


def _check_script(what, command, example):
    """The command of a 'script:' entry, split into its arguments."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise _Bad(f"{what} command {command!r} cannot be split into "
                   f"arguments: {str(e).lower()}") from None
    if not argv:
        raise _Bad(f"{what} 'script:' needs a command after it (e.g. script: {example})")
    # The command may be run as `env ... <argv>`, where a first word like
    # "-i" or "A=b" would be read by env, not run.
    if argv[0].startswith("-") or "=" in argv[0]:
        raise _Bad(f"{what} command {command!r} must start with a program "
                   "to run, not an option or VAR=value")
    return argv


def _check_update_fetch(value_lines, path):
    """Each non-empty line: a URL path the platform requests, or 'script: <command>'."""
    entries = []
    for line, entry in value_lines:
        if not entry:
            continue
        try:
            if entry.startswith("script:"):
                _check_script("update_fetch", entry[len("script:"):].strip(), "python manage.py migrate")
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


def _check_build(value_lines, path):
    """Each non-empty line: a command (`script:` before it is allowed, as in update_fetch), split as
    `script:` commands are; the commands, without the prefix."""
    commands = []
    for line, entry in value_lines:
        if not entry:
            continue
        command = entry[len("script:"):].strip() if entry.startswith("script:") else entry
        try:
            _check_script("build", command, "python manage.py collectstatic --noinput")
        except _Bad as e:
            raise AppIniError(f"{path} line {line}: {e}", path=path, line=line, key="build") from None
        commands.append(command)
    return tuple(commands)


_PYTHON_RE = re.compile(r"3(\.(0|[1-9][0-9]?))?")


def _check_python(key, value):
    if not _PYTHON_RE.fullmatch(value):
        raise _Bad(f"{key} {value!r} is invalid: give a Python version as 3 or 3.N (e.g. {key} = 3.12)")
    return value


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


def writable_env_name(name):
    """The variable a writable static directory's path is given in: docs -> CONFIG_WRITABLE_DOCS."""
    return "CONFIG_WRITABLE_" + name.upper().replace("-", "_")


def _check_writable(key, value):
    names, variables = [], {}
    for word in value.split():
        def bad(why):
            return _Bad(f"{key}: {word!r} is invalid: {why}")

        if not word.startswith("/"):
            raise bad(f"each directory is a URL path of one segment starting with '/' (e.g. {key} = /docs /uploads)")
        name = word[1:].rstrip("/") if word.count("/") == 2 and word.endswith("/") else word[1:]
        if ".." in name.split("/"):
            raise bad("'..' is not allowed")
        if name in ("", "."):
            raise bad("name a directory under the app's location, not the location itself")
        if "/" in name:
            raise bad("only one path segment is allowed (e.g. /docs), not a nested path")
        if not WRITABLE_NAME_RE.fullmatch(name):
            raise bad("use 1 to 40 characters a-z, 0-9, '_' and '-' after the '/', starting with a letter or digit")
        if name in _WRITABLE_RESERVED:
            raise bad(f"/{name}/ is where the release's static files are served; choose another name")
        if name in names:
            raise bad("it is listed twice")
        variable = writable_env_name(name)
        if variable in variables:
            raise bad(f"it and '/{variables[variable]}' would both be given as ${variable}; rename one")
        names.append(name)
        variables[variable] = name
    return tuple(names)


def _check_int(key, value, limits=None):
    low, high = limits or _RANGES[key]
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
    "python": _check_python,
    "requirements": _check_requirements,
    "static": _check_static,
    "processes": _check_int,
    "threads": _check_int,
    "keep_releases": _check_int,
    "keep_backups": _check_int,
    "writable_static_files": _check_writable,
}


def _check_cron(items, lines, path):
    """[cron]'s (key, value) pairs, in file order -> a tuple of CronEntry."""
    names = [key for key, _ in items if "." not in key]
    entries = {}  # name -> (schedule, fields, target)
    timeouts = {}
    for key, raw in items:
        line = lines[(CRON_SECTION, key)][0]
        name, dot, option = key.partition(".")
        try:
            if not _CRON_NAME_RE.fullmatch(name):
                raise _Bad(f"cron entry name {name!r} is invalid: use 1 to 40 characters a-z, 0-9, "
                           "'_' and '-', starting with a letter or digit")
            what = f"cron entry {name!r}"
            if dot and option not in _CRON_OPTIONS:
                raise _Bad(f"{what} has an unknown option {option!r} (known options: "
                           + ", ".join(f"{name}.{o}" for o in _CRON_OPTIONS) + ")")
            if dot and name not in names:
                known = f" (its entries: {', '.join(names)})" if names else ""
                raise _Bad(f"{what} has a {option} but no schedule: [{CRON_SECTION}] has no line "
                           f"'{name} = SCHEDULE TARGET'{known}")
            if dot:
                what += f" {option}"
            if "\n" in raw:
                raise _Bad(f"{what} must be on one line" + ("" if dot else " (one entry per line)"))
            if _CONTROL_RE.search(raw):
                raise _Bad(f"{what}{'' if dot else ' value'} {raw!r} contains a control character")
            if not dot:
                entries[name] = _check_cron_entry(name, raw)
            elif raw:  # "NAME.timeout =" with nothing after it means the default
                timeouts[name] = _check_int(what, raw, _CRON_TIMEOUT_RANGE)
        except _Bad as e:
            raise AppIniError(f"{path} line {line}: {e}", path=path, line=line, key=key) from None
    return tuple(CronEntry(name, *entry, timeout=timeouts.get(name, CRON_TIMEOUT_DEFAULT))
                 for name, entry in entries.items())


def _check_cron_entry(name, value):
    """'SCHEDULE TARGET' -> (schedule, fields, target)."""
    what = f"cron entry {name!r}"
    words = value.split()
    if not words:
        raise _Bad(f"{what} is empty: write {name} = SCHEDULE TARGET (e.g. {name} = 0 3 * * * /cron/{name})")
    if words[0].startswith("@"):
        schedule = words[0]
        if schedule == "@reboot":
            raise _Bad(f"{what} schedule '@reboot' is not supported: toppcloud runs cron entries "
                       "on a schedule only, there is no boot event (for work at each deploy, "
                       "use update_fetch)")
        if schedule not in CRON_MACROS:
            raise _Bad(f"{what} schedule {schedule!r} is unknown: use {_CRON_FIELDS_HINT} or one of "
                       + ", ".join(CRON_MACROS))
        fields = tuple(CRON_MACROS[schedule].split())
        rest = value.split(None, 1)[1:]
    else:
        count = 0  # a seconds or a year field counts, a target or a stray word does not
        while count < len(words) and _is_cron_fieldish(words[count]):
            count += 1
        if count > 5:
            raise _Bad(f"{what} schedule {' '.join(words[:count])!r} has {count} fields: a schedule has "
                       f"{_CRON_FIELDS_HINT}, without seconds or a year")
        end = next((i for i, w in enumerate(words) if w.startswith(("/", "script:"))), len(words))
        if end == 0:
            raise _Bad(f"{what} needs a schedule before its target {value!r}: {_CRON_FIELDS_HINT} "
                       "or a macro such as @daily")
        if end < 5:
            found = " ".join(words[:end])
            raise _Bad(f"{what} schedule {found!r} has {end} field{'s' if end > 1 else ''}: a schedule has "
                       f"{_CRON_FIELDS_HINT} or is a macro such as @daily")
        fields = tuple(words[:5])
        schedule = " ".join(fields)
        _check_cron_fields(what, schedule, fields)
        rest = value.split(None, 5)[5:]
    target = rest[0].strip() if rest else ""
    expected = f"a URL path (e.g. /cron/{name}) or 'script: <command>'"
    if not target:
        raise _Bad(f"{what} needs a target after its schedule {schedule!r}: {expected}")
    if target.startswith("script:"):
        _check_script(what, target[len("script:"):].strip(), "python manage.py clearsessions")
    elif target.startswith("/"):
        _check_url_path(f"{what} target", target, example=f"/cron/{name}")
    else:
        raise _Bad(f"{what} target {target!r} must be {expected}")
    return schedule, fields, target


def parse_schedule(text, what="cron"):
    """A crontab schedule or macro, checked as [cron] entries are -> (schedule, five fields).

    For schedules given elsewhere (`manage.py backup --schedule`). Raises
    ValueError whose message starts with `what`.
    """
    words = text.split()
    try:
        if len(words) == 1 and words[0].startswith("@"):
            if words[0] not in CRON_MACROS:
                raise _Bad(f"{what} schedule {words[0]!r} is unknown: use {_CRON_FIELDS_HINT} or one of "
                           + ", ".join(CRON_MACROS))
            return words[0], tuple(CRON_MACROS[words[0]].split())
        if len(words) != 5:
            raise _Bad(f"{what} schedule {text!r} has {len(words)} fields: a schedule has {_CRON_FIELDS_HINT}")
        schedule = " ".join(words)
        _check_cron_fields(what, schedule, tuple(words))
        return schedule, tuple(words)
    except _Bad as e:
        raise ValueError(str(e)) from None


def _is_cron_fieldish(word):
    if not _CRON_FIELDISH_RE.fullmatch(word) or word.startswith("/"):
        return False
    return all(n.lower() in _MONTH_NAMES + _DAY_NAMES for n in re.findall(r"[A-Za-z]+", word))


def _check_cron_fields(what, schedule, fields):
    """Check the five fields as cron reads them.

    celery, which runs the schedules (django-celery-beat), accepts more than
    cron (names in any field, "monday", "+5", non-ASCII digits, "1-5-7",
    ranges that wrap around) and reads some of it differently, so the fields
    are held to cron's grammar; what passes means the same to both, bar the
    day-of-month/day-of-week rule below. (nodeops does not import celery:
    tests/test_nodeops_appini.py checks that celery reads every accepted
    field as cron does.)
    """
    values = [_check_cron_field(what, text, *spec) for text, spec in zip(fields, _CRON_FIELDS)]

    minute, hour, day_of_month, month_of_year, day_of_week = fields
    # Cron runs an entry whose day-of-month and day-of-week are both
    # restricted (neither starts with '*') on days matching either; celery
    # only on days matching both.
    if not day_of_month.startswith("*") and not day_of_week.startswith("*"):
        raise _Bad(f"{what} schedule {schedule!r} restricts both day-of-month and day-of-week: cron "
                   "would run it on days matching either, toppcloud runs it only on days matching both; "
                   "set one of them to *")
    if not any(day <= _DAYS_IN_MONTH[month - 1] for day in values[2] for month in values[3]):
        raise _Bad(f"{what} schedule {schedule!r} never runs: day-of-month {day_of_month} "
                   f"never occurs in month {month_of_year}")


def _check_cron_field(what, text, label, low, high, names, longest):
    """One crontab field -> the set of values it stands for."""
    def bad(why):
        return _Bad(f"{what} {label} {text!r} is invalid: {why}")

    if len(text) > longest:
        raise bad(f"it is longer than {longest} characters")

    def number(token):
        if token.isdigit():
            n = int(token)
            if not low <= n <= high:
                sunday = " (for Sunday write 0 or sun)" if label == "day-of-week" and n == 7 else ""
                raise bad(f"{n} is out of range {low}-{high}{sunday}")
            return n
        if names is None:
            raise bad(f"{token!r} is not a number (names are allowed only in month and day-of-week)")
        if token.lower() not in names:
            raise bad(f"{token!r} is not a {label} name: use " + ", ".join(names))
        return names.index(token.lower()) + low

    values = set()
    for part in text.split(","):
        if not part:
            raise bad("a list has an empty item")
        m = _CRON_PART_RE.fullmatch(part)
        if not m:
            raise bad(f"{part!r} is not *, a number or a range (a-b), with an optional /step")
        star, first, last, step = m.groups()
        lo, hi = low, high
        if not star:
            lo = hi = number(first)
            if last is None and step is not None:
                end = names[-1] if first.isalpha() else high
                raise bad(f"a step needs * or a range before it (e.g. {first}-{end}/{step})")
            if last is not None:
                hi = number(last)
                if hi < lo:
                    raise bad(f"the range {first}-{last} runs backwards (cron ranges do not wrap around)")
        if step is not None and int(step) == 0:
            raise bad("a step must be at least 1")
        values.update(range(lo, hi + 1, int(step) if step else 1))
    return values


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
