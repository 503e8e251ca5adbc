"""manage.py import_group group.toml [--dry-run]: make a server group match its document.

Prints what changes (+ added, ~ changed, - removed or leaving the group),
then applies it in one transaction, every change an audit entry under the
OS user's name (or --as). A document with anything wrong (unknown keys,
wrong types, invalid names, paths or values, clashes with other groups'
records, too large) is refused with the reason, and nothing changes.
Secrets the document names but the control plane lacks are listed: set
each with `manage.py config set KEY --secret`.
"""

import getpass
import sys

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.engine.states import ActorKind
from toppcloud_site.records import audit, documents


class Command(cli.Command):
    help = "Make a server group match a group document (from export_group): show the changes, apply them."

    def add_arguments(self, parser):
        parser.add_argument("file", help="the document; '-' reads stdin")
        parser.add_argument("--dry-run", action="store_true", help="show the changes, change nothing")
        parser.add_argument("--as", dest="actor", default=None, help="who changes it (default: the OS user)")

    def handle(self, file, dry_run=False, actor=None, **opts):
        try:
            if file == "-":
                data = sys.stdin.buffer.read(documents.MAX_BYTES + 1)
            else:
                with open(file, "rb") as f:
                    data = f.read(documents.MAX_BYTES + 1)
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror or exc}") from None
        try:
            doc = documents.parse(data)
            actor = actor or getpass.getuser()
            with audit.acting_as(f"user:{actor}"):
                changes, missing, rerouted, retrusted = (documents.plan if dry_run else documents.apply)(doc)
        except documents.DocumentError as exc:
            raise CommandError(f"{file}: {exc}; nothing was changed") from None
        for line in changes:
            self.stdout.write(line)
        if not changes:
            self.stdout.write(f"group {doc['name']} already matches {file}; nothing to change")
        elif dry_run:
            self.stdout.write(f"{len(changes)} changes; --dry-run: nothing was changed")
        else:
            self.stdout.write(f"{len(changes)} changes applied to group {doc['name']}")
            job = actions.front_door_after_edit(rerouted, actor_kind=ActorKind.USER, actor=actor) if rerouted else None
            if job is not None:
                self.stdout.write(f"locations changed: front_door job {job.pk} renders {', '.join(job.params['nodes'])}")
            job = actions.front_door_after_roles(retrusted, actor_kind=ActorKind.USER, actor=actor) if retrusted else None
            if job is not None:
                self.stdout.write(f"forwarded-header trust changed: front_door job {job.pk} renders "
                                  f"{', '.join(job.params['nodes'])}")
        for name in missing:
            self.stderr.write(f"secret {name} is named in the document but not set: "
                              f"`manage.py config set KEY --secret --app/--group ...` sets it")
