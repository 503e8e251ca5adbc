"""A cron run, as a person would do it by hand.

Make sure the entry is not running already (else record the skip and
stop); take the first node where the app is live; read the entry from the
release live there; run its script through the release's environment, or
ask its path of the live release; record how long it waited, its output and
its exit code or HTTP status. A run still going at the entry's timeout is
stopped with every process it started.
"""

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from jobs.steps import cron, execution
from jobs.engine.context import FlowFailed
from jobs.steps.environment import mask_app_secrets
from jobs.flows import flow
from jobs.models import Job, RunLock
from jobs.engine.states import TERMINAL
from nodeops import release as node_release
from nodeops.layout import NodeLayout
from nodeops.transport import TransportError
from toppcloud_site.records.models import App


@flow("cron_run", queue="cron", retry_when_worker_lost=False)
def cron_run(ctx, app, entry, scheduled_for=None):
    app = App.objects.get(name=app)
    mask_app_secrets(app)  # output and answers may print them
    running = take_run_lock(ctx, f"cron:{app.name}:{entry}")
    if running is not None:
        ctx.emit("cron.skipped", entry=entry, running_job=running.pk,
                 reason=f"run {running.pk} of {entry} is still going (started {running.started_at:%H:%M:%S})")
        return f"{app.name} cron {entry}: skipped, job {running.pk} is still running it", {"skipped": True}
    places = execution.live_places(app)
    if not places:
        raise FlowFailed(f"{app.name} is not live on any node; cron {entry} did not run")
    for live in places:
        spec = cron.entries_of(live.release).get(entry)
        if spec is None:
            raise FlowFailed(f"release {live.release.name}, live on {live.node.name}, has no cron entry {entry!r}")
        try:
            return run_entry(ctx, app, live, spec, scheduled_for)
        except TransportError as exc:
            if live is places[-1]:
                raise
            ctx.emit("cron.node_unreachable", node=live.node.name, error=str(exc))


def take_run_lock(ctx, key):
    """The job already running this (it stays running), or None once this job holds the lock."""
    with transaction.atomic():
        lock, _ = RunLock.objects.select_for_update().get_or_create(key=key)
        holder = Job.objects.filter(pk=lock.job_id).first() if lock.job_id else None
        if holder is not None and holder.pk != ctx.job_id and holder.status not in TERMINAL:
            return holder
        lock.job_id, lock.taken_at = ctx.job_id, timezone.now()
        lock.save()
    return None


def run_entry(ctx, app, live, spec, scheduled_for):
    t, layout = ctx.transport(live.node), NodeLayout(live.node.root)
    name, target, timeout = spec["name"], spec["target"], spec["timeout"]
    where = f"{app.name} cron {name} on {live.node.name}"
    started = timezone.now()
    delay = round((started - parse_datetime(scheduled_for)).total_seconds(), 3) if scheduled_for else None
    ctx.emit("cron.started", entry=name, node=live.node.name, release=live.release.name, target=target,
             timeout=timeout, scheduled_for=scheduled_for, delay=delay)

    if target.startswith("script:"):
        result = execution.run_in_release(ctx, t, layout, app.name, live.release.name, spec["argv"],
                                          timeout=timeout, log=layout.cron_log(app.name),
                                          label=f"cron {name} (job {ctx.job_id})")
        ctx.emit("cron.finished", entry=name, rc=result.rc, timed_out=result.timed_out, signal=result.signal,
                 leftovers=result.leftovers, seconds=result.seconds)
        if result.rc != 0:
            raise FlowFailed(f"{where}: {spec['argv'][0]} {result.describe()}")
        return f"{where}: exited 0 in {result.seconds:.1f} s", {"rc": 0, "node": live.node.name}

    answer = node_release.internal_request(t, live.port, execution.internal_path(live, target), host=live.host,
                                           script_name=execution.script_name(live),
                                           headers={"X-Toppcloud-Cron": name}, timeout=timeout)
    ctx.emit("cron.finished", entry=name, **answer)
    if "error" in answer:
        raise FlowFailed(f"{where}: GET {target} got no answer: {answer['error']}")
    if not 200 <= answer["status"] < 300:
        raise FlowFailed(f"{where}: GET {target} answered {answer['status']}: {answer['body'][:200]!r}")
    return (f"{where}: GET {target} answered {answer['status']} in {answer['seconds']:.1f} s",
            {"status": answer["status"], "node": live.node.name})
