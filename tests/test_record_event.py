"""The one writer of events: seq, hash chain, projection, redaction, caps."""

import hashlib
import hmac
import json
import os

import pytest
from django.db import transaction

from jobs.engine import events, reducer
from jobs.engine.events import GENESIS, canonical_json
from jobs.models import PROJECTED_FIELDS, Job, JobEvent
from jobs.engine.states import Kind, Status

pytestmark = pytest.mark.django_db

def new_job(**params):
    with transaction.atomic():
        return events.new_job("noop", target="t:1", params=params, actor_kind="user", actor="alice")


def test_it_creates_a_queued_job_whose_row_is_a_projection_of_its_first_event():
    job = new_job(seconds=1)
    event = JobEvent.objects.get(job=job)
    assert (event.seq, event.kind, event.actor, event.prev_hash) == (1, Kind.QUEUED, "user:alice", GENESIS)
    assert event.data == {"kind": "noop", "target": "t:1", "params": {"seconds": 1},
                          "actor_kind": "user", "actor": "alice", "parent": None}
    job.refresh_from_db()
    assert (job.status, job.kind, job.actor_kind, job.actor, job.last_seq) == ("queued", "noop", "user", "alice", 1)
    assert job.queued_at == event.at and job.last_hash == event.hash


def test_it_numbers_events_without_gaps_and_chains_their_hashes():
    job = new_job()
    events.record(job.pk, Kind.STARTED, "worker:w", attempt=1, worker="w", hostname="h", pid=1)
    events.record(job.pk, "log", "worker:w", text="hello")
    events.record(job.pk, Kind.SUCCEEDED, "worker:w", summary="done")
    rows = list(JobEvent.objects.filter(job=job).order_by("seq"))
    assert [e.seq for e in rows] == [1, 2, 3, 4]
    for prev, event in zip(rows, rows[1:]):
        assert event.prev_hash == prev.hash
    last = rows[-1]
    fields = {"job": job.pk, "seq": 4, "kind": last.kind, "data": last.data, "actor": last.actor,
              "at": last.at.isoformat(timespec="microseconds")}
    # HMAC-SHA256 under TOPPCLOUD_LOG_KEY (tests/settings.py), not a plain sha256 anyone could recompute.
    key = os.environ["TOPPCLOUD_LOG_KEY"].encode()
    assert last.hash == hmac.new(key, (last.prev_hash + canonical_json(fields)).encode(), hashlib.sha256).hexdigest()
    assert last.hash != hashlib.sha256((last.prev_hash + canonical_json(fields)).encode()).hexdigest()
    job.refresh_from_db()
    assert (job.status, job.summary, job.attempt, job.worker) == ("succeeded", "done", 1, "w")
    assert job.finished_at == last.at


def test_it_refuses_an_event_that_does_not_fit_the_state_and_writes_nothing():
    job = new_job()
    with pytest.raises(reducer.IllegalTransition, match="job.succeeded is not allowed while queued"):
        events.record(job.pk, Kind.SUCCEEDED, "worker:w", summary="too early")
    assert JobEvent.objects.filter(job=job).count() == 1
    job.refresh_from_db()
    assert job.status == Status.QUEUED and job.last_seq == 1


def test_it_rebuilds_the_same_row_from_events():
    job = new_job()
    events.record(job.pk, Kind.RESENT, "system:sweeper", reason="lost", resends=1)
    events.record(job.pk, Kind.STARTED, "worker:w", attempt=1, worker="w", hostname="h", pid=1)
    events.record(job.pk, Kind.RETRYING, "worker:v", reason="worker died")
    events.record(job.pk, Kind.STARTED, "worker:v", attempt=2, worker="v", hostname="h", pid=2)
    events.record(job.pk, "command", "worker:v", argv=["true"], rc=0, stdout="x" * 10, stderr="")
    events.record(job.pk, Kind.FAILED, "worker:v", error="boom")
    job.refresh_from_db()
    rebuilt = reducer.replay(job.pk, list(job.events.order_by("seq")))
    assert {f: getattr(rebuilt, f) for f in PROJECTED_FIELDS} == {f: getattr(job, f) for f in PROJECTED_FIELDS}
    assert (job.status, job.attempt, job.resends, job.error, job.output_bytes) == ("failed", 2, 1, "boom", 10)


def test_it_masks_secrets_and_url_passwords(settings):
    job = new_job()
    event = events.record(job.pk, "log", "worker:w",
                          text=f"connecting to postgres://app:hunter22@db/x with key {settings.SECRET_KEY}")
    stored = JobEvent.objects.get(job=job, seq=event.seq).data["text"]
    assert "hunter22" not in stored and settings.SECRET_KEY not in stored
    assert stored == "connecting to postgres://app:********@db/x with key ********"


def test_it_cuts_long_output_per_event_and_stops_storing_at_the_job_cap(settings):
    settings.JOBS_OUTPUT_CAP_EVENT = 1000
    settings.JOBS_OUTPUT_CAP_JOB = 2500
    job = new_job()
    for _ in range(4):
        events.record(job.pk, "command", "worker:w", argv=["cat"], rc=0, stdout="y" * 5000, stderr="")
    outputs = [e.data["stdout"] for e in job.events.filter(kind="command").order_by("seq")]
    assert outputs[0].startswith("y" * 1000) and outputs[0].endswith("[cut: 4000 more bytes]")
    assert outputs[2].startswith("y" * 400) and outputs[2].endswith("more bytes]")
    assert sum(o.count("y") for o in outputs) <= 2500
    assert outputs[3] == "[not stored: this job's output cap of 2500 bytes is reached]"


def test_it_stores_exactly_the_json_it_hashed():
    job = new_job()
    event = events.record(job.pk, "log", "worker:w", text="t", numbers=(1, 2.5), nested={"b": 1, "a": [True]})
    stored = JobEvent.objects.get(job=job, seq=event.seq)
    assert stored.data == {"text": "t", "numbers": [1, 2.5], "nested": {"a": [True], "b": 1}}
    assert json.loads(canonical_json(stored.data)) == stored.data
    assert events.event_hash(stored.prev_hash, job.pk, stored.seq, stored.at, stored.kind, stored.data,
                             stored.actor) == stored.hash


def test_it_keeps_job_rows_for_ever():
    job = new_job()
    with pytest.raises(Exception):
        with transaction.atomic():
            Job.objects.filter(pk=job.pk).delete()


def test_a_writer_that_read_the_job_before_another_appended_writes_after_it():
    job = new_job()
    events.record(job.pk, Kind.STARTED, "worker:w", attempt=1, worker="w", hostname="h", pid=1)
    as_the_worker_saw_it = Job.objects.get(pk=job.pk)
    events.record(job.pk, Kind.LOST, "system:sweeper", reason="thought it dead")  # meanwhile
    written = events.write_as_known(as_the_worker_saw_it, "worker:w", lambda current: ("log", {"text": current.status}))
    rows = list(job.events.order_by("seq").values_list("seq", "kind", "actor"))
    assert rows == [(1, "job.queued", "user:alice"), (2, "job.started", "worker:w"),
                    (3, "job.lost", "system:sweeper"), (4, "log", "worker:w")]
    assert job.events.get(seq=4).data["text"] == "lost"  # the write saw the job as it really was
    assert written.last_seq == 4 and Job.objects.get(pk=job.pk).last_seq == 4
    rebuilt = reducer.replay(job.pk, list(job.events.order_by("seq")))
    assert rebuilt.status == "lost" and rebuilt.last_hash == Job.objects.get(pk=job.pk).last_hash
