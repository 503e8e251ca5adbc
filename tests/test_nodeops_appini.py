import subprocess
import sys

import pytest
from celery.schedules import crontab

from nodeops.appini import AppIni, AppIniError, CronEntry, parse_app_ini, parse_app_ini_text, writable_env_name

FULL = """\
# The blog, deployed by toppcloud.
[production]
app_name = blog
runner = blog.wsgi:application
default_location = Example.COM/Blog
health_check = /healthz?full=1
update_fetch = /migrate
    script: python manage.py migrate --noinput
requirements = ./req/prod.txt
static = assets
processes = 4
threads = 8
keep_releases = 3

[cron]
nightly = 0 3 * * * /cleanup

[services]
postgresql =
"""

MINIMAL = "[production]\napp_name = blog\nrunner = app:application\n"


def error(text):
    with pytest.raises(AppIniError) as e:
        parse_app_ini_text(text)
    return e.value


def with_key(line):
    """MINIMAL plus one line: that line is line 4."""
    return MINIMAL + line + "\n"


def test_a_full_app_ini_is_read_and_normalised():
    ini = parse_app_ini_text(FULL)
    assert ini == AppIni(
        app_name="blog",
        runner="blog.wsgi:application",
        default_location="example.com/Blog/",
        health_check="/healthz?full=1",
        update_fetch=("/migrate", "script: python manage.py migrate --noinput"),
        requirements="req/prod.txt",
        static="assets/",
        processes=4,
        threads=8,
        keep_releases=3,
        cron=(CronEntry("nightly", "0 3 * * *", ("0", "3", "*", "*", "*"), "/cleanup", 600),),
        warnings=(),
        extra_sections={"services": {"postgresql": ""}},
    )
    assert ini.location_host == "example.com"
    assert ini.location_path == "/Blog/"
    assert ini.key_lines[("production", "threads")] == 12
    assert ini.key_lines[("cron", "nightly")] == 16


def test_defaults():
    ini = parse_app_ini_text(MINIMAL)
    assert (ini.default_location, ini.health_check, ini.update_fetch) == (None, None, ())
    assert (ini.requirements, ini.static) == ("requirements.txt", "static/")
    assert (ini.processes, ini.threads, ini.keep_releases) == (2, 2, 5)
    assert (ini.location_host, ini.location_path) == (None, "/")
    assert ini.warnings == ()
    assert ini.extra_sections == {}


def test_an_empty_optional_value_means_the_default():
    ini = parse_app_ini_text(MINIMAL + "health_check =\nprocesses =\n")
    assert (ini.health_check, ini.processes) == (None, 2)


@pytest.mark.parametrize("value, host, path", [
    ("example.com", "example.com", "/"),
    ("example.com/", "example.com", "/"),
    ("example.com/a/b", "example.com", "/a/b/"),
    ("*.Example.com/x/", "*.example.com", "/x/"),
    ("10.0.0.1/app", "10.0.0.1", "/app/"),
])
def test_good_locations(value, host, path):
    ini = parse_app_ini_text(with_key(f"default_location = {value}"))
    assert (ini.location_host, ini.location_path) == (host, path)


def test_a_file_is_read_and_named_in_messages(tmp_path):
    (tmp_path / "app.ini").write_text(MINIMAL.replace("\n", "\r\n"))
    assert parse_app_ini(tmp_path / "app.ini").runner == "app:application"
    (tmp_path / "app.ini").write_text(with_key("threads = many"))
    with pytest.raises(AppIniError) as e:
        parse_app_ini(tmp_path / "app.ini")
    assert str(e.value) == f"{tmp_path}/app.ini line 4: threads 'many' is not a whole number"
    assert (e.value.path, e.value.line, e.value.key) == (f"{tmp_path}/app.ini", 4, "threads")


def test_missing_file(tmp_path):
    with pytest.raises(AppIniError) as e:
        parse_app_ini(tmp_path / "app.ini")
    assert str(e.value) == (f"{tmp_path}/app.ini: not found "
                            "(an app needs an app.ini with a [production] section)")


def test_a_file_that_is_not_utf8(tmp_path):
    (tmp_path / "app.ini").write_bytes(MINIMAL.encode() + b"threads = \xff\n")
    with pytest.raises(AppIniError) as e:
        parse_app_ini(tmp_path / "app.ini")
    assert str(e.value) == f"{tmp_path}/app.ini line 4: is not UTF-8 text"


def test_missing_production_section():
    assert str(error("[cron]\nx = 1\n")) == "app.ini: has no [production] section (found [cron])"
    assert str(error("[Production]\n[cron]\n")) == (
        "app.ini: has no [production] section (found [Production], [cron]); section names are case-sensitive")
    assert str(error("")) == "app.ini: has no [production] section"


