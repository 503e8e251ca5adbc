"""Jobs: an append-only event log per job, and the Job row as its projection.

Only jobs/engine/events.py writes JobEvent rows and the projected Job fields; the
database refuses UPDATE and DELETE on events (migration 0002).
"""

from django.db import models
from django.db.models import Q

from jobs.engine.states import ActorKind, Status

# Fields of Job that are rebuilt from events (jobs/engine/reducer.py); `jobs verify`
# compares exactly these.
PROJECTED_FIELDS = (
    "kind", "target", "params", "actor_kind", "actor", "parent_id", "status",
    "attempt", "resends", "queued_at", "sent_at", "run_after", "started_at", "attempt_started_at", "finished_at",
    "worker", "worker_hostname", "worker_pid", "summary", "result", "error", "output_bytes", "last_seq", "last_hash",
)


class Job(models.Model):
    kind = models.CharField(max_length=64)
    target = models.CharField(max_length=200, blank=True, help_text="What the job acts on, e.g. node:web1")
    params = models.JSONField(default=dict)
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices, blank=True)
    actor = models.CharField(max_length=200, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children",
                               db_index=False)
    status = models.CharField(max_length=16, choices=Status.choices, blank=True)
    attempt = models.PositiveIntegerField(default=0)
    resends = models.PositiveIntegerField(default=0)
    queued_at = models.DateTimeField(null=True)
    sent_at = models.DateTimeField(null=True, help_text="Last time its message was handed to the broker")
    run_after = models.DateTimeField(null=True, blank=True,
                                     help_text="Not started before this time (a task's eta, a retry's backoff)")
    started_at = models.DateTimeField(null=True)
    attempt_started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    worker = models.CharField(max_length=200, blank=True)
    worker_hostname = models.CharField(max_length=200, blank=True)
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    summary = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    output_bytes = models.PositiveBigIntegerField(default=0)
    last_seq = models.PositiveIntegerField(default=0)
    last_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        # Newest first by time: ids are taken in blocks per process, so they are not in creation order.
        ordering = ["-queued_at", "-id"]
        indexes = [
            models.Index(fields=["-queued_at", "-id"], name="jobs_job_newest_idx"),
            # Few indexes, each partial: a job row is updated at every status
            # change, and each index on it is written again each time.
            # The sweeper: queued jobs whose message may be lost, running jobs
            # whose worker may be gone. Finished jobs, the bulk, stay out.
            models.Index(fields=["status", "sent_at"], name="jobs_job_active_idx",
                         condition=Q(status__in=[Status.QUEUED, Status.RUNNING, Status.WAITING])),
            # The job list filtered to failures, newest first, and its (capped) count: jobs/admin.py,
            # bench/admin.py. A job enters it once, when it fails; the others stay out.
            # status is included so a list of failed only (or lost only) is read from the index alone.
            models.Index(fields=["-queued_at", "-id"], include=["status"], name="jobs_job_failed_idx",
                         condition=Q(status__in=[Status.FAILED, Status.LOST])),
            # A job's children (fan-out); most jobs have no parent and stay out.
            models.Index(fields=["parent"], name="jobs_job_parent_idx", condition=Q(parent__isnull=False)),
        ]

    def __str__(self):
        return f"job {self.pk} {self.kind} {self.target}".strip()

    @property
    def duration(self):
        if self.started_at is None:
            return None
        end = self.finished_at
        if end is None:
            from django.utils import timezone
            end = timezone.now()
        return end - self.started_at


class JobEvent(models.Model):
    # An event is (job, seq): the primary key is the order of the log, so each
    # insert maintains one index, and readers page by it.
    pk = models.CompositePrimaryKey("job", "seq")
    # No foreign key in the database: jobs/engine/triggers.py says why and what guards instead.
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="events", db_index=False,
                            db_constraint=False)
    seq = models.PositiveIntegerField()
    at = models.DateTimeField()
    kind = models.CharField(max_length=64)
    data = models.JSONField(default=dict)
    actor = models.CharField(max_length=200)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["job_id", "seq"]

    def __str__(self):
        return f"job {self.job_id} #{self.seq} {self.kind}"


