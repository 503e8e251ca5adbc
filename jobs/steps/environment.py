"""The one environment of a release: what every process of it sees, on every node.

Built here and nowhere else; the deploy writes it to the release's env file
on the node (apps/<app>/env/<release>.env, 0600), and toppcloud-exec loads
that file for the web processes, cron runs, tasks' requests, `manage.py run`
commands and `script:` database updates alike. docs/environment.md lists
every variable.
"""

import hmac
import json
import secrets

from django.conf import settings
from django.db import transaction
from django.utils.crypto import salted_hmac

from jobs.engine.context import FlowFailed
from jobs.engine.redact import register_secret
from nodeops import frontdoor, release as node_release, services as node_services
from toppcloud_site.records.models import App, ConfigValue, ServerGroup

_TOKEN_SALT = "toppcloud.task-token"


def config_records(app):
    """{key: the ConfigValue the app gets}: global values, overridden by its group's, overridden by its own."""
    records = {}
    scopes = [ConfigValue.objects.filter(scope=ConfigValue.Scope.GLOBAL)]
    if app.group_id is not None:
        scopes.append(ConfigValue.objects.filter(scope=ConfigValue.Scope.GROUP, group_id=app.group_id))
    scopes.append(ConfigValue.objects.filter(scope=ConfigValue.Scope.APP, app=app))
    for query in scopes:
        records.update((record.key, record) for record in query)
    return records


def config_values(app):
    """The config an app gets, {key: value}; this process masks its secrets in every event from now on."""
    values = {}
    for key, record in config_records(app).items():
        values[key] = record.plain
        if record.secret:
            register_secret(record.plain)
    return values


class ConfigMissing(ValueError):
    """A release's config.required names keys its app's config does not set."""


def missing_config(app, release):
    """The keys the release's config.required names that neither the app's config nor a default sets."""
    ini = release.app_ini
    have = set(config_records(app)) | set(ini.get("config_defaults", {}))
    return [key for key in ini.get("config_required", []) if key not in have]


def check_required_config(app, release):
    """Refuse (ConfigMissing) a release whose required config is not set; nothing has reached a host then."""
    missing = missing_config(app, release)
    if missing:
        raise ConfigMissing(f"{app.name} {release.name} needs config that is not set: {', '.join(missing)}; "
                            f"set each with `manage.py config set KEY VALUE --app {app.name}` (or --group, "
                            "--global), or in the admin's Config values")


def group_environment(app):
    """What the apps of a server group know of each other: TOPPCLOUD_APP_<NAME>_URL of every other app
    of the group (its first location; `-` in names becomes `_`), and the group's shared secret."""
    if app.group_id is None:
        return {}
    group = app.group
    if not group.shared_secret:
        with transaction.atomic():
            group = ServerGroup.objects.select_for_update().get(pk=group.pk)
            if not group.shared_secret:  # made once, by whichever deploy comes first
                group.shared_secret = secrets.token_urlsafe(32)
                group.save(update_fields=["shared_secret"])
    register_secret(group.shared_secret)
    env = {"TOPPCLOUD_GROUP_SECRET": group.shared_secret}
    if group.previous_shared_secret:
        register_secret(group.previous_shared_secret)
        env["TOPPCLOUD_GROUP_SECRET_PREVIOUS"] = group.previous_shared_secret
    for other in App.objects.filter(group_id=group.pk).exclude(pk=app.pk).prefetch_related("locations"):
        location = next((loc for loc in other.locations.all() if not loc.host.startswith("*.")), None)
        if location is not None:
            env[f"TOPPCLOUD_APP_{other.name.upper().replace('-', '_')}_URL"] = f"http://{location.host}{location.path}"
    return env


def rotate_group_secret(group):
    """A new shared secret for the group; the current one becomes TOPPCLOUD_GROUP_SECRET_PREVIOUS.

    Running apps get it when the config is applied to them (the
    rotate_group_secret job does that next).
    """
    with transaction.atomic():
        group = ServerGroup.objects.select_for_update().get(pk=group.pk)
        group.previous_shared_secret = group.shared_secret
        group.shared_secret = secrets.token_urlsafe(32)
        group.save(update_fields=["shared_secret", "previous_shared_secret"])
    register_secret(group.shared_secret)
    return group