def test_missing_runner_and_app_name():
    e = error("[production]\napp_name = blog\n")
    assert str(e) == "app.ini: [production] has no runner (the WSGI callable, e.g. runner = app:application)"
    assert (e.path, e.line, e.key) == ("app.ini", None, "runner")
    assert str(error("[production]\nrunner = app:application\n")) == (
        "app.ini: [production] has no app_name (the app's name, e.g. app_name = blog)")


@pytest.mark.parametrize("runner", ["hello", "app:", ":application", "app:application()",
                                    "a..b:app", "app:a.b", "my-app:app", "app:application x", "a:b:c"])
def test_bad_runner(runner):
    e = error(f"[production]\napp_name = blog\nrunner = {runner}\n")
    assert str(e) == f"app.ini line 3: runner {runner!r} must be module:callable (e.g. app:application)"
    assert (e.line, e.key) == (3, "runner")


@pytest.mark.parametrize("name", ["../blog", "my..app", "my app", "Blog", "1blog", "blog_app", ""])
def test_bad_app_name(name):
    e = error(f"[production]\napp_name = {name}\nrunner = app:application\n")
    assert str(e) == (f"app.ini line 2: app_name {name!r} is invalid: use 1 to 63 characters "
                      "a-z, 0-9 and '-', starting with a letter")


@pytest.mark.parametrize("value, why", [
    ("exa mple.com", "host 'exa mple.com' must be a host name or an IP address "
                     "(letters, digits, '-' and '.', optionally starting with '*.')"),
    ("example.com:8080", "host 'example.com:8080' must be a host name or an IP address "
                         "(letters, digits, '-' and '.', optionally starting with '*.')"),
    ("-x.com", "host '-x.com' must be a host name or an IP address "
               "(letters, digits, '-' and '.', optionally starting with '*.')"),
    ("example.com/../x", "path '/../x' may contain only letters, digits and . _ ~ - "
                         "between single slashes (no '.' or '..' segments)"),
    ("example.com/a/./b", "path '/a/./b' may contain only letters, digits and . _ ~ - "
                          "between single slashes (no '.' or '..' segments)"),
    ("example.com//a", "path '//a' may contain only letters, digits and . _ ~ - "
                       "between single slashes (no '.' or '..' segments)"),
    ("example.com/a b", "path '/a b' may contain only letters, digits and . _ ~ - "
                        "between single slashes (no '.' or '..' segments)"),
    ("example.com/$(reboot)", "path '/$(reboot)' may contain only letters, digits and . _ ~ - "
                              "between single slashes (no '.' or '..' segments)"),
    ("http://x", "give a host name and an optional path, not a URL (e.g. example.com/blog)"),
    ("*.10.0.0.1", "a '*.' wildcard needs a host name, not an IP address"),
])
def test_bad_location(value, why):
    e = error(with_key(f"default_location = {value}"))
    assert str(e) == f"app.ini line 4: default_location {value!r} is invalid: {why}"
    assert (e.line, e.key) == (4, "default_location")


@pytest.mark.parametrize("value", ["healthz", "/a b", "/../etc", "/x/..", "http://x/", "//evil.example/"])
def test_bad_health_check(value):
    assert str(error(with_key(f"health_check = {value}"))) == (
        f"app.ini line 4: health_check {value!r} must be a URL path starting with '/' "
        "(e.g. /healthz), without spaces, '..' or '://'")


def test_update_fetch_errors_name_the_line_of_the_entry():
    text = with_key("update_fetch = /migrate\n    script: ./manage.py 'migrate\n    /after")
    assert str(error(text)) == (
        "app.ini line 5: update_fetch command \"./manage.py 'migrate\" cannot be split "
        "into arguments: no closing quotation")
    assert str(error(with_key("update_fetch =\n    /ok\n\n    migrate"))) == (
        "app.ini line 7: update_fetch 'migrate' must be a URL path (e.g. /migrate) or 'script: <command>'")
    assert str(error(with_key("update_fetch = script:"))) == (
        "app.ini line 4: update_fetch 'script:' needs a command after it "
        "(e.g. script: python manage.py migrate)")
    assert str(error(with_key("update_fetch = script: DEBUG=1 ./manage.py migrate"))) == (
        "app.ini line 4: update_fetch command 'DEBUG=1 ./manage.py migrate' must start with a program "
        "to run, not an option or VAR=value")
    assert str(error(with_key("update_fetch = script: -i sh"))) == (
        "app.ini line 4: update_fetch command '-i sh' must start with a program "
        "to run, not an option or VAR=value")
    assert str(error(with_key("update_fetch = /../x"))) == (
        "app.ini line 4: update_fetch '/../x' must be a URL path starting with '/' "
        "(e.g. /healthz), without spaces, '..' or '://'")


