"""manage.py replica add NODE --group G: make a node a streaming replica of the group's primary (a job).

    manage.py replica add db2 --group web     # pg_basebackup -R with a slot; the apps get DATABASE_REPLICA_URL
    manage.py replica check --group web       # their state and lag now (a job), recorded for status
    manage.py replica list --group web        # the replicas and their lag, as last recorded

docs/groups.md tells the whole story.
"""

import getpass
import json

from django.core.management.base import CommandError

from jobs import actions, cli, nodes
from jobs.cli import add_follow_arguments, follow_job
from jobs.engine.states import ActorKind
from jobs.steps import replication
from toppcloud_site.records.models import ServerGroup


class Command(cli.Command):
    help = "PostgreSQL streaming replicas of a server group's primary."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="make NODE a streaming replica of the group's primary (a job)")
        add.add_argument("node")
        add.add_argument("--group", required=True)
        add_follow_arguments(add)
        check = sub.add_parser("check", help="record the group's replicas' state and lag as the primary sees them now")
        check.add_argument("--group", required=True)
        add_follow_arguments(check)
        show = sub.add_parser("list", help="the group's replicas and their lag, as last recorded")
        show.add_argument("--group", required=True)
        show.add_argument("--json", dest="as_json", action="store_true")

    def handle(self, action, **opts):
        return getattr(self, f"do_{action}")(**opts)

    def do_add(self, node, group, **opts):
        try:
            job = actions.replica_add(node, group, actor_kind=ActorKind.USER,
                                      actor=opts.get("actor") or getpass.getuser())
        except (replication.ReplicaRefused, nodes.InvalidNode) as exc:
            raise CommandError(f"no replica was added: {exc}") from None
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])

    def do_check(self, group, **opts):
        try:
            job = actions.replica_check(group, actor_kind=ActorKind.USER, actor=opts.get("actor") or getpass.getuser())
        except (replication.ReplicaRefused, nodes.InvalidNode) as exc:
            raise CommandError(f"no check was started: {exc}") from None
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])

    def do_list(self, group, as_json, **opts):
        record = ServerGroup.objects.filter(name=group).first()
        if record is None:
            raise CommandError(f"there is no server group {group!r}")
        rows = [replication.replica_row(n) for n in replication.replicas(record)]
        if as_json:
            self.stdout.write(json.dumps({"group": group, "primary": record.database_node.name
                                          if record.database_node_id else None, "replicas": rows}, sort_keys=True))
            return
        if not rows:
            self.stdout.write(f"{group}: no replicas")
        for row in rows:
            self.stdout.write(replication.describe(row))

