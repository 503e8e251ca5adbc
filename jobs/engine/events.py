"""The one module that writes job events and the Job projection.

Every event is written the same way: the reducer computes the new
projection, then one guarded write UPDATEs the Job row only if it is still
at the event before this one (its last seq and hash), and INSERTs the event,
keyed (job, seq). A writer working from a stale read therefore cannot fork
the chain: its write is refused. `seq` is gapless per job and each event's
hash, keyed with TOPPCLOUD_LOG_KEY, chains it to the previous one; jobs/engine/seal.py
seals every job's head at intervals, so deleted and cut-off jobs show too.

Who writes how:
- lock() + append(): under the job's row lock (select_for_update), for
  writers that must decide from the current state: a claim that is not a
  first delivery, the sweeper, record().
- new_job(): a job and its job.queued event; refused_job(): one that ends there, failed.
- start_as_queued(): job.started on the first delivery of a job still as
  new_job() left it, the usual case.
- write_as_known(): the runner's own later writes (a flow's events, the end).
The last two skip the lock and the read: nobody else writes to a job then
unless something went wrong, and if someone did, their write is refused and
done again the locked way. On PostgreSQL each write is one statement.
"""

import copy
import functools
import json
import os
import threading
from contextlib import contextmanager
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from jobs.engine import reducer
from jobs.models import PROJECTED_FIELDS, Job, JobEvent
from jobs.engine.reducer import OUTPUT_KEYS
from jobs.engine.redact import redact
from jobs.engine.states import Kind, Status
from toppcloud_site.logchain import GENESIS, canonical_json, keyed_hash, plain_hash  # noqa: F401 (GENESIS: re-exported)
CUT_MARK = "\n… [cut: {n} more bytes]"
CAP_REACHED = "[not stored: this job's output cap of {cap} bytes is reached]"


def event_hash(prev_hash, job_id, seq, at, kind, data, actor, keyed=True):
    """HMAC-SHA256 under the log key (toppcloud_site/logchain.py); keyed=False: the plain sha256 of old events."""
    fields = {
        "job": job_id, "seq": seq, "kind": kind, "data": data, "actor": actor,
        "at": at.astimezone(dt_timezone.utc).isoformat(timespec="microseconds"),
    }
    return (keyed_hash if keyed else plain_hash)(prev_hash, fields)


# --- the ways to write ------------------------------------------------------

def lock(job_id):
    """The Job row, locked until the surrounding transaction ends."""
    fields, converters = _job_columns()
    quote = connection.ops.quote_name
    sql = (f"SELECT {', '.join(quote(f.column) for f in fields)} FROM {quote(Job._meta.db_table)} "
           f"WHERE {quote('id')} = %s")
    if connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    with connection.cursor() as cursor:
        cursor.execute(sql, [job_id])
        row = cursor.fetchone()
    if row is None:
        raise Job.DoesNotExist(f"there is no job {job_id}")
    return _job_from_row(row)


def append(job, kind, actor, data=None):
    """Append one event to a job locked by lock(); returns the event.

    Data is redacted, capped and normalised through JSON before hashing, so
    the stored bytes are exactly what the hash covers. Raises
    reducer.IllegalTransition if the event does not fit the job's state.
    """
    event = _event(job, kind, actor, data)
    _write(event, job, _project(job, event))
    for project in _PROJECTIONS.get(kind, ()):
        project(event)
    return event


# Projections outside the job row (kind -> functions of the event), registered by the domain side at start
# (jobs/apps.py imports jobs/projections.py): written in the same transaction as the event.
_PROJECTIONS = {}


def projection(kind):
    """Decorator: call fn(event) for every appended event of this kind, in the event's transaction."""
    def register(fn):
        _PROJECTIONS.setdefault(kind, []).append(fn)
        return fn

    return register


def record(job_id, kind, actor, **data):
    """Append one event in its own transaction."""
    with transaction.atomic():
        return append(lock(job_id), kind, actor, data)