def test_build_is_commands_one_a_line_checked_as_script_commands_are():
    ini = parse_app_ini_text(with_key("build = python manage.py collectstatic --noinput\n"
                                      "    script: npm run 'build all'\n\n    /usr/local/bin/compile\nthreads = 3"))
    assert ini.build == ("python manage.py collectstatic --noinput", "npm run 'build all'", "/usr/local/bin/compile")
    assert ini.threads == 3 and parse_app_ini_text(with_key("threads = 3")).build == ()
    assert str(error(with_key("build =\n    make\n    ./compile 'x"))) == (
        "app.ini line 6: build command \"./compile 'x\" cannot be split into arguments: no closing quotation")
    assert str(error(with_key("build = NODE_ENV=production npm run build"))) == (
        "app.ini line 4: build command 'NODE_ENV=production npm run build' must start with a program "
        "to run, not an option or VAR=value")
    assert str(error(with_key("build = script:"))) == (
        "app.ini line 4: build 'script:' needs a command after it (e.g. script: python manage.py collectstatic "
        "--noinput)")


@pytest.mark.parametrize("value, ok", [("3", True), ("3.12", True), ("3.9", True), ("3.0", True),
                                       ("3.12.1", False), ("2.7", False), ("3.x", False), ("python3.12", False),
                                       ("3.012", False), (">=3.12", False), ("3.", False)])
def test_python_is_3_or_3_n(value, ok):
    text = with_key(f"python = {value}")
    if ok:
        assert parse_app_ini_text(text).python == value
    else:
        assert str(error(text)) == (f"app.ini line 4: python {value!r} is invalid: give a Python version as 3 or "
                                    "3.N (e.g. python = 3.12)")
    assert parse_app_ini_text(with_key("threads = 3")).python is None


def test_update_fetch_blank_lines_are_dropped():
    ini = parse_app_ini_text(with_key("update_fetch =\n    /one\n\n    script: bin/two --x 'a b'\nthreads = 3"))
    assert ini.update_fetch == ("/one", "script: bin/two --x 'a b'")
    assert ini.threads == 3


@pytest.mark.parametrize("key, value, expected", [
    ("processes", "two", "processes 'two' is not a whole number"),
    ("processes", "2.5", "processes '2.5' is not a whole number"),
    ("processes", "0", "processes '0' is out of range: use 1 to 64"),
    ("processes", "65", "processes '65' is out of range: use 1 to 64"),
    ("threads", "-1", "threads '-1' is out of range: use 1 to 256"),
    ("threads", "٣", "threads '٣' is not a whole number"),  # a non-ASCII digit
    ("keep_releases", "101", "keep_releases '101' is out of range: use 1 to 100"),
])
def test_bad_numbers(key, value, expected):
    e = error(with_key(f"{key} = {value}"))
    assert str(e) == f"app.ini line 4: {expected}"
    assert (e.line, e.key) == (4, key)


@pytest.mark.parametrize("key, value, why", [
    ("requirements", "/etc/passwd", "it must be a path relative to the app directory"),
    ("requirements", "../secrets.txt", "'..' is not allowed"),
    ("requirements", "req/../../x", "'..' is not allowed"),
    ("requirements", "req s.txt", "only letters, digits, '.', '_', '-' and '/' are allowed"),
    ("requirements", "req/", "it must be a file, not a directory"),
    ("static", ".", "it must name something inside the app directory, not the directory itself"),
    ("static", "./", "it must name something inside the app directory, not the directory itself"),
    ("static", "..", "'..' is not allowed"),
])
def test_bad_relative_paths(key, value, why):
    assert str(error(with_key(f"{key} = {value}"))) == f"app.ini line 4: {key} {value!r} is invalid: {why}"


def test_relative_paths_are_normalised():
    ini = parse_app_ini_text(with_key("requirements = ./a//b.txt\nstatic = ./web/static/"))
    assert (ini.requirements, ini.static) == ("a/b.txt", "web/static/")


def test_unknown_keys_are_warnings():
    ini = parse_app_ini_text(MINIMAL + "\n# typo below\nprocesess = 3\nProcesses = 3\n")
    assert ini.warnings == ("app.ini line 6: unknown key 'procesess' in [production] (ignored)",)
    assert ini.processes == 3  # keys are not case-sensitive


def test_duplicate_key_and_section():
    e = error("[production]\napp_name = a\nrunner = a:b\nRUNNER = c:d\n")
    assert str(e) == "app.ini line 4: duplicate key 'runner' in [production]"
    assert (e.line, e.key) == (4, "runner")
    assert str(error(MINIMAL + "[cron]\n[production]\n")) == "app.ini line 5: duplicate section [production]"


def test_not_an_ini_file():
    assert str(error("app_name = blog\n[production]\n")) == (
        "app.ini line 1: 'app_name = blog' comes before any [section] header (start with [production])")
    assert str(error(MINIMAL + "just some words\n")) == (
        "app.ini line 4: cannot read 'just some words' (expected key = value)")


