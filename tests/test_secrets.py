"""Secrets at rest, the config command, required config (database only, no hosts)."""

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse

from jobs.steps.environment import ConfigMissing, check_required_config, config_values, release_environment
from jobs.engine.redact import redact_text
from nodeops.appini import AppIniError, parse_app_ini_text
from nodeops.layout import NodeLayout
from toppcloud_site.records.models import App, ConfigValue, Node, Release, Service
from toppcloud_site.records import secrets as secrets_module
from toppcloud_site.records.secrets import SecretUnreadable

pytestmark = pytest.mark.django_db
CANARY = "canary-5ecret-Ω-" + "x" * 20


def raw(table, column, pk):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def run(*args, stdin=None, monkeypatch=None):
    out = io.StringIO()
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    call_command("config", *args, stdout=out)
    return out.getvalue()


def session_free(listing):
    """A config listing without the session's own global canary (tests/conftest.py canary_secret)."""
    return "".join(line for line in listing.splitlines(keepends=True) if not line.startswith("CANARY_SECRET="))


@pytest.fixture
def app():
    return App.objects.create(name="vault")


def test_secrets_are_encrypted_in_the_database_and_plain_in_python(app):
    value = ConfigValue(scope="app", app=app, key="API_KEY")
    value.set_value(CANARY, secret=True)
    value.full_clean()
    value.save()
    stored = raw("records_configvalue", "secret_value", value.pk)
    assert CANARY not in stored and stored.startswith("gAAAA")  # a Fernet token
    assert raw("records_configvalue", "value", value.pk) == ""
    assert ConfigValue.objects.get(pk=value.pk).plain == CANARY
    service = Service.objects.create(app=app, kind="postgresql", password=CANARY,
                                     node=Node.objects.create(name="n1", address="127.0.0.9", transport="local"))
    assert CANARY not in raw("records_service", "password", service.pk)
    assert Service.objects.get(pk=service.pk).password == CANARY


def test_a_key_is_rotated_without_losing_a_secret(app, settings):
    # Secrets other tests stored (the session's canary) are under the session's key: it stays in each list.
    session = list(settings.TOPPCLOUD_SECRET_KEYS or secrets_module._key_file())
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.TOPPCLOUD_SECRET_KEYS = [old, *session]
    value = ConfigValue(scope="app", app=app, key="API_KEY")
    value.set_value(CANARY, secret=True)
    value.save()
    settings.TOPPCLOUD_SECRET_KEYS = [new, old, *session]  # the new key first, the old one still decrypts
    out = io.StringIO()
    call_command("secrets", "rotate", stdout=out)
    stored = ConfigValue.objects.exclude(secret_value="").count()
    assert f"{stored} config values" in out.getvalue()
    assert Fernet(new).decrypt(raw("records_configvalue", "secret_value", value.pk).encode()).decode() == CANARY
    settings.TOPPCLOUD_SECRET_KEYS = [new]  # the old keys dropped: everything was re-encrypted
    assert ConfigValue.objects.get(pk=value.pk).plain == CANARY
    assert all(v.plain for v in ConfigValue.objects.filter(secret=True))
    settings.TOPPCLOUD_SECRET_KEYS = [Fernet.generate_key().decode()]  # a wrong key: a clear error
    with pytest.raises(SecretUnreadable, match="cannot be decrypted with any key"):
        ConfigValue.objects.get(pk=value.pk)
    with pytest.raises(CommandError, match="nothing was re-encrypted"):
        call_command("secrets", "rotate", stdout=io.StringIO())


