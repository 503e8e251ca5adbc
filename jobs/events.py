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
import os
import threading
from contextlib import contextmanager
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from jobs import reducer
from jobs.models import PROJECTED_FIELDS, Job, JobEvent
from jobs.reducer import OUTPUT_KEYS
from jobs.redact import redact
from jobs.states import Kind, Status

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
    return _job_from_row(fields, converters, row)


def append(job, kind, actor, data=None):
    """Append one event to a job locked by lock(); returns the event.

    Data is redacted, capped and normalised through JSON before hashing, so
    the stored bytes are exactly what the hash covers. Raises
    reducer.IllegalTransition if the event does not fit the job's state.
    """
    event = _event(job, kind, actor, data)
    before = [getattr(job, f) for f in PROJECTED_FIELDS]
    reducer.apply(job, event)
    changed = [f for f, old in zip(PROJECTED_FIELDS, before) if getattr(job, f) != old]
    _insert_and_project(event, job, changed)
    return event


def _event(job, kind, actor, data):
    """The job's next event, hashed onto its chain (not yet written)."""
    data = _cap(json.loads(canonical_json(redact(data or {}))), job)
    at = timezone.now()
    seq = job.last_seq + 1
    prev_hash = job.last_hash or GENESIS
    return JobEvent(job_id=job.pk, seq=seq, at=at, kind=kind, data=data, actor=actor, prev_hash=prev_hash,
                    hash=event_hash(prev_hash, job.pk, seq, at, kind, data, actor))


# The statements of every event, written out once per process. Built
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


def write_as_known(job, actor, decide):
    """Append decide(job) -> (kind, data) to the job as this process last wrote it, without reading it again.

    For the runner's own writes (a flow's events, the job's end): nobody else
    writes to a running job unless something went wrong, so the lock and the
    read are skipped, and on PostgreSQL so is the transaction (the write is
    one statement). If another writer did append meanwhile (the sweeper
    ending a job it thinks lost), the write is refused, and decided and done
    again on the job read under its lock. Returns the job as written.
    """
    current = copy.copy(job)
    try:
        with _unless_one_statement():
            append(current, *_decided(decide, current, actor))
        return current
    except IntegrityError:
        with transaction.atomic():
            current = lock(job.pk)
            append(current, *_decided(decide, current, actor))
            return current


def _decided(decide, job, actor):
    kind, data = decide(job)
    return kind, actor, data


@contextmanager
def _unless_one_statement():
    """A transaction for a write that takes several statements; none where it is one.

    On PostgreSQL an event and its projection (or a new job with its first
    event) are one statement, atomic by itself. Inside a caller's transaction
    it still gets a savepoint, so a refused write leaves that transaction usable.
    """
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        yield
    else:
        with transaction.atomic():
            yield


def start_as_queued(job_id, queued_hash, actor, data):
    """job.started for a job still exactly as new_job() left it, in one statement; None if it is not.

    The claim tries this first with the hash the job had when its message
    was sent. A job that is not at that hash any more (sent again, started,
    retried, ended) matches no row, the event is refused, and the claim goes
    the locked way. Only on PostgreSQL, where it is one statement.
    """
    if connection.vendor != "postgresql":
        return None
    # What the row holds if it is at (seq 1, queued_hash): all that job.started reads or changes.
    job = Job(pk=job_id, status=Status.QUEUED, last_seq=1, last_hash=queued_hash)
    event = _event(job, Kind.STARTED, actor, data)
    before = [getattr(job, f) for f in PROJECTED_FIELDS]
    reducer.apply(job, event)
    fields = [_JOB_FIELDS[f] for f, old in zip(PROJECTED_FIELDS, before) if getattr(job, f) != old]
    all_fields, _, converters = _statements()
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in all_fields)
    insert_sql, insert_params = _insert_sql(JobEvent, _EVENT_FIELDS, event)
    head, tail = insert_sql.split(" VALUES (%s, ", 1)
    sql = (f"WITH job AS (UPDATE {quote(Job._meta.db_table)} "
           f"SET {', '.join(f'{quote(f.column)} = %s' for f in fields)} "
           f"WHERE {quote('id')} = %s AND {quote('last_seq')} = 1 AND {quote('last_hash')} = %s "
           f"RETURNING {columns}), "
           f"event AS ({head} VALUES ((SELECT {quote('id')} FROM job), {tail}) "
           f"SELECT {columns} FROM job")
    params = ([f.get_db_prep_save(getattr(job, f.attname), connection) for f in fields]
              + [job_id, queued_hash] + insert_params[1:])
    try:
        with _unless_one_statement(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
    except IntegrityError:
        return None
    return _job_from_row(all_fields, converters, row)


def _job_from_row(fields, converters, row):
    values = []
    for value, (expression, field_converters) in zip(row, converters):
        for convert in field_converters:
            value = convert(value, expression, connection)
        values.append(value)
    return Job.from_db(connection.alias, [f.attname for f in fields], values)


def record(job_id, kind, actor, **data):
    """Append one event in its own transaction."""
    with transaction.atomic():
        return append(lock(job_id), kind, actor, data)


def new_job(kind, *, target, params, actor_kind, actor, parent_id=None):
    """Create a Job and its job.queued event, atomically (committed with the caller's transaction, if any)."""
    queued = {"kind": kind, "target": target, "params": params,
              "actor_kind": actor_kind, "actor": actor, "parent": parent_id}
    if connection.vendor != "postgresql":
        with transaction.atomic():
            job = Job(kind=kind)
            _insert(job)
            append(job, Kind.QUEUED, f"{actor_kind}:{actor}", queued)
        return job
    # With its id known before the row exists, the job row (already its
    # projection) and its first event go in one statement.
    job = Job(pk=_job_ids.take(), kind=kind)
    job.status = ""
    event = _event(job, Kind.QUEUED, f"{actor_kind}:{actor}", queued)
    reducer.apply(job, event)
    job_sql, job_params = _insert_sql(Job, Job._meta.concrete_fields, job)
    event_sql, event_params = _insert_sql(JobEvent, _EVENT_FIELDS, event)
    with connection.cursor() as cursor:
        cursor.execute(f"WITH job AS ({job_sql}) {event_sql}", job_params + event_params)
    job._state.adding = False
    return job


class _JobIds:
    """Job ids from the PostgreSQL sequence, a block at a time: ids can skip when a process ends."""

    BLOCK = 20

    def __init__(self):
        self.lock = threading.Lock()
        self.free = []
        self.pid = None

    def take(self):
        with self.lock:
            if self.pid != os.getpid():  # a forked child must not hand out its parent's ids
                self.pid, self.free = os.getpid(), []
            if not self.free:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                                   [Job._meta.db_table, self.BLOCK])
                    self.free = sorted((row[0] for row in cursor.fetchall()), reverse=True)
            return self.free.pop()


_job_ids = _JobIds()