def test_windows_line_endings_and_a_bom():
    assert parse_app_ini_text("\ufeff" + MINIMAL.replace("\n", "\r\n")).runner == "app:application"


def test_a_default_section_is_not_copied_into_production():
    ini = parse_app_ini_text("[DEFAULT]\nprocesses = 9\n" + MINIMAL)
    assert ini.processes == 2
    assert ini.extra_sections == {"DEFAULT": {"processes": "9"}}


def test_values_must_be_single_lines_without_control_characters():
    assert str(error(with_key("health_check = /a\n  /b"))) == "app.ini line 4: health_check must be on one line"
    assert str(error(with_key("runner2 = x\nhealth_check = /a\x1b[2J"))) == (
        "app.ini line 5: health_check '/a\\x1b[2J' contains a control character")
    assert str(error(MINIMAL + "threads = 1\0")) == "app.ini line 4: contains a NUL character"


def test_services_and_keep_backups():
    ini = parse_app_ini_text(with_key("service.files =\nservice.postgresql =\nkeep_backups = 30"))
    assert ini.services == ("postgresql", "files")  # the order backups hold them in
    assert ini.keep_backups == 30
    assert parse_app_ini_text(MINIMAL).services == () and parse_app_ini_text(MINIMAL).keep_backups == 10


@pytest.mark.parametrize("line, expected", [
    ("service.mysql =", "app.ini line 4: unknown service 'mysql': toppcloud provides service.postgresql and "
                        "service.files"),
    ("service.postgresql = big", "app.ini line 4: service.postgresql takes no value (write `service.postgresql =`), "
                                 "got 'big'"),
    ("keep_backups = 0", "app.ini line 4: keep_backups '0' is out of range: use 1 to 1000"),
])
def test_bad_services(line, expected):
    e = error(with_key(line))
    assert str(e) == expected and e.line == 4


def test_writable_static_files_are_names_in_file_order():
    ini = parse_app_ini_text(with_key("writable_static_files = /docs  /uploads/ /0-day_x"))
    assert ini.writable_static_files == ("docs", "uploads", "0-day_x")
    assert parse_app_ini_text(MINIMAL).writable_static_files == ()
    assert parse_app_ini_text(with_key("writable_static_files =")).writable_static_files == ()
    assert writable_env_name("0-day_x") == "CONFIG_WRITABLE_0_DAY_X"


@pytest.mark.parametrize("value, why", [
    ("docs", "'docs' is invalid: each directory is a URL path of one segment starting with '/'"),
    ("/docs/api", "'/docs/api' is invalid: only one path segment is allowed (e.g. /docs), not a nested path"),
    ("/docs/api/", "'/docs/api/' is invalid: only one path segment is allowed"),
    ("/..", "'/..' is invalid: '..' is not allowed"),
    ("/docs/../x", "'/docs/../x' is invalid: '..' is not allowed"),
    ("/", "'/' is invalid: name a directory under the app's location, not the location itself"),
    ("//", "'//' is invalid: name a directory under the app's location"),
    ("/.", "'/.' is invalid: name a directory under the app's location"),
    ("/static", "'/static' is invalid: /static/ is where the release's static files are served"),
    ("/docs /uploads /docs", "'/docs' is invalid: it is listed twice"),
    ("/my-docs /my_docs", "'/my_docs' is invalid: it and '/my-docs' would both be given as $CONFIG_WRITABLE_MY_DOCS"),
    ("/Docs", "'/Docs' is invalid: use 1 to 40 characters a-z, 0-9, '_' and '-' after the '/'"),
    ("/-docs", "'/-docs' is invalid: use 1 to 40 characters"),
    ("/_docs", "'/_docs' is invalid: use 1 to 40 characters"),
    ("/do.cs", "'/do.cs' is invalid: use 1 to 40 characters"),
    ("/d%20s", "'/d%20s' is invalid: use 1 to 40 characters"),
    ("/" + "a" * 41, f"'/{'a' * 41}' is invalid: use 1 to 40 characters"),
    ("/docs;rm", "'/docs;rm' is invalid: use 1 to 40 characters"),
    ("/d\u00f6cs", "'/d\u00f6cs' is invalid: use 1 to 40 characters"),
    ("https://x/docs", "'https://x/docs' is invalid: each directory is a URL path"),
])
def test_bad_writable_static_files_name_the_line_and_the_word(value, why):
    e = error(with_key(f"threads = 2\nwritable_static_files = {value}"))
    assert str(e).startswith(f"app.ini line 5: writable_static_files: {why}"), str(e)
    assert (e.line, e.key) == (5, "writable_static_files")


