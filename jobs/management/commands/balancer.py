"""manage.py balancer GROUP [--states | --enable NODE]: render the group's load balancer from the records now
(a job), show what its servers' states are, or put a node left drained back in rotation."""

import getpass
import json

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.cli import add_follow_arguments, follow_job
from jobs.engine.context import node_transport
from jobs.engine.states import ActorKind
from jobs.nodes import InvalidNode
from jobs.models import LiveRelease
from jobs.steps import balancer, rolling
from nodeops import balancer as node_balancer
from nodeops.errors import NodeOpError
from nodeops.layout import NodeLayout
from toppcloud_site.records.models import Node, ServerGroup


class Command(cli.Command):
    help = ("Render a server group's load balancer (its lb node's HAProxy) from the records and make it live: "
            "haproxy -c first, a refused render changes nothing. --states prints each server's state instead; "
            "--enable NODE puts the node's server back in rotation in every backend, each after a direct health "
            "check of the app from the balancer.")

    def add_arguments(self, parser):
        parser.add_argument("group", help="server group name")
        parser.add_argument("--states", action="store_true",
                            help="print each backend server's state (UP, DOWN, DRAIN, MAINT) and change nothing")
        parser.add_argument("--enable", metavar="NODE",
                            help="put the app node's server back in rotation (ready) in every backend where it is "
                                 "drained or in maintenance, each once the app answers its health check directly")
        add_follow_arguments(parser)

    def handle(self, group, states=False, enable=None, **opts):
        found = ServerGroup.objects.filter(name=group).first()
        if found is None:
            raise CommandError(f"no server group named {group!r}")
        if enable:
            return self.enable(found, enable)
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

    def enable(self, group, name):
        lb = balancer.lb_node(group)
        if lb is None:
            raise CommandError(f"server group {group.name} has no node with the role lb")
        node = Node.objects.filter(name=name, group=group).first()
        if node is None:
            raise CommandError(f"server group {group.name} has no node named {name!r}")
        t, layout = node_transport(lb), NodeLayout(lb.root)
        apps = {node_balancer.backend_name(r.app.name): r.app for r in LiveRelease.objects.filter(node=node)
                .select_related("app")}
        refused = []
        try:
            rows = [r for r in node_balancer.server_states(t, layout) if r["server"] == node.name]
            if not rows:
                raise CommandError(f"{node.name} is in no backend of the balancer on {lb.name}")
            for row in rows:
                backend = row["backend"]
                if row["admin"] == "ready":
                    self.stdout.write(f"{backend}: {node.name} is in rotation already ({row['state']})")
                    continue
                if backend not in apps:
                    refused.append(f"{backend}: no app live on {node.name} is served by it")
                    continue
                ok, said = rolling.ask_directly(t, lambda kind, **data: None, apps[backend], node)
                if not ok:
                    refused.append(f"{backend}: {said}; left {row['admin']}")
                    continue
                node_balancer.set_server_state(t, lambda kind, **data: None, layout, backend, node.name, "ready")
                self.stdout.write(f"{backend}: {node.name} back in rotation ({said})")
        except NodeOpError as exc:
            raise CommandError(str(exc)) from None
        if refused:
            raise CommandError(f"{node.name} was not put back in rotation in " + "; ".join(refused))
