"""manage.py rollback APP --node N [--release R]: make a previous release live again (seconds, no upload)."""

import getpass

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.cli import add_follow_arguments, follow_job
from jobs.nodes import InvalidNode, get_node
from jobs.engine.states import ActorKind
from toppcloud_site.records.models import App


class Command(cli.Command):
    help = "Roll an app back on a node to the previous (or a named) release still on its disk."

    def add_arguments(self, parser):
        parser.add_argument("app")
        parser.add_argument("--node", required=True)
        parser.add_argument("--release", help="release name (default: the one before the live one)")
        add_follow_arguments(parser)

    def handle(self, app, node, release, **opts):
        if not App.objects.filter(name=app).exists():
            raise CommandError(f"there is no app {app!r}")
        try:
            node = get_node(node)
        except InvalidNode as exc:
            raise CommandError(str(exc)) from None
        try:
            job = actions.rollback(app, node, release=release, actor_kind=ActorKind.USER,
                                   actor=opts.get("actor") or getpass.getuser())
        except InvalidNode as exc:
            raise CommandError(str(exc)) from None
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])