def test_writable_static_files_are_one_line():
    e = error(with_key("writable_static_files = /docs\n    /uploads"))
    assert str(e) == "app.ini line 4: writable_static_files must be on one line" and e.line == 4


def cron(*lines):
    """MINIMAL plus a [cron] section: its first line is line 5."""
    return MINIMAL + "[cron]\n" + "".join(line + "\n" for line in lines)


def test_cron_entries_are_read_in_file_order():
    ini = parse_app_ini_text(cron(
        "cleanup = */5 * * * * /cron/cleanup",
        "report = 0 3 * * 1-5 script: python report.py --all",
        "Weekly = @weekly /cron/weekly?full=1",
        "report.timeout = 120",
    ))
    assert ini.cron == (
        CronEntry("cleanup", "*/5 * * * *", ("*/5", "*", "*", "*", "*"), "/cron/cleanup", 600),
        CronEntry("report", "0 3 * * 1-5", ("0", "3", "*", "*", "1-5"), "script: python report.py --all", 120),
        CronEntry("weekly", "@weekly", ("0", "0", "*", "*", "0"), "/cron/weekly?full=1", 600),
    )
    cleanup, report, weekly = ini.cron
    assert (cleanup.is_script, cleanup.argv) == (False, None)
    assert (report.is_script, report.argv) == (True, ["python", "report.py", "--all"])
    assert ini.extra_sections == {}  # [cron] is no longer left to others
    assert ini.key_lines[("cron", "report.timeout")] == 8


def test_no_or_an_empty_cron_section():
    assert parse_app_ini_text(MINIMAL).cron == ()
    ini = parse_app_ini_text(cron("# nothing yet"))
    assert (ini.cron, ini.extra_sections) == ((), {})


@pytest.mark.parametrize("value, schedule, fields", [
    ("0 9 * jan-MAR,dec MON-fri", "0 9 * jan-MAR,dec MON-fri", ("0", "9", "*", "jan-MAR,dec", "MON-fri")),
    ("1-10/3,30 */2 1,15 */3 *", "1-10/3,30 */2 1,15 */3 *", ("1-10/3,30", "*/2", "1,15", "*/3", "*")),
    ("0,30 8-18/2 * * sat,sun", "0,30 8-18/2 * * sat,sun", ("0,30", "8-18/2", "*", "*", "sat,sun")),
    ("00 23 31 12 *", "00 23 31 12 *", ("00", "23", "31", "12", "*")),
    ("59 23 * * 0-6", "59 23 * * 0-6", ("59", "23", "*", "*", "0-6")),
    ("0 0 29 2 *", "0 0 29 2 *", ("0", "0", "29", "2", "*")),  # leap years
    ("0 0 */2 * mon", "0 0 */2 * mon", ("0", "0", "*/2", "*", "mon")),  # '*': both days must match, as in cron
    ("  0\t3   *  * * ", "0 3 * * *", ("0", "3", "*", "*", "*")),
    ("@yearly", "@yearly", ("0", "0", "1", "1", "*")),
    ("@annually", "@annually", ("0", "0", "1", "1", "*")),
    ("@monthly", "@monthly", ("0", "0", "1", "*", "*")),
    ("@weekly", "@weekly", ("0", "0", "*", "*", "0")),
    ("@daily", "@daily", ("0", "0", "*", "*", "*")),
    ("@midnight", "@midnight", ("0", "0", "*", "*", "*")),
    ("@hourly", "@hourly", ("0", "*", "*", "*", "*")),
])
def test_good_cron_schedules(value, schedule, fields):
    (entry,) = parse_app_ini_text(cron(f"job = {value} /cron/job")).cron
    assert (entry.schedule, entry.fields, entry.target) == (schedule, fields, "/cron/job")
    minute, hour, day_of_month, month_of_year, day_of_week = entry.fields
    crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
            day_of_week=day_of_week)  # celery takes the fields as they are


def test_cron_fields_mean_what_they_say_to_celery():
    (entry,) = parse_app_ini_text(cron("job = 5 9 * jan-mar,dec MON-fri /x")).cron
    schedule = crontab(**dict(zip(("minute", "hour", "day_of_month", "month_of_year", "day_of_week"),
                                  entry.fields)))
    assert (schedule.minute, schedule.hour) == ({5}, {9})
    assert schedule.month_of_year == {1, 2, 3, 12}
    assert schedule.day_of_week == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("fields", [
    "*/5 * * * *", "0,30 9-17/2 * * 1-5", "5 9 * jan-mar,dec MON-fri", "0 0 1-31/10 */3 *", "59 23 31 12 sun,sat",
    "1-59/7 */7 2,4,6 feb-apr/2 *",
])
def test_the_values_a_field_stands_for_are_celerys(fields):
    from nodeops import appini

    ours = [appini._check_cron_field("x", text, *spec) for text, spec in zip(fields.split(), appini._CRON_FIELDS)]
    c = crontab(**dict(zip(("minute", "hour", "day_of_month", "month_of_year", "day_of_week"), fields.split())))
    assert ours == [c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week]


