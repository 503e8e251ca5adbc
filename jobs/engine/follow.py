"""Watching a job from a terminal: live events, progress, exit status."""

import json
import time

from django.db import close_old_connections

from jobs.models import Job, JobEvent
from jobs.engine.states import TERMINAL, Kind, Status


def describe(event):
    """One human line for an event."""
    d = event.data
    if event.kind == Kind.QUEUED:
        return f"queued by {d['actor_kind']}:{d['actor']} ({d['kind']} {d['target']})"
    if event.kind == Kind.STARTED:
        return f"started, attempt {d['attempt']} on {d['worker']}"
    if event.kind == "step.started":
        return f"{d['step']} …"
    if event.kind == "step.finished":
        result = "ok" if d.get("ok") else f"FAILED: {d.get('error', '')}"
        return f"{d['step']} {result} ({d.get('seconds', 0):.2f}s)"
    if event.kind == Kind.COMMAND:
        command = " ".join(d.get("argv", [])).replace("\n", " ")
        if len(command) > 100:
            command = command[:97] + "..."
        return f"$ {command} → rc {d.get('rc')}"
    if event.kind == Kind.SUCCEEDED:
        return f"succeeded: {d.get('summary', '')}"
    text = d.get("reason") or d.get("error") or d.get("text") or d.get("summary") or ""
    return f"{event.kind} {text}".rstrip()


def follow(job_id, out, *, as_json=False, poll=0.1, timeout=None):
    """Print the job's events as they come until it ends; returns the final Job."""
    last_seq, steps_done, planned = 0, 0, None
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        close_old_connections()
        for event in JobEvent.objects.filter(job_id=job_id, seq__gt=last_seq).order_by("seq"):
            last_seq = event.seq
            if event.kind == "plan":
                planned = len(event.data.get("steps", []))
            if event.kind == "step.finished":
                steps_done += 1
            if event.kind == "output" and not as_json:
                _write_raw(out, event.data.get("output", ""))  # a command's output, as it printed it
            elif as_json:
                out.write(json.dumps({"job": job_id, "seq": event.seq, "at": event.at.isoformat(),
                                      "kind": event.kind, "actor": event.actor, "data": event.data}))
            else:
                progress = f"[{steps_done}/{planned}]" if planned else f"[{steps_done}]"
                out.write(f"{event.at:%H:%M:%S} {progress:>7} {describe(event)}")
        job = Job.objects.get(pk=job_id)
        if job.status in TERMINAL and job.last_seq <= last_seq:
            return job
        if deadline is not None and time.monotonic() > deadline:
            return job
        time.sleep(poll)


def _write_raw(out, text):
    try:
        out.write(text, ending="")  # a management command's OutputWrapper
    except TypeError:
        out.write(text)
    out.flush()


def exit_code(job):
    return 0 if job.status == Status.SUCCEEDED else 1