class WorkerHeartbeat(models.Model):
    """A worker process saying it is alive, renewed from a thread of its own.

    Operational state, not history: the sweeper compares the running jobs'
    worker (hostname, pid) against it to find jobs whose worker vanished.
    One row per process, not per job, so a job costs no extra writes.
    """

    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    worker = models.CharField(max_length=200)
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField()
    # The job the process was running at seen_at (no foreign key: a heartbeat must never wait on a job lock).
    job_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hostname", "pid"], name="jobs_workerheartbeat_hostname_pid_uniq"),
        ]

    def __str__(self):
        return f"{self.worker} pid {self.pid} on {self.hostname}"


class LiveRelease(models.Model):
    """What is live where: a projection of release.activated events (jobs/engine/events.py writes it)."""

    app = models.ForeignKey("records.App", on_delete=models.PROTECT, related_name="live")
    node = models.ForeignKey("records.Node", on_delete=models.PROTECT, related_name="live")
    host = models.CharField(max_length=253)
    path = models.CharField(max_length=200)
    release = models.ForeignKey("records.Release", on_delete=models.PROTECT, related_name="live")
    port = models.PositiveIntegerField()
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    activated_at = models.DateTimeField()

    class Meta:
        ordering = ["app_id", "node_id", "host", "path"]
        constraints = [
            models.UniqueConstraint(fields=["app", "node", "host", "path"], name="jobs_liverelease_location_uniq"),
        ]

    def __str__(self):
        return f"{self.release} live on {self.node} at {self.host}{self.path}"


class Lock(models.Model):
    """One job at a time holds a key (jobs/steps/locks.py takes it); free again once that job has ended.

    Keys: `app:APP` (a deploy, rollback, data job, config apply or
    maintenance change of the app), `cron:APP:ENTRY` (one run of a cron
    entry at a time).
    """

    key = models.CharField(max_length=200, primary_key=True)
    job = models.ForeignKey(Job, null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False)
    taken_at = models.DateTimeField(null=True)


class TaskKey(models.Model):
    """An app's idempotency key for a task: the same key always names the same task job."""

    app = models.ForeignKey("records.App", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["app", "key"], name="jobs_taskkey_app_key_uniq")]


class DeadLetter(Job):
    """Tasks that failed every attempt (the admin lists them and retries them)."""

    class Meta:
        proxy = True
        verbose_name = "dead letter (failed task)"


class LogSeal(models.Model):
    """A seal of the whole log, written by jobs/engine/seal.py alone (append-only, as events are).

    Seal n names the heads that changed since seal n-1 (each job's (id, last
    seq, hash at it); the audit log's last (id, hash)), and is chained to n-1
    by its MAC under TOPPCLOUD_LOG_KEY. Each is also a line of the append-only
    TOPPCLOUD_LOG_SEAL_FILE, outside the database: `jobs verify` checks the two
    agree, so deleting seals, jobs or a job's last events shows.
    """

    number = models.PositiveBigIntegerField(primary_key=True)
    at = models.DateTimeField()
    prev_mac = models.CharField(max_length=64)
    jobs = models.JSONField(default=list)    # [[job id, seq, hash], ...]
    audit = models.JSONField(null=True)      # [entry id, hash] of the audit log's last entry, if it changed
    # The cut-over seal (migration 0007): the events it names were hashed with plain sha256, before the key.
    legacy = models.BooleanField(default=False)
    mac = models.CharField(max_length=64)

    class Meta:
        ordering = ["number"]

    def __str__(self):
        return f"seal {self.number}"


class SealedHead(models.Model):
    """The sealer's own bookkeeping: each job's head as last sealed, to find what changed since (not evidence:
    `jobs verify` trusts the seals, not this table)."""

    job_id = models.BigIntegerField(primary_key=True)  # no foreign key: a deleted job must not take its seal along
    seq = models.PositiveIntegerField()
    hash = models.CharField(max_length=64)