def config_version(app, release):
    """Which config a deploy used: an HMAC of the config the release gets (defaults included), so equal
    versions mean equal values, and no value (no secret) can be guessed back from it."""
    config = dict(release.app_ini.get("config_defaults", {})) | {k: r.plain for k, r in config_records(app).items()}
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return salted_hmac("toppcloud.config-version", text, algorithm="sha256").hexdigest()[:16]


def task_token(app, secret=None):
    """The app's token for the tasks API: derived from SECRET_KEY, so nothing secret is stored for it.

    A new SECRET_KEY gives every app a new token at its next deploy; tokens
    from keys in SECRET_KEY_FALLBACKS are still accepted meanwhile.
    """
    return salted_hmac(_TOKEN_SALT, f"{app.pk}:{app.name}", secret=secret, algorithm="sha256").hexdigest()


def task_token_matches(app, token):
    return any(hmac.compare_digest(task_token(app, secret), token)
               for secret in [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS])


def mask_app_secrets(app):
    """Have this process mask the app's secrets in every event it writes (its task token, its database
    password): a command's output or an app's answer may print them."""
    register_secret(task_token(app))
    for password in app.services.exclude(password="").values_list("password", flat=True):
        register_secret(password)
    config_values(app)  # registers the app's secret config values


def tasks_url(app):
    return f"{settings.TOPPCLOUD_API_URL.rstrip('/')}/api/apps/{app.name}/tasks"


def release_environment(app, release, node, layout, venv, service_env):
    """Every variable of the release's env file, config first and the platform's own after.

    Config cannot shadow the platform's names (ConfigValue refuses them).
    The venv's bin comes first on PATH, so `script: python manage.py
    migrate` runs the app's python with its requirements, as web does.
    """
    ini = release.app_ini
    token = task_token(app)
    mask_app_secrets(app)
    env = dict(ini.get("config_defaults", {}))  # app.ini's config.default.KEY, below every config value
    env.update(config_values(app))
    env.update({
        "TOPPCLOUD_APP_NAME": app.name,
        "TOPPCLOUD_RELEASE": release.name,
        "TOPPCLOUD_NODE": node.name,
        "TOPPCLOUD_APP_DIR": f"{layout.releases_dir(app.name)}/{release.name}",
        "TOPPCLOUD_LOGS": layout.app_logs(app.name),
        "TOPPCLOUD_TASKS_URL": tasks_url(app),
        "TOPPCLOUD_TASK_TOKEN": token,
        "STATIC_URL": static_url(app, release),
        # The host names the app is served at (its locations): Django's ALLOWED_HOSTS, for one.
        "TOPPCLOUD_HOSTS": " ".join(dict.fromkeys(app.locations.values_list("host", flat=True))),
        "HOME": layout.home_dir(app.name),  # owned by the app's user (nodeops/node_users.py)
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "VIRTUAL_ENV": venv,
        "PATH": f"{venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    })
    env.update(group_environment(app))
    # Central settings every app gets, so tools are configured the same way everywhere.
    if settings.TOPPCLOUD_DEBUG_EMAIL:
        env["TOPPCLOUD_DEBUG_EMAIL"] = settings.TOPPCLOUD_DEBUG_EMAIL
    env.update(service_env)
    # app.ini writable_static_files (none in releases packed before it existed)
    writable = ini.get("writable_static_files") or []
    env.update(node_services.writable_env(node_services.writable_spec(layout.writable_dir(app.name), writable)))
    return env


def static_url(app, release):
    """$STATIC_URL: the CDN's copy of the release's static files when deploys publish them, else the node's."""
    group = app.group
    if group is not None and group.static_publish_url:
        return f"{group.static_publish_url.rstrip('/')}/{app.name}/{release.name}/"
    return frontdoor.static_url(release.app_ini.get("location_path") or "/", release.name)


def config_used(app, release):
    """Which config a release was given: its version (equal versions, equal values) and keys."""
    return {"config_version": config_version(app, release), "config_keys": sorted(config_records(app))}


def require_config(app, release, note=""):
    """FlowFailed if the release's config.required is not set (`note`: what the message adds)."""
    try:
        check_required_config(app, release)
    except ConfigMissing as exc:
        raise FlowFailed(f"{exc}; {note}" if note else str(exc)) from None


def write_env_file(t, layout, app, release, node, venv, service_env, user):
    """The release's environment, from the config as it is now, in its env file on the node; its path."""
    return node_release.write_env(t, layout, app.name, release.name, release_environment(
        app, release, node, layout, venv, service_env), user=user)
