"""`jobs verify`: replay every job, check the keyed hash chains, and hold the log against its seals.

1. Read the seals from the seal file and from the database: each must match
   its MAC and chain to the one before, and the two must agree.
2. Per job: the chain (seq gapless, prev_hash links, keyed hash of each
   event), the projection rebuilt from the events, and the sealed head: the
   event at the seq the seals name must exist with the hash they hold.
3. Jobs the seals name that no longer exist; events whose job does not.
4. The audit log: one keyed chain in id order, and its sealed end present
   (toppcloud_site/records/audit.py verify_chain, given the sealed end from here).
"""

import json
import os
from dataclasses import dataclass, field

from django.conf import settings

from jobs.engine import reducer
from jobs.engine.events import GENESIS, event_hash
from jobs.models import PROJECTED_FIELDS, Job, JobEvent, LogSeal
from jobs.engine.seal import row_fields, seal_mac


@dataclass
class Seals:
    """What the seals say: the highest sealed head of each job, the cut-over's plain-sha256 events, the audit end."""

    jobs: dict = field(default_factory=dict)     # job id -> (seq, hash, seal number)
    legacy: dict = field(default_factory=dict)   # job id -> last seq hashed with plain sha256
    audit: tuple | None = None                   # (entry id, hash, seal number)
    count: int = 0
    problems: list = field(default_factory=list)


def read_seals():
    seals = Seals()
    path = settings.TOPPCLOUD_LOG_SEAL_FILE
    in_file = _chain_problems(_file_seals(path, seals.problems), f"seal file {path}", seals.problems)
    in_db = _chain_problems([row_fields(row) for row in LogSeal.objects.order_by("number")], "database",
                            seals.problems)
    if in_db and not os.path.exists(path):
        seals.problems.append(f"the seal file {path} does not exist, but the database has {len(in_db)} seals "
                              "(was it lost, or is TOPPCLOUD_LOG_SEAL_FILE wrong?)")
    file_by_number = {s["number"]: s for s in in_file}
    db_by_number = {s["number"]: s for s in in_db}
    last_in_file = max(file_by_number, default=0)
    for number in sorted(file_by_number.keys() | db_by_number.keys()):
        in_f, in_d = file_by_number.get(number), db_by_number.get(number)
        if in_d is None:
            seals.problems.append(f"seal {number} is in the seal file but not in the database (deleted?)")
        elif in_f is None and number < last_in_file:
            seals.problems.append(f"seal {number} is in the database but not in the seal file")
        elif in_f is not None and in_f != in_d:
            seals.problems.append(f"seal {number} differs between the database and the seal file")
    # The file is the authority; the database adds only seals past the file's end (the next seal writes
    # them there), which cannot be forged without the key: their MACs were checked above.
    for fields in list(in_file) + [s for n, s in sorted(db_by_number.items()) if n > last_in_file]:
        seals.count += 1
        for job_id, seq, head in fields["jobs"]:
            if fields["legacy"]:
                seals.legacy[job_id] = seq
            if job_id not in seals.jobs or seq > seals.jobs[job_id][0]:
                seals.jobs[job_id] = (seq, head, fields["number"])
        if fields["audit"]:
            entry_id, head = fields["audit"]
            if seals.audit is None or entry_id > seals.audit[0]:
                seals.audit = (entry_id, head, fields["number"])
    return seals


def _file_seals(path, problems):
    try:
        with open(path, "rb") as f:
            raw = f.read().splitlines()
    except FileNotFoundError:
        return []
    seals = []
    for number, text in enumerate(raw, start=1):
        try:
            seals.append(json.loads(text))
        except ValueError:
            problems.append(f"seal file {path}, line {number}: not a seal (cut or edited)")
    return seals


def _chain_problems(seals, where, problems):
    """The seals that match their MAC and chain (problems named for the rest)."""
    good, prev_mac = [], GENESIS
    for expected, fields in enumerate(seals, start=1):
        number = fields.get("number")
        if number != expected:
            problems.append(f"{where}: seal {number} where seal {expected} was expected (a seal removed?)")
        if fields.get("prev_mac") != prev_mac:
            problems.append(f"{where}: seal {number} is not chained to seal {expected - 1}")
        if seal_mac(fields) != fields.get("mac"):
            problems.append(f"{where}: seal {number} does not match its MAC (edited, or a different TOPPCLOUD_LOG_KEY)")
        else:
            good.append(fields)
        prev_mac = fields.get("mac")
    return good


def verify_job(job, events, sealed=None, legacy_seq=0):
    """The problems found in one job (empty when all is well).

    sealed: (seq, hash, seal number) of its highest sealed head; legacy_seq:
    its events up to this seq may carry plain sha256 (the cut-over seal).
    """
    problems = []
    if sealed is not None:
        seq, head, number = sealed
        at_seq = next((e for e in events if e.seq == seq), None)
        if at_seq is None:
            problems.append(f"seal {number} holds it at event {seq}, but it has {len(events)} events: "
                            "its last events were cut off")
        elif at_seq.hash != head:
            problems.append(f"event {seq}: its hash is not the one seal {number} holds (rewritten)")
    prev = GENESIS
    for expected_seq, event in enumerate(events, start=1):
        if event.seq != expected_seq:
            problems.append(f"event seq {event.seq} where {expected_seq} was expected (gap or reorder)")
            return problems
        if event.prev_hash != prev:
            problems.append(f"event {event.seq}: prev_hash does not match the hash of event {event.seq - 1}")
        args = (event.prev_hash, job.pk, event.seq, event.at, event.kind, event.data, event.actor)
        if event_hash(*args) != event.hash and not (event.seq <= legacy_seq and event_hash(*args, keyed=False)
                                                    == event.hash):
            problems.append(f"event {event.seq} ({event.kind}): content does not match its hash (edited?)")
        prev = event.hash
    try:
        rebuilt = reducer.replay(job.pk, events)
    except reducer.IllegalTransition as exc:
        problems.append(f"replay refused: {exc}")
        return problems
    for name in PROJECTED_FIELDS:
        stored, replayed = getattr(job, name), getattr(rebuilt, name)
        if stored != replayed:
            problems.append(f"projection field {name}: row has {stored!r}, events give {replayed!r}")
    return problems


def orphan_events():
    """Job ids that events name but no job row has (there should be none)."""
    return sorted(set(JobEvent.objects.exclude(job_id__in=Job.objects.values("pk")).values_list("job_id", flat=True)))


def verify_all(seals=None, batch=500):
    """Yield (job id, problems) for every job, oldest first, then for each sealed job that is gone."""
    seals = seals or Seals()
    seen = set()
    last_id = 0
    while True:
        jobs = list(Job.objects.filter(pk__gt=last_id).order_by("pk")[:batch])
        if not jobs:
            break
        by_job = {job.pk: [] for job in jobs}
        for event in JobEvent.objects.filter(job_id__in=by_job).order_by("job_id", "seq"):
            by_job[event.job_id].append(event)
        for job in jobs:
            seen.add(job.pk)
            yield job.pk, verify_job(job, by_job[job.pk], seals.jobs.get(job.pk), seals.legacy.get(job.pk, 0))
        last_id = jobs[-1].pk
    for job_id in sorted(seals.jobs.keys() - seen):
        seq, _, number = seals.jobs[job_id]
        yield job_id, [f"seal {number} holds it at event {seq}, but the job does not exist: deleted"]
