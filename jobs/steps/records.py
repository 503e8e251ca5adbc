"""A flow's records by name: the row, or FlowFailed in one line (`no app named 'x'`), never a traceback.

A job names its records in its parameters; one may be gone (deleted, or
misspelt by a script) by the time the job runs.
"""

from jobs.engine.context import FlowFailed
from toppcloud_site.records.models import App, Backup, Node, Release, ServerGroup


def app(name):
    return _get(App.objects, "app", name, name=name)


def node(name):
    return _get(Node.objects, "node", name, name=name)


def group(name):
    return _get(ServerGroup.objects, "server group", name, name=name)


def release(app, name):
    """The release of `app` named `name`."""
    return _get(Release.objects, f"release of {app.name}", name, app=app, name=name)


def backup(name):
    return _get(Backup.objects.select_related("app"), "backup", name, name=name)


def _get(query, what, shown, **match):
    row = query.filter(**match).first()
    if row is None:
        raise FlowFailed(f"no {what} named {shown!r}")
    return row
