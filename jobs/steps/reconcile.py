"""Reconcile a node with the records: nginx serves what is live, and only what is live runs.

A job killed half-way (its worker SIGKILLed, its host lost) leaves what it
had done: a started release nobody activated, an old release not stopped,
nginx pointing at a release whose release.activated was never committed,
its unpacked archive in this machine's temporary directory. reconcile()
puts that right, and records what it did (a node.reconciled event):

1. Lock the app locks (jobs/steps/locks.py) of the apps it looks at: a deploy or
   rollback of one of them waits until this is done instead of starting a
   release under its feet. An app whose lock a running job holds (other
   than this job or its parent) is skipped: that job may be starting a
   release right now, and its own end or the next reconcile deals with it.
   So the releases to keep are exactly the live ones (the LiveRelease
   projection) of every app not skipped.
2. Render the node's front door from the records and push it (unchanged
   when it already agrees; a kill between nginx's reload and the commit of
   release.activated is undone here, back to what the projection says).
3. On the node, stop and forget every program of those apps whose release
   is not kept (nodeops/reconcile.py, one round trip).
4. Remove the unpack directories of jobs that have ended, on this machine.

It runs at the start of each deploy and rollback (for that app, under its
lock), in setup_node and in the periodic reconcile_node job (every app).
"""

import logging
import os
import re
import shutil

from django.conf import settings
from django.db import transaction

from jobs.models import Job, LiveRelease
from jobs.steps import frontdoor, locks
from jobs.engine.states import TERMINAL, Kind
from nodeops import reconcile as node_reconcile
from nodeops.frontdoor import FrontDoorError
from nodeops.layout import NodeLayout
from nodeops.transport import TransportError
from toppcloud_site.records.models import App

log = logging.getLogger(__name__)
# mkdtemp's random part is letters, digits and '_', so "-job<id>-" before it is unambiguous.
_UNPACK_RE = re.compile(r"toppcloud-[a-z][a-z0-9-]*-job([0-9]+)-[a-z0-9_]+")


def unpack_prefix(app_name, job_id):
    """The name an unpack directory of this job starts with (clear_unpack_dirs() finds it by the job id)."""
    return f"toppcloud-{app_name}-job{job_id}-"


def unpack_base():
    """Where this installation unpacks releases: under its own var directory, so another control plane
    on the machine (a second test run, a bench) never sees, nor removes, its unpack directories."""
    base = os.path.join(settings.VAR_DIR, "unpack")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return base


def reconcile(ctx, node, apps=None):
    """Make `node` agree with the records for `apps` (App rows; None: every app); what it did, as a dict."""
    t, layout = ctx.transport(node), NodeLayout(node.root)
    apps = sorted(apps if apps is not None else App.objects.all(), key=lambda a: a.pk)
    result = {"node": node.name, "front_door_changed": False, "stopped": [], "skipped": {}}
    with transaction.atomic():
        held = locks.lock_apps(apps)
        holders = {j.pk: j for j in Job.objects.filter(pk__in=[job_id for job_id in held.values() if job_id])}
        mine = {ctx.job_id, ctx.parent_id}
        wanted = {}
        for app in apps:
            holder = holders.get(held[app.pk])
            if holder is not None and holder.pk not in mine and holder.status not in TERMINAL:
                result["skipped"][app.name] = f"job {holder.pk} ({holder.kind}) is changing it"
                continue
            wanted[app.name] = set()
        for name, release in LiveRelease.objects.filter(node=node, app__name__in=list(wanted)).values_list(
                "app__name", "release__name"):
            wanted[name].add(release)
        try:
            # First the front door: a program is stopped only once nginx no longer points at it.
            result["front_door_changed"] = frontdoor.update(ctx, node)
        except (FrontDoorError, TransportError) as exc:
            result["front_door_error"] = str(exc)
            result["stopped_nothing_because"] = ("the front door could not be made to agree with the records, "
                                                 "so nginx may still point at a program not live")
        else:
            found = node_reconcile.reconcile_programs(
                t, ctx.emit, layout, {a: sorted(r) for a, r in wanted.items()},
                App.objects.values_list("name", flat=True))
            result["stopped"] = found["stopped"]
            if found["unknown"]:
                result["unknown_programs"] = found["unknown"]
        result["kept"] = {a: sorted(r) for a, r in wanted.items() if r}
        result["removed_unpack_dirs"] = clear_unpack_dirs()
        ctx.emit(Kind.RECONCILED, **result)
    return result


def clear_unpack_dirs():
    """Remove this machine's unpack directories (releases.unpacked()) of jobs no longer running; their names."""
    base = unpack_base()
    found = {}
    for entry in os.listdir(base):
        m = _UNPACK_RE.fullmatch(entry)
        if m:
            found[entry] = int(m.group(1))
    running = set(Job.objects.filter(pk__in=set(found.values())).exclude(status__in=TERMINAL)
                  .values_list("pk", flat=True))
    removed = sorted(entry for entry, job_id in found.items() if job_id not in running)
    for entry in removed:
        shutil.rmtree(os.path.join(base, entry), ignore_errors=True)
    return removed


def reconcile_app(ctx, app, node, step):
    """Before changing the app on the node: undo what an interrupted deploy or rollback of it left there
    (what it stopped is recorded in `step`)."""
    done = reconcile(ctx, node, apps=[app])
    step.data.update(stopped=[p["program"] for p in done["stopped"]], front_door_changed=done["front_door_changed"])
    step.changed = bool(done["stopped"] or done["front_door_changed"] or done["removed_unpack_dirs"])
