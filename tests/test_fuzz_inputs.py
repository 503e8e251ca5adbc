"""Every input a person or an app gives gets its entry point's documented error, never a traceback.

Hypothesis over: `manage.py config set` (argv and stdin, any bytes) -> CommandError; ConfigValue.full_clean
-> ValidationError; group documents parse/plan/apply -> DocumentError; app.ini -> AppIniError; locations
-> ValueError (nodeops) / ValidationError (records); cron lines (app.ini [cron], parse_schedule) ->
AppIniError / ValueError. More than 10,000 cases in all, each raising nothing but the documented error.
"""

import io
import sys

import pytest
import tomli_w
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings, strategies as st

from nodeops import appini, validate
from toppcloud_site.records import documents
from toppcloud_site.records.models import App, ConfigValue, Location, ServerGroup

pytestmark = pytest.mark.django_db
COUNT = {}  # entry point -> cases run (the last test checks the total)
FAST = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.filter_too_much, HealthCheck.data_too_large])

# Text of every kind: lone surrogates, NUL and control characters, non-ASCII, and bytes that are not UTF-8.
ODD = "\0\x01\t\n\r\x1b\x7f\ud800\udcff\ufeff\u212a\u0130é€=:;#[]\"'\\/*@.-_ "
TEXT = st.one_of(st.text(max_size=40), st.text(alphabet=ODD + "aZ09", max_size=40))
BYTES = st.one_of(st.binary(max_size=40), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))


def ran(name):
    COUNT[name] = COUNT.get(name, 0) + 1


@pytest.fixture
def app():
    return App.objects.create(name="fuzzed", group=ServerGroup.objects.create(name="fuzzed"))


# --- config set ------------------------------------------------------------------------------------------

def test_it_gives_config_set_errors_for_any_key_and_value(app, monkeypatch):
    @settings(max_examples=200, **FAST)
    @given(key=st.one_of(st.sampled_from(["K", "GREETING", "PATH"]), TEXT),
           value=st.one_of(TEXT, st.none()), stdin=BYTES, secret=st.booleans())
    def each(key, value, stdin, secret):
        ran("config set")
        # Run as the command line would: argv decoded with surrogateescape, stdin a byte stream.
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8",
                                                           errors="surrogateescape"))
        args = ["config", "set", key] + ([] if value is None else [value]) + ["--app", app.name]
        with transaction.atomic():
            try:
                call_command(*args, *(["--secret"] if secret else []), stdout=io.StringIO())
            except CommandError as exc:
                assert str(exc).strip()
            else:
                stored = ConfigValue.objects.get(scope="app", app=app, key=key).plain
                assert stored == (value if value is not None else _stdin_value(stdin))
            transaction.set_rollback(True)

    each()


