"""A cron run, as a person would do it by hand.

Make sure the entry is not running already (else record the skip and
stop); take the first node where the app is live; read the entry from the
release live there; run its script through the release's environment, or
ask its path of the live release; record how long it waited, its output and
its exit code or HTTP status. A run still going at the entry's timeout is
stopped with every process it started.
"""

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from jobs.engine.context import FlowFailed
from jobs.steps import cron, execution, locks, records
from jobs.steps.environment import mask_app_secrets
from nodeops import release as node_release
from nodeops.layout import NodeLayout
from nodeops.transport import TransportError


def cron_run(ctx, app, entry, scheduled_for=None):
    """One run of an app's cron entry (no step events: cron.* events say what it did).

    1. the entry's lock (else cron.skipped: a run of it is still going)
    2. cron.started: on the first node where the app is live, the entry as its live release has it
    3. cron.finished: its script run through the release's environment, or its path asked of the
       release (the next node if one cannot be reached)
    """
    app = records.app(app)
    mask_app_secrets(app)  # output and answers may print them
    running = locks.take(ctx, locks.cron_key(app.name, entry))
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
