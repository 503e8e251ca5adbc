"""The one module that writes job events and the Job projection.

An event is appended under a row lock on its Job (select_for_update), so
`seq` is gapless per job; its hash chains it to the previous event; the
reducer updates the Job row in the same transaction. Nothing else in
toppcloud inserts JobEvent rows or assigns projected Job fields.
"""

import hashlib
import json
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs import reducer
from jobs.models import PROJECTED_FIELDS, Job, JobEvent
from jobs.reducer import OUTPUT_KEYS
from jobs.redact import redact
from jobs.states import Kind

GENESIS = "0" * 64
CUT_MARK = "\n… [cut: {n} more bytes]"
CAP_REACHED = "[not stored: this job's output cap of {cap} bytes is reached]"


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(prev_hash, job_id, seq, at, kind, data, actor):
    fields = {
        "job": job_id, "seq": seq, "kind": kind, "data": data, "actor": actor,
        "at": at.astimezone(dt_timezone.utc).isoformat(timespec="microseconds"),
    }
    return hashlib.sha256((prev_hash + canonical_json(fields)).encode()).hexdigest()


def _cap(data, job):
    """Cut long output per event, and store none once the job's cap is spent."""
    per_event = settings.JOBS_OUTPUT_CAP_EVENT
    per_job = settings.JOBS_OUTPUT_CAP_JOB
    used = 0
    capped = {}
    for key, value in data.items():
        if key in OUTPUT_KEYS and isinstance(value, str) and value:
            room = min(per_event, per_job - job.output_bytes - used)
            if room <= 0:
                value = CAP_REACHED.format(cap=per_job)
            else:
                raw = value.encode()
                if len(raw) > room:
                    value = raw[:room].decode(errors="ignore") + CUT_MARK.format(n=len(raw) - room)
                used += min(len(raw), room)
        capped[key] = value
    return capped


def lock(job_id):
    """The Job row, locked until the surrounding transaction ends."""
    return Job.objects.select_for_update().get(pk=job_id)


def append(job, kind, actor, data=None):
    """Append one event to a job locked by lock(); returns the event.

    Data is redacted, capped and normalised through JSON before hashing, so
    the stored bytes are exactly what the hash covers. Raises
    reducer.IllegalTransition if the event does not fit the job's state.
    """
    data = json.loads(canonical_json(redact(data or {})))
    data = _cap(data, job)
    at = timezone.now()
    seq = job.last_seq + 1
    prev_hash = job.last_hash or GENESIS
    event = JobEvent(
        job_id=job.pk, seq=seq, at=at, kind=kind, data=data, actor=actor, prev_hash=prev_hash,
        hash=event_hash(prev_hash, job.pk, seq, at, kind, data, actor),
    )
    reducer.apply(job, event)
    event.save(force_insert=True)
    job.save(update_fields=PROJECTED_FIELDS)
    return event


def record(job_id, kind, actor, **data):
    """Append one event in its own transaction."""
    with transaction.atomic():
        return append(lock(job_id), kind, actor, data)


def new_job(kind, *, target, params, actor_kind, actor, parent_id=None):
    """Create a Job and its job.queued event; call inside a transaction."""
    job = Job.objects.create(kind=kind)
    append(job, Kind.QUEUED, f"{actor_kind}:{actor}", {
        "kind": kind, "target": target, "params": params,
        "actor_kind": actor_kind, "actor": actor, "parent": parent_id,
    })
    return job
