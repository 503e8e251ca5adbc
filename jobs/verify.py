"""Replay every job's events: check hash chains and rebuild projections."""

from jobs import reducer
from jobs.events import GENESIS, event_hash
from jobs.models import PROJECTED_FIELDS, Job, JobEvent


def verify_job(job, events):
    """The problems found in one job (empty when all is well)."""
    problems = []
    prev = GENESIS
    for expected_seq, event in enumerate(events, start=1):
        if event.seq != expected_seq:
            problems.append(f"event seq {event.seq} where {expected_seq} was expected (gap or reorder)")
            return problems
        if event.prev_hash != prev:
            problems.append(f"event {event.seq}: prev_hash does not match the hash of event {event.seq - 1}")
        computed = event_hash(event.prev_hash, job.pk, event.seq, event.at, event.kind, event.data, event.actor)
        if computed != event.hash:
            problems.append(f"event {event.seq} ({event.kind}): content does not match its hash (edited?)")
        prev = event.hash
    try:
        rebuilt = reducer.replay(job.pk, events)
    except reducer.IllegalTransition as exc:
        problems.append(f"replay refused: {exc}")
        return problems
    for field in PROJECTED_FIELDS:
        stored, replayed = getattr(job, field), getattr(rebuilt, field)
        if stored != replayed:
            problems.append(f"projection field {field}: row has {stored!r}, events give {replayed!r}")
    return problems


def orphan_events():
    """Job ids that events name but no job row has (there should be none)."""
    return sorted(set(JobEvent.objects.exclude(job_id__in=Job.objects.values("pk")).values_list("job_id", flat=True)))


def verify_all(batch=500):
    """Yield (job, problems) for every job, oldest first."""
    last_id = 0
    while True:
        jobs = list(Job.objects.filter(pk__gt=last_id).order_by("pk")[:batch])
        if not jobs:
            return
        by_job = {job.pk: [] for job in jobs}
        for event in JobEvent.objects.filter(job_id__in=by_job).order_by("job_id", "seq"):
            by_job[event.job_id].append(event)
        for job in jobs:
            yield job, verify_job(job, by_job[job.pk])
        last_id = jobs[-1].pk
