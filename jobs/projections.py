"""Rows kept from events, outside the job row: what is live where.

Registered with the engine at start (jobs/apps.py); each runs in the
transaction that appends its event, so the row and the event agree.
"""

from jobs.engine import events
from jobs.engine.states import Kind
from jobs.models import LiveRelease
from toppcloud_site.records.models import App, Node, Release


@events.projection(Kind.RELEASE_ACTIVATED)
def live_release(event):
    """What is live where: the release.activated event's (app, node, host, path) now serves its release."""
    d = event.data
    app = App.objects.get(name=d["app"])
    LiveRelease.objects.update_or_create(
        app=app, node=Node.objects.get(name=d["node"]), host=d["host"], path=d["path"],
        defaults={"release": Release.objects.get(app=app, name=d["release"]), "port": d["port"],
                  "job_id": event.job_id, "activated_at": event.at})
