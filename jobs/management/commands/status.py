"""manage.py status APP: what is live where (the projection of release.activated events)."""

import json

from django.core.management.base import CommandError

from jobs import cli
from jobs.models import LiveRelease
from toppcloud_site.records.models import App


class Command(cli.Command):
    help = "Show which release of an app is live on which node and location."

    def add_arguments(self, parser):
        parser.add_argument("app")
        parser.add_argument("--json", dest="as_json", action="store_true")

    def handle(self, app, as_json, **opts):
        if not App.objects.filter(name=app).exists():
            raise CommandError(f"there is no app {app!r}")
        live = LiveRelease.objects.filter(app__name=app).select_related("node", "release").order_by("node__name")
        rows = [{"node": lr.node.name, "location": f"{lr.host}{lr.path}", "release": lr.release.name,
                 "version": lr.release.version, "port": lr.port, "job": lr.job_id,
                 "activated_at": lr.activated_at.isoformat()} for lr in live]
        if as_json:
            self.stdout.write(json.dumps({"app": app, "live": rows}, sort_keys=True))
            return
        if not rows:
            self.stdout.write(f"{app}: not live anywhere")
        for r in rows:
            self.stdout.write(f"{app}  {r['node']:<20} {r['location']:<30} {r['release']}  "
                              f"version {r['version'] or '-'}  (job {r['job']}, {r['activated_at'][:19]})")
