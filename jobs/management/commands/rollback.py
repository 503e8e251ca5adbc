"""manage.py rollback APP (--node N | --group G [--batch 1|25%]) [--release R]: make a previous release live
again (seconds, no upload); a group with an lb node is rolled back through its balancer, a batch at a time."""

import getpass

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.cli import add_follow_arguments, follow_job
from jobs.nodes import InvalidNode, get_node
from jobs.engine.states import ActorKind
from toppcloud_site.records.models import App, ServerGroup


class Command(cli.Command):
    help = ("Roll an app back on a node to the previous (or a named) release still on its disk, or on the app "
            "nodes of a server group with a balancer, a batch at a time.")

    def add_arguments(self, parser):
        parser.add_argument("app")
        parser.add_argument("--node")
        parser.add_argument("--group", help="the app nodes of this server group, through its lb node")
        parser.add_argument("--batch", help="with --group: app nodes drained and rolled back at a time, a number "
                                            "or a percentage (default 1)")
        parser.add_argument("--release", help="release name (default: the one before the live one)")
        add_follow_arguments(parser)

    def handle(self, app, node, group, batch, release, **opts):
        if not App.objects.filter(name=app).exists():
            raise CommandError(f"there is no app {app!r}")
        if bool(node) == bool(group):
            raise CommandError("say where: --node NODE or --group GROUP (one of them)")
        if batch is not None and not group:
            raise CommandError("--batch rolls a server group back through its balancer: say which with --group")
        actor = opts.get("actor") or getpass.getuser()
        try:
            if group:
                found = ServerGroup.objects.filter(name=group).first()
                if found is None:
                    raise actions.RolloutRefused(f"there is no server group {group!r}")
                job = actions.rollback_rolling(app, found, release=release, batch=batch, actor_kind=ActorKind.USER,
                                               actor=actor)
            else:
                job = actions.rollback(app, get_node(node), release=release, actor_kind=ActorKind.USER, actor=actor)
        except (InvalidNode, actions.RolloutRefused) as exc:
            raise CommandError(f"nothing was rolled back: {exc}") from None
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])
