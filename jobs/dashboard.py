"""The admin's index as a dashboard: where each app is live and whether it is healthy, the nodes (up, load,
disk), the jobs running now, the recent failures and the next cron runs.

Everything is read from the records and the jobs' projections (LiveRelease, Job rows: a ping_node job's
result holds the node's load and disk), in a fixed number of queries whatever the number of apps, nodes and
jobs (tests/test_dashboard.py counts them).
"""

from datetime import timedelta

from django.db.models import OuterRef, Subquery, Value
from django.db.models.functions import Concat
from django.utils import timezone

from jobs.engine.states import Status
from jobs.models import Job, LiveRelease
from toppcloud_site.records.models import App, CronEntry, Node

SHOWN = 10                            # jobs running now, failures, cron runs: the first SHOWN of each
PING_FRESH = timedelta(minutes=15)    # a node whose last ping is older says so
# How far back the newest ping of a node and the last run of a cron entry are looked for: each is found by
# walking jobs_job_newest_idx back from now, so a node never pinged costs this window, not the whole table.
PING_WINDOW, CRON_WINDOW = timedelta(days=7), timedelta(days=45)
HEALTH_KINDS = ("deploy", "rollback", "apply_config")  # the jobs that ask a live app its health URL
ACTIVE = (Status.QUEUED, Status.RUNNING, Status.WAITING)
FAILED = (Status.FAILED, Status.LOST)


def first_line(text, limit=160):
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def context(user, now=None):
    """What templates/admin/dashboard.html shows: each part only to a user who may view what it lists."""
    now = now or timezone.now()
    may = user.has_perm
    jobs = may("jobs.view_job")
    shown = {"dashboard": {
        "apps": apps() if may("records.view_app") else None,
        "nodes": nodes(now) if may("records.view_node") and jobs else None,
        "running": running() if jobs else None,
        "failures": failures() if jobs else None,
        "cron": next_cron_runs(now) if may("records.view_cronentry") and jobs else None,
        "now": now}}
    d = shown["dashboard"]
    if d["apps"] is not None:
        d["live_count"] = sum(1 for a in d["apps"] if a["live"])
    if d["nodes"] is not None:
        d["nodes_up"] = sum(1 for n in d["nodes"] if n["up"])
        d["nodes_down"] = sum(1 for n in d["nodes"] if n["up"] is False)
    return shown


def apps():
    """Each app with where it is live: release, since when, and its health (2 queries)."""
    lives = list(LiveRelease.objects.select_related("app", "node", "release").order_by("app__name", "node__name",
                                                                                         "host", "path"))
    by_app = {}
    for live in lives:
        by_app.setdefault(live.app_id, []).append(live)
    health = _health(lives)
    shown = []
    for app in App.objects.order_by("name"):
        rows = [{"live": live, "health": health.get((live.app.name, live.node.name), {"ok": True, "job": live.job_id,
                                                                                        "at": live.activated_at})}
                for live in by_app.get(app.pk, [])]
        shown.append({"app": app, "live": rows})
    return shown


def _health(lives):
    """(app, node) -> the last health answer: the newest deploy, rollback or config apply of the app on the node
    since its release went live (each asks the health URL); a failed one says why (1 query)."""
    if not lives:
        return {}
    targets = {f"app:{live.app.name}@{live.node.name}": live for live in lives}
    since = min(live.activated_at for live in lives)
    found = {}
    for job in (Job.objects.filter(kind__in=HEALTH_KINDS, target__in=list(targets), queued_at__gte=since)
                .exclude(status__in=ACTIVE).order_by("-queued_at", "-id")
                .only("id", "target", "status", "error", "finished_at", "queued_at")[:500]):
        live = targets[job.target]
        key = (live.app.name, live.node.name)
        if key in found or job.finished_at is None or job.finished_at < live.activated_at:
            continue
        ok = job.status == Status.SUCCEEDED
        found[key] = {"ok": ok, "job": job.pk, "at": job.finished_at, "error": "" if ok else first_line(job.error)}
    return found