def new_job(kind, *, target, params, actor_kind, actor, parent_id=None, run_after=None):
    """Create a Job and its job.queued event, atomically (with the caller's transaction, if any)."""
    queued = {"kind": kind, "target": target, "params": params,
              "actor_kind": actor_kind, "actor": actor, "parent": parent_id}
    if run_after is not None:
        queued["run_after"] = run_after.isoformat()
    if connection.vendor != "postgresql":
        with transaction.atomic():
            job = Job(kind=kind)
            _insert_job(job)
            append(job, Kind.QUEUED, f"{actor_kind}:{actor}", queued)
        return job
    # With the id known before the row exists, the row (already the
    # projection of its first event) and that event go in one statement.
    job = Job(pk=_job_ids.take(), kind=kind, status="")
    event = _event(job, Kind.QUEUED, f"{actor_kind}:{actor}", queued)
    reducer.apply(job, event)
    job_sql, job_params = _insert_sql(Job, Job._meta.concrete_fields, job)
    event_sql, event_params = _insert_sql(JobEvent, _EVENT_FIELDS, event)
    with connection.cursor() as cursor:
        cursor.execute(f"WITH job AS ({job_sql}) {event_sql}", job_params + event_params)
    job._state.adding = False
    return job


def refused_job(kind, *, target, params, actor_kind, actor, error):
    """A job refused before it was dispatched (a bad app.ini, a missing config value): its job.queued and a
    job.failed (refused: true) with the refusal, in one transaction. No message is sent and no worker runs
    it; it is there so the attempt shows, in the job list and the log, with who asked."""
    with transaction.atomic():
        job = new_job(kind, target=target, params=params, actor_kind=actor_kind, actor=actor)
        append(job, Kind.FAILED, f"{actor_kind}:{actor}", {"error": error, "refused": True})
    return job


def start_as_queued(job_id, queued_hash, actor, data):
    """job.started for a job still exactly as new_job() left it; None if it is not.

    The claim tries this first with the hash the job had when its message
    was sent. A job no longer at that hash (sent again, started, retried,
    ended) has its write refused, and the claim goes the locked way.
    PostgreSQL only: one statement, which also returns the job's row.
    """
    if connection.vendor != "postgresql":
        return None
    # All that job.started reads or changes in a row at (seq 1, queued_hash).
    job = Job(pk=job_id, status=Status.QUEUED, last_seq=1, last_hash=queued_hash)
    event = _event(job, Kind.STARTED, actor, data)
    try:
        with _unless_one_statement():
            row = _write(event, job, _project(job, event), returning=True)
    except IntegrityError:
        return None
    return _job_from_row(row)


def write_as_known(job, actor, decide):
    """Append decide(job) -> (kind, data) to the job as this process last wrote it; returns the job as written.

    If another writer appended meanwhile (the sweeper ending a job it thinks
    lost), the write is refused, and decide() runs again on the job read
    under its lock, so it sees what really happened.
    """
    current = copy.copy(job)
    try:
        kind, data = decide(current)
        with _unless_one_statement(kind):
            append(current, kind, actor, data)
        return current
    except IntegrityError:
        with transaction.atomic():
            current = lock(job.pk)
            kind, data = decide(current)
            append(current, kind, actor, data)
            return current


# --- building an event --------------------------------------------------------

def _event(job, kind, actor, data):
    """The job's next event, hashed onto its chain (not yet written)."""
    data = _cap(json.loads(canonical_json(redact(data or {}))), job)
    at = timezone.now()
    seq = job.last_seq + 1
    prev_hash = job.last_hash or GENESIS
    return JobEvent(job_id=job.pk, seq=seq, at=at, kind=kind, data=data, actor=actor, prev_hash=prev_hash,
                    hash=event_hash(prev_hash, job.pk, seq, at, kind, data, actor))


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


def _project(job, event):
    """Apply the event to the job in memory; the names of the fields it changed."""
    before = [getattr(job, f) for f in PROJECTED_FIELDS]
    reducer.apply(job, event)
    return [f for f, old in zip(PROJECTED_FIELDS, before) if getattr(job, f) != old]


# --- SQL ------------------------------------------------------------------------
# Written out here rather than built by the ORM on every call, which was most
# of a worker's CPU time per job (bench/jobs_throughput.py). Values still go
# through each field's own conversion, so both databases get what the ORM
# would send.