@pytest.mark.parametrize("target, argv", [
    ("script: ./bin/run --all 'a b'", ["./bin/run", "--all", "a b"]),
    ("script:python x.py", ["python", "x.py"]),
    ("/cron/x?full=1&y=2", None),
])
def test_cron_targets(target, argv):
    (entry,) = parse_app_ini_text(cron(f"job-2_b = 0 3 * * * {target}")).cron
    assert (entry.name, entry.target, entry.argv) == ("job-2_b", target, argv)


FIELDS_HINT = "5 fields (minute hour day-of-month month day-of-week)"
TARGET_HINT = "a URL path (e.g. /cron/x) or 'script: <command>'"
PATH_HINT = "must be a URL path starting with '/' (e.g. /cron/x), without spaces, '..' or '://'"


@pytest.mark.parametrize("line, why", [
    # names
    ("bad name = * * * * * /x", "cron entry name 'bad name' is invalid: use 1 to 40 characters a-z, 0-9, "
                                "'_' and '-', starting with a letter or digit"),
    ("_x = * * * * * /x", "cron entry name '_x' is invalid: use 1 to 40 characters a-z, 0-9, "
                          "'_' and '-', starting with a letter or digit"),
    ("a" * 41 + " = * * * * * /x", f"cron entry name {'a' * 41!r} is invalid: use 1 to 40 characters a-z, 0-9, "
                                   "'_' and '-', starting with a letter or digit"),
    # macros
    ("x = @reboot /x", "cron entry 'x' schedule '@reboot' is not supported: toppcloud runs cron entries "
                       "on a schedule only, there is no boot event (for work at each deploy, use update_fetch)"),
    ("x = @fortnightly /x", f"cron entry 'x' schedule '@fortnightly' is unknown: use {FIELDS_HINT} or one of "
                            "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"),
    # the number of fields
    ("x = 0 */5 * * * * /x", f"cron entry 'x' schedule '0 */5 * * * *' has 6 fields: a schedule has "
                             f"{FIELDS_HINT}, without seconds or a year"),
    ("x = 0 0 3 * * * 2030 script: y", f"cron entry 'x' schedule '0 0 3 * * * 2030' has 7 fields: a schedule "
                                       f"has {FIELDS_HINT}, without seconds or a year"),
    ("x = 0 3 * * /x", f"cron entry 'x' schedule '0 3 * *' has 4 fields: a schedule has {FIELDS_HINT} "
                       "or is a macro such as @daily"),
    ("x = 0 script: y", f"cron entry 'x' schedule '0' has 1 field: a schedule has {FIELDS_HINT} "
                        "or is a macro such as @daily"),
    ("x = /x", f"cron entry 'x' needs a schedule before its target '/x': {FIELDS_HINT} or a macro such as @daily"),
    ("x =", "cron entry 'x' is empty: write x = SCHEDULE TARGET (e.g. x = 0 3 * * * /cron/x)"),
    # each field against its range
    ("x = 61 * * * * /x", "cron entry 'x' minute '61' is invalid: 61 is out of range 0-59"),
    ("x = * 24 * * * /x", "cron entry 'x' hour '24' is invalid: 24 is out of range 0-23"),
    ("x = * * 0 * * /x", "cron entry 'x' day-of-month '0' is invalid: 0 is out of range 1-31"),
    ("x = * * * 13 * /x", "cron entry 'x' month '13' is invalid: 13 is out of range 1-12"),
    ("x = * * * * 8 /x", "cron entry 'x' day-of-week '8' is invalid: 8 is out of range 0-6"),
    ("x = 0-60 * * * * /x", "cron entry 'x' minute '0-60' is invalid: 60 is out of range 0-59"),
    # the field grammar
    ("x = */0 * * * * /x", "cron entry 'x' minute '*/0' is invalid: a step must be at least 1"),
    ("x = 1- * * * * /x", "cron entry 'x' minute '1-' is invalid: '1-' is not *, a number or a range (a-b), "
                          "with an optional /step"),
    ("x = 1,,2 * * * * /x", "cron entry 'x' minute '1,,2' is invalid: a list has an empty item"),
    ("x = , * * * * /x", "cron entry 'x' minute ',' is invalid: a list has an empty item"),
    ("x = * * * * mon-xyz /x", "cron entry 'x' day-of-week 'mon-xyz' is invalid: 'xyz' is not a day-of-week "
                               "name: use sun, mon, tue, wed, thu, fri, sat"),
    ("x = 0 0 ? * mon /x", "cron entry 'x' day-of-month '?' is invalid: '?' is not *, a number or a range (a-b), "
                           "with an optional /step"),
    # what celery accepts but cron does not, or reads differently
    ("x = * * * * 7 /x", "cron entry 'x' day-of-week '7' is invalid: 7 is out of range 0-6 "
                         "(for Sunday write 0 or sun)"),
    ("x = mon * * * * /x", "cron entry 'x' minute 'mon' is invalid: 'mon' is not a number "
                           "(names are allowed only in month and day-of-week)"),
    ("x = * * * mon * /x", "cron entry 'x' month 'mon' is invalid: 'mon' is not a month name: "
                           "use jan, feb, mar, apr, may, jun, jul, aug, sep, oct, nov, dec"),
    ("x = * * * * jan /x", "cron entry 'x' day-of-week 'jan' is invalid: 'jan' is not a day-of-week name: "
                           "use sun, mon, tue, wed, thu, fri, sat"),
    ("x = * * * * monday /x", "cron entry 'x' day-of-week 'monday' is invalid: 'monday' is not a day-of-week "
                              "name: use sun, mon, tue, wed, thu, fri, sat"),
    ("x = +5 * * * * /x", "cron entry 'x' minute '+5' is invalid: '+5' is not *, a number or a range (a-b), "
                          "with an optional /step"),
    ("x = \u0663 * * * * /x", "cron entry 'x' minute '\u0663' is invalid: '\u0663' is not *, a number or a range "
                              "(a-b), with an optional /step"),  # a non-ASCII digit
    ("x = 1-5-7 * * * * /x", "cron entry 'x' minute '1-5-7' is invalid: '1-5-7' is not *, a number or a range "
                             "(a-b), with an optional /step"),
    ("x = */5/2 * * * * /x", "cron entry 'x' minute '*/5/2' is invalid: '*/5/2' is not *, a number or a range "
                             "(a-b), with an optional /step"),
    ("x = 5-1 * * * * /x", "cron entry 'x' minute '5-1' is invalid: the range 5-1 runs backwards "
                           "(cron ranges do not wrap around)"),
    ("x = * * * * fri-mon /x", "cron entry 'x' day-of-week 'fri-mon' is invalid: the range fri-mon runs "
                               "backwards (cron ranges do not wrap around)"),
    ("x = 5/2 * * * * /x", "cron entry 'x' minute '5/2' is invalid: a step needs * or a range before it "
                           "(e.g. 5-59/2)"),
    ("x = 0 0 1-7 * mon /x", "cron entry 'x' schedule '0 0 1-7 * mon' restricts both day-of-month and "
                             "day-of-week: cron would run it on days matching either, toppcloud runs it only "
                             "on days matching both; set one of them to *"),
    ("x = 0 0 30 2 * /x", "cron entry 'x' schedule '0 0 30 2 *' never runs: day-of-month 30 never occurs "
                          "in month 2"),
    ("x = 0 0 31 apr,jun * /x", "cron entry 'x' schedule '0 0 31 apr,jun *' never runs: day-of-month 31 "
                                "never occurs in month apr,jun"),
    ("x = 0 0 * " + ",".join(["jan"] * 17) + " * /x",
     "cron entry 'x' month '" + ",".join(["jan"] * 17) + "' is invalid: it is longer than 64 characters"),
    # targets
    ("x = 0 3 * * *", f"cron entry 'x' needs a target after its schedule '0 3 * * *': {TARGET_HINT}"),
    ("x = @daily", f"cron entry 'x' needs a target after its schedule '@daily': {TARGET_HINT}"),
    ("x = 0 3 * * * cron/x", f"cron entry 'x' target 'cron/x' must be {TARGET_HINT}"),
    ("x = 0 3 * * * python x.py", f"cron entry 'x' target 'python x.py' must be {TARGET_HINT}"),
    ("x = 0 3 * * * /a/../b", f"cron entry 'x' target '/a/../b' {PATH_HINT}"),
    ("x = 0 3 * * * /cron/a b", f"cron entry 'x' target '/cron/a b' {PATH_HINT}"),
    ("x = 0 3 * * * //evil.example/", f"cron entry 'x' target '//evil.example/' {PATH_HINT}"),
    ("x = 0 3 * * * script:", "cron entry 'x' 'script:' needs a command after it "
                              "(e.g. script: python manage.py clearsessions)"),
    ("x = 0 3 * * * script: -x", "cron entry 'x' command '-x' must start with a program to run, "
                                 "not an option or VAR=value"),
    ("x = 0 3 * * * script: A=1 run", "cron entry 'x' command 'A=1 run' must start with a program to run, "
                                      "not an option or VAR=value"),
    ("x = 0 3 * * * script: python 'x", "cron entry 'x' command \"python 'x\" cannot be split into arguments: "
                                        "no closing quotation"),
    ("x = 0 3 * * * /a\x1b[2J", "cron entry 'x' value '0 3 * * * /a\\x1b[2J' contains a control character"),
])
def test_bad_cron_entries(line, why):
    e = error(cron(line))
    assert str(e) == f"app.ini line 5: {why}"
    assert (e.path, e.line, e.key) == ("app.ini", 5, line.split("=")[0].strip().lower())


