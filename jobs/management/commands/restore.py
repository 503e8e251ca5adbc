"""manage.py restore BACKUP APP [--node N] [--no-checkpoint]: put an archive's data into an app."""

import getpass

from django.core.management.base import CommandError

from jobs import actions, cli, nodes
from jobs.steps import data
from jobs.cli import add_follow_arguments, follow_job
from jobs.engine.states import ActorKind


class Command(cli.Command):
    help = ("Restore a backup (its name, or an archive file) into an app: the same app, or another one "
            "(portable archives). Every checksum is verified before anything changes.")

    def add_arguments(self, parser):
        parser.add_argument("backup", help="a backup name (see the admin), or the path of an archive file")
        parser.add_argument("app", help="the app whose data are replaced")
        parser.add_argument("--node", help="the node whose files (or database) to restore, when the app has several")
        parser.add_argument("--no-checkpoint", action="store_true",
                            help="don't keep the data being replaced as a checkpoint first")
        add_follow_arguments(parser)

    def handle(self, backup, app, node, no_checkpoint, **opts):
        try:
            target = data.check_data_app(app)
            if node:
                nodes.check_node(nodes.get_node(node))
            if "/" in backup or backup.endswith(".tar"):
                source = data.import_archive(backup, target)
                self.stdout.write(f"archive checked and stored as backup {source.name}")
            else:
                source = data.find_backup(backup)
        except (data.DataRefused, nodes.InvalidNode) as exc:
            raise CommandError(f"nothing was restored: {exc}") from None
        job = actions.restore(app, source.name, node=node, checkpoint=not no_checkpoint, actor_kind=ActorKind.USER,
                              actor=opts.get("actor") or getpass.getuser())
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])
