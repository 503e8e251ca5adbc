import pytest

from nodeops.appini import AppIni, AppIniError, parse_app_ini, parse_app_ini_text

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
        warnings=(),
        extra_sections={"cron": {"nightly": "0 3 * * * /cleanup"}, "services": {"postgresql": ""}},
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