@pytest.mark.parametrize("value, why", [
    ("0", "cron entry 'x' timeout '0' is out of range: use 1 to 86400"),
    ("86401", "cron entry 'x' timeout '86401' is out of range: use 1 to 86400"),
    ("abc", "cron entry 'x' timeout 'abc' is not a whole number"),
    ("60s", "cron entry 'x' timeout '60s' is not a whole number"),
])
def test_bad_cron_timeouts(value, why):
    e = error(cron("x = 0 3 * * * /x", f"x.timeout = {value}"))
    assert str(e) == f"app.ini line 6: {why}"
    assert (e.line, e.key) == (6, "x.timeout")


def test_cron_timeouts():
    ini = parse_app_ini_text(cron("x.timeout = 86400", "x = 0 3 * * * /x", "y = @daily /y", "y.timeout =",
                                  "z = @daily /z", "z.timeout = 1"))
    assert [(entry.name, entry.timeout) for entry in ini.cron] == [("x", 86400), ("y", 600), ("z", 1)]


def test_cron_options_need_an_entry_and_a_known_name():
    e = error(cron("report = 0 3 * * * /x", "reprot.timeout = 60"))
    assert str(e) == ("app.ini line 6: cron entry 'reprot' has a timeout but no schedule: [cron] has no line "
                      "'reprot = SCHEDULE TARGET' (its entries: report)")
    assert (e.line, e.key) == (6, "reprot.timeout")
    assert str(error(cron("x.timeout = 60"))) == (
        "app.ini line 5: cron entry 'x' has a timeout but no schedule: [cron] has no line 'x = SCHEDULE TARGET'")
    e = error(cron("x = 0 3 * * * /x", "x.retries = 3"))
    assert str(e) == "app.ini line 6: cron entry 'x' has an unknown option 'retries' (known options: x.timeout)"
    assert (e.line, e.key) == (6, "x.retries")
    assert str(error(cron("Bad!.timeout = 3"))) == (
        "app.ini line 5: cron entry name 'bad!' is invalid: use 1 to 40 characters a-z, 0-9, "
        "'_' and '-', starting with a letter or digit")


