"""The one reducer: how each event changes the Job projection.

apply() is used when an event is written and again by replay(), so a Job row
can always be rebuilt from its events (`manage.py jobs verify`).
"""

from django.utils.dateparse import parse_datetime

from jobs.engine.states import TERMINAL, TRANSITIONS, Kind

OUTPUT_KEYS = ("stdout", "stderr", "text", "output", "traceback", "body")


class IllegalTransition(Exception):
    pass


def output_size(data):
    return sum(len(data[k].encode()) for k in OUTPUT_KEYS if isinstance(data.get(k), str))


def apply(job, event):
    data = event.data
    if event.seq != job.last_seq + 1:
        raise IllegalTransition(f"job {job.pk}: event seq {event.seq} follows {job.last_seq}")
    if event.kind in TRANSITIONS:
        allowed_from, to = TRANSITIONS[event.kind]
        current = job.status or None
        if current not in allowed_from:
            raise IllegalTransition(f"job {job.pk}: {event.kind} is not allowed while {current}")
        job.status = to.value

    if event.kind == Kind.QUEUED:
        job.kind = data["kind"]
        job.target = data["target"]
        job.params = data["params"]
        job.actor_kind = data["actor_kind"]
        job.actor = data["actor"]
        job.parent_id = data["parent"]
        job.queued_at = job.sent_at = event.at
        job.run_after = _time(data.get("run_after"))
    elif event.kind == Kind.RESENT:
        job.resends += 1
        job.sent_at = event.at
    elif event.kind == Kind.SENT:
        job.sent_at = event.at
    elif event.kind == Kind.STARTED:
        job.attempt = data["attempt"]
        job.worker = data["worker"]
        job.worker_hostname = data["hostname"]
        job.worker_pid = data["pid"]
        job.started_at = job.started_at or event.at
        job.attempt_started_at = event.at
    elif event.kind == Kind.RETRYING:
        job.sent_at = event.at
        job.run_after = _time(data.get("run_after"))
        job.error = data["reason"]
    elif event.kind == Kind.SUCCEEDED:
        job.summary = data.get("summary", "")
        job.result = data.get("result")
        job.error = ""
    elif event.kind in (Kind.FAILED, Kind.LOST, Kind.CANCELLED):
        job.error = data.get("error") or data.get("reason", "")
        job.summary = data.get("summary", job.summary)
    if job.status in TERMINAL and event.kind in TRANSITIONS:
        job.finished_at = event.at

    job.output_bytes += output_size(data)
    job.last_seq = event.seq
    job.last_hash = event.hash


def _time(value):
    return parse_datetime(value) if value else None


def replay(job_id, events):
    """A fresh, unsaved Job built from events alone."""
    from jobs.models import Job

    job = Job(pk=job_id)
    job.status = ""
    for event in events:
        apply(job, event)
    return job