def test_the_config_command_sets_lists_gets_and_unsets(app, monkeypatch):
    assert "set at global scope" in run("set", "GREETING", "hello", "--global")
    assert "(secret)" in run("set", "API_KEY", "--app", "vault", "--secret", stdin=CANARY + "\n",
                             monkeypatch=monkeypatch)
    run("set", "GREETING", "hi vault", "--app", "vault")
    listing = session_free(run("list", "--app", "vault"))
    assert listing == "API_KEY=(secret)  (app vault)\nGREETING=hi vault  (app vault)\n" and CANARY not in listing
    assert session_free(run("list", "--global")) == "GREETING=hello\n"
    with pytest.raises(CommandError, match="API_KEY is a secret: add --reveal"):
        run("get", "API_KEY", "--app", "vault")
    assert run("get", "API_KEY", "--app", "vault", "--reveal") == CANARY + "\n"
    assert {k: v for k, v in config_values(app).items() if k != "CANARY_SECRET"} == {"API_KEY": CANARY, "GREETING": "hi vault"}
    assert redact_text(f"the key is {CANARY}") == "the key is ********"  # config_values registered it
    run("unset", "GREETING", "--app", "vault")
    assert config_values(app)["GREETING"] == "hello"
    with pytest.raises(CommandError, match="PATH was not set: .*set by toppcloud itself"):
        run("set", "PATH", "/x", "--global")
    with pytest.raises(CommandError, match="say where"):
        run("set", "X", "1")
    with pytest.raises(CommandError, match="there is no app 'nope'"):
        run("list", "--app", "nope")
    with pytest.raises(CommandError, match="GREETING is not set at app vault"):
        run("unset", "GREETING", "--app", "vault")


def test_the_admin_never_shows_a_secret_and_keeps_it_when_the_field_is_left_empty(admin_client, app):
    url = reverse("admin:records_configvalue_add")
    admin_client.post(url, {"scope": "app", "app": app.pk, "key": "API_KEY", "secret": "on", "new_value": CANARY})
    value = ConfigValue.objects.get(key="API_KEY")
    assert value.secret and value.plain == CANARY
    change = reverse("admin:records_configvalue_change", args=[value.pk])
    for page in (admin_client.get(reverse("admin:records_configvalue_changelist")), admin_client.get(change)):
        assert CANARY not in page.content.decode()
    assert "(secret, set)" in admin_client.get(reverse("admin:records_configvalue_changelist")).content.decode()
    admin_client.post(change, {"scope": "app", "app": app.pk, "key": "API_KEY", "secret": "on", "new_value": ""})
    assert ConfigValue.objects.get(pk=value.pk).plain == CANARY


def test_required_config_and_defaults(app):
    ini = parse_app_ini_text("[production]\napp_name = vault\nrunner = app:application\n"
                             "config.required = API_KEY SENTRY_DSN\nconfig.default.sentry_dsn = https://none\n"
                             "config.default.PAGE_SIZE = 20\n")
    assert ini.config_required == ("API_KEY", "SENTRY_DSN")
    assert ini.config_defaults == (("PAGE_SIZE", "20"), ("SENTRY_DSN", "https://none"))
    release = Release.objects.create(app=app, name="r1", artifact_sha256="3" * 64, app_ini={
        "config_required": list(ini.config_required), "config_defaults": dict(ini.config_defaults)})
    with pytest.raises(ConfigMissing, match="vault r1 needs config that is not set: API_KEY;"):
        check_required_config(app, release)
    ConfigValue.objects.create(scope="global", key="API_KEY", value="k")
    ConfigValue.objects.create(scope="global", key="PAGE_SIZE", value="50")
    check_required_config(app, release)
    node = Node.objects.create(name="n2", address="127.0.0.8", transport="local", root="/srv/tc")
    env = release_environment(app, release, node, NodeLayout("/srv/tc"), "/srv/tc/v", {})
    assert (env["API_KEY"], env["SENTRY_DSN"], env["PAGE_SIZE"]) == ("k", "https://none", "50")


@pytest.mark.parametrize("line, words", [
    ("config.required = api_key", "is not a config name"),
    ("config.required = A A", "names a key twice"),
    ("config.required = TOPPCLOUD_X", "set by toppcloud itself"),
    ("config.default.PATH = /x", "set by toppcloud itself"),
    ("config.defaults.X = 1", "unknown key 'config.defaults.x'"),
    ("config.required = 1A", "is not a config name"),
])
def test_bad_config_lines_in_app_ini(line, words):
    with pytest.raises(AppIniError, match="line 4: ") as e:
        parse_app_ini_text(f"[production]\napp_name = vault\nrunner = app:application\n{line}\n")
    assert words in str(e.value)


