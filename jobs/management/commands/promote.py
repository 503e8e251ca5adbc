"""manage.py promote NODE [--old-primary-is-down]: a replica becomes its group's PostgreSQL primary."""

import getpass

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.cli import add_follow_arguments, follow_job
from jobs.engine.states import ActorKind
from jobs.nodes import InvalidNode, get_node
from jobs.steps.failover import PromoteRefused


class Command(cli.Command):
    help = ("Promote a streaming replica to be its server group's primary: fence the old primary (stop its "
            "cluster, keep it stopped), pg_promote the replica, repoint every app of the group (config apply).")

    def add_arguments(self, parser):
        parser.add_argument("node", help="the replica to promote")
        parser.add_argument("--old-primary-is-down", action="store_true",
                            help="go on when the old primary does not answer over ssh (it cannot be fenced: "
                                 "make sure it stays down)")
        add_follow_arguments(parser)

    def handle(self, node, old_primary_is_down, **opts):
        try:
            job = actions.promote(get_node(node), old_primary_is_down=old_primary_is_down,
                                  actor_kind=ActorKind.USER, actor=opts.get("actor") or getpass.getuser())
        except (InvalidNode, PromoteRefused) as exc:
            raise CommandError(str(exc)) from None
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])
