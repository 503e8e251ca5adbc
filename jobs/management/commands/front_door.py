"""manage.py front_door [NODE ...]: render nodes' nginx config from the records now (after editing locations or certificates)."""

import getpass

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.cli import add_follow_arguments, follow_job
from jobs.nodes import InvalidNode, check_node, get_node
from jobs.engine.states import ActorKind
from toppcloud_site.records.models import Node


class Command(cli.Command):
    help = ("Render the nginx front door of nodes (default: every node where an app is live) from the records "
            "and make it live: nginx -t first, a refused render changes nothing.")

    def add_arguments(self, parser):
        parser.add_argument("nodes", nargs="*")
        add_follow_arguments(parser)

    def handle(self, nodes, **opts):
        try:
            found = [get_node(name) for name in nodes] or list(Node.objects.filter(live__isnull=False).distinct())
            for node in found:
                check_node(node)
        except InvalidNode as exc:
            raise CommandError(str(exc)) from None
        if not found:
            raise CommandError("no app is live on any node: nothing to render")
        job = actions.front_door(found, actor_kind=ActorKind.USER, actor=opts.pop("actor", None) or getpass.getuser())
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])