def test_every_change_of_config_is_audited_with_secrets_masked(app, monkeypatch):
    import getpass

    from toppcloud_site.records.models import AuditEntry

    me = f"user:{getpass.getuser()}"
    since = AuditEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0  # other tests' entries
    run("set", "GREETING", "hello", "--app", "vault")
    run("set", "GREETING", "hi", "--app", "vault")
    run("set", "API_KEY", "--app", "vault", "--secret", stdin=CANARY, monkeypatch=monkeypatch)
    run("set", "API_KEY", "--app", "vault", "--secret", stdin=CANARY + "2", monkeypatch=monkeypatch)
    run("get", "API_KEY", "--app", "vault", "--reveal")
    run("unset", "GREETING", "--app", "vault")
    entries = list(AuditEntry.objects.filter(model="configvalue", id__gt=since).order_by("id"))
    assert [(e.actor, e.action, e.object_repr) for e in entries] == [
        (me, "create", "GREETING (app vault)"), (me, "update", "GREETING (app vault)"),
        (me, "create", "API_KEY (app vault)"), (me, "update", "API_KEY (app vault)"),
        (me, "reveal", "API_KEY (app vault)"), (me, "delete", "GREETING (app vault)")]
    assert entries[1].changes == {"value": ["hello", "hi"]}
    assert entries[3].changes == {"secret_value": ["********", "******** (changed)"]}
    assert not AuditEntry.objects.filter(changes__icontains=CANARY).exists()
    assert entries[5].changes["value"] == ["hi", None]


def test_admin_changes_and_reveals_are_audited_under_the_users_name(admin_client, admin_user, app):
    from toppcloud_site.records.models import AuditEntry

    from toppcloud_site.records.models import ServerGroup

    since = AuditEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0  # other tests' entries
    group = ServerGroup.objects.create(name="g-audit")  # made outside any request or command: "system"
    admin_client.post(reverse("admin:records_servergroup_change", args=[group.pk]),
                      {"name": "g-audit", "description": "the vault's group", "database_node": ""})
    made, changed = AuditEntry.objects.filter(model="servergroup", id__gt=since).order_by("id")
    assert (made.actor, made.action) == ("system", "create")
    assert changed.actor == f"user:{admin_user.username}" and changed.changes == {
        "description": ["", "the vault's group"]}
    value = ConfigValue(scope="app", app=app, key="API_KEY")
    value.set_value(CANARY, secret=True)
    value.save()
    page = admin_client.post(reverse("admin:records_configvalue_changelist"),
                             {"action": "reveal", "_selected_action": [value.pk]}).content.decode()
    assert CANARY in page
    reveal = AuditEntry.objects.get(action="reveal", id__gt=since)
    assert (reveal.actor, reveal.object_repr) == (f"user:{admin_user.username}", "API_KEY (app vault)")
    assert "audit" in admin_client.get(reverse("admin:records_auditentry_changelist")).content.decode().lower()


def test_the_database_refuses_to_edit_or_delete_audit_entries(app):
    from django.db import DatabaseError, transaction

    from toppcloud_site.records.models import AuditEntry

    run("set", "GREETING", "hello", "--app", "vault")
    entry = AuditEntry.objects.filter(model="configvalue").order_by("-id").first()
    for attempt in (lambda: AuditEntry.objects.filter(pk=entry.pk).update(actor="someone else"),
                    lambda: AuditEntry.objects.filter(pk=entry.pk).delete()):
        with pytest.raises(DatabaseError, match="records_auditentry is append-only"):
            with transaction.atomic():
                attempt()
    assert AuditEntry.objects.get(pk=entry.pk).actor == entry.actor
