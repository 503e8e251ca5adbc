"""The one environment of a release: config precedence, reserved names, the task token (database only)."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection

from jobs.steps.environment import config_values, release_environment, task_token, task_token_matches
from jobs.engine.redact import redact_text
from nodeops.layout import NodeLayout
from toppcloud_site.records.models import App, ConfigValue, Node, Release, ServerGroup

pytestmark = pytest.mark.django_db


def own(values):
    """Config values without the session's global canary (tests/conftest.py canary_secret)."""
    return {k: v for k, v in values.items() if k != "CANARY_SECRET"}


@pytest.fixture
def app():
    group = ServerGroup.objects.create(name="g1")
    return App.objects.create(name="envapp", group=group)


def test_an_apps_value_wins_over_its_groups_which_wins_over_the_global_one(app):
    ConfigValue.objects.create(scope="global", key="A", value="global")
    ConfigValue.objects.create(scope="global", key="B", value="global")
    ConfigValue.objects.create(scope="global", key="C", value="global")
    ConfigValue.objects.create(scope="group", group=app.group, key="B", value="group")
    ConfigValue.objects.create(scope="group", group=app.group, key="C", value="group")
    ConfigValue.objects.create(scope="app", app=app, key="C", value="app")
    other = App.objects.create(name="other")
    ConfigValue.objects.create(scope="app", app=other, key="A", value="not mine")
    assert own(config_values(app)) == {"A": "global", "B": "group", "C": "app"}
    assert own(config_values(other)) == {"A": "not mine", "B": "global", "C": "global"}


@pytest.mark.parametrize("key, words", [
    ("TOPPCLOUD_APP_NAME", "set by toppcloud itself"),
    ("CONFIG_PG_PASSWORD", "set by toppcloud itself"),
    ("PATH", "set by toppcloud itself"),
    ("1ABC", "not an environment variable name"),
    ("A-B", "not an environment variable name"),
    ("", "cannot be blank"),
])
def test_names_the_platform_sets_or_the_shell_cannot_hold_are_refused(app, key, words):
    with pytest.raises(ValidationError, match=words):
        ConfigValue(scope="app", app=app, key=key, value="x").full_clean()


def test_a_value_names_its_scopes_target_and_nothing_else(app):
    with pytest.raises(ValidationError, match="a app value names an app and no group"):
        ConfigValue(scope="app", group=app.group, key="X", value="1").full_clean()
    with pytest.raises(ValidationError, match="NUL"):
        ConfigValue(scope="global", key="X", value="a\0b").full_clean()
    with pytest.raises(IntegrityError):  # the database refuses it too
        ConfigValue.objects.create(scope="global", app=app, key="X", value="1")


def test_the_release_environment_has_the_platforms_names_and_masks_the_token(app, settings):
    settings.TOPPCLOUD_DEBUG_EMAIL = "oops@example.test"
    settings.TOPPCLOUD_API_URL = "https://control.example.test/"
    ConfigValue.objects.create(scope="app", app=app, key="GREETING", value="hi")
    node = Node.objects.create(name="n1", address="127.0.0.9", transport="local", root="/srv/tc")
    release = Release.objects.create(app=app, name="r1", artifact_sha256="0" * 64,
                                     app_ini={"location_path": "/blog/"})
    env = release_environment(app, release, node, NodeLayout("/srv/tc"), "/srv/tc/apps/envapp/venvs/v1",
                              {"CONFIG_FILES": "/srv/tc/apps/envapp/files"})
    assert env["GREETING"] == "hi" and env["CONFIG_FILES"] == "/srv/tc/apps/envapp/files"
    assert env["TOPPCLOUD_TASKS_URL"] == "https://control.example.test/api/apps/envapp/tasks"
    assert env["TOPPCLOUD_DEBUG_EMAIL"] == "oops@example.test" and env["STATIC_URL"] == "/blog/static/"
    assert env["TOPPCLOUD_APP_DIR"] == "/srv/tc/apps/envapp/releases/r1" and env["HOME"] == "/srv/tc/apps/envapp/home"
    assert env["PATH"].startswith("/srv/tc/apps/envapp/venvs/v1/bin:")
    assert env["TOPPCLOUD_TASK_TOKEN"] == task_token(app)
    assert redact_text(f"token {env['TOPPCLOUD_TASK_TOKEN']}") == "token ********"


def test_task_tokens_are_per_app_and_survive_a_key_rotation_while_the_old_key_is_a_fallback(app, settings):
    other = App.objects.create(name="other")
    token = task_token(app)
    assert task_token_matches(app, token) and not task_token_matches(other, token)
    assert not task_token_matches(app, token[:-1] + ("0" if token[-1] != "0" else "1"))
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "a-new-secret-key-" * 4, [old_key]
    assert task_token(app) != token and task_token_matches(app, token)
    settings.SECRET_KEY_FALLBACKS = []
    assert not task_token_matches(app, token)


def test_apps_of_a_group_get_each_others_urls_and_one_shared_secret(app):
    from toppcloud_site.records.models import Location

    blog = App.objects.create(name="my-blog", group=app.group)
    Location.objects.create(app=blog, host="blog.example.test", path="/")
    api = App.objects.create(name="api", group=app.group)
    Location.objects.create(app=api, host="example.test", path="/api/")
    loner = App.objects.create(name="loner")
    Location.objects.create(app=loner, host="loner.example.test", path="/")
    node = Node.objects.create(name="n3", address="127.0.0.7", transport="local", root="/srv/tc")
    release = Release.objects.create(app=app, name="r1", artifact_sha256="4" * 64, app_ini={})
    env = release_environment(app, release, node, NodeLayout("/srv/tc"), "/srv/tc/v", {})
    assert env["TOPPCLOUD_APP_MY_BLOG_URL"] == "http://blog.example.test/"
    assert env["TOPPCLOUD_APP_API_URL"] == "http://example.test/api/"
    assert "TOPPCLOUD_APP_LONER_URL" not in env and "TOPPCLOUD_APP_ENVAPP_URL" not in env
    secret = env["TOPPCLOUD_GROUP_SECRET"]
    assert len(secret) >= 40 and redact_text(secret) == "********"
    blog_env = release_environment(blog, Release.objects.create(app=blog, name="r1", artifact_sha256="5" * 64,
                                                                 app_ini={}), node, NodeLayout("/srv/tc"), "/v", {})
    assert blog_env["TOPPCLOUD_GROUP_SECRET"] == secret  # one secret for the group
    assert "TOPPCLOUD_APP_ENVAPP_URL" not in blog_env  # envapp has no location
    assert "TOPPCLOUD_GROUP_SECRET" not in release_environment(
        loner, Release.objects.create(app=loner, name="r1", artifact_sha256="6" * 64, app_ini={}), node,
        NodeLayout("/srv/tc"), "/v", {})
    with connection.cursor() as cursor:  # encrypted at rest
        cursor.execute("SELECT shared_secret FROM records_servergroup WHERE id = %s", [app.group_id])
        assert secret not in cursor.fetchone()[0]