_EVENT_FIELDS = [JobEvent._meta.get_field(f) for f in ("job", "seq", "at", "kind", "data", "actor",
                                                         "prev_hash", "hash")]
_JOB_FIELDS = {f: Job._meta.get_field(f) for f in PROJECTED_FIELDS}


def _write(event, job, changed, returning=False):
    """UPDATE the changed projection fields if the row is still at the event before, then INSERT the event.

    The UPDATE goes first and takes the row lock, as lock() does, so writers
    queue in one order. A row that moved on matches nothing; the event then
    gets no job id and the database refuses it: IntegrityError. With
    returning=True (PostgreSQL), the updated row is returned.
    """
    quote = connection.ops.quote_name
    fields = [_JOB_FIELDS[name] for name in changed]  # only what changed: no JSON sent again
    update_sql = (f"UPDATE {quote(Job._meta.db_table)} SET {', '.join(f'{quote(f.column)} = %s' for f in fields)} "
                  f"WHERE {quote('id')} = %s AND {quote('last_seq')} = %s AND {quote('last_hash')} = %s")
    update_params = [f.get_db_prep_save(getattr(job, f.attname), connection) for f in fields] + [
        job.pk, event.seq - 1, "" if event.prev_hash == GENESIS else event.prev_hash]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One statement: the event's job id comes from the UPDATE, so the UPDATE runs first.
            columns = ", ".join(quote(f.column) for f in _job_columns()[0]) if returning else quote("id")
            insert_sql, insert_params = _insert_sql(JobEvent, _EVENT_FIELDS, event,
                                                    first_value=f"(SELECT {quote('id')} FROM job)")
            cursor.execute(f"WITH job AS ({update_sql} RETURNING {columns}), event AS ({insert_sql}) "
                           f"SELECT {columns} FROM job", update_params + insert_params)
            return cursor.fetchone()
        cursor.execute(update_sql, update_params)
        if cursor.rowcount != 1:
            raise IntegrityError(f"job {job.pk} is no longer at event {event.seq - 1}")
        cursor.execute(*_insert_sql(JobEvent, _EVENT_FIELDS, event))


def _insert_sql(model, fields, obj, first_value=None):
    """INSERT of obj's fields; first_value, an SQL expression, replaces the first parameter."""
    quote = connection.ops.quote_name
    values = ["%s"] * len(fields)
    params = [f.get_db_prep_save(getattr(obj, f.attname), connection) for f in fields]
    if first_value is not None:
        values[0], params = first_value, params[1:]
    sql = (f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
           f"VALUES ({', '.join(values)})")
    return sql, params


def _insert_job(job):
    """INSERT a new job row and learn its id (its first event then sets its projection)."""
    sql, params = _insert_sql(Job, [f for f in Job._meta.concrete_fields if not f.primary_key], job)
    with connection.cursor() as cursor:
        cursor.execute(sql + f" RETURNING {connection.ops.quote_name('id')}", params)
        job.pk = cursor.fetchone()[0]
    job._state.adding = False


@functools.cache
def _job_columns():
    """Job's columns, and the converters Django applies to each value read."""
    fields = Job._meta.concrete_fields
    converters = []
    for f in fields:
        expression = f.get_col(Job._meta.db_table)
        converters.append((expression, connection.ops.get_db_converters(expression) + f.get_db_converters(connection)))
    return fields, converters


def _job_from_row(row):
    fields, converters = _job_columns()
    values = []
    for value, (expression, field_converters) in zip(row, converters):
        for convert in field_converters:
            value = convert(value, expression, connection)
        values.append(value)
    return Job.from_db(connection.alias, [f.attname for f in fields], values)


@contextmanager
def _unless_one_statement(kind=None):
    """No transaction where the write is one statement (PostgreSQL), else one.

    An event that also updates another projection (release.activated) is
    more than one statement. Inside a caller's transaction it gets a
    savepoint, so a refused write leaves that transaction usable.
    """
    if connection.vendor == "postgresql" and not connection.in_atomic_block and kind != Kind.RELEASE_ACTIVATED:
        yield
    else:
        with transaction.atomic():
            yield


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
