"""manage.py clear APP --yes-delete-data [--node N]: empty an app's database and files (a checkpoint is kept)."""

import getpass

from django.core.management.base import CommandError

from jobs import actions, cli, nodes
from jobs.steps import data
from jobs.cli import add_follow_arguments, follow_job
from jobs.engine.states import ActorKind


class Command(cli.Command):
    help = ("Replace an app's database and files directory with empty ones. What was there is kept as "
            "a checkpoint backup first. Needs --yes-delete-data.")

    def add_arguments(self, parser):
        parser.add_argument("app")
        parser.add_argument("--node", help="the node whose files (or database) to clear, when the app has several")
        parser.add_argument("--yes-delete-data", action="store_true", help="confirm: every row and file goes")
        add_follow_arguments(parser)

    def handle(self, app, node, yes_delete_data, **opts):
        try:
            data.check_data_app(app)
            if node:
                nodes.check_node(nodes.get_node(node))
        except (data.DataRefused, nodes.InvalidNode) as exc:
            raise CommandError(f"nothing was cleared: {exc}") from None
        if not yes_delete_data:
            raise CommandError(f"nothing was cleared: this deletes every row and file of {app} (a checkpoint "
                               "backup is kept); run again with --yes-delete-data to confirm")
        job = actions.clear(app, node=node, actor_kind=ActorKind.USER, actor=opts.get("actor") or getpass.getuser())
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])