def nodes(now):
    """Each node with its last ping: up or not, load, disk, memory (2 queries)."""
    last_ping = (Job.objects.filter(kind="ping_node", target=Concat(Value("node:"), OuterRef("name")),
                                    queued_at__gte=now - PING_WINDOW)
                 .exclude(status__in=ACTIVE).order_by("-queued_at", "-id").values("pk")[:1])
    rows = list(Node.objects.select_related("group").annotate(last_ping_id=Subquery(last_ping)).order_by("name"))
    pings = Job.objects.in_bulk([n.last_ping_id for n in rows if n.last_ping_id])
    shown = []
    for node in rows:
        ping = pings.get(node.last_ping_id)
        shown.append({"node": node, "ping": ping, **_node_state(node, ping, now)})
    return shown


def _node_state(node, ping, now):
    if ping is None:
        return {"state": "set up, not pinged lately" if node.set_up_at else "not set up", "up": None, "reading": {}}
    if ping.status != Status.SUCCEEDED:
        return {"state": f"down: {first_line(ping.error)}", "up": False, "reading": {}}
    reading = dict(ping.result or {})
    if reading.get("disk_total_bytes"):
        reading["disk_used_percent"] = round(100 * (1 - reading["disk_free_bytes"] / reading["disk_total_bytes"]))
    if reading.get("mem_total_bytes"):
        reading["mem_used_percent"] = round(100 * (1 - reading["mem_available_bytes"] / reading["mem_total_bytes"]))
    stale = ping.finished_at and now - ping.finished_at > PING_FRESH
    return {"state": "up (last ping is old)" if stale else "up", "up": not stale, "reading": reading}


def running():
    """The jobs queued or running now, oldest first (1 query)."""
    return list(Job.objects.filter(status__in=ACTIVE).order_by("queued_at", "id")
                .only("id", "kind", "target", "status", "actor_kind", "actor", "queued_at", "started_at")[:SHOWN])


def failures():
    """The newest failed or lost jobs, with the first line of their error (1 query)."""
    jobs = list(Job.objects.filter(status__in=FAILED).order_by("-queued_at", "-id")
                .only("id", "kind", "target", "status", "error", "finished_at", "queued_at")[:SHOWN])
    for job in jobs:
        job.error_line = first_line(job.error)
    return jobs


def next_cron_runs(now):
    """The cron entries by their next run (their beat schedules), with their last run (2 queries)."""
    last_run = (Job.objects.filter(kind="cron_run", target=Concat(Value("cron:"), OuterRef("app__name"), Value(":"),
                                                                   OuterRef("name")), queued_at__gte=now - CRON_WINDOW)
                .order_by("-queued_at", "-id").values("pk")[:1])
    entries = list(CronEntry.objects.select_related("app", "periodic_task__crontab")
                   .annotate(last_run_id=Subquery(last_run)))
    runs = Job.objects.in_bulk([e.last_run_id for e in entries if e.last_run_id])
    shown = []
    for entry in entries:
        task = entry.periodic_task
        if task is None or task.crontab is None or not task.enabled:
            continue
        shown.append({"entry": entry, "next": next_run(task.crontab, now), "last": runs.get(entry.last_run_id)})
    shown.sort(key=lambda e: e["next"])
    return shown[:SHOWN]


def next_run(crontab_schedule, now):
    """When a django-celery-beat crontab fires next after now."""
    schedule = crontab_schedule.schedule  # celery's crontab, in the schedule's time zone
    return now + schedule.remaining_estimate(now)


def cron_last_runs(entries):
    """CronEntry pk -> its newest cron_run job, for the App page (1 query)."""
    entries = list(entries)
    if not entries:
        return {}
    targets = {f"cron:{e.app.name}:{e.name}": e.pk for e in entries}
    found = {}
    for job in (Job.objects.filter(kind="cron_run", target__in=list(targets),
                                   queued_at__gte=timezone.now() - CRON_WINDOW).order_by("-queued_at", "-id")
                .only("id", "target", "status", "queued_at", "finished_at")[:50 * len(targets)]):
        found.setdefault(targets[job.target], job)
    return found
