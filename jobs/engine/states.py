"""Job statuses, event kinds and actor kinds, with the allowed transitions."""

from django.db import models


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"    # a parent job whose child jobs are running
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"          # its worker vanished and no attempt is left
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.LOST, Status.CANCELLED})


class ActorKind(models.TextChoices):
    USER = "user"          # a person, in the admin or a command (their username)
    SCHEDULE = "schedule"  # a periodic task (its name)
    API = "api"            # an API token (its name)
    PARENT = "parent"      # a parent job (its id)
    SYSTEM = "system"      # toppcloud itself (the sweeper)


class Kind:
    """Event kinds. Those in TRANSITIONS change the job's status."""

    QUEUED = "job.queued"
    RESENT = "job.resent"
    SENT = "job.sent"      # the message of a job due later, sent once it is near (dispatch.PARK_AFTER)
    STARTED = "job.started"
    RETRYING = "job.retrying"
    WAITING = "job.waiting"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    LOST = "job.lost"
    CANCELLED = "job.cancelled"
    DELIVERY_IGNORED = "job.delivery_ignored"
    STEP_STARTED = "step.started"
    STEP_FINISHED = "step.finished"
    COMMAND = "command"
    LOG = "log"
    PROGRESS = "progress"  # how far a long operation is: what, unit, done, total (if known), seconds
    RELEASE_ACTIVATED = "release.activated"  # also projected into LiveRelease
    RECONCILED = "node.reconciled"  # what a reconcile found and stopped on a node (jobs/steps/reconcile.py)


# event kind -> (statuses it may follow, status it leads to)
TRANSITIONS = {
    Kind.QUEUED: ({None}, Status.QUEUED),
    Kind.RESENT: ({Status.QUEUED}, Status.QUEUED),
    Kind.SENT: ({Status.QUEUED}, Status.QUEUED),
    Kind.STARTED: ({Status.QUEUED}, Status.RUNNING),
    Kind.RETRYING: ({Status.RUNNING}, Status.QUEUED),
    Kind.WAITING: ({Status.RUNNING}, Status.WAITING),
    Kind.SUCCEEDED: ({Status.RUNNING, Status.WAITING}, Status.SUCCEEDED),
    Kind.FAILED: ({Status.QUEUED, Status.RUNNING, Status.WAITING}, Status.FAILED),
    Kind.LOST: ({Status.RUNNING}, Status.LOST),
    Kind.CANCELLED: ({Status.QUEUED}, Status.CANCELLED),
}
