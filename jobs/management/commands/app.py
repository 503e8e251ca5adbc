"""manage.py app create NAME [--group G] [--description TEXT] | app list: app records before their first deploy.

    manage.py app create shop                     # then: config set KEY VALUE --app shop, deploy
    manage.py app list

A deploy creates its app too (from app.ini's app_name); creating it first
lets its config be set before that deploy, so a release whose
config.required names keys is not refused. Audited like every record change.
"""

import getpass

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from jobs import cli
from jobs.nodes import validation_message
from nodeops import validate
from toppcloud_site.records import audit
from toppcloud_site.records.models import App, ServerGroup


class Command(cli.Command):
    help = "Create an app record (to set its config before its first deploy), or list the apps."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create an app record: its name as app.ini's app_name will say")
        create.add_argument("name")
        create.add_argument("--group", help="the server group it belongs to")
        create.add_argument("--description", default="")
        create.add_argument("--as", dest="actor", default=None, help="who asks (default: the OS user)")
        sub.add_parser("list", help="every app, its group and how many releases it has")

    def handle(self, action, **opts):
        return getattr(self, f"do_{action}")(**opts)

    def do_create(self, name, group=None, description="", actor=None, **_):
        try:
            validate.validate_name(name, "app name")
        except ValueError as exc:
            raise CommandError(f"app {name!r} was not created: {exc}") from None
        if App.objects.filter(name=name).exists():
            raise CommandError(f"there is already an app {name!r}")
        record = App(name=name, description=description)
        if group:
            record.group = ServerGroup.objects.filter(name=group).first()
            if record.group is None:
                raise CommandError(f"app {name!r} was not created: there is no server group {group!r}")
        try:
            record.full_clean()
        except ValidationError as exc:
            raise CommandError(f"app {name!r} was not created: {validation_message(exc)}") from None
        with audit.acting_as(f"user:{actor or getpass.getuser()}"):
            record.save()
        self.stdout.write(f"app {name} created; set its config with `manage.py config set KEY VALUE --app {name}`, "
                          f"then deploy a directory whose app.ini says app_name = {name}")

    def do_list(self, **_):
        for app in App.objects.select_related("group").order_by("name"):
            self.stdout.write(f"{app.name}  group {app.group.name if app.group else '-'}  "
                              f"{app.releases.count()} release(s)")
