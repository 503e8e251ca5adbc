"""The one module that writes job events and the Job projection.

An event is appended under a row lock on its Job (select_for_update), so
`seq` is gapless per job; its hash chains it to the previous event; the
reducer updates the Job row in the same transaction. Nothing else in
toppcloud inserts JobEvent rows or assigns projected Job fields.
"""

import copy
import functools
import hashlib
import json
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import IntegrityError, connection, transaction
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
    fields, select_sql, converters = _statements()
    with connection.cursor() as cursor:
        cursor.execute(select_sql, [job_id])
        row = cursor.fetchone()
    if row is None:
        raise Job.DoesNotExist(f"there is no job {job_id}")
    values = []
    for value, (expression, field_converters) in zip(row, converters):
        for convert in field_converters:
            value = convert(value, expression, connection)
        values.append(value)
    return Job.from_db(connection.alias, [f.attname for f in fields], values)


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
    before = [getattr(job, f) for f in PROJECTED_FIELDS]
    reducer.apply(job, event)
    changed = [f for f, old in zip(PROJECTED_FIELDS, before) if getattr(job, f) != old]
    _insert_and_project(event, job, changed)
    return event


# The three statements of every event, written out once per process. Built
# by the ORM on each call they were most of a worker's CPU time per job
# (bench/jobs_throughput.py); values still go through each field's own
# conversion, so PostgreSQL and SQLite get what the ORM would send.

@functools.cache
def _statements():
    fields = Job._meta.concrete_fields
    quote = connection.ops.quote_name
    select_sql = (f"SELECT {', '.join(quote(f.column) for f in fields)} FROM {quote(Job._meta.db_table)} "
                  f"WHERE {quote('id')} = %s")
    if connection.features.has_select_for_update:
        select_sql += " FOR UPDATE"
    converters = []
    for f in fields:
        expression = f.get_col(Job._meta.db_table)
        converters.append((expression, connection.ops.get_db_converters(expression) + f.get_db_converters(connection)))
    return fields, select_sql, converters


_EVENT_FIELDS = [JobEvent._meta.get_field(f) for f in ("job", "seq", "at", "kind", "data", "actor",
                                                         "prev_hash", "hash")]
_JOB_FIELDS = {f: Job._meta.get_field(f) for f in PROJECTED_FIELDS}


def _insert_sql(model, fields, obj):
    quote = connection.ops.quote_name
    sql = (f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    return sql, [f.get_db_prep_save(getattr(obj, f.attname), connection) for f in fields]


def _insert(job):
    """INSERT a new job row and learn its id (its projection is then set by its first event)."""
    sql, params = _insert_sql(Job, [f for f in Job._meta.concrete_fields if not f.primary_key], job)
    with connection.cursor() as cursor:
        cursor.execute(sql + f" RETURNING {connection.ops.quote_name('id')}", params)
        job.pk = cursor.fetchone()[0]
    job._state.adding = False


def _insert_and_project(event, job, changed):
    """UPDATE the projection where the job is still at the seq before this event, then INSERT the event.

    The UPDATE takes the job row's lock first, as lock() does, so writers
    queue in one order. A job that moved on since it was read (another writer
    appended) matches no row: the event then gets no job id and the database
    refuses it (IntegrityError), which write_as_known() turns into a re-read.
    """
    quote = connection.ops.quote_name
    fields = [_JOB_FIELDS[name] for name in changed]  # only what the event changed: no JSON sent again
    update_sql = (f"UPDATE {quote(Job._meta.db_table)} SET {', '.join(f'{quote(f.column)} = %s' for f in fields)} "
                  f"WHERE {quote('id')} = %s AND {quote('last_seq')} = %s")
    update_params = [f.get_db_prep_save(getattr(job, f.attname), connection) for f in fields] + [
        job.pk, event.seq - 1]
    insert_sql, insert_params = _insert_sql(JobEvent, _EVENT_FIELDS, event)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One round trip: the event's job id is read from the UPDATE, so the UPDATE runs first.
            values = insert_sql.split(" VALUES (%s, ", 1)
            cursor.execute(f"WITH job AS ({update_sql} RETURNING {quote('id')}) "
                           f"{values[0]} VALUES ((SELECT {quote('id')} FROM job), {values[1]}",
                           update_params + insert_params[1:])
        else:
            cursor.execute(update_sql, update_params)
            if cursor.rowcount != 1:
                raise IntegrityError(f"job {job.pk} is no longer at event {event.seq - 1}")
            cursor.execute(insert_sql, insert_params)


def write_as_known(job, write):
    """Run write(job) on the job as this process last wrote it, without reading it again.

    For the runner's own writes (a flow's events, the job's end): nobody else
    writes to a running job unless it goes wrong, so the lock and the read
    are skipped. If another writer did append meanwhile (the sweeper ending a
    job it thinks lost), the write is refused and done again on the job read
    under its lock. Returns the job as written.
    """
    try:
        with transaction.atomic():
            current = copy.copy(job)
            write(current)
            return current
    except IntegrityError:
        with transaction.atomic():
            current = lock(job.pk)
            write(current)
            return current


def record(job_id, kind, actor, **data):
    """Append one event in its own transaction."""
    with transaction.atomic():
        return append(lock(job_id), kind, actor, data)


def new_job(kind, *, target, params, actor_kind, actor, parent_id=None):
    """Create a Job and its job.queued event; call inside a transaction."""
    job = Job(kind=kind)
    _insert(job)
    append(job, Kind.QUEUED, f"{actor_kind}:{actor}", {
        "kind": kind, "target": target, "params": params,
        "actor_kind": actor_kind, "actor": actor, "parent": parent_id,
    })
    return job
