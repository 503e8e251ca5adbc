"""Parent jobs and their children, tracked in the database (no chords).

A parent flow queues its first children and returns WaitForChildren; its
job is then `waiting`. Each child that ends calls child_ended(): under the
parent's lock it queues the next planned child (max_parallel at a time) or,
when all have ended, ends the parent with a summary of theirs. The sweeper
calls it too, so a parent is never left waiting by a crash in between.

A parent with params["batches"] (sizes of consecutive slices of its plan: a
rolling deploy) runs them strictly: batch N+1 is queued only once every child
of batch N has succeeded; the first failure ends the parent, and the children
not yet queued never are (its error and a rollout.stopped event name them).
"""

from django.db import transaction

from jobs.engine import dispatch, events
from jobs.models import Job
from jobs.engine.states import TERMINAL, ActorKind, Kind, Status

ACTOR = "system:fan-out"


def start_children(parent_job, plan, max_parallel):
    """Queue the first max_parallel of plan: a list of {"kind", "target", "params"}."""
    for child in plan[:max_parallel]:
        _submit(parent_job, child)


def start_batches(parent_job, plan, batches):
    """Queue the first batch of plan; child_ended() queues each next one when every child before succeeded."""
    if sum(batches) != len(plan) or min(batches, default=1) < 1:
        raise ValueError(f"batches {batches} do not cover the {len(plan)} children in order")
    for child in plan[:batches[0]]:
        _submit(parent_job, child)


def child_ended(parent_id):
    with transaction.atomic():
        parent = events.lock(parent_id)
        if parent.status != Status.WAITING:
            return
        if parent.params.get("batches"):
            return _batch_ended(parent)
        plan, max_parallel = parent.params["children"], parent.params.get("max_parallel") or len(parent.params["children"])
        children = list(Job.objects.filter(parent_id=parent_id).order_by("pk"))
        running = [c for c in children if c.status not in TERMINAL]
        for child in plan[len(children):len(children) + max(0, max_parallel - len(running))]:
            _submit(parent, child)
            running.append(child)
        if running:
            return
        _end(parent, children)


def _batch_ended(parent):
    """Under the parent's lock: the next batch once every child so far succeeded, else the parent's end."""
    plan, batches = parent.params["children"], parent.params["batches"]
    children = list(Job.objects.filter(parent_id=parent.pk).order_by("pk"))
    if any(c.status not in TERMINAL for c in children):
        return
    failed = [c for c in children if c.status != Status.SUCCEEDED]
    if not failed and len(children) < len(plan):
        ends = [sum(batches[:i + 1]) for i in range(len(batches))]
        done = ends.index(len(children))  # batches are queued whole: the children so far end one
        batch = plan[ends[done]:ends[done + 1]]
        events.append(parent, "batch.started", ACTOR, {"batch": done + 2, "of": len(batches),
                                                       "targets": [c["target"] for c in batch]})
        for child in batch:
            _submit(parent, child)
        return
    not_started = [c["target"] for c in plan[len(children):]]
    if failed and not_started:
        events.append(parent, "rollout.stopped", ACTOR, {"failed": [c.target for c in failed],
                                                         "not_started": not_started})
    _end(parent, children, not_started)


def _end(parent, children, not_started=()):
    failed = [c for c in children if c.status != Status.SUCCEEDED]
    summary = f"{len(children) - len(failed)} of {len(children)} child jobs succeeded"
    if not_started:
        summary += f"; not started: {', '.join(not_started)}"
    results = {str(c.pk): {"target": c.target, "status": c.status, "summary": c.summary, "error": c.error}
               for c in children}
    if failed:
        errors = "; ".join(f"{c.target}: {c.status}: {c.error}" for c in failed)
        events.append(parent, Kind.FAILED, ACTOR, {"error": f"{summary}. {errors}", "result": results})
    else:
        events.append(parent, Kind.SUCCEEDED, ACTOR, {"summary": summary, "result": results})


def _submit(parent, child):
    return dispatch.submit(child["kind"], target=child["target"], params=child["params"],
                           actor_kind=ActorKind.PARENT, actor=str(parent.pk), parent_id=parent.pk)
