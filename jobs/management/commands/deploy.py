"""manage.py deploy APP_DIR (--node N ... | --group G [--batch 1|25%]): pack the app directory and deploy it,
following live. A group with an lb node is rolled through its balancer, --batch app nodes at a time."""

import getpass
import os

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.cli import add_follow_arguments, follow_job
from jobs.steps.environment import ConfigMissing, check_required_config
from jobs.nodes import InvalidNode, get_node
from jobs.steps import balancer as lb_steps, rolling
from jobs.steps.releases import ReleaseRefused, group_warning, pack_release
from jobs.engine.states import ActorKind
from nodeops import appini
from nodeops.appini import AppIniError
from nodeops.archive import ArchiveError
from toppcloud_site.records import audit
from toppcloud_site.records.models import ServerGroup


class Command(cli.Command):
    help = "Deploy an app directory (with its app.ini) to nodes, with zero downtime."

    def add_arguments(self, parser):
        parser.add_argument("app_dir")
        parser.add_argument("--node", action="append", default=[], help="node name (repeat for several)")
        parser.add_argument("--group", help="every node of this server group")
        parser.add_argument("--max-parallel", type=int, default=4, help="nodes deployed at once (default 4)")
        parser.add_argument("--batch", help="a group with an lb node: app nodes drained and deployed at a time, "
                                            "a number or a percentage (default 1)")
        add_follow_arguments(parser)

    def handle(self, app_dir, node, group, max_parallel, batch, **opts):
        actor = opts.get("actor") or getpass.getuser()
        rolling_group = the_group = None
        try:
            nodes = [get_node(name) for name in node]
            if batch is not None and not group:
                raise ReleaseRefused("--batch rolls a server group through its balancer: say which with --group")
            if group:
                if not ServerGroup.objects.filter(name=group).exists():
                    raise ReleaseRefused(f"there is no server group {group!r}")
                the_group = rolling_group = ServerGroup.objects.get(name=group)
                if lb_steps.lb_node(rolling_group) is None:
                    if batch is not None:
                        raise ReleaseRefused(f"server group {group} has no lb node: --batch rolls a group through "
                                             f"its balancer; without one, say how many nodes at once with "
                                             f"--max-parallel")
                    rolling_group = None
                elif nodes:
                    raise ReleaseRefused(f"server group {group} has an lb node: a deploy to it rolls through its "
                                         f"app nodes; give --group without --node")
                else:  # a bad --batch is refused before anything is packed (the action checks it again)
                    rolling.parse_batch("1" if batch is None else batch, len(lb_steps.app_nodes(rolling_group)))
                # A group's apps run on its app nodes (not on its lb, db or db-replica nodes).
                nodes += [n for n in lb_steps.app_nodes(the_group) if n not in nodes]
                if not nodes:
                    raise ReleaseRefused(f"server group {group!r} has no app nodes")
            if not nodes:
                raise ReleaseRefused("say where: --node NODE (repeatable) or --group GROUP")
            if max_parallel < 1:
                raise ReleaseRefused("--max-parallel must be 1 or more")
        except (ReleaseRefused, InvalidNode, rolling.BatchRefused) as exc:
            raise CommandError(f"nothing was deployed: {exc}") from None
        try:
            with audit.acting_as(f"user:{actor}"):  # a new App record is audited
                release, warnings = pack_release(app_dir, group=the_group)
            check_required_config(release.app, release)
        except (AppIniError, ArchiveError, ReleaseRefused, ConfigMissing) as exc:
            # What the directory holds was refused: the attempt is recorded, as a failed job no worker runs.
            job = actions.refuse_deploy(os.path.abspath(app_dir), str(exc), app_name=_app_name(app_dir),
                                        nodes=nodes, actor_kind=ActorKind.USER, actor=actor)
            raise CommandError(f"nothing was deployed: {exc} (recorded as job {job.pk})") from None
        for warning in [*warnings, group_warning(release.app, the_group)]:
            if warning:
                self.stderr.write(f"warning: {warning}")
        self.stdout.write(f"release {release.app.name} {release.name} ({release.size} bytes, "
                          f"sha256 {release.artifact_sha256[:12]})")
        try:
            if rolling_group is not None:
                job = actions.deploy_rolling(release.app.name, release.name, rolling_group, batch=batch,
                                             actor_kind=ActorKind.USER, actor=actor)
            else:
                job = actions.deploy_to(release.app.name, release.name, nodes, max_parallel=max_parallel,
                                        actor_kind=ActorKind.USER, actor=actor)
        except (InvalidNode, actions.RolloutRefused) as exc:
            raise CommandError(f"nothing was deployed: {exc}") from None
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])


def _app_name(app_dir):
    """The app.ini's app_name, or "" when app.ini itself is what was refused."""
    try:
        return appini.parse_app_ini(os.path.join(app_dir, "app.ini")).app_name
    except (AppIniError, OSError):
        return ""
