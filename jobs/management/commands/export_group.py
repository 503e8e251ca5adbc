"""manage.py export_group GROUP > group.toml: a server group as a document for version control.

Nodes, the database node, apps, their locations and config; secrets by name
only. The same records always give the same bytes. `import_group` reads it.
"""

from django.core.management.base import CommandError

from jobs import cli
from toppcloud_site.records.documents import export_group
from toppcloud_site.records.models import ServerGroup


class Command(cli.Command):
    help = "Print a server group (nodes, apps, locations, config; secrets by name) as a TOML document."

    def add_arguments(self, parser):
        parser.add_argument("group")

    def handle(self, group, **opts):
        record = ServerGroup.objects.filter(name=group).first()
        if record is None:
            raise CommandError(f"there is no server group {group!r}")
        self.stdout.write(export_group(record), ending="")