def test_it_says_a_value_on_stdin_is_not_utf8_as_the_issue_found_it(tmp_path):
    """`printf '\\xff' | manage.py config set K --global`: an error naming the problem, not a traceback."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "toppcloud_site.settings",
           "TOPPCLOUD_VAR_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, str(root / "manage.py"), "config", "set", "K", "--global"], input=b"\xff",
                       env=env, cwd=root, capture_output=True, timeout=120)
    assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
    assert r.stderr.decode().strip() == "CommandError: K was not set: the value on stdin is not UTF-8 text (byte 0)"


def _stdin_value(data):
    text = data.decode("utf-8")
    return text[:-1] if text.endswith("\n") else text


def test_it_gives_config_values_validation_errors_only(app):
    # Hypothesis spends about the same time on a list of ten as on one value: each example is a batch.
    @settings(max_examples=150, **FAST)
    @given(batch=st.lists(st.tuples(TEXT, TEXT, st.booleans(), st.sampled_from(["app", "group", "global", "x"])),
                          min_size=10, max_size=10))
    def each(batch):
        for key, value, secret, scope in batch:
            ran("ConfigValue.full_clean")
            record = ConfigValue(key=key, scope=scope, app=app if scope == "app" else None,
                                 group=app.group if scope == "group" else None)
            record.set_value(value, secret=secret)
            try:  # the record's own checks (the app and group exist; uniqueness is the database's)
                record.full_clean(exclude=["app", "group"], validate_unique=False, validate_constraints=False)
            except ValidationError as exc:
                assert exc.messages
            else:
                value.encode("utf-8")  # what passes can be stored
                assert "\0" not in value and "\0" not in key

    each()


# --- group documents -------------------------------------------------------------------------------------

_values = st.recursive(st.one_of(TEXT, st.integers(), st.booleans(), st.floats(allow_nan=False), st.none()),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)
_app = st.fixed_dictionaries({}, optional={"description": _values, "locations": st.one_of(
    _values, st.lists(st.one_of(TEXT, st.sampled_from(["Loc-Upper.Test/", "x.test/a/", "*/", "\0/"])),
                      max_size=3)), "config": st.dictionaries(TEXT, _values, max_size=3),
                                      "secrets": st.lists(TEXT, max_size=2),
                                      "balancer_cache": st.one_of(_values, st.lists(st.sampled_from(
                                          ["Loc-Upper.Test/", "x.test/a/", "*/", "y.test/"]), max_size=2))})
_doc = st.fixed_dictionaries({"group": st.fixed_dictionaries(
    {"name": st.one_of(st.just("fuzzed"), TEXT)},
    optional={"description": _values, "database_node": _values, "static_publish": _values,
              "synchronous_replication": _values, "config": st.dictionaries(TEXT, _values, max_size=3)})},
    optional={"apps": st.dictionaries(st.one_of(st.just("fuzzed"), TEXT), _app, max_size=2),
              "nodes": st.dictionaries(TEXT, st.one_of(
                  st.dictionaries(st.sampled_from(["address", "ssh_port", "root", "host_key", "shell", "role"]),
                                  _values, max_size=3),
                  # nodes the rules must weigh: local ones with roles (two lbs, a replica without a primary...)
                  st.fixed_dictionaries({"address": st.sampled_from(["10.9.0.1", "10.9.0.2", "10.9.0.3"]),
                                         "transport": st.just("local"),
                                         "role": st.sampled_from(["app", "lb", "db", "db-replica", "boss"])})),
                  max_size=3)})


def _toml(doc):
    """The document as TOML bytes (lone surrogates left in: not UTF-8); None when TOML cannot say it."""
    try:
        return tomli_w.dumps(doc).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return None


def test_it_gives_group_documents_document_errors_only(app):
    @settings(max_examples=450, **FAST)
    @given(doc=st.one_of(_doc.map(_toml).filter(lambda data: data is not None), BYTES), dry_run=st.booleans())
    # What the issue found: NUL (a TOML escape) in a name, a description, a location and a config value.
    @example(doc=b'[group]\nname = "\\u0000"\n', dry_run=False)
    @example(doc=b'[group]\nname = "fuzzed"\ndescription = "a\\u0000b"\n', dry_run=True)
    @example(doc=b'[group]\nname = "fuzzed"\n[apps.fuzzed]\nlocations = ["x.test/\\u0000/"]\n', dry_run=False)
    @example(doc=b'[group]\nname = "fuzzed"\n[apps."a\\u0000"]\n', dry_run=False)
    @example(doc=b'[group]\nname = "fuzzed"\n[group.config]\nK = "\\u0000"\n', dry_run=True)
    def each(doc, dry_run):
        ran("group documents")
        with transaction.atomic():
            try:
                parsed = documents.parse(doc)
                (documents.plan if dry_run else documents.apply)(parsed)
            except documents.DocumentError as exc:
                assert str(exc).strip()
            transaction.set_rollback(True)

    each()


# --- app.ini, cron lines, locations (pure functions: thousands of cases) ------------------------------------

_ini_lines = st.one_of(
    TEXT,
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(sorted(appini.KNOWN_KEYS) + ["service.postgresql", "config.required",
                                                                               "config.default.K"]), TEXT),
)


def test_it_gives_app_ini_errors_only():
    @settings(max_examples=200, **FAST)
    @given(batch=st.lists(st.tuples(st.lists(_ini_lines, max_size=6), st.lists(TEXT, max_size=2)),
                          min_size=10, max_size=10))
    def each(batch):
        for lines, cron in batch:
            ran("app.ini")
            text = "[production]\napp_name = fuzzed\nrunner = app:application\n" + "\n".join(lines)
            if cron:
                text += "\n[cron]\n" + "\n".join(f"job{i} = {line}" for i, line in enumerate(cron))
            try:
                appini.parse_app_ini_text(text)
            except appini.AppIniError as exc:
                assert str(exc).startswith("app.ini")

    each()


_field = st.one_of(st.sampled_from(["*", "*/5", "0", "1-5", "mon", "jan-mar", "7", "60", "1-5/2", "L", "?"]),
                   st.text(alphabet="0123456789*/-,?#LWa", max_size=6), TEXT)
_cron = st.tuples(st.lists(_field, max_size=7), st.one_of(st.sampled_from(["/cron/x", "script: true"]), TEXT),
                  st.one_of(st.none(), st.sampled_from(["@daily", "@hourly", "@reboot", "@yearly", "@nope"])))


def test_it_gives_cron_line_errors_only():
    @settings(max_examples=300, **FAST)
    @given(batch=st.lists(_cron, min_size=10, max_size=10))
    def each(batch):
        for fields, target, macro in batch:
            ran("cron lines")
            schedule = macro or " ".join(fields)
            try:
                appini.parse_schedule(schedule)
            except ValueError as exc:
                assert str(exc).startswith("cron")
            try:
                appini.parse_app_ini_text("[production]\napp_name = fuzzed\nrunner = app:application\n"
                                          f"[cron]\njob = {schedule} {target}\n")
            except appini.AppIniError as exc:
                assert str(exc).startswith("app.ini")

    each()


def test_it_gives_location_errors_only(app):
    @settings(max_examples=150, **FAST)
    @given(batch=st.lists(st.tuples(st.one_of(TEXT, st.sampled_from(["Loc-Upper.Test", "*.x.test", "*", "::1"])),
                                    st.one_of(st.just("/"), TEXT)), min_size=20, max_size=20))
    def each(batch):
        for host, path in batch:
            ran("locations")
            try:
                canonical = validate.validate_location(host, path)
            except ValueError as exc:
                assert str(exc).strip()
                canonical = None
            try:
                Location(app=app, host=host, path=path).full_clean(exclude=["app"], validate_unique=False)
            except ValidationError:
                assert canonical is None
            else:
                assert canonical is not None

    each()


def test_it_ran_ten_thousand_cases():
    assert len(COUNT) == 6 and sum(COUNT.values()) >= 10_000, COUNT
