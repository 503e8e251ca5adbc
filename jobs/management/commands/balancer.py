"""manage.py balancer GROUP [--states]: render the group's load balancer from the records now (a job),
or show what its servers' states are."""

import getpass
import json

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.cli import add_follow_arguments, follow_job
from jobs.engine.context import node_transport
from jobs.engine.states import ActorKind
from jobs.nodes import InvalidNode
from jobs.steps import balancer
from nodeops import balancer as node_balancer
from nodeops.layout import NodeLayout
from toppcloud_site.records.models import ServerGroup


class Command(cli.Command):
    help = ("Render a server group's load balancer (its lb node's HAProxy) from the records and make it live: "
            "haproxy -c first, a refused render changes nothing. --states prints each server's state instead.")

    def add_arguments(self, parser):
        parser.add_argument("group", help="server group name")
        parser.add_argument("--states", action="store_true",
                            help="print each backend server's state (UP, DOWN, DRAIN, MAINT) and change nothing")
        add_follow_arguments(parser)

    def handle(self, group, states=False, **opts):
        found = ServerGroup.objects.filter(name=group).first()
        if found is None:
            raise CommandError(f"no server group named {group!r}")
        if states:
            lb = balancer.lb_node(found)
            if lb is None:
                raise CommandError(f"server group {group} has no node with the role lb")
            rows = node_balancer.server_states(node_transport(lb), NodeLayout(lb.root))
            for row in rows:
                self.stdout.write(json.dumps(row) if opts["as_json"] else
                                  f"{row['backend']:24} {row['server']:24} {row['state']:6} {row['admin']:6} "
                                  f"changed {row['last_change_s']} s ago")
            return
        try:
            job = actions.balancer(found, actor_kind=ActorKind.USER, actor=opts.pop("actor", None) or getpass.getuser())
        except InvalidNode as exc:
            raise CommandError(str(exc)) from None
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])
