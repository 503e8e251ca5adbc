"""manage.py status APP: what is live where (the projection of release.activated events)."""

import json

from django.core.management.base import CommandError

from jobs import cli
from jobs.models import LiveRelease
from jobs.steps import replication
from toppcloud_site.records.models import App, Service


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
        database = _database(App.objects.get(name=app))
        if as_json:
            self.stdout.write(json.dumps({"app": app, "live": rows, **database}, sort_keys=True))
            return
        if not rows:
            self.stdout.write(f"{app}: not live anywhere")
        for r in rows:
            self.stdout.write(f"{app}  {r['node']:<20} {r['location']:<30} {r['release']}  "
                              f"version {r['version'] or '-'}  (job {r['job']}, {r['activated_at'][:19]})")
        if database:
            self.stdout.write(f"{app}  database on {database['database']['node']} "
                              f"(port {database['database']['port']}, read-write)")
            for row in database["replicas"]:
                self.stdout.write(f"{app}  {replication.describe(row)}")


def _database(app):
    """{"database": where the app's PostgreSQL database is, "replicas": [its replicas' figures, as last
    recorded]}, or {} for an app without one."""
    service = Service.objects.filter(app=app, kind=Service.Kind.POSTGRESQL).select_related("node").first()
    if service is None:
        return {}
    replicas = [replication.replica_row(n) for n in replication.replicas(app.group)
                if (n.facts or {}).get("replica_of") == service.node.name] if app.group_id else []
    return {"database": {"node": service.node.name, "port": service.node.pg_port}, "replicas": replicas}
