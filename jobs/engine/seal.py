"""Seals of the whole log, so a deleted job or a job cut short shows.

Each event's keyed hash (jobs/engine/events.py) catches an edit, but not a job
removed whole, nor its last events cut off with the row rebuilt to match.
A seal pins the heads: seal n holds every job head that changed since seal
n-1 (job id, last seq, the hash at that seq) and the audit log's last entry
(id, hash), chained to seal n-1 by a MAC under TOPPCLOUD_LOG_KEY. Each seal
is a LogSeal row and a line of TOPPCLOUD_LOG_SEAL_FILE, an append-only file
outside the database. `jobs verify` (jobs/engine/verify.py) checks that the file
and the rows agree, and that every sealed job still exists with at least
that seq and the same hash there.

Seals are written by one periodic writer (beat's `jobs.seal`, every
TOPPCLOUD_LOG_SEAL_INTERVAL seconds) and by `manage.py jobs seal`, never on
the path that writes events. seal():
1. Take the seal file's lock: one sealer at a time on the volume they share.
2. Append to the file any seal the database has and the file lacks (a sealer
   stopped between its commit and its write); refuse if the file has seals
   the database lacks (they were deleted from the database).
3. In one transaction, with the last seal row locked: find every job whose
   head is not the one last sealed, and the audit log's last entry.
4. Nothing changed: no seal. Else write seal n+1 and the new heads.
5. After the commit, append it to the file and fsync.

The cut-over: migration 0007 writes seal 1 with legacy=True over the jobs
that exist then. Their events up to the seq it names were hashed with plain
sha256 (before the key) and verify accepts that for them alone; every other
event must carry the keyed hash, so none can be "downgraded".
"""

import fcntl
import json
import logging
import os
from contextlib import contextmanager

from django.apps import apps
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from toppcloud_site.logchain import GENESIS, canonical_json, keyed_hash

log = logging.getLogger(__name__)


class SealError(Exception):
    pass


def seal_fields(number, at, prev_mac, jobs, audit, legacy):
    """What a seal's MAC covers (and, with the MAC, its line in the file)."""
    return {"number": number, "at": at if isinstance(at, str) else at.isoformat(timespec="microseconds"),
            "prev_mac": prev_mac, "jobs": jobs, "audit": audit, "legacy": legacy}


def seal_mac(fields):
    return keyed_hash(fields["prev_mac"], {k: v for k, v in fields.items() if k != "mac"})


def row_fields(row):
    """A LogSeal row as the dict its file line holds, MAC included."""
    fields = seal_fields(row.number, row.at, row.prev_mac, row.jobs, row.audit, row.legacy)
    fields["mac"] = row.mac
    return fields


def line(fields):
    return (canonical_json(fields) + "\n").encode()


def seal(legacy=False, models=None):
    """Write the next seal if anything changed since the last; returns its row, or None.

    models: (LogSeal, SealedHead, AuditEntry), historical models when a migration calls this.
    """
    if models is None:
        # The audit log is sealed with the jobs; named by label, so the engine imports no record model.
        models = (apps.get_model("jobs", "LogSeal"), apps.get_model("jobs", "SealedHead"),
                  apps.get_model("records", "AuditEntry"))
    LogSeal, SealedHead, AuditEntry = models
    with _seal_file() as fd:
        _catch_up(fd, LogSeal)
        with transaction.atomic():
            last = LogSeal.objects.select_for_update().order_by("-number").first()
            heads = _changed_heads(SealedHead)
            audit = AuditEntry.objects.order_by("-id").values_list("id", "hash").first()
            audit = list(audit) if audit else None
            last_audit = LogSeal.objects.filter(audit__isnull=False).order_by("-number").values_list(
                "audit", flat=True).first()
            if audit == last_audit:
                audit = None
            if last is not None and not heads and audit is None:
                return None
            fields = seal_fields(last.number + 1 if last else 1, timezone.now(), last.mac if last else GENESIS,
                                 heads, audit, legacy)
            row = LogSeal.objects.create(number=fields["number"], at=fields["at"], prev_mac=fields["prev_mac"],
                                         jobs=heads, audit=audit, legacy=legacy, mac=seal_mac(fields))
            SealedHead.objects.bulk_create([SealedHead(job_id=j, seq=s, hash=h) for j, s, h in heads],
                                           update_conflicts=True, unique_fields=["job_id"],
                                           update_fields=["seq", "hash"], batch_size=1000)
        _append(fd, line({**fields, "mac": row.mac}))
    return row


def _changed_heads(SealedHead):
    """[job id, last seq, last hash] of every job whose head moved on since it was last sealed.

    One join of two primary keys per seal, not a write per event. A head that
    went back or changed at the same seq is not sealed: that is tampering,
    and `jobs verify` names it against the seal that holds the old head.
    """
    quote = connection.ops.quote_name
    sealed = quote(SealedHead._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT j.id, j.last_seq, j.last_hash, s.seq FROM jobs_job j LEFT JOIN {sealed} s ON s.job_id = j.id "
            "WHERE j.last_seq > 0 AND (s.job_id IS NULL OR s.seq <> j.last_seq OR s.hash <> j.last_hash) "
            "ORDER BY j.id")
        rows = cursor.fetchall()
    heads = []
    for job_id, seq, head, sealed_seq in rows:
        if sealed_seq is not None and seq <= sealed_seq:
            log.error("job %s: its head (event %s) is not past the one sealed (event %s): not sealed again; "
                      "run `manage.py jobs verify`", job_id, seq, sealed_seq)
            continue
        heads.append([job_id, seq, head])
    return heads


@contextmanager
def _seal_file():
    path = settings.TOPPCLOUD_LOG_SEAL_FILE
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise SealError(f"the seal file {path} (TOPPCLOUD_LOG_SEAL_FILE) cannot be opened: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # and the lock with it


def _append(fd, data):
    os.write(fd, data)  # one write with O_APPEND: the line lands whole at the end
    os.fsync(fd)


def _catch_up(fd, LogSeal):
    last = last_line(fd)
    in_file = json.loads(last)["number"] if last else 0
    in_db = LogSeal.objects.order_by("-number").values_list("number", flat=True).first() or 0
    if in_file > in_db:
        raise SealError(f"the seal file {settings.TOPPCLOUD_LOG_SEAL_FILE} holds seal {in_file} but the database "
                        f"only up to {in_db}: seals were removed from the database; run `manage.py jobs verify`")
    for row in LogSeal.objects.filter(number__gt=in_file).order_by("number"):
        fields = row_fields(row)
        if seal_mac(fields) != row.mac:
            raise SealError(f"seal {row.number} in the database does not match its MAC; run `manage.py jobs verify`")
        log.warning("seal %s was not in the seal file yet: written now", row.number)
        _append(fd, line(fields))


def last_line(fd):
    """The file's last line (bytes, no newline), or None if it is empty; read from the end, as it only grows."""
    end = os.lseek(fd, 0, os.SEEK_END)
    data, pos = b"", end
    while pos > 0:
        step = min(1 << 16, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
        cut = data.rstrip(b"\n").rfind(b"\n")
        if cut >= 0:
            return data[cut + 1:].rstrip(b"\n")
    return data.rstrip(b"\n") or None
