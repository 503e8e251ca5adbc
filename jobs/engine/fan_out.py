"""Parent jobs and their children, tracked in the database (no chords).

A parent flow queues its first children and returns WaitForChildren; its
job is then `waiting`. Each child that ends calls child_ended(): under the
parent's lock it queues the next planned child (max_parallel at a time) or,
when all have ended, ends the parent with a summary of theirs. The sweeper
calls it too, so a parent is never left waiting by a crash in between.
"""

from django.db import transaction

from jobs.engine import dispatch, events
from jobs.models import Job
from jobs.engine.states import TERMINAL, ActorKind, Kind, Status


def start_children(parent_job, plan, max_parallel):
    """Queue the first max_parallel of plan: a list of {"kind", "target", "params"}."""
    for child in plan[:max_parallel]:
        _submit(parent_job, child)


def child_ended(parent_id):
    with transaction.atomic():
        parent = events.lock(parent_id)
        if parent.status != Status.WAITING:
            return
        plan, max_parallel = parent.params["children"], parent.params.get("max_parallel") or len(parent.params["children"])
        children = list(Job.objects.filter(parent_id=parent_id).order_by("pk"))
        running = [c for c in children if c.status not in TERMINAL]
        for child in plan[len(children):len(children) + max(0, max_parallel - len(running))]:
            _submit(parent, child)
            running.append(child)
        if running:
            return
        failed = [c for c in children if c.status != Status.SUCCEEDED]
        summary = f"{len(children) - len(failed)} of {len(children)} child jobs succeeded"
        results = {str(c.pk): {"target": c.target, "status": c.status, "summary": c.summary, "error": c.error}
                   for c in children}
        actor = "system:fan-out"
        if failed:
            errors = "; ".join(f"{c.target}: {c.status}: {c.error}" for c in failed)
            events.append(parent, Kind.FAILED, actor, {"error": f"{summary}. {errors}", "result": results})
        else:
            events.append(parent, Kind.SUCCEEDED, actor, {"summary": summary, "result": results})


def _submit(parent, child):
    return dispatch.submit(child["kind"], target=child["target"], params=child["params"],
                           actor_kind=ActorKind.PARENT, actor=str(parent.pk), parent_id=parent.pk)