def test_cron_entries_are_one_line_each_and_unique():
    e = error(cron("x = 0 3 * * *", "    /cron/x", "y = @daily /y"))
    assert str(e) == "app.ini line 5: cron entry 'x' must be on one line (one entry per line)"
    assert (e.line, e.key) == (5, "x")
    assert str(error(cron("x = @daily /x", "x.timeout = 5", "  0"))) == (
        "app.ini line 6: cron entry 'x' timeout must be on one line")
    e = error(cron("x = @daily /x", "X = @hourly /y"))
    assert str(e) == "app.ini line 6: duplicate key 'x' in [cron]"
    assert (e.line, e.key) == (6, "x")


def test_errors_in_cron_name_the_file(tmp_path):
    (tmp_path / "app.ini").write_text(cron("x = 0 3 * * * /x", "y = 60 * * * * /y"))
    with pytest.raises(AppIniError) as e:
        parse_app_ini(tmp_path / "app.ini")
    assert str(e.value) == f"{tmp_path}/app.ini line 6: cron entry 'y' minute '60' is invalid: 60 is out of range 0-59"


def test_checking_a_cron_section_imports_neither_django_nor_celery():
    # nodeops is plain Python; kombu, under celery, imports the django package when it is installed.
    code = ("import sys, nodeops.appini as a; a.parse_app_ini_text(" + repr(cron("x = */5 1-5 * jan mon-fri /x")) + "); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'celery', 'kombu'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "[]\n"


@pytest.mark.parametrize("text, words", [
    ("61 3 * * *", "backups: minute '61' is invalid: 61 is out of range 0-59"),
    ("@fortnightly", "backups: schedule '@fortnightly' is unknown"),
    ("0 3 * *", "backups: schedule '0 3 * *' has 4 fields"),
    ("0 0 1 * mon", "restricts both day-of-month and day-of-week"),
])
def test_schedules_given_outside_app_ini_are_checked_the_same_way(text, words):
    from nodeops.appini import parse_schedule

    assert parse_schedule("0 3 * * 1-5") == ("0 3 * * 1-5", ("0", "3", "*", "*", "1-5"))
    assert parse_schedule("@hourly") == ("@hourly", ("0", "*", "*", "*", "*"))
    with pytest.raises(ValueError) as e:
        parse_schedule(text, what="backups:")
    assert words in str(e.value)
