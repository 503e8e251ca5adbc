"""What a flow gets: its job's parameters, emit(), steps and transports."""

from django.conf import settings

from jobs.engine import events
from jobs.engine.states import TRANSITIONS
from nodeops import steps, transport


class FlowFailed(Exception):
    """A failure the flow can explain; its message becomes the job's error."""


class RetryLater(Exception):
    """Raised by a flow whose attempt failed but may succeed later (a task): the job is queued
    again, to start after `delay` seconds, as its next attempt."""

    def __init__(self, reason, delay):
        super().__init__(reason)
        self.reason, self.delay = reason, delay


class WaitForChildren:
    """What a parent flow returns once it has queued its child jobs; the last child to end ends it."""

    def __init__(self, summary):
        self.summary = summary


class JobContext:
    def __init__(self, job, worker):
        self.job = job  # as this process last wrote it
        self.job_id = job.pk
        self.parent_id = job.parent_id
        self.params = job.params
        self.attempt = job.attempt
        self.actor = f"worker:{worker}"

    def emit(self, kind, **data):
        """Record an event of this job (node operations call this)."""
        if kind in TRANSITIONS:
            raise ValueError(f"{kind} is recorded by the job runner, not by a flow")
        self.job = events.write_as_known(self.job, self.actor, lambda job: (kind, data))

    def step(self, name):
        return steps.step(self.emit, name)

    def transport(self, node):
        return node_transport(node)


def node_transport(node):
    """The transport to a node record, with the control plane's key and ssh settings."""
    return transport.transport_for(node.transport_spec(
        identity_file=settings.TOPPCLOUD_SSH_KEY_FILE,
        control_dir=settings.TOPPCLOUD_SSH_CONTROL_DIR,
        connect_timeout=settings.TOPPCLOUD_SSH_CONNECT_TIMEOUT,
    ))
