"""manage.py config get|set|unset|list [--app A | --group G | --global] [--secret]: apps' config, for scripts.

    manage.py config set SENTRY_DSN https://... --global
    printf %s "$TOKEN" | manage.py config set STRIPE_KEY --app shop --secret     # the value from stdin
    manage.py config list --app shop              # what the app gets, and from which scope
    manage.py config get STRIPE_KEY --app shop --reveal
    manage.py config unset SENTRY_DSN --global
    manage.py config apply --app shop             # running releases get the config now (no restart)
    manage.py config rotate-secret --group web    # a new TOPPCLOUD_GROUP_SECRET, applied to the group's apps

Values reach an app as environment variables at its next deploy, or at
once with `config apply` (a job: the new environment is checked, then
gunicorn reloads gracefully; no request fails). Secrets are encrypted at
rest and never printed without --reveal. Every change, and every --reveal,
is an audit entry under the OS user's name.
"""

import getpass
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction

from jobs import actions, cli
from jobs.cli import add_follow_arguments, follow_job
from jobs.steps.environment import config_records
from jobs.nodes import validation_message
from jobs.engine.states import ActorKind
from toppcloud_site.records import audit
from nodeops import validate
from toppcloud_site.records.models import App, ConfigValue, ServerGroup, validate_config_key


class Command(cli.Command):
    help = "Get, set, unset and list config values (environment variables of apps) at app, group or global scope."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        for name, helptext in (("get", "print a value"), ("set", "set a value"), ("unset", "remove a value"),
                               ("list", "list values"),
                               ("apply", "give the running releases of the app (of the group's apps, of all apps) "
                                         "the config as it is now"),
                               ("rotate-secret", "give a group a new shared secret and apply it to its apps")):
            p = sub.add_parser(name, help=helptext)
            if name not in ("list", "apply", "rotate-secret"):
                p.add_argument("key")
            if name in ("apply", "rotate-secret"):
                add_follow_arguments(p)
            if name == "set":
                p.add_argument("value", nargs="?", default="-", help="the value; '-' or nothing: read stdin")
                p.add_argument("--secret", action="store_true", help="encrypt it, never show it")
            if name == "get":
                p.add_argument("--reveal", action="store_true", help="print a secret's value")
            where = p.add_mutually_exclusive_group()
            where.add_argument("--app")
            where.add_argument("--group")
            where.add_argument("--global", dest="is_global", action="store_true")

    def handle(self, action, app=None, group=None, is_global=False, **opts):
        scope = _scope(app, group, is_global)
        with audit.acting_as(f"user:{getpass.getuser()}"):  # changes and reveals are audited under this name
            return getattr(self, f"do_{action.replace('-', '_')}")(scope, **opts)

    def do_apply(self, scope, **opts):
        if scope["scope"] == ConfigValue.Scope.APP:
            apps, target = [scope["app"].name], f"app:{scope['app'].name}"
        elif scope["scope"] == ConfigValue.Scope.GROUP:
            apps, target = _names(App.objects.filter(group=scope["group"])), f"group:{scope['group'].name}"
        else:
            apps, target = _names(App.objects.all()), "global"
        if not apps:
            raise CommandError(f"there is no app at {_where(scope)} to apply config to")
        self._follow(actions.apply_config(apps, target=target, **_actor(opts)), opts)

    def do_rotate_secret(self, scope, **opts):
        if scope["scope"] != ConfigValue.Scope.GROUP:
            raise CommandError("rotate-secret rotates a server group's shared secret: say --group GROUP")
        group = scope["group"].name
        self._follow(actions.rotate_group_secret(group, **_actor(opts)), opts)

    def _follow(self, job, opts):
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])

    def do_list(self, scope, **_):
        if scope["scope"] == ConfigValue.Scope.APP:  # what the app gets, and where each value comes from
            for key, record in sorted(config_records(scope["app"]).items()):
                where = _where({"scope": record.scope, "app": record.app, "group": record.group})
                self.stdout.write(f"{key_line(record)}  ({where})")
            return
        for record in _values(scope):
            self.stdout.write(key_line(record))

    def do_get(self, scope, key, reveal=False, **_):
        _check_key(key)
        value = _values(scope).filter(key=key).first()
        if value is None:
            raise CommandError(f"{key} is not set at {_where(scope)}")
        if value.secret and not reveal:
            raise CommandError(f"{key} is a secret: add --reveal to print it")
        if value.secret:
            audit.record("reveal", value, key=key)
        self.stdout.write(value.plain)

    @transaction.atomic
    def do_set(self, scope, key, value, secret=False, **_):
        _check_key(key, f"{key} was not set: ")
        if value == "-":
            # Bytes, so that what is not UTF-8 is said so (the text stream would pass on surrogates); a
            # stream of text only (call_command's callers) goes through the value's own checks.
            stream = getattr(sys.stdin, "buffer", None)
            try:
                value = stream.read().decode("utf-8") if stream is not None else sys.stdin.read()
            except UnicodeDecodeError as exc:
                raise CommandError(f"{key} was not set: the value on stdin is not UTF-8 text "
                                   f"(byte {exc.start})") from None
            value = value[:-1] if value.endswith("\n") else value
        record = _values(scope).filter(key=key).first() or ConfigValue(key=key, **scope)
        record.set_value(value, secret=secret)
        try:
            record.full_clean()
        except ValidationError as exc:
            raise CommandError(f"{key} was not set: {validation_message(exc)}") from None
        record.save()
        self.stdout.write(f"{key} set at {_where(scope)}" + (" (secret)" if secret else "")
                          + "; apps get it at their next deploy, or now with `manage.py config apply`")

    def do_unset(self, scope, key, **_):
        _check_key(key)
        deleted, _ = _values(scope).filter(key=key).delete()
        if not deleted:
            raise CommandError(f"{key} is not set at {_where(scope)}")
        self.stdout.write(f"{key} unset at {_where(scope)}")


def _check_key(key, prefix=""):
    """A key that is no config name is refused before it reaches a query (the database refuses NUL)."""
    try:
        validate_config_key(key)
    except ValidationError as exc:
        raise CommandError(prefix + validation_message(exc)) from None


def _scope(app, group, is_global):
    if app:
        record = App.objects.filter(name=app).first() if _is_name(app) else None
        if record is None:
            hint = f": create it first with `manage.py app create {app}` (a deploy creates it too)" if _is_name(app) else ""
            raise CommandError(f"there is no app {app!r}{hint}")
        return {"scope": ConfigValue.Scope.APP, "app": record, "group": None}
    if group:
        record = ServerGroup.objects.filter(name=group).first() if _is_name(group) else None
        if record is None:
            raise CommandError(f"there is no server group {group!r}")
        return {"scope": ConfigValue.Scope.GROUP, "group": record, "app": None}
    if is_global:
        return {"scope": ConfigValue.Scope.GLOBAL, "app": None, "group": None}
    raise CommandError("say where: --app APP, --group GROUP or --global")


def _is_name(text):
    try:
        return bool(validate.validate_name(text))
    except ValueError:
        return False


def _names(apps):
    return list(apps.order_by("name").values_list("name", flat=True))


def _actor(opts):
    return {"actor_kind": ActorKind.USER, "actor": opts.get("actor") or getpass.getuser()}


def _values(scope):
    return ConfigValue.objects.filter(**scope).order_by("key")


def _where(scope):
    return {"app": f"app {scope['app']}", "group": f"group {scope['group']}", "global": "global scope"}[scope["scope"]]


def _show(record):
    return "(secret)" if record.secret else record.plain


def key_line(record):
    return f"{record.key}={_show(record)}"
