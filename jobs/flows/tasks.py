"""A queued task, as a person would do it by hand.

POST the payload to the app's path on a node where it is live (each attempt
on the next node, so a retry avoids a sick one); a 2xx answer ends it. Any
other answer, or none within the task's timeout, is recorded as a failed
attempt and the task waits, twice as long after each failure, for its next
attempt. After max_attempts it stays failed: a dead letter, which the
admin retries.
"""

import json

from django.conf import settings

from jobs.engine.context import FlowFailed, RetryLater
from jobs.steps import execution, records
from jobs.steps.environment import mask_app_secrets
from nodeops import release as node_release
from nodeops.transport import CommandFailed, TransportError


def task(ctx, app, path, payload, max_attempts, timeout, idempotency_key=None, retry_of=None):
    app = records.app(app)
    mask_app_secrets(app)  # an answer may echo them
    attempt = ctx.attempt
    places = execution.live_places(app)
    if not places:
        outcome = "the app is not live on any node"
    else:
        live = places[(attempt - 1) % len(places)]
        outcome = attempt_request(ctx, live, path, payload, attempt, timeout)
        if outcome is None:
            return (f"{app.name} task {path} answered on {live.node.name} (attempt {attempt} of {max_attempts})",
                    {"attempts": attempt, "node": live.node.name})
    if attempt >= max_attempts:
        raise FlowFailed(f"dead letter: all {max_attempts} attempts of {app.name} task {path} failed; "
                         f"the last: {outcome}")
    delay = backoff(attempt)
    raise RetryLater(f"attempt {attempt} of {max_attempts} failed ({outcome}); next in {delay:g} s", delay)


def attempt_request(ctx, live, path, payload, attempt, timeout):
    """POST the payload once; None if it answered 2xx, else what went wrong."""
    headers = {"Content-Type": "application/json", "X-Toppcloud-Task": str(ctx.job_id),
               "X-Toppcloud-Task-Attempt": str(attempt)}
    try:
        answer = node_release.internal_request(
            ctx.transport(live.node), live.port, execution.internal_path(live, path), method="POST",
            body=json.dumps(payload).encode(), headers=headers, host=live.host,
            script_name=execution.script_name(live), timeout=timeout)
    except (TransportError, CommandFailed) as exc:
        answer = {"error": str(exc)}
    ctx.emit("task.attempt", attempt=attempt, node=live.node.name, release=live.release.name, path=path, **answer)
    if "error" in answer:
        return answer["error"]
    if 200 <= answer["status"] < 300:
        return None
    return f"answered {answer['status']}"


def backoff(attempt):
    """Seconds before the next attempt: TOPPCLOUD_TASK_RETRY_DELAY, doubled after each failure, capped."""
    return min(settings.TOPPCLOUD_TASK_RETRY_DELAY * 2 ** (attempt - 1), settings.TOPPCLOUD_TASK_RETRY_MAX_DELAY)


def retry_dead_letter(job, *, actor):
    """A new task job with a dead letter's request (its idempotency key still names the first job)."""
    from jobs import actions
    from jobs.engine.states import ActorKind

    return actions.retry_task(job, actor_kind=ActorKind.USER, actor=actor)
