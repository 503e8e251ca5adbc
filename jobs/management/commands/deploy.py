"""manage.py deploy APP_DIR (--node N ... | --group G): pack the app directory and deploy it, following live."""

import getpass

from django.core.management.base import BaseCommand, CommandError

from jobs import actions
from jobs.cli import add_follow_arguments, follow_job
from jobs.steps.environment import ConfigMissing, check_required_config
from jobs.nodes import InvalidNode, get_node
from jobs.steps.releases import ReleaseRefused, pack_release
from jobs.engine.states import ActorKind
from nodeops.appini import AppIniError
from nodeops.archive import ArchiveError
from toppcloud_site.records import audit
from toppcloud_site.records.models import Node


class Command(BaseCommand):
    help = "Deploy an app directory (with its app.ini) to nodes, with zero downtime."

    def add_arguments(self, parser):
        parser.add_argument("app_dir")
        parser.add_argument("--node", action="append", default=[], help="node name (repeat for several)")
        parser.add_argument("--group", help="every node of this server group")
        parser.add_argument("--max-parallel", type=int, default=4, help="nodes deployed at once (default 4)")
        add_follow_arguments(parser)

    def handle(self, app_dir, node, group, max_parallel, **opts):
        try:
            nodes = [get_node(name) for name in node]
            if group:
                nodes += [n for n in Node.objects.filter(group__name=group) if n not in nodes]
                if not nodes:
                    raise ReleaseRefused(f"server group {group!r} has no nodes")
            if not nodes:
                raise ReleaseRefused("say where: --node NODE (repeatable) or --group GROUP")
            if max_parallel < 1:
                raise ReleaseRefused("--max-parallel must be 1 or more")
            with audit.acting_as(f"user:{opts.get('actor') or getpass.getuser()}"):  # a new App record is audited
                release, warnings = pack_release(app_dir)
            check_required_config(release.app, release)
        except (AppIniError, ArchiveError, ReleaseRefused, InvalidNode, ConfigMissing) as exc:
            raise CommandError(f"nothing was deployed: {exc}") from None
        for warning in warnings:
            self.stderr.write(f"warning: {warning}")
        self.stdout.write(f"release {release.app.name} {release.name} ({release.size} bytes, "
                          f"sha256 {release.artifact_sha256[:12]})")
        actor = opts.get("actor") or getpass.getuser()
        try:
            job = actions.deploy_to(release.app.name, release.name, nodes, max_parallel=max_parallel,
                                    actor_kind=ActorKind.USER, actor=actor)
        except InvalidNode as exc:
            raise CommandError(f"nothing was deployed: {exc}") from None
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])
